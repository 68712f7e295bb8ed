//! Winograd F(m×m, 3×3) convolution for the stride-1, padding-1 3×3 layers that hold most of a
//! ResNet's FLOPs (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks").
//!
//! An im2col convolution does 9 multiply-adds per output and input channel; Winograd's minimal
//! filtering does (m+2)²/m² of them (4 for F(2,3), 2.25 for F(4,3)) at the price of cheap
//! additions before and after. PyTorch's oneDNN takes this path on the CPU, which is why its 3×3
//! layers ran above the two cores' FMA peak in `benches/RESULTS.md`.
//!
//! Layout: per group of images, the transformed input `V[ξ][c][t]` (ξ over the α² tile
//! positions, t over the group's tiles), the transformed kernel `U[o][ξ][c]` (once per call,
//! see [`KernelTransform`]), one GEMM per ξ `M[ξ] = U[·][ξ][·] · V[ξ]`, then the inverse
//! transform of `M[·][o][t]` into the output. The input gradient of such a layer is the same
//! convolution of `dY` with the kernel transposed over channels and rotated by 180°, so both
//! passes share this code; the weight gradient reuses the input transform.

use rayon::prelude::*;

use super::cpu_ops::{avx2, images_per_group, matmul};

/// Output tile side `m` and the transform matrices of F(m×m, 3×3), with `α = m + 2`.
pub(crate) trait Tile {
    const M: usize;
    const ALPHA: usize;
    /// Bᵀ, α×α (row-major).
    const BT: &'static [f32];
    /// G, α×3.
    const G: &'static [f32];
    /// Aᵀ, m×α.
    const AT: &'static [f32];
    /// A (α×m) and Gᵀ (3×α), for the weight gradient's transforms.
    const A: &'static [f32];
    const GT: &'static [f32];
}

/// F(2×2, 3×3): 16 products per 4 outputs; exact in f32 up to rounding.
pub(crate) struct F2;

impl Tile for F2 {
    const M: usize = 2;
    const ALPHA: usize = 4;
    #[rustfmt::skip]
    const BT: &'static [f32] = &[
        1.0, 0.0, -1.0, 0.0,
        0.0, 1.0, 1.0, 0.0,
        0.0, -1.0, 1.0, 0.0,
        0.0, 1.0, 0.0, -1.0,
    ];
    #[rustfmt::skip]
    const G: &'static [f32] = &[
        1.0, 0.0, 0.0,
        0.5, 0.5, 0.5,
        0.5, -0.5, 0.5,
        0.0, 0.0, 1.0,
    ];
    #[rustfmt::skip]
    const AT: &'static [f32] = &[
        1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, -1.0,
    ];
    #[rustfmt::skip]
    const A: &'static [f32] = &[
        1.0, 0.0,
        1.0, 1.0,
        1.0, -1.0,
        0.0, -1.0,
    ];
    #[rustfmt::skip]
    const GT: &'static [f32] = &[
        1.0, 0.5, 0.5, 0.0,
        0.0, 0.5, -0.5, 0.0,
        0.0, 0.5, 0.5, 1.0,
    ];
}

/// F(4×4, 3×3): 36 products per 16 outputs (points 0, ±1, ±2, ∞), the variant oneDNN and
/// cuDNN use in f32; its rounding error is a few times F(2,3)'s.
pub(crate) struct F4;

impl Tile for F4 {
    const M: usize = 4;
    const ALPHA: usize = 6;
    #[rustfmt::skip]
    const BT: &'static [f32] = &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0,
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0,
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0,
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0,
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ];
    #[rustfmt::skip]
    const G: &'static [f32] = &[
        1.0 / 4.0, 0.0, 0.0,
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0,
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0,
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0,
        0.0, 0.0, 1.0,
    ];
    #[rustfmt::skip]
    const AT: &'static [f32] = &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ];
    #[rustfmt::skip]
    const A: &'static [f32] = &[
        1.0, 0.0, 0.0, 0.0,
        1.0, 1.0, 1.0, 1.0,
        1.0, -1.0, 1.0, -1.0,
        1.0, 2.0, 4.0, 8.0,
        1.0, -2.0, 4.0, -8.0,
        0.0, 0.0, 0.0, 1.0,
    ];
    #[rustfmt::skip]
    const GT: &'static [f32] = &[
        1.0 / 4.0, -1.0 / 6.0, -1.0 / 6.0, 1.0 / 24.0, 1.0 / 24.0, 0.0,
        0.0, -1.0 / 6.0, 1.0 / 6.0, 1.0 / 12.0, -1.0 / 12.0, 0.0,
        0.0, -1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 1.0,
    ];
}

