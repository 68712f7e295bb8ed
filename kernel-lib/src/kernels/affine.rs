//! Row-broadcast affine ops: a linear layer's bias and LayerNorm's scale and shift, with the
//! column sums of their backward from row blocks in parallel.

use super::par::sum_partials;
use super::storage::{own_kernel, own_kernel_data, slice, written, CResult};
use crate::error::Result;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor,
};

/// The CUDA arm: `kernel` of `cuda/affine.cu`, element-wise (`sums` `None`) or as column sums
/// into `sums` rows of `d` values.
#[cfg(feature = "cuda")]
fn on_cuda(
    kernel: &str,
    inputs: &[(&CudaStorage, &Layout)],
    sums: Option<usize>,
) -> CResult<(CudaStorage, Shape)> {
    use super::cuda::{columns, Columns};
    let how = sums.map_or(Columns::Map, |parts| Columns::Sums { parts });
    columns(kernel, inputs, how)
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(
    kernel: &str,
    _: &[(&CudaStorage, &Layout)],
    _: Option<usize>,
) -> CResult<(CudaStorage, Shape)> {
    super::storage::needs_feature(kernel, "cuda")
}
use rayon::prelude::*;

/// `y = x + b` with `b` broadcast over the rows of a `(rows, d)` input; the backward gives
/// `dx = g` and `db` = column sums of `g` from row blocks in parallel. candle's broadcast add
/// backward reduces over the leading axis, a strided serial pass.
pub(crate) struct AddBiasOp;

const ROW_BLOCK: usize = 64;

/// `f(output row, input row)` for every `d`-wide row (`d > 0`) of `x`, blocks of rows in
/// parallel, into a new buffer: the bias add, the scale-shift and its input gradient.
fn map_rows(x: &[f32], d: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    written(x.len(), |y| {
        y.par_chunks_mut(d * ROW_BLOCK)
            .zip(x.par_chunks(d * ROW_BLOCK))
            .for_each(|(yo, xi)| {
                for (yr, xr) in yo.chunks_mut(d).zip(xi.chunks(d)) {
                    f(yr, xr);
                }
            });
    })
}

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
        let y = map_rows(x, d, |yr, xr| {
            for ((o, &v), &bv) in yr.iter_mut().zip(xr).zip(b) {
                *o = v + bv;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        let d = l2.shape().elem_count();
        row_width(l1, d, d)?;
        on_cuda("add_cols", &[(s1, l1), (s2, l2)], None)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.clone()), Some(bias_grad(g, b)?)))
    }
}

/// `y = x ⊙ w + b` with `w` and `b` broadcast over the rows of a `(rows, d)` input: the affine
/// part of LayerNorm. The backward is one parallel pass for `dx = g ⊙ w` and one for the column
/// sums `dw = Σ g ⊙ x`, `db = Σ g`; candle's broadcast mul and add take five passes, two of
/// them serial strided reductions over the rows.
pub(crate) struct ScaleShiftOp;

/// The row width `d` of a `(rows, d)` input with a length-`d` scale and shift.
pub(crate) fn row_width(x: &Layout, w: usize, b: usize) -> CResult<usize> {
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
        let y = map_rows(x, d, |yr, xr| {
            for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *o = v * wv + bv;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        row_width(l1, l2.shape().elem_count(), l3.shape().elem_count())?;
        on_cuda("scale_shift", &[(s1, l1), (s2, l2), (s3, l3)], None)
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
        let dx = map_rows(g, d, |orow, grow| {
            for ((o, &gv), &wv) in orow.iter_mut().zip(grow).zip(w) {
                *o = gv * wv;
            }
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
        let d = l2.shape().elem_count();
        row_width(l1, d, d)?;
        on_cuda("scale_cols", &[(s1, l1), (s2, l2)], None)
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
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("scale-shift sums: {:?} vs {:?}", l1.dims(), l2.dims());
        }
        on_cuda("col_sums2", &[(s1, l1), (s2, l2)], Some(2))
    }
}

/// The gradient of a bias `b` added to every row of an output whose gradient is `g`: the
/// column sums of `g`, from row blocks in parallel, shaped as `b`.
pub(crate) fn bias_grad(g: &Tensor, b: &Tensor) -> CResult<Tensor> {
    g.contiguous()?
        .apply_op1(ColumnSums(b.elem_count()))?
        .reshape(b.shape())
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
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CResult<(CudaStorage, Shape)> {
        if l.dims().last() != Some(&self.0) {
            candle_core::bail!("column sums of {} over input {:?}", self.0, l.dims());
        }
        on_cuda("col_sums", &[(s, l)], Some(1))
    }
}

/// `y + b` with `(d,)`-shaped `b` broadcast over the rows of a `(rows, d)` `y`: a linear
/// layer's bias. On the CPU and CUDA sslab's kernel (its bias gradient as column sums, from
/// row blocks in parallel; on CUDA `y` may be a bf16 activation, the result then bf16 and the
/// bias and its gradient f32), elsewhere candle's broadcast add (in f32 for a bf16 `y`).
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if own_kernel_data(y) && own_kernel(b) && y.device().same_device(b.device()) {
        return Ok(y.apply_op2(b, AddBiasOp)?);
    }
    if y.dtype() == candle_core::DType::BF16 && b.dtype() == candle_core::DType::F32 {
        // As the CUDA kernel: f32 arithmetic, the bias gradient summed in f32.
        return super::precision::via_f32(y, |y| add_bias(y, b));
    }
    Ok(y.broadcast_add(b)?)
}

/// `x ⊙ w + b` with `(d,)`-shaped `w` and `b` broadcast over the last axis: LayerNorm's affine
/// part. `fused` takes sslab's kernel on the CPU or CUDA (one pass each way plus one for both
/// column sums) where it applies; otherwise candle's broadcast ops.
pub fn scale_shift_rows(x: &Tensor, w: &Tensor, b: &Tensor, fused: bool) -> Result<Tensor> {
    if x.dtype() == candle_core::DType::BF16 {
        // LayerNorm runs in f32 under autocast.
        return scale_shift_rows(&x.to_dtype(candle_core::DType::F32)?, w, b, fused);
    }
    if fused && own_kernel(x) && own_kernel(w) && own_kernel(b) {
        return Ok(x.contiguous()?.apply_op3(w, b, ScaleShiftOp)?);
    }
    Ok(x.broadcast_mul(w)?.broadcast_add(b)?)
}
