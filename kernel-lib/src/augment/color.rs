//! Colour operations with torchvision's float semantics (results clamped to [0, 1]).

use super::image::FloatImage;
use rand::seq::SliceRandom;
use rand::Rng;

/// ImageNet-style luma weights (PIL's `convert("L")`).
fn luma(p: &[f32]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// Multiplies every value by `f` (torchvision `adjust_brightness`).
pub fn adjust_brightness(img: &mut FloatImage, f: f32) {
    img.data
        .iter_mut()
        .for_each(|v| *v = (*v * f).clamp(0.0, 1.0));
}

/// Blends with the image's mean luma (torchvision `adjust_contrast`).
pub fn adjust_contrast(img: &mut FloatImage, f: f32) {
    let n = (img.width * img.height).max(1) as f32;
    let mean: f32 = img.data.chunks_exact(3).map(luma).sum::<f32>() / n;
    img.data
        .iter_mut()
        .for_each(|v| *v = (f * *v + (1.0 - f) * mean).clamp(0.0, 1.0));
}

/// Blends each pixel with its own luma (torchvision `adjust_saturation`).
pub fn adjust_saturation(img: &mut FloatImage, f: f32) {
    for p in img.data.chunks_exact_mut(3) {
        let l = luma(p);
        p.iter_mut()
            .for_each(|v| *v = (f * *v + (1.0 - f) * l).clamp(0.0, 1.0));
    }
}

/// Rotates the hue by `shift` turns, `shift` in [-0.5, 0.5] (torchvision `adjust_hue`).
pub fn adjust_hue(img: &mut FloatImage, shift: f32) {
    for p in img.data.chunks_exact_mut(3) {
        let (r, g, b) = (p[0], p[1], p[2]);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let c = max - min;
        if c <= 0.0 {
            continue; // gray: hue is undefined and unchanged
        }
        let h = if max == r {
            ((g - b) / c).rem_euclid(6.0)
        } else if max == g {
            (b - r) / c + 2.0
        } else {
            (r - g) / c + 4.0
        } / 6.0;
        let s = c / max;
        let v = max;
        let h = (h + shift).rem_euclid(1.0) * 6.0;
        let i = h.floor();
        let f = h - i;
        let (pp, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
        let (nr, ng, nb) = match i as i32 % 6 {
            0 => (v, t, pp),
            1 => (q, v, pp),
            2 => (pp, v, t),
            3 => (pp, q, v),
            4 => (t, pp, v),
            _ => (v, pp, q),
        };
        p[0] = nr.clamp(0.0, 1.0);
        p[1] = ng.clamp(0.0, 1.0);
        p[2] = nb.clamp(0.0, 1.0);
    }
}

/// Strengths of `ColorJitter(brightness, contrast, saturation, hue)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JitterParams {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

/// torchvision's `ColorJitter`: samples all four factors, then applies the four operations in a
/// random order (a fresh permutation per call).
pub fn color_jitter<R: Rng>(img: &mut FloatImage, j: &JitterParams, rng: &mut R) {
    let mut factor = |s: f32| {
        if s > 0.0 {
            rng.gen_range((1.0 - s).max(0.0)..=1.0 + s)
        } else {
            1.0
        }
    };
    let b = factor(j.brightness);
    let c = factor(j.contrast);
    let s = factor(j.saturation);
    let h = if j.hue > 0.0 {
        rng.gen_range(-j.hue..=j.hue)
    } else {
        0.0
    };
    let mut order = [0u8, 1, 2, 3];
    order.shuffle(rng);
    for op in order {
        match op {
            0 if j.brightness > 0.0 => adjust_brightness(img, b),
            1 if j.contrast > 0.0 => adjust_contrast(img, c),
            2 if j.saturation > 0.0 => adjust_saturation(img, s),
            3 if j.hue > 0.0 => adjust_hue(img, h),
            _ => {}
        }
    }
}

/// Replaces every pixel by its luma on all three channels.
pub fn grayscale(img: &mut FloatImage) {
    for p in img.data.chunks_exact_mut(3) {
        let l = luma(p);
        p.fill(l);
    }
}

/// PIL's `ImageOps.solarize` at threshold 128: values at or above 128/255 are inverted.
pub fn solarize(img: &mut FloatImage) {
    let t = 128.0 / 255.0 - 1e-6;
    img.data
        .iter_mut()
        .for_each(|v| *v = if *v >= t { 1.0 - *v } else { *v });
}

/// `(v - mean[c]) / std[c]` per channel.
pub fn normalize(img: &mut FloatImage, mean: [f32; 3], std: [f32; 3]) {
    for p in img.data.chunks_exact_mut(3) {
        for c in 0..3 {
            p[c] = (p[c] - mean[c]) / std[c];
        }
    }
}
