//! The CUDA arm of training-mode BatchNorm with its affine part and an optional ReLU
//! (`cuda/batch_norm.cu`): statistics, normalisation, gradient sums and input gradient as four
//! kernels, with the statistics kept on the device. candle's ops took about ten allocating
//! passes each way, and its broadcast multiply and add each reduced the full gradient again
//! for dγ and dβ. The data (x, y and their gradients) is f32 or bf16, the dtype a bf16 autocast
//! keeps activations in (`kernels::precision`); statistics, γ, β and their gradients are f32.

use super::bn_dims;
use crate::kernels::cuda::{
    elementwise, f32_view, int, one_dtype, per_item, typed_name, view, with_f32, Buf, PushTyped,
    View, BATCH_NORM,
};
use crate::kernels::storage::CResult;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

/// The name of `kernel`'s instantiation for the data's dtype, which every data argument shares.
fn typed(kernel: &str, data: &[&View]) -> CResult<String> {
    Ok(typed_name(kernel, one_dtype(kernel, data.iter().copied())?))
}

/// The backward kernels' (x, dy, y), checked to be one size.
fn data3<'a>(
    (s1, l1): (&'a CudaStorage, &Layout),
    (s2, l2): (&'a CudaStorage, &Layout),
    (s3, l3): (&'a CudaStorage, &Layout),
) -> CResult<(View<'a>, View<'a>, View<'a>)> {
    let x = view(s1, l1, "batchnorm input")?;
    let dy = view(s2, l2, "batchnorm output gradient")?;
    let y = view(s3, l3, "batchnorm output")?;
    if l1.dims() != l2.dims() || l1.dims() != l3.dims() {
        candle_core::bail!(
            "batchnorm backward: input {:?}, gradient {:?}, output {:?}",
            l1.dims(),
            l2.dims(),
            l3.dims()
        );
    }
    Ok((x, dy, y))
}

/// Columns per block and rows per column of the `_rows` kernels (`ROWS_X`, `ROWS_Y` in
/// `batch_norm.cu`).
const ROWS_X: usize = 32;
const ROWS_Y: usize = 8;

/// Column sums of `(rows, c)` data by a `_rows` kernel of `batch_norm.cu`: `kernel(data…, [stats,]
/// acc, rows, c, chunk[, relu])` adds each block's partial sums over a chunk of rows into a
/// zeroed `double[2·c]`, returned (`grad`: the statistics and the ReLU flag of the gradient
/// sums). Chunks are sized for about a thousand blocks in all (at least 64 rows each), so a
/// projector's BatchNorm1d of a few hundred rows and a channels-last feature map of hundreds of
/// thousands both fill the GPU.
fn rows_sums(
    dev: &candle_core::CudaDevice,
    kernel: &str,
    data: &[&View],
    (rows, c): (usize, usize),
    grad: Option<(&CudaView<'_, f32>, i32)>,
) -> CResult<CudaSlice<f64>> {
    let acc = dev.alloc_zeros::<f64>(2 * c)?;
    let col_blocks = c.div_ceil(ROWS_X).max(1);
    let chunks = 1024usize
        .div_ceil(col_blocks)
        .min(rows.div_ceil(64))
        .clamp(1, 65_535);
    let chunk = rows.div_ceil(chunks).max(1);
    let cfg = LaunchConfig {
        grid_dim: (col_blocks as u32, rows.div_ceil(chunk).max(1) as u32, 1),
        block_dim: (ROWS_X as u32, ROWS_Y as u32, 1),
        shared_mem_bytes: 0,
    };
    let name = typed(kernel, data)?;
    let f = dev.get_or_load_custom_func(&name, BATCH_NORM.name, BATCH_NORM.ptx)?;
    let (rows64, ci, chunk64) = (rows as i64, int(c, "channels")?, chunk as i64);
    let mut b = f.builder();
    for v in data {
        b.view(v);
    }
    if let Some((stats, _)) = &grad {
        b.arg(*stats);
    }
    b.arg(&acc).arg(&rows64).arg(&ci).arg(&chunk64);
    if let Some((_, relu)) = &grad {
        b.arg(relu);
    }
    unsafe { b.launch(cfg) }.w()?;
    Ok(acc)
}

/// Per-channel mean, biased variance and `1/√(var + eps)` as a `(3, c)` tensor.
struct StatsOp {
    eps: f64,
}

impl CustomOp1 for StatsOp {
    fn name(&self) -> &'static str {
        "sslab-batchnorm-stats"
    }

    cpu_refused!(1);

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CResult<(CudaStorage, Shape)> {
        let x = view(s, l, "batchnorm input")?;
        let (n, c, inner) = bn_dims(l.dims());
        let dev = &s.device;
        let stats = unsafe { dev.alloc::<f32>(3 * c)? };
        if inner == 1 {
            // (rows, c): a block per run of columns, not per channel (see `rows_launch`).
            let acc = rows_sums(dev, "bn_stats_rows", &[&x], (n, c), None)?;
            let f =
                dev.get_or_load_custom_func("bn_finish_stats", BATCH_NORM.name, BATCH_NORM.ptx)?;
            let (ci, count, eps) = (int(c, "channels")?, n as f64, self.eps as f32);
            let mut b = f.builder();
            b.arg(&acc).arg(&stats).arg(&ci).arg(&count).arg(&eps);
            unsafe { b.launch(elementwise(c)) }.w()?;
            return Ok((
                CudaStorage::wrap_cuda_slice(stats, dev.clone()),
                Shape::from((3, c)),
            ));
        }
        let f = dev.get_or_load_custom_func(
            &typed("bn_stats", &[&x])?,
            BATCH_NORM.name,
            BATCH_NORM.ptx,
        )?;
        let (n, ci, inner) = (int(n, "batch")?, int(c, "channels")?, int(inner, "plane")?);
        let eps = self.eps as f32;
        let mut b = f.builder();
        b.view(&x)
            .arg(&stats)
            .arg(&n)
            .arg(&ci)
            .arg(&inner)
            .arg(&eps);
        unsafe { b.launch(per_item(c)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(stats, dev.clone()),
            Shape::from((3, c)),
        ))
    }
}

/// `y = x̂·γ + β` (then ReLU) from the statistics of a [`StatsOp`]; arguments (x, γ, β).
struct AffineOp {
    stats: Tensor,
    relu: bool,
}

impl CustomOp3 for AffineOp {
    fn name(&self) -> &'static str {
        "sslab-batchnorm-affine-cuda"
    }

    cpu_refused!(3);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        let x = view(s1, l1, "batchnorm input")?;
        let gamma = f32_view(s2, l2, "batchnorm weight")?;
        let beta = f32_view(s3, l3, "batchnorm bias")?;
        let (_, c, inner) = bn_dims(l1.dims());
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "batchnorm: {c} channels, weight {} bias {}",
                gamma.len(),
                beta.len()
            );
        }
        let total = l1.shape().elem_count();
        let dev = &s1.device;
        let y = Buf::alloc(dev, x.dtype(), total)?;
        let f = dev.get_or_load_custom_func(
            &typed("bn_apply", &[&x])?,
            BATCH_NORM.name,
            BATCH_NORM.ptx,
        )?;
        let (tot, ci, inner) = (total as i64, int(c, "channels")?, int(inner, "plane")?);
        let relu = self.relu as i32;
        with_f32(&self.stats, "batchnorm statistics", |stats| {
            let mut b = f.builder();
            b.view(&x).arg(stats).arg(&gamma).arg(&beta).buf(&y);
            b.arg(&tot).arg(&ci).arg(&inner).arg(&relu);
            unsafe { b.launch(elementwise(total)) }.w()?;
            Ok(())
        })?;
        Ok((y.into_storage(dev), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (stats, relu) = (self.stats.clone(), self.relu);
        let sums = x.apply_op3_no_bwd(
            &g,
            res,
            &GradSumsOp {
                stats: stats.clone(),
                relu,
            },
        )?;
        let dx = x.apply_op3_no_bwd(
            &g,
            res,
            &GradInputOp {
                stats,
                sums: sums.clone(),
                gamma: gamma.clone(),
                relu,
            },
        )?;
        Ok((Some(dx), Some(sums.get(1)?), Some(sums.get(0)?)))
    }
}

