//! Winograd convolution for the 3×3, padding-1 layers that hold most of a ResNet's FLOPs (Lavin
//! & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"): F(m×m, 3×3) at stride 1,
//! and a polyphase tile at stride 2 ([`S2`]).
//!
//! An im2col convolution does 9 multiply-adds per output and input channel; Winograd's minimal
//! filtering does (m+2)²/m² of them (4 for F(2,3), 2.25 for F(4,3), 6.25 for the stride-2
//! tile) at the price of cheap additions before and after. PyTorch's oneDNN takes this path on
//! the CPU, which is why its 3×3 layers ran above the two cores' FMA peak in
//! `benches/RESULTS.md`.
//!
//! Layout: per group of images, the transformed input `V[c][ξ][t]` (ξ over the α² tile
//! positions, t over the group's tiles; see [`channel_row`]), the transformed kernel
//! `U[o][ξ][c]` (once per call, see [`KernelTransform`]), one GEMM per ξ `M[·][ξ][·] =
//! U[·][ξ][·] · V[·][ξ][·]`, then the inverse transform of `M[o][·][t]` into the output. At
//! stride 1 the input gradient is the same convolution of `dY` with the kernel transposed over
//! channels and rotated by 180°, so both passes share this code; at stride 2 it runs the
//! products backwards ([`input_grad_strided`]). The weight gradient reuses the input transform.

use rayon::prelude::*;

use crate::kernels::matmul::{bf16_product, product_ld};
use crate::kernels::matmul_bf16::{matmul_bf16_packed, PackedLhs};
use crate::kernels::par::{images_per_group, sum_over_groups};
use crate::kernels::simd::{avx2, prefetch};
use crate::kernels::storage::written;

/// Output tile side `m`, the convolution's stride, and the transform matrices of F(m×m, 3×3),
/// whose input patch (α×α, starting one pixel up and left of the tile's first output's window)
/// has as many rows as the transformed tile: `α = m + 2` at stride 1, `2m + 1` at stride 2.
pub(crate) trait Tile {
    const M: usize;
    const ALPHA: usize;
    const STRIDE: usize;
    /// Bᵀ, α×α (row-major).
    const BT: &'static [f32];
    /// G, α×3.
    const G: &'static [f32];
    /// Aᵀ, m×α.
    const AT: &'static [f32];
    /// A (α×m) and Gᵀ (3×α), for the weight gradient's transforms.
    const A: &'static [f32];
    const GT: &'static [f32];
    /// The distinct rows of G (`NU` of them): the transformed kernel is computed and stored
    /// once per pair of them, and `U_OF[i]` says which one row i of G is.
    const GU: &'static [f32] = Self::G;
    const NU: usize = Self::ALPHA;
    const U_OF: &'static [usize] = &[0, 1, 2, 3, 4, 5];
}

/// F(2×2, 3×3): 16 products per 4 outputs; exact in f32 up to rounding.
pub(crate) struct F2;

impl Tile for F2 {
    const M: usize = 2;
    const ALPHA: usize = 4;
    const STRIDE: usize = 1;
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
    const STRIDE: usize = 1;
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

/// Stride 2, 2×2 outputs from a 5×5 patch with 25 products instead of 36. Polyphase: along
/// each axis the even input pixels meet only the middle tap (two products for two outputs) and
/// the odd ones the outer taps, a stride-1 correlation of 2 taps done as Winograd F(2,2) (three
/// products); in 1-D, `y₀ = m₀ + m₁ + m₃`, `y₁ = m₁ + m₂ + m₄` with `m₀ = (x₀ − x₂)w₀`,
/// `m₁ = x₂(w₀ + w₂)`, `m₂ = (x₄ − x₂)w₂`, `m₃ = x₁w₁`, `m₄ = x₃w₁`. Every coefficient is ±1, so
/// it rounds no worse than im2col.
pub(crate) struct S2;

impl Tile for S2 {
    const M: usize = 2;
    const ALPHA: usize = 5;
    const STRIDE: usize = 2;
    #[rustfmt::skip]
    const BT: &'static [f32] = &[
        1.0, 0.0, -1.0, 0.0, 0.0,
        0.0, 0.0, 1.0, 0.0, 0.0,
        0.0, 0.0, -1.0, 0.0, 1.0,
        0.0, 1.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 1.0, 0.0,
    ];
    #[rustfmt::skip]
    const G: &'static [f32] = &[
        1.0, 0.0, 0.0,
        1.0, 0.0, 1.0,
        0.0, 0.0, 1.0,
        0.0, 1.0, 0.0,
        0.0, 1.0, 0.0,
    ];
    #[rustfmt::skip]
    const AT: &'static [f32] = &[
        1.0, 1.0, 0.0, 1.0, 0.0,
        0.0, 1.0, 1.0, 0.0, 1.0,
    ];
    #[rustfmt::skip]
    const A: &'static [f32] = &[
        1.0, 0.0,
        1.0, 1.0,
        0.0, 1.0,
        1.0, 0.0,
        0.0, 1.0,
    ];
    #[rustfmt::skip]
    const GT: &'static [f32] = &[
        1.0, 1.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 1.0, 1.0,
        0.0, 1.0, 1.0, 0.0, 0.0,
    ];
    // m₃ and m₄ both take the middle tap: 16 distinct kernel planes instead of 25.
    #[rustfmt::skip]
    const GU: &'static [f32] = &[
        1.0, 0.0, 0.0,
        1.0, 0.0, 1.0,
        0.0, 0.0, 1.0,
        0.0, 1.0, 0.0,
    ];
    const NU: usize = 4;
    const U_OF: &'static [usize] = &[0, 1, 2, 3, 3];
}

/// Output side of a 3×3, padding-1 convolution of stride `T::STRIDE` over an input side `h`.
fn out_side<T: Tile>(h: usize) -> usize {
    (h - 1) / T::STRIDE + 1
}

/// Floats between one channel's transformed tiles and the next's in `V[c][ξ][t]` (and in the
/// products `M[o][ξ][t]`): each channel's α² rows of tiles lie together, so the transforms
/// read and write a few KB at a time instead of α² far-apart streams (they were 2× slower),
/// plus one cache line, so that the per-position GEMMs' rows, this far apart, do not all fall
/// into the same few cache sets (a stride of a multiple of 2 KB halved the weight-gradient
/// GEMM's speed).
fn channel_row<T: Tile>(tiles: usize) -> usize {
    T::ALPHA * T::ALPHA * tiles + 16
}

/// Tiles of the group's GEMMs to aim for: enough columns for the GEMM to run at speed, few
/// enough that a group's transformed input stays in the last-level cache.
const TARGET_TILES: usize = 128;

/// The transformed kernel `U`, laid out `[r][ξu][q]` for output channel r, distinct position
/// ξu (`NU²` of them, see [`Tile::GU`]) and input channel q, so that each task owns whole rows;
/// the GEMM for position ξ reads `U[·][ξu][·]` with row stride `NU²·q`. For bf16 products it
/// is packed straight from the kernel instead ([`PackedLhs::by_panels`]), and the f32 `U` is
/// only computed if some group of images is too small for the bf16 kernel.
struct KernelTransform {
    /// Output channels of the convolution computed (rows of each `U[ξ]`).
    rows: usize,
    /// Its input channels (columns of each `U[ξ]`).
    cols: usize,
    /// The f32 `U`: empty where every group's products take `packed`.
    u: Vec<f32>,
    /// Each distinct `U[ξu]` (`Uᵀ` for a transposed product) packed for the bf16 products.
    packed: Option<PackedLhs>,
}

