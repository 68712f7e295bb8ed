//! CPU kernels with explicit backward passes for the two operations that dominate a ResNet step
//! in candle 0.11 (see `reference/candle-notes.md`): 2-D convolution and training-mode batch
//! normalisation.
//!
//! * Convolution runs as im2col + GEMM per sample (parallel over the batch); its input gradient
//!   is GEMM + col2im and its weight gradient GEMMs over groups of samples — instead of
//!   candle's direct `conv_transpose2d` loop. 3×3 layers of 16 or more channels take
//!   [`super::winograd`] (at stride 2: the forward always, the gradients where measured faster).
//! * Batch normalisation computes the normalised activations in two passes and its gradient in
//!   two more, instead of ~10 generic ops each with its own backward.
//!
//! Other devices use candle's own ops; tests check both paths agree (values and gradients).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

type CResult<T> = candle_core::Result<T>;

pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

/// Whether sslab's CPU kernels apply to `x`: they take f32 tensors on the CPU; anything else
/// goes through candle's own ops.
pub(crate) fn on_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// `Σ` over the groups of `group` images out of `n` of what `f(state, acc, images, first)`
/// adds into `acc` (`len` floats; `first`: `acc` still holds the zeros it started with).
/// The groups are split into one contiguous range per thread, each summed in order into its
/// own partial, and the partials summed in order: the result is the same in every run with the
/// same thread count (rayon's `fold` splits where work-stealing happens to, which moved
/// training results by float rounding between runs on a busy machine). `state` is one
/// `init()` per range, for buffers reused across its groups.
pub(crate) fn sum_over_groups<S>(
    (n, group): (usize, usize),
    len: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &mut [f32], std::ops::Range<usize>, bool) + Sync,
) -> Vec<f32> {
    let groups = n.div_ceil(group.max(1));
    let parts = rayon::current_num_threads().clamp(1, groups.max(1));
    let per = groups.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let (mut acc, mut state) = (vec![0f32; len], init());
            for (i, gi) in ((p * per).min(groups)..((p + 1) * per).min(groups)).enumerate() {
                let images = gi * group..((gi + 1) * group).min(n);
                f(&mut state, &mut acc, images, i == 0);
            }
            acc
        })
        .collect();
    sum_partials(partials, len)
}

/// The element-wise sum of per-thread partial results of length `len`.
pub(crate) fn sum_partials(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    for p in parts {
        out.iter_mut().zip(p).for_each(|(a, v)| *a += v);
    }
    out
}

/// Geometry of a convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl ConvGeom {
    pub(crate) fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> CResult<Self> {
        if x.len() != 4 || wt.len() != 4 || x[1] != wt[1] || wt[2] != wt[3] {
            candle_core::bail!("conv2d: input {x:?} and kernel {wt:?} do not match");
        }
        let (n, c, h, w, o, k) = (x[0], x[1], x[2], x[3], wt[0], wt[2]);
        if h + 2 * pad < k || w + 2 * pad < k || stride == 0 {
            candle_core::bail!("conv2d: kernel {k} larger than padded input {h}x{w}");
        }
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        Ok(ConvGeom {
            n,
            c,
            h,
            w,
            o,
            k,
            stride,
            pad,
            ho,
            wo,
        })
    }
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    /// Whether the forward pass takes [`super::winograd`].
    fn winograd(&self) -> bool {
        super::winograd::applies(self.k, self.stride, self.pad, (self.c, self.o))
    }
    /// Whether the input-gradient pass takes it.
    fn winograd_input_grad(&self) -> bool {
        let (k, s, p, ch) = (self.k, self.stride, self.pad, (self.c, self.o));
        super::winograd::applies_input_grad(k, s, p, ch, (self.ho, self.wo))
    }
    /// Whether the weight-gradient pass takes it.
    fn winograd_weight_grad(&self) -> bool {
        let (k, s, p, ch) = (self.k, self.stride, self.pad, (self.c, self.o));
        super::winograd::applies_weight_grad(k, s, p, ch, (self.ho, self.wo))
    }
    /// A 1×1 stride-1 unpadded conv needs no im2col: the input already is the column matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

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