/// Σg (dβ) and Σg·x̂ (dγ) per channel as a `(2, c)` tensor, g the output gradient masked by the
/// ReLU; arguments (x, dy, y).
struct GradSumsOp {
    stats: Tensor,
    relu: bool,
}

impl CustomOp3 for GradSumsOp {
    fn name(&self) -> &'static str {
        "sslab-batchnorm-grad-sums"
    }

    cpu_refused!(3);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        let (x, dy, y) = data3((s1, l1), (s2, l2), (s3, l3))?;
        let (n, c, inner) = bn_dims(l1.dims());
        let dev = &s1.device;
        let sums = unsafe { dev.alloc::<f32>(2 * c)? };
        let relu = self.relu as i32;
        if inner == 1 {
            let acc = with_f32(&self.stats, "batchnorm statistics", |stats| {
                let data = [&x, &dy, &y];
                rows_sums(dev, "bn_grad_sums_rows", &data, (n, c), Some((stats, relu)))
            })?;
            let f =
                dev.get_or_load_custom_func("bn_finish_sums", BATCH_NORM.name, BATCH_NORM.ptx)?;
            let ci = int(c, "channels")?;
            let mut b = f.builder();
            b.arg(&acc).arg(&sums).arg(&ci);
            unsafe { b.launch(elementwise(c)) }.w()?;
            return Ok((
                CudaStorage::wrap_cuda_slice(sums, dev.clone()),
                Shape::from((2, c)),
            ));
        }
        let f = dev.get_or_load_custom_func(
            &typed("bn_grad_sums", &[&x, &dy, &y])?,
            BATCH_NORM.name,
            BATCH_NORM.ptx,
        )?;
        let (ni, ci, ii) = (int(n, "batch")?, int(c, "channels")?, int(inner, "plane")?);
        with_f32(&self.stats, "batchnorm statistics", |stats| {
            let mut b = f.builder();
            b.view(&x).view(&dy).view(&y).arg(stats).arg(&sums);
            b.arg(&ni).arg(&ci).arg(&ii).arg(&relu);
            unsafe { b.launch(per_item(c)) }.w()?;
            Ok(())
        })?;
        Ok((
            CudaStorage::wrap_cuda_slice(sums, dev.clone()),
            Shape::from((2, c)),
        ))
    }
}