impl KernelTransform {
    /// `U = G g Gᵀ` for a kernel `w` (o×c×3×3); with `input_grad`, for the kernel of the
    /// input gradient instead, `g'[c][o] = rot180(w[o][c])` (so rows are c and columns o).
    /// With `bf16` (and products deep enough for the bf16 kernel, [`bf16_product`]) packed
    /// for products by `U`, or by `Uᵀ` when `transposed`; the f32 `U` as well if the
    /// smallest group of the `(n, ho, wo)` outputs is too narrow for the bf16 kernel. Both are
    /// built here, before the groups run in parallel: nothing is computed lazily inside them.
    fn new<T: Tile>(
        w: &[f32],
        (o, c): (usize, usize),
        input_grad: bool,
        (bf16, transposed): (bool, bool),
        out: (usize, usize, usize),
    ) -> Self {
        let (a2, fast) = (T::NU * T::NU, avx2());
        let (rows, cols) = if input_grad { (c, o) } else { (o, c) };
        // Where row r's taps start, and the distance between consecutive columns' taps.
        let strides = if input_grad { (9, c * 9) } else { (c * 9, 9) };
        // Row r of U (or of Uᵀ, with the strides swapped): `[ξu][q]` over `len` columns.
        let row = |r: usize, (rs, cs): (usize, usize), dst: &mut [f32], len: usize| {
            let taps = KernelTaps {
                w: &w[r * rs..],
                col_stride: cs,
                flip: input_grad,
            };
            transform_kernel_row::<T>(taps, dst, len, fast)
        };
        let (m, inner, packed_strides) = if transposed {
            (cols, rows, (strides.1, strides.0))
        } else {
            (rows, cols, strides)
        };
        let packed = (bf16 && bf16_product(usize::MAX, inner))
            .then(|| {
                // Row i of every position's operand lies together: one kernel row.
                PackedLhs::by_panels(a2, (m, inner), |r0, n, f| {
                    for (i, dst) in f.chunks_exact_mut(a2 * inner).take(n).enumerate() {
                        row(r0 + i, packed_strides, dst, inner);
                    }
                })
            })
            .flatten();
        let u = if packed.is_none() || !bf16_product(smallest_group::<T>(out), inner) {
            // Each row's transform stores all its `a2·cols` values ([`kernel_row`]).
            written(rows * a2 * cols, |u| {
                u.par_chunks_mut(a2 * cols)
                    .enumerate()
                    .for_each(|(r, dst)| row(r, strides, dst, cols))
            })
        } else {
            Vec::new()
        };
        KernelTransform {
            rows,
            cols,
            u,
            packed,
        }
    }
}

/// Tiles in the smallest group [`over_groups`] makes of `n` images of ho×wo outputs.
fn smallest_group<T: Tile>((n, ho, wo): (usize, usize, usize)) -> usize {
    if n == 0 {
        return usize::MAX;
    }
    let per_image = Tiles::new(T::M, 1, ho, wo).per_image;
    let gsz = images_per_group(n, per_image, TARGET_TILES);
    let last = n - (n.div_ceil(gsz) - 1) * gsz;
    gsz.min(last) * per_image
}

/// One row of a kernel: the 3×3 taps of column q start at `w[q·col_stride]`, read in reverse
/// order (rotated by 180°) when `flip`.
#[derive(Clone, Copy)]
struct KernelTaps<'a> {
    w: &'a [f32],
    col_stride: usize,
    flip: bool,
}

/// One row of U (`[ξ][q]`), `L` input channels at a time.
#[inline(always)]
fn kernel_row<T: Tile>(taps: KernelTaps, dst: &mut [f32], cols: usize) {
    let a = T::NU;
    let mut g = [[0f32; L]; 9];
    let mut tmp = [[0f32; L]; 18];
    let mut uu = [[0f32; L]; 36];
    for q0 in (0..cols).step_by(L) {
        let lanes = L.min(cols - q0);
        for l in 0..lanes {
            let src = &taps.w[(q0 + l) * taps.col_stride..][..9];
            for (k, gk) in g.iter_mut().enumerate() {
                gk[l] = src[if taps.flip { 8 - k } else { k }];
            }
        }
        lanes_mm(T::GU, &g, &mut tmp, (a, 3, 3));
        lanes_mm_t(&tmp, T::GU, &mut uu, (a, 3, a));
        for (xi, val) in uu[..a * a].iter().enumerate() {
            store(&mut dst[xi * cols + q0..], val, lanes);
        }
    }
}

/// `y (n×o×ho×wo) = x (n×c×h×w) ⋆ kernel`, 3×3, stride `T::STRIDE`, padding 1, where the
/// kernel is given already transformed ([`KernelTransform`]).
fn conv_tiled<T: Tile>(
    x: &[f32],
    k: &KernelTransform,
    (n, h, w): (usize, usize, usize),
    bf16: bool,
) -> Vec<f32> {
    let (o, c) = (k.rows, k.cols);
    let (ho, wo) = (out_side::<T>(h), out_side::<T>(w));
    let fast = avx2();
    let sizes = (c * h * w, o * ho * wo);
    // The output transform writes every pixel once (each lies in exactly one tile).
    written(n * o * ho * wo, |y| {
        over_groups::<T>((x, y), sizes, (n, ho, wo), (c, o), |xg, yg, g| {
            transform_in::<T>(xg, g.first, (g.imgs, c, h, w), fast);
            position_products::<T>(k, false, (g.first, g.second), (g.tiles, g.row), bf16);
            transform_out::<T>(g.second, yg, (g.imgs, o, ho, wo), fast);
        })
    })
}

/// `dst[·][ξ][·] = U[ξ] · src[·][ξ][·]` for every tile position ξ (`Uᵀ` when `transposed`),
/// over a group of `tiles` tiles whose channel rows are `row` apart in both buffers; the
/// operands rounded to bf16 (f32 sums) when `bf16`.
fn position_products<T: Tile>(
    k: &KernelTransform,
    transposed: bool,
    (src, dst): (&[f32], &mut [f32]),
    (tiles, row): (usize, usize),
    bf16: bool,
) {
    let (a, nu, q) = (T::ALPHA, T::NU, k.cols);
    let plane = nu * nu * q;
    let (m, inner, strides) = if transposed {
        (k.cols, k.rows, (1, plane))
    } else {
        (k.rows, k.cols, (plane, 1))
    };
    let packed = k
        .packed
        .as_ref()
        .filter(|_| bf16 && bf16_product(tiles, inner));
    // `new` computed the f32 U wherever a group is too narrow for `packed`.
    let u = &k.u[..];
    debug_assert!(packed.is_some() || !u.is_empty());
    for xi in 0..a * a {
        let xu = T::U_OF[xi / a] * nu + T::U_OF[xi % a];
        if let Some(packed) = packed {
            let rhs = (&src[xi * tiles..], (row, 1));
            matmul_bf16_packed(
                tiles,
                (&mut dst[xi * tiles..], row),
                false,
                packed.operand(xu),
                rhs,
                false,
            );
            continue;
        }
        product_ld(
            bf16,
            (m, tiles, inner),
            (&mut dst[xi * tiles..], row),
            false,
            (&u[xu * q..], strides),
            (&src[xi * tiles..], (row, 1)),
        );
    }
}

/// One group of images in a tiled pass, with this thread's scratch (see [`over_groups`]).
struct Group<'a> {
    imgs: usize,
    /// Tiles of the group.
    tiles: usize,
    /// A channel's row in the scratch buffers ([`channel_row`]).
    row: usize,
    first: &'a mut [f32],
    second: &'a mut [f32],
}