fn col2im(g: &ConvGeom, cols: &[f32], dx: &mut [f32]) {
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

/// Output pixels per GEMM the im2col weight gradient aims for. One image of ResNet-18's later
/// stride-2 layers has 16 or 64 output pixels, and a per-image `dW += dYₙ · colsₙᵀ` over 16
/// pixels reads and writes all of dW for 16 multiply-adds per entry; below this many pixels
/// several images share one product (256×512 1×1 dW: 97-134 → 160-165 GFLOP/s). The forward
/// and input gradient stay per image: grouped, their column matrix outgrows the L2 cache and
/// measured no faster.
const IM2COL_COLS: usize = 256;

/// Images per group when `n` images of `per_image` columns each are cut into groups of about
/// `target` columns for one GEMM each, with at least one group per thread (and a multiple of
/// the thread count, so the threads get equal shares).
pub(crate) fn images_per_group(n: usize, per_image: usize, target: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let groups = n
        .min(
            (n * per_image)
                .div_ceil(target)
                .max(threads)
                .next_multiple_of(threads),
        )
        .max(1);
    n.div_ceil(groups)
}

/// The column matrix of a group of images (ckk × images·hw, image by image): the input itself
/// for one image of a pointwise convolution, else im2col into `buf`.
fn group_cols<'a>(g: &ConvGeom, xg: &'a [f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
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
fn to_group_matrix<'a>(
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

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, each given by (row stride, col stride).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    matmul_ld(
        (m, n, k),
        (dst, n),
        accumulate,
        (lhs, lhs_strides),
        (rhs, rhs_strides),
    )
}

/// [`matmul`] into a `dst` whose rows lie `ld` apart (the interleaved per-position matrices
/// of `winograd.rs`).
pub(crate) fn matmul_ld(
    (m, n, k): (usize, usize, usize),
    (dst, ld): (&mut [f32], usize),
    accumulate: bool,
    (lhs, (lrs, lcs)): (&[f32], (usize, usize)),
    (rhs, (rrs, rcs)): (&[f32], (usize, usize)),
) {
    assert!(
        m == 0 || n == 0 || dst.len() >= (m - 1) * ld + n,
        "matmul: destination too short"
    );
    assert!(
        m == 0 || k == 0 || lhs.len() > (m - 1) * lrs + (k - 1) * lcs,
        "matmul: left operand too short"
    );
    assert!(
        k == 0 || n == 0 || rhs.len() > (k - 1) * rrs + (n - 1) * rcs,
        "matmul: right operand too short"
    );
    // SAFETY: the asserts above check that every strided extent lies inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Forward convolution (no bias).
pub(crate) struct Conv2dOp {
    pub stride: usize,
    pub pad: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "sslab-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let x = slice(s1, l1, "conv2d input")?;
        let w = slice(s2, l2, "conv2d kernel")?;
        let shape = Shape::from((g.n, g.o, g.ho, g.wo));
        if g.winograd() {
            let y = super::winograd::forward(x, w, (g.n, g.c, g.h, g.w), g.o, g.stride);
            return Ok((CpuStorage::F32(y), shape));
        }
        let (ckk, hw, chw) = (g.ckk(), g.hw_out(), g.c * g.h * g.w);
        let mut y = vec![0f32; g.n * g.o * hw];
        y.par_chunks_mut(g.o * hw)
            .zip(x.par_chunks(chw))
            .for_each_init(Vec::new, |cols, (yn, xn)| {
                let cols = group_cols(&g, xn, cols);
                matmul(g.o, hw, ckk, yn, false, w, (ckk, 1), cols, (hw, 1));
            });
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = conv2d_dx(&dy, w, x.dims(), self.stride, self.pad)?;
        let dw = conv2d_dw(x, &dy, w.dims(), self.stride, self.pad)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// The input gradient of a convolution of an input shaped `x_dims` (contiguous `dy`).
pub(crate) fn conv2d_dx(
    dy: &Tensor,
    w: &Tensor,
    x_dims: &[usize],
    stride: usize,
    pad: usize,
) -> CResult<Tensor> {
    let g = ConvGeom::new(x_dims, w.dims(), stride, pad)?;
    dy.apply_op2(w, Conv2dInputGrad(g))
}

/// The weight gradient of a convolution with a kernel shaped `w_dims` (contiguous `dy`).
pub(crate) fn conv2d_dw(
    x: &Tensor,
    dy: &Tensor,
    w_dims: &[usize],
    stride: usize,
    pad: usize,
) -> CResult<Tensor> {
    let g = ConvGeom::new(x.dims(), w_dims, stride, pad)?;
    x.apply_op2(dy, Conv2dWeightGrad(g))
}

/// `dX = col2im(Wᵀ · dY)`; arguments (dY, W).
struct Conv2dInputGrad(ConvGeom);

impl CustomOp2 for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "sslab-conv2d-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = self.0;
        let dy = slice(s1, l1, "conv2d output gradient")?;
        let w = slice(s2, l2, "conv2d kernel")?;
        let shape = Shape::from((g.n, g.c, g.h, g.w));
        if g.winograd_input_grad() {
            let (dims, x_dims) = ((g.n, g.o, g.ho, g.wo), (g.c, g.h, g.w));
            let dx = super::winograd::input_grad(dy, w, dims, x_dims, g.stride);
            return Ok((CpuStorage::F32(dx), shape));
        }
        let (ckk, hw) = (g.ckk(), g.hw_out());
        let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
        dx.par_chunks_mut(g.c * g.h * g.w)
            .zip(dy.par_chunks(g.o * hw))
            .for_each_init(
                || vec![0f32; if g.pointwise() { 0 } else { ckk * hw }],
                |cols, (dxn, dyn_)| {
                    if g.pointwise() {
                        matmul(ckk, hw, g.o, dxn, false, w, (1, ckk), dyn_, (hw, 1));
                    } else {
                        matmul(ckk, hw, g.o, cols, false, w, (1, ckk), dyn_, (hw, 1));
                        col2im(&g, cols, dxn);
                    }
                },
            );
        Ok((CpuStorage::F32(dx), shape))
    }
}

/// `dW = Σₙ dYₙ · im2col(Xₙ)ᵀ`; arguments (X, dY).
struct Conv2dWeightGrad(ConvGeom);

impl CustomOp2 for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "sslab-conv2d-dw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = self.0;
        let x = slice(s1, l1, "conv2d input")?;
        let dy = slice(s2, l2, "conv2d output gradient")?;
        let shape = Shape::from((g.o, g.c, g.k, g.k));
        if g.winograd_weight_grad() {
            let dw = super::winograd::weight_grad(x, dy, (g.n, g.c, g.h, g.w), g.o, g.stride);
            return Ok((CpuStorage::F32(dw), shape));
        }
        let (ckk, hw, o, chw) = (g.ckk(), g.hw_out(), g.o, g.c * g.h * g.w);
        let group = images_per_group(g.n, hw, IM2COL_COLS);
        let init = || (Vec::new(), Vec::new());
        let dw = sum_over_groups(
            (g.n, group),
            o * ckk,
            init,
            |(cols, dyg), dw, imgs, first| {
                let ld = imgs.len() * hw;
                let c = group_cols(&g, &x[imgs.start * chw..imgs.end * chw], cols);
                let d = to_group_matrix(&dy[imgs.start * o * hw..imgs.end * o * hw], (o, hw), dyg);
                if ckk <= NARROW {
                    matmul_nt_narrow(d, c, (o, ckk, ld, ld), dw, !first);
                } else {
                    matmul(o, ckk, ld, dw, !first, d, (ld, 1), c, (1, ld));
                }
            },
        );
        Ok((CpuStorage::F32(dw), shape))
    }
}

