//! Softmax over the last axis with an explicit backward (attention's scale folded in).

use super::activation::exp_nonpositive;
use super::simd::{lane_dot, lane_fold, LANES};
use super::storage::{own_kernel, slice, written, CResult};
use crate::error::Result;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};

/// The CUDA arm: `kernel` of `cuda/softmax.cu`, one warp per row.
#[cfg(feature = "cuda")]
fn on_cuda(
    kernel: &str,
    inputs: &[(&CudaStorage, &Layout)],
    scale: f32,
) -> CResult<(CudaStorage, Shape)> {
    super::cuda::per_row(&super::cuda::SOFTMAX, kernel, inputs, scale)
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(kernel: &str, _: &[(&CudaStorage, &Layout)], _: f32) -> CResult<(CudaStorage, Shape)> {
    super::storage::needs_feature(kernel, "cuda")
}
use rayon::prelude::*;

wide!(pub(super) softmax_row_wide = softmax_row(x: &[f32], y: &mut [f32], scale: f32));
wide!(pub(super) softmax_grad_row_wide = softmax_grad_row(y: &[f32], g: &mut [f32], scale: f32));
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
        let y = written(x.len(), |y| {
            y.par_chunks_mut(d.max(1))
                .zip(x.par_chunks(d.max(1)))
                .for_each(|(yr, xr)| softmax_row_wide(xr, yr, self.scale));
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CResult<(CudaStorage, Shape)> {
        on_cuda("softmax", &[(s, l)], self.scale)
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(y.apply_op2(
            &g.contiguous()?,
            SoftmaxGrad { scale: self.scale },
        )?))
    }
}

/// One row of `softmax(scale · x)`; every exponent is ≤ 0 after subtracting the row maximum.
/// Three vectorised passes: the maximum of `scale · x`, the exponentials with their sum, the
/// normalisation. The exponentials and their sum share one loop over fixed-size chunks
/// (each lane's sum in its own slot: a single running sum kept the whole row scalar); the
/// scaled row is not stored first. On attention's rows of 65 values this was 5 passes and
/// 3.6% of a ViT-tiny bf16 step. The values and the order of every sum are those of the
/// five-pass version, so the results keep their bits.
#[inline(always)]
fn softmax_row(x: &[f32], y: &mut [f32], scale: f32) {
    let m = lane_fold(x, x, f32::NEG_INFINITY, |m, v, _| m.max(v * scale))
        .into_iter()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0f32; LANES];
    let ((cx, tx), (cy, ty)) = (x.as_chunks::<LANES>(), y.as_chunks_mut::<LANES>());
    for (vx, vy) in cx.iter().zip(cy.iter_mut()) {
        for i in 0..LANES {
            let e = exp_nonpositive(vx[i] * scale - m);
            vy[i] = e;
            sums[i] += e;
        }
    }
    for (&v, o) in tx.iter().zip(ty.iter_mut()) {
        *o = exp_nonpositive(v * scale - m);
        sums[0] += *o;
    }
    let inv = 1.0 / sums.iter().sum::<f32>();
    y.iter_mut().for_each(|o| *o *= inv);
}

/// One row of softmax's backward in place: `g ← scale · y ⊙ (g − Σ g⊙y)`.
#[inline(always)]
fn softmax_grad_row(y: &[f32], g: &mut [f32], scale: f32) {
    let dot = lane_dot(y, g);
    for (v, &yv) in g.iter_mut().zip(y) {
        *v = scale * yv * (*v - dot);
    }
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
        let dx = written(y.len(), |dx| {
            dx.par_chunks_mut(d.max(1))
                .zip(y.par_chunks(d.max(1)).zip(g.par_chunks(d.max(1))))
                .for_each(|(o, (yr, gr))| {
                    o.copy_from_slice(gr);
                    softmax_grad_row_wide(yr, o, scale);
                });
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        on_cuda("softmax_grad", &[(s1, l1), (s2, l2)], self.scale)
    }
}

/// `softmax(scale · x)` over the last axis with a backward: sslab's kernel on the CPU (rows in
/// parallel) and on CUDA (a warp per row) when `fused`, the scale folded in; else candle's
/// op-built `softmax` (never the fused `softmax_last_dim`, which has none).
pub fn softmax_last(x: &Tensor, scale: f64, fused: bool) -> Result<Tensor> {
    if x.dtype() == candle_core::DType::BF16 {
        // Softmax is one of autocast's f32 ops: bf16 input, f32 output.
        return softmax_last(&x.to_dtype(candle_core::DType::F32)?, scale, fused);
    }
    if fused && own_kernel(x) {
        let op = SoftmaxOp {
            scale: scale as f32,
        };
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    Ok(candle_nn::ops::softmax(&(x * scale)?, D::Minus1)?)
}