/// `dx = γ·inv_std·(g − mean(g) − x̂·mean(g·x̂))`; arguments (x, dy, y).
struct GradInputOp {
    stats: Tensor,
    sums: Tensor,
    gamma: Tensor,
    relu: bool,
}

impl CustomOp3 for GradInputOp {
    fn name(&self) -> &'static str {
        "sslab-batchnorm-grad-input"
    }

    cpu_refused!(3);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        let (x, dy, y) = data3((s1, l1), (s2, l2), (s3, l3))?;
        let (n, c, inner) = bn_dims(l1.dims());
        let total = l1.shape().elem_count();
        let dev = &s1.device;
        let dx = Buf::alloc(dev, x.dtype(), total)?;
        let f = dev.get_or_load_custom_func(
            &typed("bn_grad_input", &[&x, &dy, &y])?,
            BATCH_NORM.name,
            BATCH_NORM.ptx,
        )?;
        let (tot, ci, ii) = (total as i64, int(c, "channels")?, int(inner, "plane")?);
        let count = (n * inner) as f32;
        let relu = self.relu as i32;
        with_f32(&self.stats, "batchnorm statistics", |stats| {
            with_f32(&self.sums, "batchnorm gradient sums", |sums| {
                with_f32(&self.gamma, "batchnorm weight", |gamma| {
                    let mut b = f.builder();
                    b.view(&x)
                        .view(&dy)
                        .view(&y)
                        .arg(stats)
                        .arg(sums)
                        .arg(gamma)
                        .buf(&dx);
                    b.arg(&tot).arg(&ci).arg(&ii).arg(&count).arg(&relu);
                    unsafe { b.launch(elementwise(total)) }.w()?;
                    Ok(())
                })
            })
        })?;
        Ok((dx.into_storage(dev), l1.shape().clone()))
    }
}

/// Training-mode BatchNorm with scale `w`, shift `b` and an optional ReLU on CUDA (f32 or bf16
/// data, f32 parameters; y in the data's dtype): y and
/// the detached batch mean and biased variance, which stay on the device.
pub(super) fn affine_train(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    relu: bool,
) -> crate::Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&StatsOp { eps })?;
    let op = AffineOp {
        stats: stats.clone(),
        relu,
    };
    let y = x.apply_op3(&w.contiguous()?, &b.contiguous()?, op)?;
    Ok((y, stats.get(0)?, stats.get(1)?))
}

/// Training-mode normalisation without the affine part on CUDA (f32 or bf16 data): x̂ and the detached mean
/// and biased variance. The affine kernels with γ = 1 and β = 0: the same passes, and the
/// gradients of the two constants are never asked for.
pub(super) fn normalize(x: &Tensor, eps: f64) -> crate::Result<(Tensor, Tensor, Tensor)> {
    let c = x.dims().get(1).copied().unwrap_or(1);
    let ones = Tensor::ones(c, candle_core::DType::F32, x.device())?;
    let zeros = Tensor::zeros(c, candle_core::DType::F32, x.device())?;
    affine_train(x, &ones, &zeros, eps, false)
}