/// Runs `f(src_group, dst_group, group)` in parallel over the groups of images of
/// [`images_per_group`], where an image holds `sizes.0` floats of `src` and `sizes.1` of `dst`
/// and has (ho, wo) outputs; the group's two scratch buffers hold `channels.0` and
/// `channels.1` channel rows.
fn over_groups<T: Tile>(
    (src, dst): (&[f32], &mut [f32]),
    sizes: (usize, usize),
    (n, ho, wo): (usize, usize, usize),
    channels: (usize, usize),
    f: impl Fn(&[f32], &mut [f32], Group) + Sync,
) {
    let per_image = Tiles::new(T::M, 1, ho, wo).per_image;
    let gsz = images_per_group(n, per_image, TARGET_TILES);
    dst.par_chunks_mut(gsz * sizes.1)
        .zip(src.par_chunks(gsz * sizes.0))
        .for_each(|(dg, sg)| {
            with_scratch(|first, second| {
                let imgs = sg.len() / sizes.0;
                let tiles = imgs * per_image;
                let row = channel_row::<T>(tiles);
                let (first, second) = (
                    grow(first, channels.0 * row),
                    grow(second, channels.1 * row),
                );
                f(
                    sg,
                    dg,
                    Group {
                        imgs,
                        tiles,
                        row,
                        first,
                        second,
                    },
                )
            })
        });
}

thread_local! {
    /// Per-thread transformed input and products, kept between calls: allocating (and
    /// zeroing) several MB per layer and group cost as much as an output transform.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Runs `f` with this thread's two scratch buffers (fresh ones if they are in use).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (a, b) = &mut *bufs;
            f(a, b)
        }
        Err(_) => f(&mut Vec::new(), &mut Vec::new()),
    })
}

/// The first `len` floats of `buf`, grown if needed; the contents are stale, to be
/// overwritten.
pub(super) fn grow(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
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

    /// Where each tile starts in its image's first channel (of `c` channels of h×w), if the
    /// whole tile lies inside the image.
    fn whole_starts(&self, c: usize, h: usize, w: usize) -> Vec<Option<usize>> {
        (0..self.all)
            .map(|t| {
                let (img, y0, x0) = self.origin(t);
                (y0 + self.m <= h && x0 + self.m <= w).then_some(img * c * h * w + y0 * w + x0)
            })
            .collect()
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
    bf16: bool,
) -> Vec<f32> {
    let (m, a) = (T::M, T::ALPHA);
    let a2 = a * a;
    let (ho, wo) = (out_side::<T>(h), out_side::<T>(w));
    let per_image = Tiles::new(m, 1, ho, wo).per_image;
    let gsz = images_per_group(n, per_image, TARGET_TILES);
    let fast = avx2();
    let du = sum_over_groups(
        (n, gsz),
        a2 * o * c,
        || (),
        |_, du, imgs, first| {
            let xg = &x[imgs.start * c * h * w..imgs.end * c * h * w];
            let dyg = &dy[imgs.start * o * ho * wo..imgs.end * o * ho * wo];
            with_scratch(|v, dm| {
                let t = imgs.len() * per_image;
                let row = channel_row::<T>(t);
                let (v, dm) = (grow(v, c * row), grow(dm, o * row));
                transform_in::<T>(xg, v, (imgs.len(), c, h, w), fast);
                transform_grad_out::<T>(dyg, dm, (imgs.len(), o, ho, wo), fast);
                for xi in 0..a2 {
                    product_ld(
                        bf16,
                        (o, c, t),
                        (&mut du[xi * o * c..], c),
                        !first,
                        (&dm[xi * t..], (row, 1)),
                        (&v[xi * t..], (1, row)),
                    );
                }
            });
        },
    );
    // Each output channel's row stores all its `c·9` taps ([`kernel_grad_row`]).
    written(o * c * 9, |dw| {
        dw.par_chunks_mut(c * 9)
            .enumerate()
            .for_each(|(oi, dst)| transform_kernel_grad::<T>(&du[oi * c..], (o * c, c), dst, fast))
    })
}

/// `dM[ξ][o][t] = (A dY_tile Aᵀ)[ξ]`, the output gradient's tiles zero-padded past the edge.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn grad_out_transform<T: Tile>(
    dy: &[f32],
    dm: &mut [f32],
    (imgs, o, h, w): (usize, usize, usize, usize),
) {
    let m = T::M;
    let tiles = Tiles::new(m, imgs, h, w);
    let t_all = tiles.all;
    let row = channel_row::<T>(t_all);
    let mut d = [[0f32; L]; 16];
    let fast = avx2();
    let offs = tiles.whole_starts(o, h, w);
    let next = NextPlanes::new((imgs, o, h * w), t_all.div_ceil(L));
    for oi in 0..o {
        for (step, t0) in (0..t_all).step_by(L).enumerate() {
            if oi + 1 < o {
                next.fetch(dy.as_ptr(), oi + 1, step);
            }
            let lanes = L.min(t_all - t0);
            #[cfg(target_arch = "x86_64")]
            if fast && lanes == L && (m == 2 || m == 4) {
                let mut at = [0usize; L];
                let inside = offs[t0..t0 + L]
                    .iter()
                    .zip(&mut at)
                    .all(|(off, at)| off.map(|off| *at = off + oi * h * w).is_some());
                if inside {
                    // SAFETY: `fast` is `avx2()`, checked on this CPU.
                    unsafe { simd::gather_tiles(m, dy, &at, w, &mut d) };
                    grad_out_tiles::<T>(&d, &mut dm[oi * row + t0..], (t_all, lanes), fast);
                    continue;
                }
            }
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
            grad_out_tiles::<T>(&d, &mut dm[oi * row + t0..], (t_all, lanes), fast);
        }
    }
}

