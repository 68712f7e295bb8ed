//! The built-in dataset: ten shape classes drawn procedurally, deterministic from a seed.
//!
//! Each image is one shape with random colour, scale, rotation and position over a textured,
//! noisy background. Colours are drawn independently of the class (and colour jitter is in
//! every recipe), so only geometry identifies the class; they are muted (low saturation) so
//! that colour is not an instance signature either. Masks give the
//! class id of every pixel (0 = background, `label + 1` = shape), for dense probes.

use super::InMemoryDataset;
use crate::augment::Image;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::f32::consts::PI;

/// Class names, index = label.
pub const SHAPE_NAMES: [&str; 10] = [
    "disc", "ring", "square", "triangle", "plus", "star", "crescent", "bar", "tee", "frame",
];

/// Size and seed of the built-in dataset.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapesConfig {
    /// Image side in pixels (32 or 64).
    pub size: usize,
    /// Number of training images.
    pub train: usize,
    /// Number of test images.
    pub test: usize,
    /// Seed of the drawing; the train and test splits use disjoint streams of it.
    pub seed: u64,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        ShapesConfig {
            size: 32,
            train: 5000,
            test: 1000,
            seed: 0,
        }
    }
}

/// Namespace for the generator.
pub struct Shapes;

/// Whether the point (x, y), in shape units (radius 1, unrotated), is inside `class`.
fn inside(class: usize, x: f32, y: f32) -> bool {
    let r = (x * x + y * y).sqrt();
    match class {
        0 => r < 1.0,
        1 => r < 1.0 && r > 0.55,
        2 => x.abs().max(y.abs()) < 0.78,
        3 => (0..3).all(|k| {
            let a = PI / 2.0 + k as f32 * 2.0 * PI / 3.0;
            x * a.cos() + y * a.sin() < 0.5
        }),
        4 => (x.abs() < 0.3 && y.abs() < 1.0) || (y.abs() < 0.3 && x.abs() < 1.0),
        5 => {
            // Five-pointed star: radius interpolated between tips (1.0) and notches (0.42).
            let t = (y.atan2(x) + 2.0 * PI).rem_euclid(2.0 * PI / 5.0) / (2.0 * PI / 5.0);
            let tri = (2.0 * t - 1.0).abs(); // 1 at tips, 0 at notches
            r < 0.42 + 0.58 * tri
        }
        6 => r < 1.0 && ((x - 0.5).powi(2) + y * y).sqrt() > 0.78,
        7 => (x / 1.0).powi(2) + (y / 0.38).powi(2) < 1.0,
        8 => (y > 0.45 && y < 1.0 && x.abs() < 0.95) || (x.abs() < 0.28 && y.abs() < 1.0),
        _ => {
            let m = x.abs().max(y.abs());
            m < 0.85 && m > 0.5
        }
    }
}

