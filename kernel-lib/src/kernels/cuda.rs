//! Loading and launching sslab's own CUDA kernels: `kernel-lib/cuda/*.cu`, compiled to PTX by
//! `build.rs` (nvcc at build time, so a kernel that does not compile fails every CUDA build,
//! CI's included, rather than a run on a GPU), embedded here and loaded once per device by
//! candle's module cache.

use super::storage::CResult;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda::WrapErr;
use candle_core::{CudaStorage, Layout, Shape, Storage, Tensor};

/// The `cpu_fwd` of an op that exists only on CUDA (its CPU counterpart is another op): an
/// error naming it. `1`, `2`, `3`: `CustomOp1/2/3`; `inplace2`, `inplace3`: `InplaceOp2/3`.
macro_rules! cpu_refused {
    (@err $self:ident, $op:ident) => {
        Err(candle_core::Error::Msg(format!(
            "{} is a CUDA kernel; on the CPU sslab runs its own CPU op instead",
            candle_core::$op::name($self)
        )))
    };
    (1) => {
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> CResult<(CpuStorage, Shape)> {
            cpu_refused!(@err self, CustomOp1)
        }
    };
    (2) => {
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> CResult<(CpuStorage, Shape)> {
            cpu_refused!(@err self, CustomOp2)
        }
    };
    (3) => {
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> CResult<(CpuStorage, Shape)> {
            cpu_refused!(@err self, CustomOp3)
        }
    };
    (inplace2) => {
        fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> CResult<()> {
            cpu_refused!(@err self, InplaceOp2)
        }
    };
    (inplace3) => {
        fn cpu_fwd(
            &self,
            _: &mut CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> CResult<()> {
            cpu_refused!(@err self, InplaceOp3)
        }
    };
}

/// A PTX module: its name in candle's per-device cache and its text.
pub(crate) struct Module {
    pub name: &'static str,
    pub ptx: &'static str,
}

/// `cuda/batch_norm.cu`.
pub(crate) const BATCH_NORM: Module = Module {
    name: "sslab_batch_norm",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/batch_norm.ptx")),
};

/// `cuda/optim.cu`.
pub(crate) const OPTIM: Module = Module {
    name: "sslab_optim",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/optim.ptx")),
};

/// `cuda/activation.cu`.
pub(crate) const ACTIVATION: Module = Module {
    name: "sslab_activation",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/activation.ptx")),
};

/// `cuda/softmax.cu`.
pub(crate) const SOFTMAX: Module = Module {
    name: "sslab_softmax",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/softmax.ptx")),
};

/// `cuda/affine.cu`.
pub(crate) const AFFINE: Module = Module {
    name: "sslab_affine",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/affine.ptx")),
};

/// Threads per block of every sslab kernel (the reductions' shared arrays are sized for it).
pub(crate) const BLOCK: u32 = 256;

/// One block of [`BLOCK`] threads per item: the per-channel reductions.
pub(crate) fn per_item(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (items as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row over `rows` rows: the launch of the row kernels (`cuda/softmax.cu`).
pub(crate) fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            rows.saturating_mul(32).div_ceil(BLOCK as usize).max(1) as u32,
            1,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Enough blocks for an element-wise grid-stride loop over `total` elements (at most 64 Ki
/// blocks; each thread takes several elements beyond that).
pub(crate) fn elementwise(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(BLOCK as usize).clamp(1, 1 << 16);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Runs `f` with the f32 device memory of `t`, or (`None`) with none when `t` is `None`.
pub(crate) fn with_opt_f64<R>(
    t: Option<&Tensor>,
    what: &str,
    f: impl FnOnce(Option<&CudaView<'_, f64>>) -> CResult<R>,
) -> CResult<R> {
    let Some(t) = t else { return f(None) };
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) if layout.is_contiguous() => f(Some(
            &s.as_cuda_slice::<f64>()?.slice(layout.start_offset()..),
        )),
        _ => candle_core::bail!("{what}: expected a contiguous CUDA tensor"),
    }
}

/// The f32 device memory of a contiguous kernel argument (`what` names it in the error): the
/// CUDA twin of `storage::slice`.
pub(crate) fn f32_view<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> CResult<CudaView<'a, f32>> {
    if !l.is_contiguous() || s.dtype() != candle_core::DType::F32 {
        candle_core::bail!("{what}: expected a contiguous f32 tensor");
    }
    Ok(s.as_cuda_slice::<f32>()?.slice(l.start_offset()..))
}

/// Runs `f` with the f32 device memory of `t`, a contiguous CUDA tensor (`what` names it in
/// the error). For tensors an op holds besides its arguments, such as saved statistics.
pub(crate) fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&CudaView<'_, f32>) -> CResult<R>,
) -> CResult<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => f(&f32_view(s, layout, what)?),
        _ => candle_core::bail!("{what}: expected a CUDA tensor"),
    }
}

/// A dimension as the `int` the kernels take, or an error naming it.
pub(crate) fn int(v: usize, what: &str) -> CResult<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} {v} exceeds a CUDA int")))
}

