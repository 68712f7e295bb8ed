//! Gaussian blur with σ in pixels, as PIL's `GaussianBlur(radius=σ)` (PIL approximates it with
//! box blurs, so values agree closely but not bit for bit).

use super::image::FloatImage;

fn kernel(sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as i32;
    let mut k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// Separable Gaussian blur; borders repeat the edge pixel.
pub fn gaussian_blur(img: &mut FloatImage, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let k = kernel(sigma);
    let r = (k.len() / 2) as isize;
    let (w, h) = (img.width as isize, img.height as isize);
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        for y in 0..h {
            for x in 0..w {
                let mut acc = [0f32; 3];
                for (i, kv) in k.iter().enumerate() {
                    let d = i as isize - r;
                    let (sx, sy) = if horizontal {
                        ((x + d).clamp(0, w - 1), y)
                    } else {
                        (x, (y + d).clamp(0, h - 1))
                    };
                    let s = ((sy * w + sx) * 3) as usize;
                    for c in 0..3 {
                        acc[c] += kv * src[s + c];
                    }
                }
                let o = ((y * w + x) * 3) as usize;
                out[o..o + 3].copy_from_slice(&acc);
            }
        }
        out
    };
    let tmp = pass(&img.data, true);
    img.data = pass(&tmp, false);
}