/// `dM[ξ][t] = (A d Aᵀ)[ξ]` for a step's tiles of the output gradient (`d[r·m + q]`, one tile
/// a lane), the first `lanes` stored at `dm[ξ·t_all..]`.
#[inline(always)]
fn grad_out_tiles<T: Tile>(
    d: &[[f32; L]; 16],
    dm: &mut [f32],
    (t_all, lanes): (usize, usize),
    fast: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is `avx2()`, checked on this CPU.
        return unsafe { simd::tiles::grad_out_tiles::<T>(d, dm, t_all, lanes) };
    }
    let _ = fast;
    let (m, a) = (T::M, T::ALPHA);
    let (mut tmp, mut out) = ([[0f32; L]; 24], [[0f32; L]; 36]);
    lanes_mm(T::A, d, &mut tmp, (a, m, m));
    lanes_mm_t(&tmp, T::A, &mut out, (a, m, a));
    for (xi, val) in out[..a * a].iter().enumerate() {
        store(&mut dm[xi * t_all..], val, lanes);
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
/// move. The partial copy is a separate, cold function: inline, LLVM merged both copies into
/// one `memcpy` call of variable length (5% of a training step).
#[inline(always)]
fn store(dst: &mut [f32], val: &[f32; L], lanes: usize) {
    if let (true, Some(d)) = (lanes == L, dst.first_chunk_mut::<L>()) {
        *d = *val;
    } else {
        copy_partial(&mut dst[..lanes], &val[..lanes]);
    }
}

/// Reads `lanes` values from the front of `src` into `val`, as [`store`].
#[inline(always)]
fn load(val: &mut [f32; L], src: &[f32], lanes: usize) {
    if let (true, Some(s)) = (lanes == L, src.first_chunk::<L>()) {
        *val = *s;
    } else {
        copy_partial(&mut val[..lanes], &src[..lanes]);
    }
}

#[cold]
#[inline(never)]
fn copy_partial(dst: &mut [f32], src: &[f32]) {
    dst.copy_from_slice(src);
}

/// Tiles transformed together, one per SIMD lane (8 = one AVX2 register of f32).
const L: usize = 8;

/// A lane-wise `L (r×q) · R (q×s)` where `R` and `out` hold `L` tiles per entry: the constant
/// matrix entries fold away (zeros, ones) once inlined, and the lane loop vectorises.
#[inline(always)]
fn lanes_mm(l: &[f32], r: &[[f32; L]], out: &mut [[f32; L]], dims: (usize, usize, usize)) {
    lanes_cm(l, (dims.1, 1), r, out, dims)
}

/// A lane-wise `L (r×q) · Cᵀ` where `C` (s×q) is the constant matrix.
#[inline(always)]
fn lanes_mm_t(l: &[[f32; L]], c: &[f32], out: &mut [[f32; L]], dims: (usize, usize, usize)) {
    lanes_mc(l, c, (1, dims.1), out, dims)
}

/// `out (r×s) = C · R` for a constant `C` (r×q) read at `c[i·crs + k·ccs]`. Zero entries are
/// skipped: `0·x` cannot be folded away in IEEE arithmetic.
#[inline(always)]
fn lanes_cm(
    c: &[f32],
    (crs, ccs): (usize, usize),
    r: &[[f32; L]],
    out: &mut [[f32; L]],
    (rr, q, s): (usize, usize, usize),
) {
    for i in 0..rr {
        for j in 0..s {
            let mut acc = [0f32; L];
            for k in 0..q {
                let coef = c[i * crs + k * ccs];
                if coef == 0.0 {
                    continue;
                }
                for (a, v) in acc.iter_mut().zip(&r[k * s + j]) {
                    *a += coef * v;
                }
            }
            out[i * s + j] = acc;
        }
    }
}

/// `out (r×s) = L · C` for a constant `C` (q×s) read at `c[k·crs + j·ccs]`.
#[inline(always)]
fn lanes_mc(
    l: &[[f32; L]],
    c: &[f32],
    (crs, ccs): (usize, usize),
    out: &mut [[f32; L]],
    (rr, q, s): (usize, usize, usize),
) {
    for i in 0..rr {
        for j in 0..s {
            let mut acc = [0f32; L];
            for k in 0..q {
                let coef = c[k * crs + j * ccs];
                if coef == 0.0 {
                    continue;
                }
                for (a, v) in acc.iter_mut().zip(&l[i * q + k]) {
                    *a += coef * v;
                }
            }
            out[i * s + j] = acc;
        }
    }
}

/// Where a group's tiles read their input: a zero-bordered copy of one channel's planes
/// (`ph`×`pw` per image, one pixel of padding on top and left) that holds every tile's whole
/// α×α patch, so that patches are read and written without bounds checks, a row of eight tiles
/// at a time (see [`simd::tiles`]).
struct PatchGrid {
    ph: usize,
    pw: usize,
    /// Where each tile's patch starts in the copy.
    starts: Vec<usize>,
}

impl PatchGrid {
    #[inline(always)]
    fn new<T: Tile>(tiles: &Tiles) -> Self {
        let (m, a, s) = (T::M, T::ALPHA, T::STRIDE);
        // The last tile's patch ends at padded row (th − 1)·m·s + α.
        let th = tiles.per_image / tiles.tw;
        let (ph, pw) = ((th - 1) * m * s + a, (tiles.tw - 1) * m * s + a);
        let starts = (0..tiles.all)
            .map(|t| {
                let (img, oy, ox) = tiles.origin(t);
                img * ph * pw + oy * s * pw + ox * s
            })
            .collect();
        PatchGrid { ph, pw, starts }
    }

    /// The tiles of `imgs` images (h×w) at the layer's stride, a channel's row in `V`
    /// ([`channel_row`]), their grid, and the zeroed copy, with `L` floats of slack: the vector
    /// gathers and scatters move whole registers past a patch row's end.
    fn for_group<T: Tile>(imgs: usize, h: usize, w: usize) -> (usize, usize, Self, Vec<f32>) {
        let tiles = Tiles::new(T::M, imgs, out_side::<T>(h), out_side::<T>(w));
        let grid = Self::new::<T>(&tiles);
        let pad = vec![0f32; imgs * grid.ph * grid.pw + L];
        (tiles.all, channel_row::<T>(tiles.all), grid, pad)
    }

    /// Pixel (iy, ix) of image `img` in the copy.
    fn at(&self, img: usize, iy: usize, ix: usize) -> usize {
        img * self.ph * self.pw + (iy + 1) * self.pw + ix + 1
    }
}

/// `V[c][ξ][t] = (Bᵀ d B)[ξ]` for every channel and tile of `imgs` images (h×w), zero outside.
#[inline(always)]
fn input_transform<T: Tile>(
    x: &[f32],
    v: &mut [f32],
    (imgs, c, h, w): (usize, usize, usize, usize),
) {
    let (t_all, row, grid, mut pad) = PatchGrid::for_group::<T>(imgs, h, w);
    let fast = avx2();
    let next = NextPlanes::new((imgs, c, h * w), t_all.div_ceil(L));
    for ci in 0..c {
        for img in 0..imgs {
            let plane = &x[(img * c + ci) * h * w..][..h * w];
            for (iy, src) in plane.chunks_exact(w).enumerate() {
                copy_short(&mut pad[grid.at(img, iy, 0)..][..w], src);
            }
        }
        for (step, t0) in (0..t_all).step_by(L).enumerate() {
            if ci + 1 < c {
                next.fetch(x.as_ptr(), ci + 1, step);
            }
            let starts = &grid.starts[t0..t0 + L.min(t_all - t0)];
            input_tiles::<T>(
                (&pad, grid.pw),
                starts,
                (&mut v[ci * row + t0..], t_all),
                fast,
            );
        }
    }
}

/// `V[ξ][t] = (Bᵀ d B)[ξ]` for a step's tiles, whose α×α patches start at `starts` in `pad`
/// (rows `pw` apart), stored at `v[ξ·t_all..]`.
#[inline(always)]
fn input_tiles<T: Tile>(
    (pad, pw): (&[f32], usize),
    starts: &[usize],
    (v, t_all): (&mut [f32], usize),
    fast: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is `avx2()`, checked on this CPU.
        return unsafe { simd::tiles::input_tiles::<T>(pad, starts, pw, v, t_all) };
    }
    let _ = fast;
    let a = T::ALPHA;
    let [mut d, mut tmp, mut vv] = [[[0f32; L]; 36]; 3];
    for (l, &st) in starts.iter().enumerate() {
        for r in 0..a {
            for (q, x) in pad[st + r * pw..][..a].iter().enumerate() {
                d[r * a + q][l] = *x;
            }
        }
    }
    lanes_mm(T::BT, &d, &mut tmp, (a, a, a));
    lanes_mm_t(&tmp, T::BT, &mut vv, (a, a, a));
    for (xi, val) in vv[..a * a].iter().enumerate() {
        store(&mut v[xi * t_all..], val, starts.len());
    }
}

/// The planes of one channel of a group's images (`imgs` of them, `c` channels of `hw` floats),
/// fetched into the cache a share at a time while the channel before is transformed: the
/// transform reads a channel's planes, 4 KB each at 32×32 and `c·hw` floats apart, only after
/// the previous channel's tiles are done, too late for the hardware prefetchers, which stop at
/// page boundaries (the plane copy was a third of the forward's transform time at 64 channels).
struct NextPlanes {
    imgs: usize,
    c: usize,
    hw: usize,
    /// Cache lines of one plane, and how many to ask for per step of the tile loop.
    lines: usize,
    per_step: usize,
}

impl NextPlanes {
    fn new((imgs, c, hw): (usize, usize, usize), steps: usize) -> Self {
        let lines = hw.div_ceil(16);
        let per_step = (imgs * lines).div_ceil(steps.max(1));
        NextPlanes {
            imgs,
            c,
            hw,
            lines,
            per_step,
        }
    }

