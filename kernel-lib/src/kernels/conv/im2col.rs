//! im2col and col2im: a convolution's input unrolled into a column matrix (one row per input
//! channel and kernel tap), so the forward and both gradients are matrix products.

use super::ConvGeom;

/// Output columns `ox` whose input column `ox·s − p + kx` lies inside `0..w`.
fn valid_cols(g: &ConvGeom, kx: usize) -> (usize, usize) {
    let off = kx as isize - g.pad as isize; // ix = ox·s + off
    let s = g.stride as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let hi = ((g.w as isize - off + s - 1) / s).clamp(0, g.wo as isize);
    (lo.min(hi) as usize, hi as usize)
}

/// Where one image's columns sit in a column matrix shared by a group of images: row r of the
/// image is `cols[r·ld + off..][..hw]` (ld = hw, off = 0 for a matrix of its own).
#[derive(Clone, Copy)]
struct ColView {
    ld: usize,
    off: usize,
}

fn im2col(g: &ConvGeom, x: &[f32], cols: &mut [f32], view: ColView) {
    let (k, s, p, hw) = (g.k, g.stride, g.pad as isize, g.hw_out());
    for c in 0..g.c {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let (lo, hi) = valid_cols(g, kx);
                let off = kx as isize - p;
                let row = &mut cols[((c * k + ky) * k + kx) * view.ld + view.off..][..hw];
                for oy in 0..g.ho {
                    let iy = (oy * s) as isize - p + ky as isize;
                    let dst = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if lo < hi {
                        let start = (lo as isize * s as isize + off) as usize;
                        if s == 1 {
                            dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                        } else {
                            for (d, v) in dst[lo..hi].iter_mut().zip(src[start..].iter().step_by(s))
                            {
                                *d = *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn col2im(g: &ConvGeom, cols: &[f32], dx: &mut [f32]) {
    dx.fill(0.0);
    let (k, s, p, hw) = (g.k, g.stride, g.pad as isize, g.hw_out());
    for c in 0..g.c {
        let xc = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let (lo, hi) = valid_cols(g, kx);
                if lo >= hi {
                    continue;
                }
                let start = (lo as isize * s as isize + kx as isize - p) as usize;
                let row = &cols[((c * k + ky) * k + kx) * hw..][..hw];
                for oy in 0..g.ho {
                    let iy = (oy * s) as isize - p + ky as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let src = &row[oy * g.wo + lo..oy * g.wo + hi];
                    for (d, v) in dst[start..].iter_mut().step_by(s).zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// The column matrix of a group of images (ckk × images·hw, image by image): the input itself
/// for one image of a pointwise convolution, else im2col into `buf`.
pub(super) fn group_cols<'a>(g: &ConvGeom, xg: &'a [f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    let chw = g.c * g.h * g.w;
    let (imgs, hw) = (xg.len() / chw, g.hw_out());
    if imgs == 1 && g.pointwise() {
        return xg;
    }
    let ld = imgs * hw;
    buf.resize(g.ckk() * ld, 0.0);
    for (i, xn) in xg.chunks(chw).enumerate() {
        im2col(g, xn, buf, ColView { ld, off: i * hw });
    }
    buf
}

/// (image, row, pixel) → row × (image, pixel): a group's per-image matrices side by side, so
/// one GEMM covers them all. One image is already in that layout.
pub(super) fn to_group_matrix<'a>(
    src: &'a [f32],
    (rows, hw): (usize, usize),
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let imgs = src.len() / (rows * hw);
    if imgs == 1 {
        return src;
    }
    let ld = imgs * hw;
    buf.resize(src.len(), 0.0);
    for (i, img) in src.chunks(rows * hw).enumerate() {
        for (r, row) in img.chunks(hw).enumerate() {
            buf[r * ld + i * hw..][..hw].copy_from_slice(row);
        }
    }
    buf
}
