//! Random resized crop with torchvision's sampling and PIL's resampling, keeping the crop box so
//! every view pixel can be mapped back to its source pixel (and on to the other view).

use super::image::{FloatImage, Image};
use rand::Rng;

/// Resampling filter used when a crop is resized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// PIL's bilinear (triangle) filter; torchvision's default.
    Bilinear,
    /// PIL's bicubic filter (a = -0.5); Barlow Twins' choice.
    Bicubic,
}

/// Where a view came from: the crop rectangle in source pixels, the output size and whether the
/// view was mirrored afterwards.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    /// Left column of the crop in the source image.
    pub x: usize,
    /// Top row of the crop in the source image.
    pub y: usize,
    /// Crop width in source pixels.
    pub w: usize,
    /// Crop height in source pixels.
    pub h: usize,
    /// Output width of the view.
    pub out_w: usize,
    /// Output height of the view.
    pub out_h: usize,
    /// True when the view was flipped horizontally after resizing.
    pub flipped: bool,
}

impl CropBox {
    /// Maps a view pixel (column `u`, row `v`; pixel centres at integers) to continuous source
    /// pixel coordinates (same convention). This is the exact inverse of the resampling grid.
    pub fn view_to_source(&self, u: f32, v: f32) -> (f32, f32) {
        let u = if self.flipped {
            self.out_w as f32 - 1.0 - u
        } else {
            u
        };
        let sx = self.w as f32 / self.out_w as f32;
        let sy = self.h as f32 / self.out_h as f32;
        (
            self.x as f32 + (u + 0.5) * sx - 0.5,
            self.y as f32 + (v + 0.5) * sy - 0.5,
        )
    }

    /// Maps continuous source pixel coordinates into this view (may fall outside it).
    pub fn source_to_view(&self, x: f32, y: f32) -> (f32, f32) {
        let sx = self.w as f32 / self.out_w as f32;
        let sy = self.h as f32 / self.out_h as f32;
        let u = (x - self.x as f32 + 0.5) / sx - 0.5;
        let v = (y - self.y as f32 + 0.5) / sy - 0.5;
        let u = if self.flipped {
            self.out_w as f32 - 1.0 - u
        } else {
            u
        };
        (u, v)
    }

    /// Whether a view coordinate lies inside the view.
    pub fn contains_view(&self, u: f32, v: f32) -> bool {
        u >= -0.5 && v >= -0.5 && u < self.out_w as f32 - 0.5 && v < self.out_h as f32 - 0.5
    }
}

/// Samples a crop rectangle `(x, y, w, h)` exactly as torchvision's
/// `RandomResizedCrop.get_params`: area fraction ~ U(scale), log aspect ~ U(log ratio), ten tries,
/// then a centre crop clamped to the ratio range.
pub fn random_resized_crop_box<R: Rng>(
    rng: &mut R,
    width: usize,
    height: usize,
    scale: (f32, f32),
    ratio: (f32, f32),
) -> (usize, usize, usize, usize) {
    let area = (width * height) as f64;
    let (lr0, lr1) = ((ratio.0 as f64).ln(), (ratio.1 as f64).ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(scale.0 as f64..=scale.1 as f64);
        let aspect = rng.gen_range(lr0..=lr1).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if w > 0 && h > 0 && w <= width && h <= height {
            let y = rng.gen_range(0..=height - h);
            let x = rng.gen_range(0..=width - w);
            return (x, y, w, h);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 as f64 {
        (
            width,
            ((width as f64 / ratio.0 as f64).round() as usize).max(1),
        )
    } else if in_ratio > ratio.1 as f64 {
        (
            ((height as f64 * ratio.1 as f64).round() as usize).max(1),
            height,
        )
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

fn filter(interp: Interpolation, x: f64) -> f64 {
    let x = x.abs();
    match interp {
        Interpolation::Bilinear => (1.0 - x).max(0.0),
        Interpolation::Bicubic => {
            let a = -0.5;
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * a
            } else {
                0.0
            }
        }
    }
}

/// PIL's `precompute_coeffs`: for each output sample, the first input index and its weights.
fn coeffs(in_size: usize, out_size: usize, interp: Interpolation) -> Vec<(usize, Vec<f32>)> {
    let support = match interp {
        Interpolation::Bilinear => 1.0,
        Interpolation::Bicubic => 2.0,
    };
    let scale = in_size as f64 / out_size as f64;
    let fscale = scale.max(1.0);
    let support = support * fscale;
    (0..out_size)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(in_size);
            let mut w: Vec<f64> = (lo..hi)
                .map(|i| filter(interp, (i as f64 - center + 0.5) / fscale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Crops `(x, y, w, h)` out of `img` and resizes it to `out_w × out_h` with PIL's separable
/// resampling (antialiased when shrinking, like `PIL.Image.resize`). Bicubic overshoot is
/// clamped to [0, 1] as PIL clamps to bytes.
pub fn resized_crop(
    img: &Image,
    (x, y, w, h): (usize, usize, usize, usize),
    out_w: usize,
    out_h: usize,
    interp: Interpolation,
) -> FloatImage {
    let cx = coeffs(w, out_w, interp);
    let cy = coeffs(h, out_h, interp);
    // Horizontal pass over the rows the crop needs.
    let mut tmp = vec![0f32; h * out_w * 3];
    for r in 0..h {
        for (o, (lo, ws)) in cx.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, wt) in ws.iter().enumerate() {
                let px = img.rgb(x + lo + k, y + r);
                for c in 0..3 {
                    acc[c] += wt * px[c] as f32;
                }
            }
            let t = (r * out_w + o) * 3;
            for c in 0..3 {
                tmp[t + c] = acc[c] / 255.0;
            }
        }
    }
    let mut data = vec![0f32; out_h * out_w * 3];
    for (o, (lo, ws)) in cy.iter().enumerate() {
        for col in 0..out_w {
            let mut acc = [0f32; 3];
            for (k, wt) in ws.iter().enumerate() {
                let t = ((lo + k) * out_w + col) * 3;
                for c in 0..3 {
                    acc[c] += wt * tmp[t + c];
                }
            }
            let d = (o * out_w + col) * 3;
            for c in 0..3 {
                data[d + c] = acc[c].clamp(0.0, 1.0);
            }
        }
    }
    FloatImage {
        width: out_w,
        height: out_h,
        data,
    }
}