    /// Step `step`'s share of channel `ci`'s lines in `x` (read, or about to be written).
    #[inline(always)]
    fn fetch(&self, x: *const f32, ci: usize, step: usize) {
        let end = ((step + 1) * self.per_step).min(self.imgs * self.lines);
        for j in step * self.per_step..end {
            let (img, line) = (j / self.lines, j % self.lines);
            prefetch(x.wrapping_add((img * self.c + ci) * self.hw + line * 16));
        }
    }
}

/// The adjoint of [`input_transform`]: `dx = Σ_tiles B dV[c][·][t] Bᵀ`, each tile's α×α patch
/// added where the forward read it (neighbouring patches overlap), for `imgs` images (h×w).
// The lane index addresses the tile-major scratch arrays at computed positions.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_transform_adjoint<T: Tile>(
    dv: &[f32],
    dx: &mut [f32],
    (imgs, c, h, w): (usize, usize, usize, usize),
) {
    let a = T::ALPHA;
    let (t_all, row, grid, mut pad) = PatchGrid::for_group::<T>(imgs, h, w);
    let ([mut vv, mut tmp, mut d], fast) = ([[[0f32; L]; 36]; 3], avx2());
    let next = NextPlanes::new((imgs, c, h * w), t_all.div_ceil(L));
    for ci in 0..c {
        pad.fill(0.0);
        for (step, t0) in (0..t_all).step_by(L).enumerate() {
            // This channel's planes of dx are written after its tiles.
            next.fetch(dx.as_ptr(), ci, step);
            let lanes = L.min(t_all - t0);
            for (xi, val) in vv[..a * a].iter_mut().enumerate() {
                load(val, &dv[ci * row + xi * t_all + t0..], lanes);
            }
            // B dV Bᵀ with B = (Bᵀ)ᵀ: Bᵀ read transposed on the left, as it is on the right.
            lanes_cm(T::BT, (1, a), &vv, &mut tmp, (a, a, a));
            lanes_mc(&tmp, T::BT, (a, 1), &mut d, (a, a, a));
            scatter_add_patches::<T>(&d, &mut pad, &grid.starts[t0..t0 + lanes], grid.pw, fast);
        }
        for img in 0..imgs {
            let plane = &mut dx[(img * c + ci) * h * w..][..h * w];
            for (iy, dst) in plane.chunks_exact_mut(w).enumerate() {
                copy_short(dst, &pad[grid.at(img, iy, 0)..][..w]);
            }
        }
    }
}

/// `dst = src` for the short rows of small feature maps, without a call to `memcpy` (a
/// slice copy of run-time length is one; 4-float rows made it 5% of a training step).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(L);
    let mut s = src.chunks_exact(L);
    for (d, s) in (&mut d).zip(&mut s) {
        if let (Ok(d), Ok(s)) = (<&mut [f32; L]>::try_from(d), <&[f32; L]>::try_from(s)) {
            *d = *s;
        }
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// `pad[starts[l] + r·pw + q] += d[r·α + q][l]`, lane after lane (neighbouring patches overlap).
#[inline(always)]
fn scatter_add_patches<T: Tile>(
    d: &[[f32; L]; 36],
    pad: &mut [f32],
    starts: &[usize],
    pw: usize,
    fast: bool,
) {
    let a = T::ALPHA;
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is `avx2()`, checked on this CPU.
        return unsafe { simd::scatter_add_patches(a, d, pad, starts, pw) };
    }
    let _ = fast;
    for (l, &st) in starts.iter().enumerate() {
        for r in 0..a {
            for (q, dst) in pad[st + r * pw..][..a].iter_mut().enumerate() {
                *dst += d[r * a + q][l];
            }
        }
    }
}

/// Writes each lane's m×m output tile `out[r·m + q][l]` at `y[offs[l] + r·w + q]`, where
/// `offs[l]` is `None` for a tile clipped by the image's edge (those are skipped here and
/// written by [`output_transform`]).
#[inline(always)]
fn scatter_tiles<T: Tile>(
    out: &[[f32; L]; 16],
    y: &mut [f32],
    offs: &[Option<usize>],
    w: usize,
    fast: bool,
) {
    let m = T::M;
    #[cfg(target_arch = "x86_64")]
    if fast && (m == 2 || m == 4) {
        // SAFETY: `fast` is `avx2()`, checked on this CPU.
        return unsafe { simd::scatter_tiles(m, out, y, offs, w) };
    }
    let _ = fast;
    for (l, off) in offs.iter().enumerate() {
        if let Some(off) = off {
            for r in 0..m {
                for q in 0..m {
                    y[off + r * w + q] = out[r * m + q][l];
                }
            }
        }
    }
}

