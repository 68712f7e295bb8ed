//! The plotters side of [`super::Figure`]: one drawing area per panel.

use super::{diverging, has_font, heat, Link, Panel, Series, Tile};
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("drawing a figure failed: {e}"))
}

/// Tableau-like line colours, distinct on white.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Renders the panels into a fresh `w × h` RGB buffer.
pub(super) fn draw(panels: &[Panel], grid: (usize, usize), (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let areas = root.split_evenly(grid);
        for (panel, area) in panels.iter().zip(areas.iter()) {
            match panel {
                Panel::Curves {
                    title,
                    x_label,
                    y_label,
                    series,
                    markers,
                } => curves(area, title, x_label, y_label, series, markers)?,
                Panel::Heatmap {
                    title,
                    rows,
                    cols,
                    values,
                    range,
                } => heatmap(area, title, *rows, *cols, values, *range)?,
                Panel::Images {
                    title,
                    tiles,
                    cols,
                    links,
                } => images(area, title, tiles, *cols, links)?,
            }
        }
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// The title strip of a panel (nothing without a font) and the area below it.
fn titled<'a>(area: &Area<'a>, title: &str) -> Result<Area<'a>> {
    if !has_font() || title.is_empty() {
        return Ok(area.clone());
    }
    let (_, h) = area.dim_in_pixel();
    let (top, rest) = area.split_vertically(24.min(h / 4));
    top.draw(&Text::new(
        title.to_string(),
        (8, 4),
        ("sans-serif", 16).into_font().color(&BLACK),
    ))
    .map_err(err)?;
    Ok(rest)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

fn curves(
    area: &Area,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    markers: &[(f64, f64)],
) -> Result<()> {
    let area = titled(area, title)?;
    let all = || series.iter().flat_map(|s| s.points.iter()).chain(markers);
    let (x0, x1) = bounds(all().map(|p| p.0));
    // Error bars widen the y range.
    let bar_ends = series.iter().flat_map(|s| {
        s.points
            .iter()
            .zip(&s.errors)
            .flat_map(|(p, e)| [p.1 - e, p.1 + e])
    });
    let (y0, y1) = bounds(all().map(|p| p.1).chain(bar_ends));
    let font = has_font();
    let mut chart = ChartBuilder::on(&area)
        .margin(8)
        .x_label_area_size(if font { 34 } else { 4 })
        .y_label_area_size(if font { 56 } else { 4 })
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if font {
        mesh.x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 12));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts = s.points.iter().copied().filter(|p| p.1.is_finite());
        let drawn = if s.dots_only {
            chart
                .draw_series(pts.map(|p| Circle::new(p, 2, color.filled())))
                .map_err(err)?
        } else {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(err)?
        };
        if font && !s.name.is_empty() {
            drawn.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        }
        if !s.errors.is_empty() {
            let ok = |p: &&(f64, f64)| p.1.is_finite();
            chart
                .draw_series(
                    s.points
                        .iter()
                        .filter(ok)
                        .map(|&p| Circle::new(p, 3, color.filled())),
                )
                .map_err(err)?;
            for (&(x, y), &e) in s.points.iter().zip(&s.errors) {
                if y.is_finite() && e.is_finite() && e > 0.0 {
                    chart
                        .draw_series(LineSeries::new(
                            [(x, y - e), (x, y + e)],
                            color.stroke_width(1),
                        ))
                        .map_err(err)?;
                }
            }
        }
    }
    if !markers.is_empty() {
        chart
            .draw_series(
                markers
                    .iter()
                    .map(|&p| Circle::new(p, 4, RGBColor(214, 39, 40).filled())),
            )
            .map_err(err)?;
    }
    if font && series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Width of the colour bar strip on the right of a heatmap.
pub(crate) const COLORBAR_WIDTH: u32 = 90;

fn heatmap(
    area: &Area,
    title: &str,
    rows: usize,
    cols: usize,
    values: &[f32],
    (lo, hi): (f32, f32),
) -> Result<()> {
    if rows == 0 || cols == 0 || values.len() != rows * cols {
        return Err(Error::Shape(format!(
            "heatmap of {rows}x{cols} needs {} values, got {}",
            rows * cols,
            values.len()
        )));
    }
    let area = titled(area, title)?;
    let (w, _) = area.dim_in_pixel();
    let (main, bar) = area.split_horizontally(w.saturating_sub(COLORBAR_WIDTH));
    let mut chart = ChartBuilder::on(&main)
        .margin(8)
        .build_cartesian_2d(0f64..cols as f64, rows as f64..0f64)
        .map_err(err)?;
    chart
        .draw_series((0..rows).flat_map(|r| {
            (0..cols).map(move |c| {
                let [cr, cg, cb] = diverging(values[r * cols + c], lo, hi);
                Rectangle::new(
                    [(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)],
                    RGBColor(cr, cg, cb).filled(),
                )
            })
        }))
        .map_err(err)?;
    let font = has_font();
    let mut bar_chart = ChartBuilder::on(&bar)
        .margin(8)
        .y_label_area_size(if font { 50 } else { 0 })
        .build_cartesian_2d(0f64..1f64, lo as f64..hi as f64)
        .map_err(err)?;
    if font {
        bar_chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(5)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
    }
    const STEPS: usize = 64;
    let dv = (hi - lo) as f64 / STEPS as f64;
    bar_chart
        .draw_series((0..STEPS).map(|i| {
            let v0 = lo as f64 + i as f64 * dv;
            let [cr, cg, cb] = diverging((v0 + dv / 2.0) as f32, lo, hi);
            Rectangle::new([(0.0, v0), (1.0, v0 + dv)], RGBColor(cr, cg, cb).filled())
        }))
        .map_err(err)?;
    Ok(())
}