/// Batch statistics of the last forward pass of a [`BatchNormOp`].
#[derive(Clone, Debug, Default)]
pub(crate) struct BnStats {
    pub mean: Vec<f32>,
    /// Biased variance.
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// Per-channel batch mean, biased variance and `1/√(var + eps)` of `(n, c, inner)` data,
/// accumulated in f64.
fn channel_stats(x: &[f32], (n, c, inner): (usize, usize, usize), eps: f64) -> BnStats {
    let m = (n * inner) as f64;
    let per_channel: Vec<(f32, f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let rows = || (0..n).map(|b| &x[(b * c + ch) * inner..][..inner]);
            let mean = rows().flatten().map(|&v| v as f64).sum::<f64>() / m;
            let var = rows()
                .flatten()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / m;
            (mean as f32, var as f32, (1.0 / (var + eps).sqrt()) as f32)
        })
        .collect();
    BnStats {
        mean: per_channel.iter().map(|p| p.0).collect(),
        var: per_channel.iter().map(|p| p.1).collect(),
        inv_std: per_channel.iter().map(|p| p.2).collect(),
    }
}

/// `y = (x − mean)·inv_std·scale + shift` per channel (`scale`/`shift` `None`: 1 and 0).
fn bn_apply(
    x: &[f32],
    (c, inner): (usize, usize),
    st: &BnStats,
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(inner)
        .zip(x.par_chunks(inner))
        .enumerate()
        .for_each(|(i, (yr, xr))| {
            let ch = i % c;
            let (mean, a) = (st.mean[ch], st.inv_std[ch] * scale.map_or(1.0, |s| s[ch]));
            let b = shift.map_or(0.0, |s| s[ch]);
            yr.iter_mut()
                .zip(xr)
                .for_each(|(o, &v)| *o = (v - mean) * a + b);
        });
    y
}

fn store_stats(slot: &Mutex<BnStats>, st: BnStats) {
    if let Ok(mut s) = slot.lock() {
        *s = st;
    }
}

fn saved_stats(slot: &Mutex<BnStats>) -> CResult<BnStats> {
    slot.lock()
        .map(|s| s.clone())
        .map_err(|_| candle_core::Error::Msg("batchnorm statistics lock poisoned".into()))
}

/// Training-mode normalisation `x̂ = (x − μ_c)/√(σ²_c + eps)` over all axes but 1.
pub(crate) struct BatchNormOp {
    pub eps: f64,
    pub stats: Arc<Mutex<BnStats>>,
}

fn bn_dims(dims: &[usize]) -> (usize, usize, usize) {
    let n = dims[0];
    let c = dims[1];
    let inner: usize = dims[2..].iter().product();
    (n, c, inner)
}

