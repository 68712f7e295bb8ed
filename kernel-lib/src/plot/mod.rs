//! Figures from plain data: curves, heatmaps, image grids with overlays, composed into one
//! multi-panel PNG.
//!
//! Notebooks show one image per cell, so every diagnostic returns a single [`Figure`] holding
//! all its panels. Drawing goes through plotters into an RGB buffer; the PNG is encoded by
//! `image`. Text needs a TrueType font, looked up once on the usual system paths (or
//! `SSLAB_FONT`); without one the figures are drawn without text rather than failing.

mod colormap;
mod render;

pub use colormap::{diverging, heat};

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::OnceLock;

/// One line of a [`Panel::Curves`].
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Half-heights of error bars, one per point (empty: none).
    pub errors: Vec<f64>,
    /// Dots without a connecting line (a scatter plot).
    pub dots_only: bool,
}

impl Series {
    /// A named series.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            errors: Vec::new(),
            dots_only: false,
        }
    }

    /// A named set of points drawn as dots, without a line (one class of a scatter plot).
    pub fn dots(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            dots_only: true,
            ..Series::new(name, points)
        }
    }

    /// A named series with an error bar of `±errors[i]` at point `i`, drawn with a marker at
    /// every point (sweep results: a few x values, spread over seeds).
    pub fn with_errors(name: impl Into<String>, points: Vec<(f64, f64)>, errors: Vec<f64>) -> Self {
        Series {
            name: name.into(),
            points,
            errors,
            dots_only: false,
        }
    }
}

/// An RGB image with 8 bits per channel, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Checks that `pixels` holds `width × height × 3` bytes.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 || pixels.len() != width * height * 3 {
            return Err(Error::Shape(format!(
                "an RGB image of {width}x{height} needs {} bytes, got {}",
                width * height * 3,
                pixels.len()
            )));
        }
        Ok(RgbImage {
            width,
            height,
            pixels,
        })
    }

    /// The colour at column `x`, row `y`.
    pub fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let i = 3 * (y * self.width + x);
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
}

/// A scalar map drawn over an image (e.g. a similarity map), values in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlay {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
    /// Opacity of the overlay colour over the image.
    pub alpha: f32,
}

/// One tile of a [`Panel::Images`]: an image, an optional caption, overlay and point marker.
#[derive(Clone, Debug, PartialEq)]
pub struct Tile {
    pub image: RgbImage,
    pub caption: String,
    pub overlay: Option<Overlay>,
    /// A marked point in image pixel coordinates.
    pub marker: Option<(f32, f32)>,
}

/// A line from a point of one tile to a point of another (tile index, pixel coordinates).
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub from: (usize, f32, f32),
    pub to: (usize, f32, f32),
}

/// What one panel shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Panel {
    /// Lines over a shared x axis, with optional marked points (e.g. detected spikes).
    Curves {
        title: String,
        x_label: String,
        y_label: String,
        series: Vec<Series>,
        markers: Vec<(f64, f64)>,
    },
    /// A `rows × cols` matrix coloured by [`diverging`] over `range`, with a colour bar.
    Heatmap {
        title: String,
        rows: usize,
        cols: usize,
        values: Vec<f32>,
        range: (f32, f32),
    },
    /// Images in a grid of `cols` columns, with links drawn between tiles.
    Images {
        title: String,
        tiles: Vec<Tile>,
        cols: usize,
        links: Vec<Link>,
    },
}

/// A rendered figure: RGB pixels, ready to save as PNG or to show in a notebook.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub image: RgbImage,
}

impl Figure {
    /// Draws `panels` on a grid of `cols` columns, each panel `panel_size` pixels.
    pub fn from_panels(panels: &[Panel], cols: usize, panel_size: (u32, u32)) -> Result<Self> {
        if panels.is_empty() {
            return Err(Error::Invalid("a figure needs at least one panel".into()));
        }
        let cols = cols.clamp(1, panels.len());
        let rows = panels.len().div_ceil(cols);
        let (pw, ph) = panel_size;
        if pw < 64 || ph < 64 || pw > 4096 || ph > 4096 {
            return Err(Error::Invalid(format!(
                "panel size {pw}x{ph} is outside 64..=4096 pixels"
            )));
        }
        let (w, h) = (pw * cols as u32, ph * rows as u32);
        let pixels = render::draw(panels, (rows, cols), (w, h))?;
        Ok(Figure {
            image: RgbImage::new(w as usize, h as usize, pixels)?,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.image.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.image.height
    }

    /// The figure as PNG bytes.
    pub fn png(&self) -> Result<Vec<u8>> {
        use image::ImageEncoder;
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                &self.image.pixels,
                self.image.width as u32,
                self.image.height as u32,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
        Ok(out)
    }

    /// Writes the PNG atomically (temporary file + rename), creating parent folders.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::atomic::write(path.as_ref(), &self.png()?)
    }

    /// Variance of all channel values: zero for a blank figure.
    pub fn pixel_variance(&self) -> f64 {
        let p = &self.image.pixels;
        let n = p.len().max(1) as f64;
        let mean = p.iter().map(|&v| v as f64).sum::<f64>() / n;
        p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n
    }

    /// Shows the figure as the result of an evcxr (Jupyter) cell.
    pub fn evcxr_display(&self) {
        use base64::Engine;
        match self.png() {
            Ok(png) => println!(
                "EVCXR_BEGIN_CONTENT image/png\n{}\nEVCXR_END_CONTENT",
                base64::engine::general_purpose::STANDARD.encode(png)
            ),
            Err(e) => println!("(figure could not be encoded: {e})"),
        }
    }
}

/// Whether figures can draw text (a TrueType font was found and registered).
pub fn has_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let mut candidates: Vec<String> = std::env::var("SSLAB_FONT").into_iter().collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/Library/Fonts/Arial.ttf",
                "C:\\Windows\\Fonts\\arial.ttf",
            ]
            .map(String::from),
        );
        candidates.iter().any(|p| {
            std::fs::read(p).ok().is_some_and(|bytes| {
                // Registered once for the process lifetime, which is what 'static asks for.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
            })
        })
    })
}