/// Where a tile's image lands: top-left corner and scale (pixels per image pixel).
struct Placement {
    x: i32,
    y: i32,
    scale: f32,
}

fn images(area: &Area, title: &str, tiles: &[Tile], cols: usize, links: &[Link]) -> Result<()> {
    if tiles.is_empty() {
        return Ok(());
    }
    let area = titled(area, title)?;
    let cols = cols.clamp(1, tiles.len());
    let rows = tiles.len().div_ceil(cols);
    let (w, h) = area.dim_in_pixel();
    let caption = if has_font() { 16 } else { 0 };
    let (cw, ch) = (w as i32 / cols as i32, h as i32 / rows as i32);
    let mut placed = Vec::with_capacity(tiles.len());
    for (i, t) in tiles.iter().enumerate() {
        let (cx, cy) = ((i % cols) as i32 * cw, (i / cols) as i32 * ch);
        let room_w = (cw - 8).max(1) as f32;
        let room_h = (ch - 8 - caption).max(1) as f32;
        let scale = (room_w / t.image.width as f32).min(room_h / t.image.height as f32);
        let (iw, ih) = (
            (t.image.width as f32 * scale) as i32,
            (t.image.height as f32 * scale) as i32,
        );
        let p = Placement {
            x: cx + (cw - iw) / 2,
            y: cy + caption + (ch - caption - ih) / 2,
            scale,
        };
        for py in 0..ih {
            for px in 0..iw {
                let sx = ((px as f32 / scale) as usize).min(t.image.width - 1);
                let sy = ((py as f32 / scale) as usize).min(t.image.height - 1);
                let mut c = t.image.rgb(sx, sy).map(|v| v as f32);
                if let Some(o) = &t.overlay {
                    let oc = ((px as f32 / iw as f32 * o.cols as f32) as usize).min(o.cols - 1);
                    let or = ((py as f32 / ih as f32 * o.rows as f32) as usize).min(o.rows - 1);
                    let hc = heat(o.values[or * o.cols + oc]);
                    for k in 0..3 {
                        c[k] = c[k] * (1.0 - o.alpha) + hc[k] as f32 * o.alpha;
                    }
                }
                area.draw_pixel(
                    (p.x + px, p.y + py),
                    &RGBColor(c[0] as u8, c[1] as u8, c[2] as u8),
                )
                .map_err(err)?;
            }
        }
        if caption > 0 && !t.caption.is_empty() {
            area.draw(&Text::new(
                t.caption.clone(),
                (cx + 4, cy + 2),
                ("sans-serif", 12).into_font().color(&BLACK),
            ))
            .map_err(err)?;
        }
        if let Some((mx, my)) = t.marker {
            let at = (
                p.x + ((mx + 0.5) * scale) as i32,
                p.y + ((my + 0.5) * scale) as i32,
            );
            area.draw(&Circle::new(at, 5, RGBColor(0, 255, 255).stroke_width(2)))
                .map_err(err)?;
        }
        placed.push(p);
    }
    for l in links {
        let (Some(a), Some(b)) = (placed.get(l.from.0), placed.get(l.to.0)) else {
            return Err(Error::Invalid(format!(
                "a link joins tiles {} and {} of {}",
                l.from.0,
                l.to.0,
                tiles.len()
            )));
        };
        let pa = (
            a.x + ((l.from.1 + 0.5) * a.scale) as i32,
            a.y + ((l.from.2 + 0.5) * a.scale) as i32,
        );
        let pb = (
            b.x + ((l.to.1 + 0.5) * b.scale) as i32,
            b.y + ((l.to.2 + 0.5) * b.scale) as i32,
        );
        area.draw(&PathElement::new(
            vec![pa, pb],
            RGBColor(0, 255, 255).stroke_width(2),
        ))
        .map_err(err)?;
        area.draw(&Circle::new(pb, 5, RGBColor(0, 255, 255).filled()))
            .map_err(err)?;
    }
    Ok(())
}