impl CustomOp1 for BatchNormOp {
    fn name(&self) -> &'static str {
        "sslab-batchnorm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, "batchnorm input")?;
        let (n, c, inner) = bn_dims(l.dims());
        let st = channel_stats(x, (n, c, inner), self.eps);
        let y = bn_apply(x, (c, inner), &st, None, None);
        store_stats(&self.stats, st);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, xhat: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let st = saved_stats(&self.stats)?;
        let grad = BatchNormGrad {
            mean: None,
            inv_std: st.inv_std,
            gamma: None,
            sums: Arc::default(),
        };
        Ok(Some(xhat.apply_op2(&g.contiguous()?, grad)?))
    }
}

/// Training-mode BatchNorm with its affine part, `y = x̂·γ + β`, in one pass; arguments
/// (x, γ, β). Its backward gives dx, dγ and dβ from one pass over (x, dy), where candle's
/// broadcast multiply and add would each reduce the full gradient over three axes.
pub(crate) struct BatchNormAffineOp {
    pub eps: f64,
    pub stats: Arc<Mutex<BnStats>>,
    /// Apply a ReLU to the output, in the same pass.
    pub relu: bool,
}

impl CustomOp3 for BatchNormAffineOp {
    fn name(&self) -> &'static str {
        "sslab-batchnorm-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "batchnorm input")?;
        let gamma = slice(s2, l2, "batchnorm weight")?;
        let beta = slice(s3, l3, "batchnorm bias")?;
        let (n, c, inner) = bn_dims(l1.dims());
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "batchnorm: {c} channels, weight {} bias {}",
                gamma.len(),
                beta.len()
            );
        }
        let st = channel_stats(x, (n, c, inner), self.eps);
        let mut y = bn_apply(x, (c, inner), &st, Some(gamma), Some(beta));
        if self.relu {
            y.par_chunks_mut(RELU_CHUNK)
                .for_each(|ch| ch.iter_mut().for_each(|v| *v = v.max(0.0)));
        }
        store_stats(&self.stats, st);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let st = saved_stats(&self.stats)?;
        // The ReLU's mask comes from the output: y > 0 exactly where the pre-ReLU value was.
        let g = if self.relu {
            res.apply_op2(&g.contiguous()?, ReluGrad)?
        } else {
            g.clone()
        };
        let sums = Arc::new(Mutex::new(Vec::new()));
        let grad = BatchNormGrad {
            mean: Some(st.mean),
            inv_std: st.inv_std,
            gamma: Some(gamma.to_vec1::<f32>()?),
            sums: sums.clone(),
        };
        let dx = x.apply_op2(&g.contiguous()?, grad)?;
        let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = sums
            .lock()
            .map_err(|_| candle_core::Error::Msg("batchnorm gradient lock poisoned".into()))?
            .iter()
            .map(|&(sg, sgx)| (sgx as f32, sg as f32))
            .unzip();
        let c = dgamma.len();
        Ok((
            Some(dx),
            Some(Tensor::from_vec(dgamma, c, gamma.device())?),
            Some(Tensor::from_vec(dbeta, c, gamma.device())?),
        ))
    }
}

/// The BatchNorm input gradient `dx = γ·inv_std·(g − mean(g) − x̂·mean(g·x̂))` per channel;
/// arguments (x̂, g), or (x, g) with `mean` given (x̂ is then recomputed, not stored). The
/// per-channel sums Σg and Σg·x̂ (dβ and dγ) are left in `sums`.
struct BatchNormGrad {
    mean: Option<Vec<f32>>,
    inv_std: Vec<f32>,
    gamma: Option<Vec<f32>>,
    sums: Arc<Mutex<Vec<(f64, f64)>>>,
}

impl CustomOp2 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "sslab-batchnorm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let xin = slice(s1, l1, "batchnorm input")?;
        let g = slice(s2, l2, "batchnorm gradient")?;
        let (n, c, inner) = bn_dims(l1.dims());
        let m = (n * inner) as f64;
        // x̂ of channel `ch` from the input value.
        let xhat = |ch: usize, v: f32| match &self.mean {
            Some(mean) => (v - mean[ch]) * self.inv_std[ch],
            None => v,
        };
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sg, mut sgx) = (0f64, 0f64);
                for b in 0..n {
                    let o = (b * c + ch) * inner;
                    for (gv, xv) in g[o..o + inner].iter().zip(&xin[o..o + inner]) {
                        sg += *gv as f64;
                        sgx += (*gv as f64) * (xhat(ch, *xv) as f64);
                    }
                }
                (sg, sgx)
            })
            .collect();
        let mut dx = vec![0f32; xin.len()];
        dx.par_chunks_mut(inner)
            .zip(g.par_chunks(inner).zip(xin.par_chunks(inner)))
            .enumerate()
            .for_each(|(i, (d, (gr, xr)))| {
                let ch = i % c;
                let (mg, mgx) = ((sums[ch].0 / m) as f32, (sums[ch].1 / m) as f32);
                let k = self.inv_std[ch] * self.gamma.as_ref().map_or(1.0, |gm| gm[ch]);
                for ((o, &gv), &xv) in d.iter_mut().zip(gr).zip(xr) {
                    *o = k * (gv - mg - xhat(ch, xv) * mgx);
                }
            });
        if let Ok(mut slot) = self.sums.lock() {
            *slot = sums;
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// ReLU in parallel chunks, with a one-pass backward `g·[y > 0]` (candle's is serial forward
/// and three ops backward: compare, convert, multiply).
pub(crate) struct ReluOp;

const RELU_CHUNK: usize = 1 << 14;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "sslab-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, "relu input")?;
        Ok((
            CpuStorage::F32(par_map(x, |v| v.max(0.0))),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(y.apply_op2(&g.contiguous()?, ReluGrad)?))
    }
}