/// Tiles of the group's GEMMs to aim for: enough columns for the GEMM to run at speed, few
/// enough that a group's transformed input stays in the last-level cache.
const TARGET_TILES: usize = 128;

/// The transformed kernel `U`, laid out `[r][ξ][q]` for output channel r and input channel q,
/// so that each task owns whole rows; the GEMM for position ξ reads `U[·][ξ][·]` with row
/// stride `α²·q`.
struct KernelTransform {
    u: Vec<f32>,
    /// Output channels of the convolution computed (rows of each `U[ξ]`).
    rows: usize,
    /// Its input channels (columns of each `U[ξ]`).
    cols: usize,
}

/// `U = G g Gᵀ` for a kernel `w` (o×c×3×3); with `input_grad`, for the kernel of the input
/// gradient instead, `g'[c][o] = rot180(w[o][c])` (so rows are c and columns o).
fn transform_kernel<T: Tile>(w: &[f32], o: usize, c: usize, input_grad: bool) -> KernelTransform {
    let a2 = T::ALPHA * T::ALPHA;
    let (rows, cols) = if input_grad { (c, o) } else { (o, c) };
    let mut u = vec![0f32; rows * a2 * cols];
    let fast = avx2();
    u.par_chunks_mut(a2 * cols)
        .enumerate()
        .for_each(|(r, dst)| {
            let tap = |q: usize, k: usize| {
                if input_grad {
                    w[(q * c + r) * 9 + 8 - k]
                } else {
                    w[(r * c + q) * 9 + k]
                }
            };
            transform_kernel_row::<T>(&tap, dst, cols, fast)
        });
    KernelTransform { u, rows, cols }
}

/// One row of U (`[ξ][q]`), `L` input channels at a time.
#[inline(always)]
fn kernel_row<T: Tile>(tap: &dyn Fn(usize, usize) -> f32, dst: &mut [f32], cols: usize) {
    let a = T::ALPHA;
    let mut g = [[0f32; L]; 9];
    let mut tmp = [[0f32; L]; 18];
    let mut uu = [[0f32; L]; 36];
    for q0 in (0..cols).step_by(L) {
        let lanes = L.min(cols - q0);
        for (k, gk) in g.iter_mut().enumerate() {
            for (l, v) in gk[..lanes].iter_mut().enumerate() {
                *v = tap(q0 + l, k);
            }
        }
        lanes_mm(T::G, &g, &mut tmp, (a, 3, 3));
        lanes_mm_t(&tmp, T::G, &mut uu, (a, 3, a));
        for (xi, val) in uu[..a * a].iter().enumerate() {
            store(&mut dst[xi * cols + q0..], val, lanes);
        }
    }
}

/// `y (n×o×h×w) = x (n×c×h×w) ⋆ kernel`, 3×3, stride 1, padding 1, where the kernel is given
/// already transformed by [`transform_kernel`].
fn conv_same<T: Tile>(
    x: &[f32],
    k: &KernelTransform,
    (n, h, w): (usize, usize, usize),
) -> Vec<f32> {
    let (o, c) = (k.rows, k.cols);
    let (m, a) = (T::M, T::ALPHA);
    let per_image = Tiles::new(m, 1, h, w).per_image;
    let gsz = images_per_group(n, per_image, TARGET_TILES);
    let fast = avx2();
    let mut y = vec![0f32; n * o * h * w];
    y.par_chunks_mut(gsz * o * h * w)
        .zip(x.par_chunks(gsz * c * h * w))
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(v, mm): &mut (Vec<f32>, Vec<f32>), (yg, xg)| {
                let imgs = xg.len() / (c * h * w);
                let t = imgs * per_image;
                v.resize(a * a * c * t, 0.0);
                mm.resize(a * a * o * t, 0.0);
                transform_in::<T>(xg, v, (imgs, c, h, w), fast);
                for xi in 0..a * a {
                    matmul(
                        o,
                        t,
                        c,
                        &mut mm[xi * o * t..(xi + 1) * o * t],
                        false,
                        &k.u[xi * c..],
                        (a * a * c, 1),
                        &v[xi * c * t..(xi + 1) * c * t],
                        (t, 1),
                    );
                }
                transform_out::<T>(mm, yg, (imgs, o, h, w), fast);
            },
        );
    y
}

