//! LayerNorm with its affine part as one op on the CPU: each row normalised and scaled in one
//! pass, and one backward pass for the input gradient with the scale and shift gradients.
//!
//! LayerNorm was two ops, the normalisation (BatchNorm's kernel with the rows as channels) and
//! the scale and shift, each with its own backward: five passes over a ViT's token matrix
//! forward and backward that each read or wrote all of it, and a normalised copy kept for the
//! backward. A LayerNorm row (192 values for ViT-tiny) fits in L1, so here the statistics,
//! the normalisation and the affine part read the row from memory once, and the backward
//! recomputes the row's statistics from `x` (which it reads anyway) instead of keeping them.
//! On a ViT-tiny step this was a twelfth of the step (`sslab bench moco-v3-vit`, per op).

use super::affine::row_width;
use super::par::sum_partials;
use super::precision::f32_or_bf16;
use super::storage::{on_cpu_f32, slice, written, CResult};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Lanes of the row sums: independent partial sums that vectorise.
const LANES: usize = 16;

/// Rows per parallel task: a row of 192 values is too little work to schedule alone.
fn rows_per_task(d: usize) -> usize {
    (8192 / d.max(1)).max(1)
}

/// `Σ f(a, b, c)` over three rows of the same width, in `LANES` f64 partial sums added up
/// at the end. f64 because a row's mean can be large against its spread: with f32 sums, rows
/// of 37 values around 30 came out 2.4e-5 off an f64 LayerNorm (the test in
/// `tests/models.rs` allows 2e-5). The row is in L1, so the wider sums cost little.
#[inline(always)]
fn row_sum((a, b, c): (&[f32], &[f32], &[f32]), f: impl Fn(f32, f32, f32) -> f32) -> f64 {
    let mut lanes = [0f64; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tails = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((va, vb), vc) in ca.zip(cb).zip(cc) {
        for i in 0..LANES {
            lanes[i] += f(va[i], vb[i], vc[i]) as f64;
        }
    }
    let mut total = lanes.iter().sum::<f64>();
    for ((&va, &vb), &vc) in tails.0.iter().zip(tails.1).zip(tails.2) {
        total += f(va, vb, vc) as f64;
    }
    total
}

/// A row's mean and `1/√(var + eps)`, the biased variance taken about the mean (two passes
/// over the row, which is in L1 by the second).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f64;
    let mean = (row_sum((x, x, x), |v, _, _| v) / d) as f32;
    let var = row_sum((x, x, x), |v, _, _| (v - mean) * (v - mean)) / d;
    (mean, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// One row forward: `y = (x − mean)·rstd·w + b`.
#[inline(always)]
fn forward_row(y: &mut [f32], x: &[f32], (w, b): (&[f32], &[f32]), eps: f32) {
    let (mean, rstd) = row_stats(x, eps);
    for (((o, &v), &wv), &bv) in y.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * rstd * wv + bv;
    }
}

/// One row backward: `dx = rstd·(g⊙w − mean(g⊙w) − x̂·mean(g⊙w⊙x̂))`, and `Σ g·x̂`, `Σ g`
/// added into the block's `dw`, `db`.
#[inline(always)]
fn backward_row(
    dx: &mut [f32],
    (g, x): (&[f32], &[f32]),
    w: &[f32],
    eps: f32,
    (dw, db): (&mut [f32], &mut [f32]),
) {
    let d = x.len() as f64;
    let (mean, rstd) = row_stats(x, eps);
    let mean_gw = (row_sum((g, w, x), |gv, wv, _| gv * wv) / d) as f32;
    let mean_gwx = (row_sum((g, w, x), |gv, wv, xv| gv * wv * ((xv - mean) * rstd)) / d) as f32;
    let sums = dw.iter_mut().zip(db.iter_mut());
    for ((((o, &gv), &wv), &xv), (dwv, dbv)) in dx.iter_mut().zip(g).zip(w).zip(x).zip(sums) {
        let h = (xv - mean) * rstd;
        *o = rstd * (gv * wv - mean_gw - h * mean_gwx);
        *dwv += gv * h;
        *dbv += gv;
    }
}

wide!(forward_row_wide = forward_row(y: &mut [f32], x: &[f32], wb: (&[f32], &[f32]), eps: f32));
wide!(backward_row_wide = backward_row(dx: &mut [f32], gx: (&[f32], &[f32]), w: &[f32], eps: f32, sums: (&mut [f32], &mut [f32])));

/// LayerNorm over the last axis of `x` with scale `w` and shift `b` (both `(d,)`): each row
/// to zero mean and unit biased variance (`eps` inside the root, as PyTorch's `nn.LayerNorm`),
/// then `⊙ w + b`. On the CPU in f32 it is one op each way (see the module's text);
/// elsewhere (CUDA, a bf16 input) the normalisation and the affine part as two ops
/// ([`normalize_rows`](super::normalize_rows), [`scale_shift_rows`](super::scale_shift_rows)).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 3.0], [0.0, 4.0]], &Device::Cpu)?;
/// let w = Tensor::new(&[2f32, 1.0], &Device::Cpu)?;
/// let b = Tensor::new(&[0f32, 1.0], &Device::Cpu)?;
/// // Both rows normalise to [-1, 1], then ⊙ w + b.
/// let y = sslab::kernels::layer_norm(&x, &w, &b, 0.0)?;
/// assert_eq!(y.to_vec2::<f32>()?, [[-2.0, 2.0], [-2.0, 2.0]]);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    layer_norm_to(x, w, b, eps, false)
}