/// An element-wise kernel `kernel(inputs…, out, n)` of `module` over equally shaped contiguous
/// f32 inputs, into a fresh tensor of their shape: the CUDA arm of the activations.
pub(crate) fn map(
    module: &Module,
    kernel: &str,
    inputs: &[(&CudaStorage, &Layout)],
) -> CResult<(CudaStorage, Shape)> {
    launch_over(module, kernel, inputs, Grid::Elements)
}

/// A row kernel `kernel(inputs…, out, rows, d, scale)` with one warp per row of the last axis.
pub(crate) fn per_row(
    module: &Module,
    kernel: &str,
    inputs: &[(&CudaStorage, &Layout)],
    scale: f32,
) -> CResult<(CudaStorage, Shape)> {
    launch_over(module, kernel, inputs, Grid::WarpPerRow(scale))
}

/// How [`launch_over`] lays out its threads and what follows the output pointer.
enum Grid {
    /// A grid-stride loop over the elements; then `n`.
    Elements,
    /// One warp per row of the last axis; then `rows, d, scale`.
    WarpPerRow(f32),
}

fn launch_over(
    module: &Module,
    kernel: &str,
    inputs: &[(&CudaStorage, &Layout)],
    grid: Grid,
) -> CResult<(CudaStorage, Shape)> {
    let Some(&(first, first_l)) = inputs.first() else {
        candle_core::bail!("{kernel}: no input");
    };
    let shape = first_l.shape().clone();
    let mut views = Vec::with_capacity(inputs.len());
    for (s, l) in inputs {
        if l.shape() != &shape {
            candle_core::bail!("{kernel}: expected inputs of shape {shape:?}");
        }
        views.push(f32_view(s, l, kernel)?);
    }
    let n = shape.elem_count();
    let dev = &first.device;
    let out = unsafe { dev.alloc::<f32>(n)? };
    let f = dev.get_or_load_custom_func(kernel, module.name, module.ptx)?;
    let len = n as i64;
    let d = *shape.dims().last().unwrap_or(&1);
    let (rows, di) = ((n / d.max(1)) as i64, int(d, "row length")?);
    let mut b = f.builder();
    for v in &views {
        b.arg(v);
    }
    b.arg(&out);
    let cfg = match &grid {
        Grid::Elements => {
            b.arg(&len);
            elementwise(n)
        }
        Grid::WarpPerRow(scale) => {
            b.arg(&rows).arg(&di).arg(scale);
            warp_per_row(rows as usize)
        }
    };
    unsafe { b.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
}

/// How a column kernel of `cuda/affine.cu` runs over `(rows, d)` data.
pub(crate) enum Columns {
    /// Element-wise over all `rows·d` values, a column's parameter broadcast: `kernel(inputs…,
    /// out, n, d)` into a fresh `(rows, d)`-shaped output.
    Map,
    /// Column sums into a zeroed output of `parts·d` values: `kernel(inputs…, out, rows, d,
    /// chunk)`, one thread per column and block row per chunk of rows.
    Sums { parts: usize },
}

/// A kernel of `cuda/affine.cu` over contiguous f32 inputs whose first is `(…, d)`-shaped.
pub(crate) fn columns(
    kernel: &str,
    inputs: &[(&CudaStorage, &Layout)],
    how: Columns,
) -> CResult<(CudaStorage, Shape)> {
    let Some(&(first, first_l)) = inputs.first() else {
        candle_core::bail!("{kernel}: no input");
    };
    let views = inputs
        .iter()
        .map(|(s, l)| f32_view(s, l, kernel))
        .collect::<CResult<Vec<_>>>()?;
    let n = first_l.shape().elem_count();
    let d = *first_l.dims().last().unwrap_or(&1);
    let rows = n / d.max(1);
    let dev = &first.device;
    let f = dev.get_or_load_custom_func(kernel, AFFINE.name, AFFINE.ptx)?;
    let (n64, d64, rows64) = (n as i64, d as i64, rows as i64);
    let (out, shape, cfg, chunk) = match how {
        Columns::Map => (
            unsafe { dev.alloc::<f32>(n)? },
            first_l.shape().clone(),
            elementwise(n),
            0i64,
        ),
        Columns::Sums { parts } => {
            // At most 65535 block rows; at least 64 rows per block so each thread sums a run.
            let chunk = rows.div_ceil(65_535).max(64);
            let cfg = LaunchConfig {
                grid_dim: (
                    d.div_ceil(BLOCK as usize).max(1) as u32,
                    rows.div_ceil(chunk).max(1) as u32,
                    1,
                ),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let shape = if parts == 1 {
                Shape::from(d)
            } else {
                Shape::from((parts, d))
            };
            (dev.alloc_zeros::<f32>(parts * d)?, shape, cfg, chunk as i64)
        }
    };
    let mut b = f.builder();
    for v in &views {
        b.arg(v);
    }
    b.arg(&out);
    if chunk == 0 {
        b.arg(&n64).arg(&d64);
    } else {
        b.arg(&rows64).arg(&d64).arg(&chunk);
    }
    unsafe { b.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
}