/// The m×m output tiles of `imgs` images of h×w, numbered image by image, row by row.
#[derive(Clone, Copy)]
struct Tiles {
    m: usize,
    /// Tiles per row.
    tw: usize,
    per_image: usize,
    /// Tiles of all the images.
    all: usize,
}

impl Tiles {
    #[inline(always)]
    fn new(m: usize, imgs: usize, h: usize, w: usize) -> Self {
        let (th, tw) = (h.div_ceil(m), w.div_ceil(m));
        Tiles {
            m,
            tw,
            per_image: th * tw,
            all: imgs * th * tw,
        }
    }

    /// Image, and top-left output pixel (row, column), of tile `t`.
    #[inline(always)]
    fn origin(&self, t: usize) -> (usize, usize, usize) {
        let (img, ti) = (t / self.per_image, t % self.per_image);
        (img, (ti / self.tw) * self.m, (ti % self.tw) * self.m)
    }
}

/// `dW = Σ_tiles Gᵀ (Σ_t dM[ξ][o][t] · V[ξ][c][t]) G` with `dM = A dY Aᵀ` per output tile and
/// `V` the forward's input transform: the gradient of `U = G g Gᵀ` through the products, one
/// GEMM per position ξ summed over every tile of the batch.
fn weight_grad_tiles<T: Tile>(
    x: &[f32],
    dy: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    o: usize,
) -> Vec<f32> {
    let (m, a) = (T::M, T::ALPHA);
    let a2 = a * a;
    let per_image = Tiles::new(m, 1, h, w).per_image;
    let gsz = images_per_group(n, per_image, TARGET_TILES);
    let fast = avx2();
    let partials: Vec<Vec<f32>> = x
        .par_chunks(gsz * c * h * w)
        .zip(dy.par_chunks(gsz * o * h * w))
        .fold(
            || (vec![0f32; a2 * o * c], Vec::new(), Vec::new()),
            |(mut du, mut v, mut dm), (xg, dyg)| {
                let imgs = xg.len() / (c * h * w);
                let t = imgs * per_image;
                v.resize(a2 * c * t, 0.0);
                dm.resize(a2 * o * t, 0.0);
                transform_in::<T>(xg, &mut v, (imgs, c, h, w), fast);
                transform_grad_out::<T>(dyg, &mut dm, (imgs, o, h, w), fast);
                for xi in 0..a2 {
                    matmul(
                        o,
                        c,
                        t,
                        &mut du[xi * o * c..(xi + 1) * o * c],
                        true,
                        &dm[xi * o * t..(xi + 1) * o * t],
                        (t, 1),
                        &v[xi * c * t..(xi + 1) * c * t],
                        (1, t),
                    );
                }
                (du, v, dm)
            },
        )
        .map(|(du, ..)| du)
        .collect();
    let du = super::cpu_ops::sum_partials(partials, a2 * o * c);
    let mut dw = vec![0f32; o * c * 9];
    dw.par_chunks_mut(c * 9)
        .enumerate()
        .for_each(|(oi, dst)| transform_kernel_grad::<T>(&du[oi * c..], (o * c, c), dst, fast));
    dw
}