/// [`layer_norm`] for a result that only a linear layer ([`linear_bias`](super::linear_bias))
/// reads, as in a ViT block: under a bf16 [`autocast`](super::autocast) on a CPU with the
/// bf16 kernels it is stored in bf16, the values the product's packing would round it to, so
/// the product and every gradient are the same bits, for half the bytes written, read and
/// kept for the backward. Otherwise it is [`layer_norm`].
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sslab::kernels::{autocast, cpu_has_bf16, layer_norm_for_product, Precision};
/// let x = Tensor::new(&[[1f32, 3.0], [0.0, 4.0]], &Device::Cpu)?;
/// let w = Tensor::new(&[2f32, 1.0], &Device::Cpu)?;
/// let b = Tensor::new(&[0f32, 1.0], &Device::Cpu)?;
/// assert_eq!(layer_norm_for_product(&x, &w, &b, 0.0)?.dtype(), DType::F32);
/// let _bf16 = autocast(Precision::Bf16);
/// let y = layer_norm_for_product(&x, &w, &b, 0.0)?;
/// assert_eq!(y.dtype(), if cpu_has_bf16() { DType::BF16 } else { DType::F32 });
/// assert_eq!(y.to_dtype(DType::F32)?.to_vec2::<f32>()?, [[-2.0, 2.0], [-2.0, 2.0]]);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn layer_norm_for_product(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let bf16 = super::precision::cpu_bf16_operands(x.device());
    layer_norm_to(x, w, b, eps, bf16)
}

fn layer_norm_to(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, bf16: bool) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(0);
    let fused = on_cpu_f32(x)
        && on_cpu_f32(w)
        && on_cpu_f32(b)
        && d > 0
        && w.dims() == [d]
        && b.dims() == [d];
    if fused {
        let eps = eps as f32;
        let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
        return Ok(x.apply_op3(&w, &b, LayerNormOp { eps, bf16 })?);
    }
    super::affine::scale_shift_rows(&super::normalize_rows(x, eps, true)?, w, b, true)
}

/// [`layer_norm`]'s op on the CPU: `(x, w, b) → y`, `y` in bf16 when `bf16`.
struct LayerNormOp {
    eps: f32,
    bf16: bool,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "sslab-layer-norm"
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
        let d = row_width(l1, l2.shape().elem_count(), l3.shape().elem_count())?;
        let x = slice(s1, l1, "LayerNorm input")?;
        let (w, b) = (
            slice(s2, l2, "LayerNorm scale")?,
            slice(s3, l3, "LayerNorm shift")?,
        );
        let block = d * rows_per_task(d);
        let y = f32_or_bf16(x.len(), (block, d), self.bf16, |start, yb| {
            let xb = &x[start..start + yb.len()];
            for (yr, xr) in yb.chunks_mut(d).zip(xb.chunks(d)) {
                forward_row_wide(yr, xr, (w, b), self.eps);
            }
        });
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let rows = x.elem_count() / d;
        let all = x.apply_op3(w, &g.contiguous()?, LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.get(rows)?;
        let db = all.get(rows + 1)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// LayerNorm's backward from `(x, w, g)`: `dx` in the first `rows` rows of a `(rows + 2, d)`
/// result, `dw` and `db` in its last two.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "sslab-layer-norm-grad"
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
        let w_len = l2.shape().elem_count();
        let d = row_width(l1, w_len, w_len)?;
        if l3.dims() != l1.dims() {
            candle_core::bail!(
                "LayerNorm gradient {:?} of input {:?}",
                l3.dims(),
                l1.dims()
            );
        }
        let x = slice(s1, l1, "LayerNorm input")?;
        let w = slice(s2, l2, "LayerNorm scale")?;
        let g = slice(s3, l3, "LayerNorm output gradient")?;
        let rows = x.len() / d;
        let block = d * rows_per_task(d);
        let out = written((rows + 2) * d, |out| {
            let (dx, tail) = out.split_at_mut(rows * d);
            // Each block's Σ g·x̂ and Σ g, added in block order below.
            let partial: Vec<Vec<f32>> = dx
                .par_chunks_mut(block)
                .zip(x.par_chunks(block).zip(g.par_chunks(block)))
                .map(|(dx_block, (xb, gb))| {
                    let mut acc = vec![0f32; 2 * d];
                    let (dw, dbias) = acc.split_at_mut(d);
                    let rows = dx_block.chunks_mut(d).zip(xb.chunks(d)).zip(gb.chunks(d));
                    for ((o, xr), gr) in rows {
                        backward_row_wide(o, (gr, xr), w, self.eps, (&mut *dw, &mut *dbias));
                    }
                    acc
                })
                .collect();
            tail.copy_from_slice(&sum_partials(partial, 2 * d));
        });
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}