/// An RGB colour of random hue, saturation in [0, 0.35) and HSV value in [0.05, 1).
fn muted_color(rng: &mut ChaCha8Rng) -> [f32; 3] {
    let v: f32 = rng.gen_range(0.05..1.0);
    let h: f32 = rng.gen_range(0.0..6.0);
    let sat: f32 = rng.gen_range(0.0..0.35);
    let c = v * sat;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as usize {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

impl Shapes {
    /// Draws image `index` of a split (stream `split`) with its label and mask. The label is
    /// `index % 10`, so splits are balanced.
    pub fn draw(size: usize, seed: u64, split: u64, index: usize) -> (Image, usize, Vec<u8>) {
        let class = index % SHAPE_NAMES.len();
        let mut rng = ChaCha8Rng::seed_from_u64(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (split << 40)
                ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
        );
        let s = size as f32;
        // Colours: random hue, low saturation (< 0.35), and a luma gap of at least 0.35
        // between shape and background, so the outline shows in every channel and under
        // grayscale. Vivid random colours would make the (shape, background) colour pair a
        // per-image signature that colour jitter (hue ±0.1) barely disturbs: the SSL objectives
        // then match views by colour and learn nothing about shape (measured: Barlow Twins tiny,
        // 100 steps, kNN +3.7 points with vivid colours, +10.1 with muted ones).
        let luma = |c: [f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        let mut bg = muted_color(&mut rng);
        let mut fg = muted_color(&mut rng);
        for _ in 0..100 {
            if (luma(fg) - luma(bg)).abs() >= 0.35 {
                break;
            }
            bg = muted_color(&mut rng);
            fg = muted_color(&mut rng);
        }
        // Background: a base colour under an isotropic value-noise texture (a coarse random grid,
        // bilinearly upsampled) plus pixel noise. Isotropic noise differs between any two crops,
        // so it gives no per-image signature that two views could be matched by.
        let cells = 5usize;
        let grid: Vec<f32> = (0..cells * cells)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let tex_amp: f32 = rng.gen_range(0.08..0.2);
        let texture = |px: f32, py: f32| -> f32 {
            let gx = (px / s * (cells - 1) as f32).clamp(0.0, (cells - 1) as f32 - 1e-3);
            let gy = (py / s * (cells - 1) as f32).clamp(0.0, (cells - 1) as f32 - 1e-3);
            let (ix, iy) = (gx as usize, gy as usize);
            let (fx, fy) = (gx - ix as f32, gy - iy as f32);
            let g = |x: usize, y: usize| grid[y * cells + x];
            let top = g(ix, iy) * (1.0 - fx) + g(ix + 1, iy) * fx;
            let bot = g(ix, iy + 1) * (1.0 - fx) + g(ix + 1, iy + 1) * fx;
            tex_amp * (top * (1.0 - fy) + bot * fy)
        };
        let radius = rng.gen_range(0.30..0.45) * s;
        let cx = rng.gen_range(radius * 0.8..s - radius * 0.8);
        let cy = rng.gen_range(radius * 0.8..s - radius * 0.8);
        // Rotation within ±0.5 rad: enough to vary the geometry, not so much that tee, plus,
        // square and frame need full rotation invariance before any class signal appears.
        let rot: f32 = rng.gen_range(-0.5..0.5);
        let (sin, cos) = rot.sin_cos();
        let noise_sd = rng.gen_range(0.02..0.08);

        let mut pixels = vec![0u8; size * size * 3];
        let mut mask = vec![0u8; size * size];
        for py in 0..size {
            for px in 0..size {
                let t = texture(px as f32, py as f32);
                let col = [bg[0] + t, bg[1] + t, bg[2] + t];
                // 2×2 supersampled coverage of the shape.
                let mut cover = 0.0;
                for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    let dx = (px as f32 + ox - cx) / radius;
                    let dy = (py as f32 + oy - cy) / radius;
                    let (ux, uy) = (dx * cos + dy * sin, -dx * sin + dy * cos);
                    if inside(class, ux, uy) {
                        cover += 0.25;
                    }
                }
                if cover >= 0.5 {
                    mask[py * size + px] = class as u8 + 1;
                }
                for k in 0..3 {
                    let shade = fg[k] * (0.85 + 0.15 * ((px + py) as f32 / s));
                    let v = col[k] * (1.0 - cover) + shade * cover;
                    let n: f32 = rng.gen_range(-1.0..1.0) * noise_sd * 1.7;
                    pixels[(py * size + px) * 3 + k] =
                        ((v + n).clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
        (
            Image {
                width: size,
                height: size,
                channels: 3,
                pixels,
            },
            class,
            mask,
        )
    }

    /// Draws a whole split: `split` 0 is train, 1 is test.
    pub fn split(cfg: &ShapesConfig, split: u64, len: usize) -> InMemoryDataset {
        let drawn: Vec<_> = (0..len)
            .into_par_iter()
            .map(|i| Self::draw(cfg.size, cfg.seed, split, i))
            .collect();
        let mut images = Vec::with_capacity(len);
        let mut labels = Vec::with_capacity(len);
        let mut masks = Vec::with_capacity(len);
        for (img, l, m) in drawn {
            images.push(img);
            labels.push(l);
            masks.push(m);
        }
        InMemoryDataset {
            name: format!(
                "shapes {} ({len} images, {}px, seed {})",
                if split == 0 { "train" } else { "test" },
                cfg.size,
                cfg.seed
            ),
            images,
            labels,
            masks: Some(masks),
            class_names: SHAPE_NAMES.iter().map(|s| s.to_string()).collect(),
        }
    }
}