/// The AVX2 forms of the lane gathers and scatters: eight registers (one per tile) transposed
/// into eight lanes, instead of a scalar move per value (the transforms' main cost).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::L;

    /// The tiles' transforms over eight tiles a register, their constant matrices written out
    /// by hand as additions and FMAs ([`bt`], [`at`], [`a`]). The generic lane loops
    /// (`lanes_cm`) kept every 36-entry intermediate on the stack, split each 8-lane step into
    /// two 4-lane halves and added `0·x` terms (F(4,3)'s transforms were 40% of a 64-channel
    /// layer); these keep one row or column of a tile in registers at a time.
    pub(super) mod tiles {
        use std::arch::x86_64::*;

        use super::super::{Tile, L};
        use super::transpose8;

        /// Which tile `T` is: F(4,3), F(2,3) or the stride-2 tile (constant once `T` is known).
        enum Kind {
            F4,
            F2,
            S2,
        }

        fn kind<T: Tile>() -> Kind {
            match (T::ALPHA, T::STRIDE) {
                (6, 1) => Kind::F4,
                (4, 1) => Kind::F2,
                _ => Kind::S2,
            }
        }

        /// `Bᵀ x` (the first α registers of `x` and of the result).
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn bt<T: Tile>(x: [__m256; 6]) -> [__m256; 6] {
            let z = _mm256_setzero_ps();
            match kind::<T>() {
                // Rows [4 0 −5 0 1 0], [0 −4 −4 1 1 0], [0 4 −4 −1 1 0], [0 −2 −1 2 1 0],
                // [0 2 −1 −2 1 0], [0 4 0 −5 0 1].
                Kind::F4 => {
                    let (c4, c5, c2) = (
                        _mm256_set1_ps(4.0),
                        _mm256_set1_ps(5.0),
                        _mm256_set1_ps(2.0),
                    );
                    let s12 = _mm256_add_ps(x[1], x[2]);
                    let s34 = _mm256_add_ps(x[3], x[4]);
                    let d12 = _mm256_sub_ps(x[1], x[2]);
                    let d43 = _mm256_sub_ps(x[4], x[3]);
                    let d13 = _mm256_sub_ps(x[1], x[3]);
                    let d42 = _mm256_sub_ps(x[4], x[2]);
                    [
                        _mm256_fmadd_ps(c4, x[0], _mm256_fnmadd_ps(c5, x[2], x[4])),
                        _mm256_fnmadd_ps(c4, s12, s34),
                        _mm256_fmadd_ps(c4, d12, d43),
                        _mm256_fnmadd_ps(c2, d13, d42),
                        _mm256_fmadd_ps(c2, d13, d42),
                        _mm256_fmadd_ps(c4, x[1], _mm256_fnmadd_ps(c5, x[3], x[5])),
                    ]
                }
                // Rows [1 0 −1 0], [0 1 1 0], [0 −1 1 0], [0 1 0 −1].
                Kind::F2 => [
                    _mm256_sub_ps(x[0], x[2]),
                    _mm256_add_ps(x[1], x[2]),
                    _mm256_sub_ps(x[2], x[1]),
                    _mm256_sub_ps(x[1], x[3]),
                    z,
                    z,
                ],
                // Rows [1 0 −1 0 0], [0 0 1 0 0], [0 0 −1 0 1], [0 1 0 0 0], [0 0 0 1 0].
                Kind::S2 => [
                    _mm256_sub_ps(x[0], x[2]),
                    x[2],
                    _mm256_sub_ps(x[4], x[2]),
                    x[1],
                    x[3],
                    z,
                ],
            }
        }

        /// `Aᵀ x` (α registers in, m out).
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn at<T: Tile>(x: [__m256; 6]) -> [__m256; 4] {
            let z = _mm256_setzero_ps();
            match kind::<T>() {
                // Rows [1 1 1 1 1 0], [0 1 −1 2 −2 0], [0 1 1 4 4 0], [0 1 −1 8 −8 1].
                Kind::F4 => {
                    let s12 = _mm256_add_ps(x[1], x[2]);
                    let s34 = _mm256_add_ps(x[3], x[4]);
                    let d12 = _mm256_sub_ps(x[1], x[2]);
                    let d34 = _mm256_sub_ps(x[3], x[4]);
                    [
                        _mm256_add_ps(_mm256_add_ps(x[0], s12), s34),
                        _mm256_fmadd_ps(_mm256_set1_ps(2.0), d34, d12),
                        _mm256_fmadd_ps(_mm256_set1_ps(4.0), s34, s12),
                        _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0), d34, d12), x[5]),
                    ]
                }
                // Rows [1 1 1 0], [0 1 −1 −1].
                Kind::F2 => [
                    _mm256_add_ps(_mm256_add_ps(x[0], x[1]), x[2]),
                    _mm256_sub_ps(_mm256_sub_ps(x[1], x[2]), x[3]),
                    z,
                    z,
                ],
                // Rows [1 1 0 1 0], [0 1 1 0 1].
                Kind::S2 => [
                    _mm256_add_ps(_mm256_add_ps(x[0], x[1]), x[3]),
                    _mm256_add_ps(_mm256_add_ps(x[1], x[2]), x[4]),
                    z,
                    z,
                ],
            }
        }

        /// `A x` (A = (Aᵀ)ᵀ: m registers in, α out), the output gradient's transform.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn a<T: Tile>(x: [__m256; 4]) -> [__m256; 6] {
            let z = _mm256_setzero_ps();
            match kind::<T>() {
                // Rows [1 0 0 0], [1 1 1 1], [1 −1 1 −1], [1 2 4 8], [1 −2 4 −8], [0 0 0 1].
                Kind::F4 => {
                    let s02 = _mm256_add_ps(x[0], x[2]);
                    let s13 = _mm256_add_ps(x[1], x[3]);
                    let q0 = _mm256_fmadd_ps(_mm256_set1_ps(4.0), x[2], x[0]);
                    let q1 = _mm256_fmadd_ps(_mm256_set1_ps(8.0), x[3], _mm256_add_ps(x[1], x[1]));
                    [
                        x[0],
                        _mm256_add_ps(s02, s13),
                        _mm256_sub_ps(s02, s13),
                        _mm256_add_ps(q0, q1),
                        _mm256_sub_ps(q0, q1),
                        x[3],
                    ]
                }
                // Rows [1 0], [1 1], [1 −1], [0 −1].
                Kind::F2 => [
                    x[0],
                    _mm256_add_ps(x[0], x[1]),
                    _mm256_sub_ps(x[0], x[1]),
                    _mm256_sub_ps(z, x[1]),
                    z,
                    z,
                ],
                // Rows [1 0], [1 1], [0 1], [1 0], [0 1].
                Kind::S2 => [x[0], _mm256_add_ps(x[0], x[1]), x[1], x[0], x[1], z],
            }
        }

        /// Writes the first `lanes` lanes of `val` to the front of `dst`.
        #[inline]
        #[target_feature(enable = "avx2")]
        fn store(dst: &mut [f32], val: __m256, lanes: usize) {
            if lanes == L {
                let dst = &mut dst[..L];
                // SAFETY: `dst` holds L = 8 floats.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), val) };
            } else {
                let mut all = [0f32; L];
                // SAFETY: `all` holds L = 8 floats.
                unsafe { _mm256_storeu_ps(all.as_mut_ptr(), val) };
                dst[..lanes].copy_from_slice(&all[..lanes]);
            }
        }

        /// `V[ξ][t] = (Bᵀ d B)[ξ]` for the tiles whose α×α patches start at `starts` in `pad`
        /// (rows `pw` apart, `L` floats of slack past the last), stored at `v[ξ·t_all..]`.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub(in super::super) fn input_tiles<T: Tile>(
            pad: &[f32],
            starts: &[usize],
            pw: usize,
            v: &mut [f32],
            t_all: usize,
        ) {
            let (al, lanes) = (T::ALPHA, starts.len());
            // Row r of `d B`, for each of the α patch rows.
            let mut db = [[_mm256_setzero_ps(); 6]; 6];
            for (r, dbr) in db[..al].iter_mut().enumerate() {
                let mut rows = [_mm256_setzero_ps(); L];
                for (row, &st) in rows.iter_mut().zip(starts) {
                    let src = &pad[st + r * pw..][..L];
                    // SAFETY: `src` holds L = 8 floats.
                    *row = unsafe { _mm256_loadu_ps(src.as_ptr()) };
                }
                let c = transpose8(rows);
                *dbr = bt::<T>([c[0], c[1], c[2], c[3], c[4], c[5]]);
            }
            for j in 0..al {
                let col = bt::<T>([db[0][j], db[1][j], db[2][j], db[3][j], db[4][j], db[5][j]]);
                for (i, &val) in col[..al].iter().enumerate() {
                    store(&mut v[(i * al + j) * t_all..], val, lanes);
                }
            }
        }

        /// `out[r·m + q] = (Aᵀ M A)[r][q]` for the eight tiles whose products start at `mm`
        /// (position ξ's at `ξ·t_all`; lanes past the group's last tile read values that are
        /// never stored, inside the channel's row and its slack).
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub(in super::super) fn output_tiles<T: Tile>(
            mm: &[f32],
            t_all: usize,
            out: &mut [[f32; L]; 16],
        ) {
            let (al, m) = (T::ALPHA, T::M);
            // Column j of `Aᵀ M`, for each of the α columns.
            let mut am = [[_mm256_setzero_ps(); 4]; 6];
            for (j, amj) in am[..al].iter_mut().enumerate() {
                let mut col = [_mm256_setzero_ps(); 6];
                for (k, x) in col[..al].iter_mut().enumerate() {
                    let src = &mm[(k * al + j) * t_all..][..L];
                    // SAFETY: `src` holds L = 8 floats.
                    *x = unsafe { _mm256_loadu_ps(src.as_ptr()) };
                }
                *amj = at::<T>(col);
            }
            for r in 0..m {
                let row = at::<T>([am[0][r], am[1][r], am[2][r], am[3][r], am[4][r], am[5][r]]);
                for (q, val) in row[..m].iter().enumerate() {
                    // SAFETY: each entry of `out` holds L = 8 floats.
                    unsafe { _mm256_storeu_ps(out[r * m + q].as_mut_ptr(), *val) };
                }
            }
        }

        /// `dM[ξ][t] = (A d Aᵀ)[ξ]` for eight m×m tiles of the output gradient (`d[r·m + q]`,
        /// one tile a lane), the first `lanes` stored at `dm[ξ·t_all..]`.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub(in super::super) fn grad_out_tiles<T: Tile>(
            d: &[[f32; L]; 16],
            dm: &mut [f32],
            t_all: usize,
            lanes: usize,
        ) {
            let (al, m) = (T::ALPHA, T::M);
            let z = _mm256_setzero_ps();
            // SAFETY: each entry of `d` holds L = 8 floats.
            let ld = |i: usize| unsafe { _mm256_loadu_ps(d[i].as_ptr()) };
            // Column q of `A d`, for each of the m columns.
            let mut ad = [[z; 6]; 4];
            for (q, adq) in ad[..m].iter_mut().enumerate() {
                let mut col = [z; 4];
                for (r, x) in col[..m].iter_mut().enumerate() {
                    *x = ld(r * m + q);
                }
                *adq = a::<T>(col);
            }
            for i in 0..al {
                let row = a::<T>([ad[0][i], ad[1][i], ad[2][i], ad[3][i]]);
                for (j, &val) in row[..al].iter().enumerate() {
                    store(&mut dm[(i * al + j) * t_all..], val, lanes);
                }
            }
        }
    }

    /// `out[j][i] = r[i][j]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// See `super::scatter_add_patches`; `pad` holds `L` floats of slack past the last patch
    /// (the registers' lanes past α add zeros there).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn scatter_add_patches(
        a: usize,
        d: &[[f32; L]; 36],
        pad: &mut [f32],
        starts: &[usize],
        pw: usize,
    ) {
        for r in 0..a {
            let mut rows = [_mm256_setzero_ps(); L];
            for (q, row) in rows[..a].iter_mut().enumerate() {
                // SAFETY: each entry of `d` holds L = 8 floats.
                *row = unsafe { _mm256_loadu_ps(d[r * a + q].as_ptr()) };
            }
            let cols = transpose8(rows);
            for (col, &st) in cols.iter().zip(starts) {
                let dst = &mut pad[st + r * pw..][..L];
                // SAFETY: `dst` holds L = 8 floats.
                unsafe {
                    let sum = _mm256_add_ps(_mm256_loadu_ps(dst.as_ptr()), *col);
                    _mm256_storeu_ps(dst.as_mut_ptr(), sum);
                }
            }
        }
    }

    /// `d[r·m + q][l] = dy[at[l] + r·w + q]`: eight whole m×m tiles (m = 2 or 4), their rows
    /// loaded as 2 or 4 floats and transposed into lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn gather_tiles(
        m: usize,
        dy: &[f32],
        at: &[usize; L],
        w: usize,
        d: &mut [[f32; L]; 16],
    ) {
        for r in 0..m {
            let mut rows = [_mm256_setzero_ps(); L];
            for (row, &off) in rows.iter_mut().zip(at) {
                let src = &dy[off + r * w..][..m];
                // SAFETY: `src` holds m floats: 4 for the 128-bit load, else 2 (one f64 lane).
                let lo = unsafe {
                    if m == 4 {
                        _mm_loadu_ps(src.as_ptr())
                    } else {
                        _mm_castpd_ps(_mm_load_sd(src.as_ptr() as *const f64))
                    }
                };
                *row = _mm256_castps128_ps256(lo);
            }
            let cols = transpose8(rows);
            for (q, col) in cols[..m].iter().enumerate() {
                // SAFETY: each entry of `d` holds L = 8 floats.
                unsafe { _mm256_storeu_ps(d[r * m + q].as_mut_ptr(), *col) };
            }
        }
    }

    /// See `super::scatter_tiles`, for m = 2 or 4.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn scatter_tiles(
        m: usize,
        out: &[[f32; L]; 16],
        y: &mut [f32],
        offs: &[Option<usize>],
        w: usize,
    ) {
        for r in 0..m {
            let mut rows = [_mm256_setzero_ps(); L];
            for (q, row) in rows[..m].iter_mut().enumerate() {
                // SAFETY: each entry of `out` holds L = 8 floats.
                *row = unsafe { _mm256_loadu_ps(out[r * m + q].as_ptr()) };
            }
            let cols = transpose8(rows);
            for (col, off) in cols.iter().zip(offs) {
                let Some(off) = off else { continue };
                let lo = _mm256_castps256_ps128(*col);
                if m == 4 {
                    let dst = &mut y[off + r * w..][..4];
                    // SAFETY: `dst` holds 4 floats.
                    unsafe { _mm_storeu_ps(dst.as_mut_ptr(), lo) };
                } else {
                    let dst = &mut y[off + r * w..][..2];
                    let mut four = [0f32; 4];
                    // SAFETY: `four` holds 4 floats.
                    unsafe { _mm_storeu_ps(four.as_mut_ptr(), lo) };
                    dst.copy_from_slice(&four[..2]);
                }
            }
        }
    }
}