/// `dM[ξ][o][t] = (A dY_tile Aᵀ)[ξ]`, the output gradient's tiles zero-padded past the edge.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn grad_out_transform<T: Tile>(
    dy: &[f32],
    dm: &mut [f32],
    (imgs, o, h, w): (usize, usize, usize, usize),
) {
    let (m, a) = (T::M, T::ALPHA);
    let tiles = Tiles::new(m, imgs, h, w);
    let t_all = tiles.all;
    let ot = o * t_all;
    let mut d = [[0f32; L]; 16];
    let mut tmp = [[0f32; L]; 24];
    let mut out = [[0f32; L]; 36];
    for oi in 0..o {
        for t0 in (0..t_all).step_by(L) {
            let lanes = L.min(t_all - t0);
            for l in 0..lanes {
                let (img, y0, x0) = tiles.origin(t0 + l);
                let plane = &dy[(img * o + oi) * h * w..][..h * w];
                for r in 0..m {
                    for q in 0..m {
                        let (iy, ix) = (y0 + r, x0 + q);
                        d[r * m + q][l] = if iy < h && ix < w {
                            plane[iy * w + ix]
                        } else {
                            0.0
                        };
                    }
                }
            }
            lanes_mm(T::A, &d, &mut tmp, (a, m, m));
            lanes_mm_t(&tmp, T::A, &mut out, (a, m, a));
            for (xi, val) in out[..a * a].iter().enumerate() {
                store(&mut dm[xi * ot + oi * t_all + t0..], val, lanes);
            }
        }
    }
}

/// One output channel's `dw[c][3×3] = Gᵀ dU[·][c] G`, `L` input channels at a time; `du` starts
/// at this channel's row and `(stride, c)` are the ξ-plane stride and the row length.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn kernel_grad_row<T: Tile>(du: &[f32], (stride, c): (usize, usize), dst: &mut [f32]) {
    let a = T::ALPHA;
    let mut u = [[0f32; L]; 36];
    let mut tmp = [[0f32; L]; 18];
    let mut g = [[0f32; L]; 9];
    for c0 in (0..c).step_by(L) {
        let lanes = L.min(c - c0);
        for (xi, val) in u[..a * a].iter_mut().enumerate() {
            load(val, &du[xi * stride + c0..], lanes);
        }
        lanes_mm(T::GT, &u, &mut tmp, (3, a, a));
        lanes_mm_t(&tmp, T::GT, &mut g, (3, a, 3));
        for l in 0..lanes {
            for (k, gk) in g.iter().enumerate() {
                dst[(c0 + l) * 9 + k] = gk[l];
            }
        }
    }
}

/// Writes `lanes` values of `val` to the front of `dst`; a full register as one fixed-size
/// move (a slice copy of run-time length is a call to `memcpy`, 3% of a training step).
#[inline(always)]
fn store(dst: &mut [f32], val: &[f32; L], lanes: usize) {
    if let (true, Some(d)) = (lanes == L, dst.first_chunk_mut::<L>()) {
        *d = *val;
    } else {
        dst[..lanes].copy_from_slice(&val[..lanes]);
    }
}