/// `relu(a + b)` in one pass, for a residual block's output: the sum before the ReLU is then
/// never stored. Backward: `g·[y > 0]` to both arguments.
pub(crate) struct AddReluOp;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "sslab-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let a = slice(s1, l1, "residual branch")?;
        let b = slice(s2, l2, "residual shortcut")?;
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "add-relu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(RELU_CHUNK)
            .zip(a.par_chunks(RELU_CHUNK).zip(b.par_chunks(RELU_CHUNK)))
            .for_each(|(y, (a, b))| {
                for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                    *y = (a + b).max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let d = y.apply_op2(&g.contiguous()?, ReluGrad)?;
        Ok((Some(d.clone()), Some(d)))
    }
}

/// `g·[y > 0]`; arguments (y, g).
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "sslab-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "relu output")?;
        let g = slice(s2, l2, "relu gradient")?;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(RELU_CHUNK)
            .zip(y.par_chunks(RELU_CHUNK).zip(g.par_chunks(RELU_CHUNK)))
            .for_each(|(d, (y, g))| {
                for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                    *d = if y > 0.0 { g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `y = x + b` with `b` broadcast over the rows of a `(rows, d)` input; the backward gives
/// `dx = g` and `db` = column sums of `g` from row blocks in parallel. candle's broadcast add
/// backward reduces over the leading axis, a strided serial pass.
pub(crate) struct AddBiasOp;

const ROW_BLOCK: usize = 64;

impl CustomOp2 for AddBiasOp {
    fn name(&self) -> &'static str {
        "sslab-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "bias-add input")?;
        let b = slice(s2, l2, "bias")?;
        let d = b.len();
        if d == 0 || l1.dims().last() != Some(&d) {
            candle_core::bail!("bias of {d} added to input {:?}", l1.dims());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * ROW_BLOCK)
            .zip(x.par_chunks(d * ROW_BLOCK))
            .for_each(|(yo, xi)| {
                for (yr, xr) in yo.chunks_mut(d).zip(xi.chunks(d)) {
                    for ((o, &v), &bv) in yr.iter_mut().zip(xr).zip(b) {
                        *o = v + bv;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let db = g.contiguous()?.apply_op1(ColumnSums(b.elem_count()))?;
        Ok((Some(g.clone()), Some(db.reshape(b.shape())?)))
    }
}

/// `y = x ⊙ w + b` with `w` and `b` broadcast over the rows of a `(rows, d)` input: the affine
/// part of LayerNorm. The backward is one parallel pass for `dx = g ⊙ w` and one for the column
/// sums `dw = Σ g ⊙ x`, `db = Σ g`; candle's broadcast mul and add take five passes, two of
/// them serial strided reductions over the rows.
pub(crate) struct ScaleShiftOp;

/// The row width `d` of a `(rows, d)` input with a length-`d` scale and shift.
fn row_width(x: &Layout, w: usize, b: usize) -> CResult<usize> {
    if w == 0 || w != b || x.dims().last() != Some(&w) {
        candle_core::bail!("scale {w} and shift {b} applied to rows of {:?}", x.dims());
    }
    Ok(w)
}

impl CustomOp3 for ScaleShiftOp {
    fn name(&self) -> &'static str {
        "sslab-scale-shift"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "scale-shift input")?;
        let w = slice(s2, l2, "scale")?;
        let b = slice(s3, l3, "shift")?;
        let d = row_width(l1, w.len(), b.len())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * ROW_BLOCK)
            .zip(x.par_chunks(d * ROW_BLOCK))
            .for_each(|(yo, xi)| {
                for (yr, xr) in yo.chunks_mut(d).zip(xi.chunks(d)) {
                    for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                        *o = v * wv + bv;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = g.apply_op2(w, ScaleRows)?;
        let sums = g.apply_op2(x, ScaleShiftSums)?;
        let dw = sums.get(0)?.reshape(w.shape())?;
        let db = sums.get(1)?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `g ⊙ w` with `w` broadcast over the rows of `g`.
struct ScaleRows;

impl CustomOp2 for ScaleRows {
    fn name(&self) -> &'static str {
        "sslab-scale-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = slice(s1, l1, "scale-shift gradient")?;
        let w = slice(s2, l2, "scale")?;
        let d = row_width(l1, w.len(), w.len())?;
        let mut dx = vec![0f32; g.len()];
        dx.par_chunks_mut(d * ROW_BLOCK)
            .zip(g.par_chunks(d * ROW_BLOCK))
            .for_each(|(o, gi)| {
                for (orow, grow) in o.chunks_mut(d).zip(gi.chunks(d)) {
                    for ((o, &gv), &wv) in orow.iter_mut().zip(grow).zip(w) {
                        *o = gv * wv;
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `[Σ g ⊙ x; Σ g]` over the rows of `(rows, d)` inputs `g` and `x`, as a `(2, d)` tensor.
struct ScaleShiftSums;

impl CustomOp2 for ScaleShiftSums {
    fn name(&self) -> &'static str {
        "sslab-scale-shift-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = slice(s1, l1, "scale-shift gradient")?;
        let x = slice(s2, l2, "scale-shift input")?;
        let d = *l1.dims().last().unwrap_or(&0);
        if d == 0 || g.len() != x.len() {
            candle_core::bail!("scale-shift sums: {:?} vs {:?}", l1.dims(), l2.dims());
        }
        let partial: Vec<Vec<f32>> = g
            .par_chunks(d * ROW_BLOCK)
            .zip(x.par_chunks(d * ROW_BLOCK))
            .map(|(gb, xb)| {
                let mut acc = vec![0f32; 2 * d];
                let (dw, db) = acc.split_at_mut(d);
                for (grow, xrow) in gb.chunks(d).zip(xb.chunks(d)) {
                    for (((w, b), &gv), &xv) in dw.iter_mut().zip(db.iter_mut()).zip(grow).zip(xrow)
                    {
                        *w += gv * xv;
                        *b += gv;
                    }
                }
                acc
            })
            .collect();
        Ok((
            CpuStorage::F32(sum_partials(partial, 2 * d)),
            Shape::from((2, d)),
        ))
    }
}

/// Sums a `(rows, d)` input over its rows.
struct ColumnSums(usize);

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "sslab-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let g = slice(s, l, "bias gradient")?;
        let d = self.0;
        let partial: Vec<Vec<f32>> = g
            .par_chunks(d * ROW_BLOCK)
            .map(|block| {
                let mut acc = vec![0f32; d];
                for row in block.chunks(d) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                }
                acc
            })
            .collect();
        Ok((CpuStorage::F32(sum_partials(partial, d)), Shape::from(d)))
    }
}

/// Exact (erf) GELU in parallel chunks, with erf and exp as branch-free polynomials (AVX2 where
/// the CPU has it) instead of libm's scalar `erff`, which took 6% of a ViT step. Values agree
/// with candle's `gelu_erf` to a few float ulps; the backward `g·(Φ(x) + x·φ(x))` is one pass.
pub(crate) struct GeluOp;

/// erf(x) as the odd rational minimax fit that XLA and Eigen use for f32 (error a few ulps),
/// clamped at ±4 where erf is 1 in f32; no branches, so the element loops vectorise.
#[inline(always)]
fn erf_poly(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    for c in [
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    for c in [-1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

/// eˣ for x ≤ 0 (Cephes' expf: 2ⁿ·e^r with |r| ≤ ln2/2 and a degree-6 polynomial, error
/// about 1 ulp); below -87 it flushes to the smallest normal power of two, effectively 0.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p * r + c;
    }
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    (p * r * r + r + 1.0) * scale
}

/// Φ(x), the standard normal CDF.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf_poly(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_chunk(x: &[f32], y: &mut [f32]) {
    for (y, &v) in y.iter_mut().zip(x) {
        *y = normal_cdf(v) * v;
    }
}

/// `dx = g · (Φ(x) + x·φ(x))`.
#[inline(always)]
fn gelu_grad_chunk(x: &[f32], g: &[f32], dx: &mut [f32]) {
    // 1/√(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((d, &v), &g) in dx.iter_mut().zip(x).zip(g) {
        let phi = exp_nonpositive(-0.5 * v * v) * INV_SQRT_2PI;
        *d = g * (normal_cdf(v) + v * phi);
    }
}

/// `$name` runs `$body` with AVX2 + FMA code generation where the CPU has them (the element
/// loops are written to vectorise), else as compiled.
macro_rules! wide {
    ($name:ident = $body:ident($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: AVX2 and FMA were detected on this CPU.
                return unsafe { wide($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

wide!(gelu_wide = gelu_chunk(x: &[f32], y: &mut [f32]));
wide!(gelu_grad_wide = gelu_grad_chunk(x: &[f32], g: &[f32], dx: &mut [f32]));
wide!(softmax_row_wide = softmax_row(x: &[f32], y: &mut [f32], scale: f32));

/// Output columns up to which a weight gradient takes [`matmul_nt_narrow`].
const NARROW: usize = 32;

/// `dst (m×n) [+]= a (m×k) · bᵀ` for `b` (n×k), rows of both `ld` apart: the weight gradient
/// of a layer with few taps per output channel (the 3-channel stem has 27). Dot products over
/// k in 4×3 blocks of 8-lane accumulators, without packing: gemm's packed micro-kernel ran
/// the stem's 64×27 (k = 1024) at 44 GFLOP/s on one core, half of what it reaches on wide
/// matrices, because packing costs as much as the few products per packed value.
fn matmul_nt_narrow(
    a: &[f32],
    b: &[f32],
    (m, n, k, ld): (usize, usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
) {
    const R: usize = 4;
    const S: usize = 3;
    for i0 in (0..m).step_by(R) {
        for j0 in (0..n).step_by(S) {
            // Rows and columns past the edge repeat the last one; their sums are not stored.
            let rows: [usize; R] = std::array::from_fn(|r| (i0 + r).min(m - 1));
            let cols: [usize; S] = std::array::from_fn(|s| (j0 + s).min(n - 1));
            let mut sums = [[0f32; S]; R];
            let kk = narrow_dots(a, b, (ld, k), (rows, cols), &mut sums);
            for (r, &row) in rows.iter().enumerate().take(m - i0) {
                for (s, &col) in cols.iter().enumerate().take(n - j0) {
                    let tail: f32 = (kk..k).map(|t| a[row * ld + t] * b[col * ld + t]).sum();
                    let sum = sums[r][s] + tail;
                    let d = &mut dst[row * n + col];
                    *d = if accumulate { *d + sum } else { sum };
                }
            }
        }
    }
}

/// The vector part of [`matmul_nt_narrow`]'s dot products; returns where the scalar tail
/// starts (0 without AVX2).
fn narrow_dots(
    a: &[f32],
    b: &[f32],
    (ld, k): (usize, usize),
    (rows, cols): ([usize; 4], [usize; 3]),
    sums: &mut [[f32; 3]; 4],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA were detected on this CPU.
        return unsafe { narrow_simd::dots(a, b, ld, k, rows, cols, sums) };
    }
    let _ = (a, b, ld, k, rows, cols, sums);
    0
}

#[cfg(target_arch = "x86_64")]
mod narrow_simd {
    use std::arch::x86_64::*;

    /// The 4×3 dot products of [`super::matmul_nt_narrow`] over `k` rounded down to 8; returns
    /// where the scalar tail starts.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dots(
        a: &[f32],
        b: &[f32],
        ld: usize,
        k: usize,
        rows: [usize; 4],
        cols: [usize; 3],
        sums: &mut [[f32; 3]; 4],
    ) -> usize {
        let mut acc = [[_mm256_setzero_ps(); 3]; 4];
        let end = k / 8 * 8;
        let ar = rows.map(|r| &a[r * ld..r * ld + end]);
        let bc = cols.map(|c| &b[c * ld..c * ld + end]);
        for kk in (0..end).step_by(8) {
            // SAFETY: every row slice holds `end` floats, and kk + 8 <= end.
            let av = ar.map(|row| unsafe { _mm256_loadu_ps(row[kk..kk + 8].as_ptr()) });
            let bv = bc.map(|col| unsafe { _mm256_loadu_ps(col[kk..kk + 8].as_ptr()) });
            for (acc_r, x) in acc.iter_mut().zip(av) {
                for (acc_rs, y) in acc_r.iter_mut().zip(bv) {
                    *acc_rs = _mm256_fmadd_ps(x, y, *acc_rs);
                }
            }
        }
        for (sum_r, acc_r) in sums.iter_mut().zip(acc) {
            for (sum, v) in sum_r.iter_mut().zip(acc_r) {
                let mut lanes = [0f32; 8];
                // SAFETY: `lanes` holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
                *sum = lanes.iter().sum();
            }
        }
        end
    }
}

/// Whether this CPU has AVX2 and FMA (the hand-vectorised kernels here and in `winograd.rs`).
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "sslab-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, "gelu input")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(RELU_CHUNK)
            .zip(x.par_chunks(RELU_CHUNK))
            .for_each(|(y, x)| gelu_wide(x, y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(x.apply_op2(&g.contiguous()?, GeluGrad)?))
    }
}

/// `f` applied to every element, in parallel chunks.
fn par_map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(RELU_CHUNK)
        .zip(x.par_chunks(RELU_CHUNK))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = f(v)));
    y
}

/// The GELU input gradient from the input and the output gradient.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "sslab-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "gelu input")?;
        let g = slice(s2, l2, "gelu gradient")?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(RELU_CHUNK)
            .zip(x.par_chunks(RELU_CHUNK).zip(g.par_chunks(RELU_CHUNK)))
            .for_each(|(d, (x, g))| gelu_grad_wide(x, g, d));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax over the last axis, rows in parallel, with an explicit backward. candle's fused
/// softmax has no backward and its op-built one is several serial passes.
pub(crate) struct SoftmaxOp {
    /// `y = softmax(scale · x)`: attention's 1/√d folded in, one pass fewer each way.
    pub scale: f32,
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "sslab-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, "softmax input")?;
        let d = *l.dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d.max(1))
            .zip(x.par_chunks(d.max(1)))
            .for_each(|(yr, xr)| softmax_row_wide(xr, yr, self.scale));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(y.apply_op2(
            &g.contiguous()?,
            SoftmaxGrad { scale: self.scale },
        )?))
    }
}

/// One row of `softmax(scale · x)`; every exponent is ≤ 0 after subtracting the row maximum.
#[inline(always)]
fn softmax_row(x: &[f32], y: &mut [f32], scale: f32) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v * scale));
    let mut sum = 0f32;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = exp_nonpositive(v * scale - m);
        sum += *o;
    }
    let inv = 1.0 / sum;
    y.iter_mut().for_each(|o| *o *= inv);
}

/// `dx = scale · y ⊙ (g − Σ g⊙y)` per row; arguments (y, g).
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "sslab-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "softmax output")?;
        let g = slice(s2, l2, "softmax gradient")?;
        let d = *l1.dims().last().unwrap_or(&1);
        let scale = self.scale;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(d.max(1))
            .zip(y.par_chunks(d.max(1)).zip(g.par_chunks(d.max(1))))
            .for_each(|(o, (yr, gr))| {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((v, &yv), &gv) in o.iter_mut().zip(yr).zip(gr) {
                    *v = scale * yv * (gv - dot);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Batched matrix product `C[b] = op(A[b]) · op(B[b])` (`op` = transpose where flagged) with
/// the batch spread over threads. candle's CPU matmul loops over the batch on one thread, so a
/// ViT's per-head attention products (hundreds of 65×64 matrices) used one core; here each
/// matrix is one single-threaded GEMM and the transposes are strides, not copies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchedMatmulOp {
    pub ta: bool,
    pub tb: bool,
}

impl BatchedMatmulOp {
    /// `(batch, m, k, n)` of the product, checking the operands agree.
    fn dims(&self, a: &[usize], b: &[usize]) -> CResult<(usize, usize, usize, usize)> {
        let (&[ba, a1, a2], &[bb, b1, b2]) = (a, b) else {
            candle_core::bail!("batched matmul takes two 3-D tensors, got {a:?} and {b:?}")
        };
        let (m, k) = if self.ta { (a2, a1) } else { (a1, a2) };
        let (k2, n) = if self.tb { (b2, b1) } else { (b1, b2) };
        if ba != bb || k != k2 {
            candle_core::bail!(
                "batched matmul: {a:?}{} · {b:?}{} do not fit",
                if self.ta { "ᵀ" } else { "" },
                if self.tb { "ᵀ" } else { "" }
            );
        }
        Ok((ba, m, k, n))
    }
}

impl CustomOp2 for BatchedMatmulOp {
    fn name(&self) -> &'static str {
        "sslab-batched-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (batch, m, k, n) = self.dims(l1.dims(), l2.dims())?;
        let a = slice(s1, l1, "batched matmul lhs")?;
        let b = slice(s2, l2, "batched matmul rhs")?;
        let a_strides = if self.ta { (1, m) } else { (k, 1) };
        let b_strides = if self.tb { (1, k) } else { (n, 1) };
        let mut c = vec![0f32; batch * m * n];
        if m * n > 0 {
            c.par_chunks_mut(m * n).enumerate().for_each(|(i, ci)| {
                let ai = &a[i * m * k..(i + 1) * m * k];
                let bi = &b[i * k * n..(i + 1) * k * n];
                matmul(m, n, k, ci, false, ai, a_strides, bi, b_strides);
            });
        }
        Ok((CpuStorage::F32(c), Shape::from((batch, m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dc: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let dc = dc.contiguous()?;
        let op = |ta, tb| BatchedMatmulOp { ta, tb };
        // With A' = op(A), B' = op(B): dA' = dC·B'ᵀ and dB' = A'ᵀ·dC, transposed back where
        // the operand itself was transposed.
        let da = match (self.ta, self.tb) {
            (false, false) => dc.apply_op2(b, op(false, true))?,
            (false, true) => dc.apply_op2(b, op(false, false))?,
            (true, false) => b.apply_op2(&dc, op(false, true))?,
            (true, true) => b.apply_op2(&dc, op(true, true))?,
        };
        let db = match (self.ta, self.tb) {
            (false, false) => a.apply_op2(&dc, op(true, false))?,
            (true, false) => a.apply_op2(&dc, op(false, false))?,
            (false, true) => dc.apply_op2(a, op(true, false))?,
            (true, true) => dc.apply_op2(a, op(true, true))?,
        };
        Ok((Some(da), Some(db)))
    }
}