/// `y[o][tile] = Aᵀ M[o][·][t] A`, clipped at the image's edge.
// The lane index addresses the tile-major scratch arrays at computed positions.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_transform<T: Tile>(
    mm: &[f32],
    y: &mut [f32],
    (imgs, o, h, w): (usize, usize, usize, usize),
) {
    let m = T::M;
    let tiles = Tiles::new(m, imgs, h, w);
    let t_all = tiles.all;
    let row = channel_row::<T>(t_all);
    let offs = tiles.whole_starts(o, h, w);
    let fast = avx2();
    let mut out = [[0f32; L]; 16];
    let mut lane_offs = [None; L];
    let next = NextPlanes::new((imgs, o, h * w), t_all.div_ceil(L));
    for oi in 0..o {
        let plane0 = oi * h * w;
        for (step, t0) in (0..t_all).step_by(L).enumerate() {
            if oi + 1 < o {
                next.fetch(y.as_ptr(), oi + 1, step);
            }
            let lanes = L.min(t_all - t0);
            output_tiles::<T>(&mm[oi * row + t0..], (t_all, lanes), &mut out, fast);
            for (dst, off) in lane_offs[..lanes].iter_mut().zip(&offs[t0..]) {
                *dst = off.map(|off| off + plane0);
            }
            scatter_tiles::<T>(&out, y, &lane_offs[..lanes], w, fast);
            for l in 0..lanes {
                if offs[t0 + l].is_some() {
                    continue;
                }
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

/// `out[r·m + q] = (Aᵀ M A)[r][q]` for a step's tiles, whose products start at `mm` (position
/// ξ's at `ξ·t_all`), `lanes` of them.
#[inline(always)]
fn output_tiles<T: Tile>(
    mm: &[f32],
    (t_all, lanes): (usize, usize),
    out: &mut [[f32; L]; 16],
    fast: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is `avx2()`, checked on this CPU.
        return unsafe { simd::tiles::output_tiles::<T>(mm, t_all, out) };
    }
    let _ = fast;
    let (m, a) = (T::M, T::ALPHA);
    let (mut mt, mut tmp) = ([[0f32; L]; 36], [[0f32; L]; 24]);
    for (xi, val) in mt[..a * a].iter_mut().enumerate() {
        load(val, &mm[xi * t_all..], lanes);
    }
    lanes_mm(T::AT, &mt, &mut tmp, (m, a, a));
    lanes_mm_t(&tmp, T::AT, out, (m, a, m));
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
dispatch!(transform_in_adjoint, input_transform_adjoint, (dv: &[f32], dx: &mut [f32], dims: (usize, usize, usize, usize)));
dispatch!(transform_out, output_transform, (mm: &[f32], y: &mut [f32], dims: (usize, usize, usize, usize)));
dispatch!(transform_grad_out, grad_out_transform, (dy: &[f32], dm: &mut [f32], dims: (usize, usize, usize, usize)));
dispatch!(transform_kernel_grad, kernel_grad_row, (du: &[f32], dims: (usize, usize), dst: &mut [f32]));
dispatch!(transform_kernel_row, kernel_row, (taps: KernelTaps, dst: &mut [f32], cols: usize));

/// Whether a convolution's forward takes the Winograd path: 3×3, padding 1, stride 1 or 2, and
/// enough channels for the per-position GEMMs to pay. Both channel counts matter: at stride 1
/// the input gradient is the same convolution with them swapped.
pub(crate) fn applies(k: usize, stride: usize, pad: usize, channels: (usize, usize)) -> bool {
    winograd()
        && k == 3
        && (stride == 1 || stride == 2)
        && pad == 1
        && channels.0 >= 16
        && channels.1 >= 16
}

/// Whether 3×3 convolutions on the CPU may take Winograd (process-wide; on by default).
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Allows (`true`, the default) or forbids the Winograd kernels of 3×3 convolutions on the
/// CPU. Winograd's transforms round differently from a direct sum: each convolution stays
/// within 1e-4 of im2col's, but through a whole ResNet-18 step the gradients move by up to 1e-3
/// relative from a float64 reference (`docs/parity.md`). Off, every convolution takes the
/// slower im2col + GEMM and a step matches float64 to about 1e-5: for exact comparisons, not
/// for training.
///
/// ```
/// sslab::kernels::set_winograd(false);
/// assert!(!sslab::kernels::winograd());
/// sslab::kernels::set_winograd(true);
/// ```
pub fn set_winograd(allow: bool) {
    ENABLED.store(allow, std::sync::atomic::Ordering::Relaxed);
}

/// The current setting of [`set_winograd`].
pub fn winograd() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the input gradient takes it: at stride 2 only up to 4×4 outputs, where im2col's
/// per-image GEMM has 16 columns. From 8×8 on, col2im was faster than the tile adjoint's
/// scatter of overlapping patches (ResNet-18's layers, GFLOP/s: 64→128 at 32 px 125-130 vs
/// 149-151, 128→256 at 16 px 151-160 vs 178-181, 256→512 at 8 px 164-167 vs 151-160).
pub(crate) fn applies_input_grad(
    k: usize,
    stride: usize,
    pad: usize,
    channels: (usize, usize),
    out: (usize, usize),
) -> bool {
    applies(k, stride, pad, channels) && (stride == 1 || out.0.max(out.1) <= 4)
}

/// Whether the weight gradient takes it: at stride 2 only from 16×16 outputs on. Below, its
/// fixed costs (a 25-plane partial gradient per thread, summed and transformed back) outweigh
/// the products it saves over im2col's grouped GEMM (measured on ResNet-18's layers: 64→128 at
/// 32 px 155-159 vs 133 GFLOP/s, but 128→256 at 16 px 147-150 vs 157-159).
pub(crate) fn applies_weight_grad(
    k: usize,
    stride: usize,
    pad: usize,
    channels: (usize, usize),
    out: (usize, usize),
) -> bool {
    applies(k, stride, pad, channels) && (stride == 1 || out.0.min(out.1) >= 16)
}

/// Forward: `y = x ⋆ w` (x n×c×h×w, w o×c×3×3) at `stride` 1 or 2.
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    (n, c, h, wd): (usize, usize, usize, usize),
    o: usize,
    stride: usize,
    bf16: bool,
) -> Vec<f32> {
    let io = (n, h, wd);
    match (stride, small(h, wd)) {
        (2, _) => conv_with::<S2>(x, w, io, (o, c), false, bf16),
        (_, true) => conv_with::<F2>(x, w, io, (o, c), false, bf16),
        _ => conv_with::<F4>(x, w, io, (o, c), false, false),
    }
}

/// [`conv_tiled`] with `w` transformed for `T` (for the stride-1 input gradient when
/// `input_grad`, see [`KernelTransform::new`]).
fn conv_with<T: Tile>(
    x: &[f32],
    w: &[f32],
    dims: (usize, usize, usize),
    (o, c): (usize, usize),
    input_grad: bool,
    bf16: bool,
) -> Vec<f32> {
    let out = (dims.0, out_side::<T>(dims.1), out_side::<T>(dims.2));
    let k = KernelTransform::new::<T>(w, (o, c), input_grad, (bf16, false), out);
    conv_tiled::<T>(x, &k, dims, bf16)
}

/// Input gradient: `dx (n×c×h×w)` of `y = x ⋆ w` from `dy (n×o×ho×wo)`, w o×c×3×3. At stride
/// 1 it is the same convolution of `dy` with the kernel transposed and rotated by 180°; at
/// stride 2 it runs the forward's products backwards ([`input_grad_strided`]).
pub(crate) fn input_grad(
    dy: &[f32],
    w: &[f32],
    (n, o, ho, wo): (usize, usize, usize, usize),
    (c, h, wd): (usize, usize, usize),
    stride: usize,
    bf16: bool,
) -> Vec<f32> {
    let io = (n, ho, wo);
    match (stride, small(ho, wo)) {
        (2, _) => input_grad_strided::<S2>(dy, w, (n, o, ho, wo), (c, h, wd), bf16),
        (_, true) => conv_with::<F2>(dy, w, io, (o, c), true, bf16),
        _ => conv_with::<F4>(dy, w, io, (o, c), true, false),
    }
}

/// The input gradient through the tile algorithm itself: `dM = A dY Aᵀ` per output tile,
/// `dV[ξ] = U[ξ]ᵀ · dM[ξ]` (one GEMM per position over the group's tiles), then the adjoint of
/// the input transform adds `B dV Bᵀ` into each tile's patch.
fn input_grad_strided<T: Tile>(
    dy: &[f32],
    w: &[f32],
    (n, o, ho, wo): (usize, usize, usize, usize),
    (c, h, wd): (usize, usize, usize),
    bf16: bool,
) -> Vec<f32> {
    let k = KernelTransform::new::<T>(w, (o, c), false, (bf16, true), (n, ho, wo));
    let fast = avx2();
    let sizes = (o * ho * wo, c * h * wd);
    // The adjoint transform stores every pixel of its images' planes.
    written(n * c * h * wd, |dx| {
        over_groups::<T>((dy, dx), sizes, (n, ho, wo), (o, c), |dyg, dxg, g| {
            transform_grad_out::<T>(dyg, g.first, (g.imgs, o, ho, wo), fast);
            position_products::<T>(&k, true, (g.first, g.second), (g.tiles, g.row), bf16);
            transform_in_adjoint::<T>(g.second, dxg, (g.imgs, c, h, wd), fast);
        })
    })
}

/// Weight gradient of `y = x ⋆ w` (x n×c×h×w, dy n×o×ho×wo) at `stride` 1 or 2, shaped
/// o×c×3×3.
pub(crate) fn weight_grad(
    x: &[f32],
    dy: &[f32],
    dims: (usize, usize, usize, usize),
    o: usize,
    stride: usize,
    bf16: bool,
) -> Vec<f32> {
    match (stride, small(dims.2, dims.3)) {
        (2, _) => weight_grad_tiles::<S2>(x, dy, dims, o, bf16),
        (_, true) => weight_grad_tiles::<F2>(x, dy, dims, o, bf16),
        _ => weight_grad_tiles::<F4>(x, dy, dims, o, false),
    }
}

/// F(4,3) keeps f32 products under bf16 autocast: its transforms (points ±2, ±½) magnify the
/// rounding of bf16 operands, 4-7% of the largest output on random data against f32, where
/// F(2,3), the stride-2 tiles and im2col stay within 0.5%; and F(2,3) in bf16 (4 products per
/// output at about 1.4× the rate) would cost more than F(4,3) in f32 (2.25).
///
/// Below 8×8, F(2,3): at 4×4 (ResNet-18's last stage at 32 px) F(4,3)'s transformed kernel,
/// 36 values per tap pair, costs more memory traffic than its products save (measured 200 vs
/// 180 GFLOP/s on 512 channels).
fn small(h: usize, w: usize) -> bool {
    h < 8 || w < 8
}