/// Reads `lanes` values from the front of `src` into `val`, as [`store`].
#[inline(always)]
fn load(val: &mut [f32; L], src: &[f32], lanes: usize) {
    if let (true, Some(s)) = (lanes == L, src.first_chunk::<L>()) {
        *val = *s;
    } else {
        val[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// Tiles transformed together, one per SIMD lane (8 = one AVX2 register of f32).
const L: usize = 8;

/// A lane-wise `L (r×q) · R (q×s)` where `R` and `out` hold `L` tiles per entry: the constant
/// matrix entries fold away (zeros, ones) once inlined, and the lane loop vectorises.
#[inline(always)]
fn lanes_mm(l: &[f32], r: &[[f32; L]], out: &mut [[f32; L]], (rr, q, s): (usize, usize, usize)) {
    for i in 0..rr {
        for j in 0..s {
            let mut acc = [0f32; L];
            for k in 0..q {
                let coef = l[i * q + k];
                for (a, v) in acc.iter_mut().zip(&r[k * s + j]) {
                    *a += coef * v;
                }
            }
            out[i * s + j] = acc;
        }
    }
}

/// A lane-wise `L (r×q) · Cᵀ` where `C` (s×q) is the constant matrix.
#[inline(always)]
fn lanes_mm_t(l: &[[f32; L]], c: &[f32], out: &mut [[f32; L]], (rr, q, s): (usize, usize, usize)) {
    for i in 0..rr {
        for j in 0..s {
            let mut acc = [0f32; L];
            for k in 0..q {
                let coef = c[j * q + k];
                for (a, v) in acc.iter_mut().zip(&l[i * q + k]) {
                    *a += coef * v;
                }
            }
            out[i * s + j] = acc;
        }
    }
}

/// `V[ξ][c][t] = (Bᵀ d B)[ξ]` for every channel and tile of `imgs` images, zero outside.
// The lane index addresses the tile-major scratch arrays at computed positions.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_transform<T: Tile>(
    x: &[f32],
    v: &mut [f32],
    (imgs, c, h, w): (usize, usize, usize, usize),
) {
    let (m, a) = (T::M, T::ALPHA);
    let tiles = Tiles::new(m, imgs, h, w);
    let t_all = tiles.all;
    let ct = c * t_all;
    let mut d = [[0f32; L]; 36];
    let mut tmp = [[0f32; L]; 36];
    let mut vv = [[0f32; L]; 36];
    for ci in 0..c {
        for t0 in (0..t_all).step_by(L) {
            let lanes = L.min(t_all - t0);
            for l in 0..lanes {
                let (img, oy, ox) = tiles.origin(t0 + l);
                let plane = &x[(img * c + ci) * h * w..][..h * w];
                // The input patch starts one pixel up and left of the output tile (padding 1).
                let (y0, x0) = (oy as isize - 1, ox as isize - 1);
                for r in 0..a {
                    let iy = y0 + r as isize;
                    let row_ok = iy >= 0 && (iy as usize) < h;
                    for q in 0..a {
                        let ix = x0 + q as isize;
                        d[r * a + q][l] = if row_ok && ix >= 0 && (ix as usize) < w {
                            plane[iy as usize * w + ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
            lanes_mm(T::BT, &d, &mut tmp, (a, a, a));
            lanes_mm_t(&tmp, T::BT, &mut vv, (a, a, a));
            for (xi, val) in vv[..a * a].iter().enumerate() {
                store(&mut v[xi * ct + ci * t_all + t0..], val, lanes);
            }
        }
    }
}

/// `y[o][tile] = Aᵀ M[·][o][t] A`, clipped at the image's edge.
// The lane index addresses the tile-major scratch arrays at computed positions.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_transform<T: Tile>(
    mm: &[f32],
    y: &mut [f32],
    (imgs, o, h, w): (usize, usize, usize, usize),
) {
    let (m, a) = (T::M, T::ALPHA);
    let tiles = Tiles::new(m, imgs, h, w);
    let t_all = tiles.all;
    let ot = o * t_all;
    let mut mt = [[0f32; L]; 36];
    let mut tmp = [[0f32; L]; 24];
    let mut out = [[0f32; L]; 16];
    for oi in 0..o {
        for t0 in (0..t_all).step_by(L) {
            let lanes = L.min(t_all - t0);
            for (xi, val) in mt[..a * a].iter_mut().enumerate() {
                load(val, &mm[xi * ot + oi * t_all + t0..], lanes);
            }
            lanes_mm(T::AT, &mt, &mut tmp, (m, a, a));
            lanes_mm_t(&tmp, T::AT, &mut out, (m, a, m));
            for l in 0..lanes {
                let (img, oy, ox) = tiles.origin(t0 + l);
                let plane = &mut y[(img * o + oi) * h * w..][..h * w];
                for r in 0..m.min(h - oy) {
                    let row = &mut plane[(oy + r) * w + ox..];
                    for (q, dst) in row[..m.min(w - ox)].iter_mut().enumerate() {
                        *dst = out[r * m + q][l];
                    }
                }
            }
        }
    }
}

/// Defines `$name(args…, fast)`: `$kernel` compiled for AVX2 + FMA when `fast` (checked on
/// this CPU by [`avx2`]), else its baseline build. The crate is built for baseline x86-64, and
/// the transforms only vectorise well with 8-wide registers.
macro_rules! dispatch {
    ($name:ident, $kernel:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name<T: Tile>($($arg: $ty,)* fast: bool) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide<T: Tile>($($arg: $ty),*) {
                $kernel::<T>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: `fast` is `avx2()`, checked on this CPU.
                return unsafe { wide::<T>($($arg),*) };
            }
            let _ = fast;
            $kernel::<T>($($arg),*)
        }
    };
}

dispatch!(transform_in, input_transform, (x: &[f32], v: &mut [f32], dims: (usize, usize, usize, usize)));
dispatch!(transform_out, output_transform, (mm: &[f32], y: &mut [f32], dims: (usize, usize, usize, usize)));
dispatch!(transform_grad_out, grad_out_transform, (dy: &[f32], dm: &mut [f32], dims: (usize, usize, usize, usize)));
dispatch!(transform_kernel_grad, kernel_grad_row, (du: &[f32], dims: (usize, usize), dst: &mut [f32]));
dispatch!(transform_kernel_row, kernel_row, (tap: &dyn Fn(usize, usize) -> f32, dst: &mut [f32], cols: usize));

/// Whether a convolution takes the Winograd path: 3×3, stride 1, padding 1 (the output the
/// input's size) and enough input channels for the per-position GEMMs to pay.
/// Both channel counts matter: the input gradient is the same convolution with them swapped.
pub(crate) fn applies(k: usize, stride: usize, pad: usize, channels: (usize, usize)) -> bool {
    k == 3 && stride == 1 && pad == 1 && channels.0 >= 16 && channels.1 >= 16
}

/// Forward: `y = x ⋆ w` (x n×c×h×w, w o×c×3×3).
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    (n, c, h, wd): (usize, usize, usize, usize),
    o: usize,
) -> Vec<f32> {
    conv(x, w, (n, h, wd), (o, c), false)
}

/// Input gradient: `dx = dy ⋆ rot180(wᵀ)` (dy n×o×h×w, w o×c×3×3), shaped n×c×h×w.
pub(crate) fn input_grad(
    dy: &[f32],
    w: &[f32],
    (n, o, h, wd): (usize, usize, usize, usize),
    c: usize,
) -> Vec<f32> {
    conv(dy, w, (n, h, wd), (o, c), true)
}

/// Weight gradient of `y = x ⋆ w` (x n×c×h×w, dy n×o×h×w), shaped o×c×3×3.
pub(crate) fn weight_grad(
    x: &[f32],
    dy: &[f32],
    dims: (usize, usize, usize, usize),
    o: usize,
) -> Vec<f32> {
    if small(dims.2, dims.3) {
        return weight_grad_tiles::<F2>(x, dy, dims, o);
    }
    weight_grad_tiles::<F4>(x, dy, dims, o)
}

/// Below 8×8, F(2,3): at 4×4 (ResNet-18's last stage at 32 px) F(4,3)'s transformed kernel,
/// 36 values per tap pair, costs more memory traffic than its products save (measured 200 vs
/// 180 GFLOP/s on 512 channels).
fn small(h: usize, w: usize) -> bool {
    h < 8 || w < 8
}

/// The convolution of the forward (`input_grad` false) or of the input gradient, on the tile
/// size [`small`] picks.
fn conv(
    x: &[f32],
    w: &[f32],
    dims: (usize, usize, usize),
    (o, c): (usize, usize),
    input_grad: bool,
) -> Vec<f32> {
    fn tiled<T: Tile>(
        x: &[f32],
        w: &[f32],
        dims: (usize, usize, usize),
        (o, c): (usize, usize),
        input_grad: bool,
    ) -> Vec<f32> {
        conv_same::<T>(x, &transform_kernel::<T>(w, o, c, input_grad), dims)
    }
    if small(dims.1, dims.2) {
        return tiled::<F2>(x, w, dims, (o, c), input_grad);
    }
    tiled::<F4>(x, w, dims, (o, c), input_grad)
}
