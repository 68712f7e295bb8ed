//! Loading and launching sslab's own CUDA kernels: `kernel-lib/cuda/*.cu`, compiled to PTX by
//! `build.rs` (nvcc at build time, so a kernel that does not compile fails every CUDA build,
//! CI's included, rather than a run on a GPU), embedded here and loaded once per device by
//! candle's module cache.

use super::storage::CResult;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{
    CudaSlice, CudaView, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda::WrapErr;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, Storage, Tensor};
use half::bf16;

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
    if !l.is_contiguous() || s.dtype() != DType::F32 {
        candle_core::bail!("{what}: expected a contiguous f32 tensor");
    }
    Ok(s.as_cuda_slice::<f32>()?.slice(l.start_offset()..))
}

/// The device memory of a contiguous activation: f32, or bf16 where a bf16 autocast keeps
/// activations in bf16 between ops (`kernels::precision`). The kernels that read one come in
/// two instantiations, `name_f32` and `name_bf16`, which load into f32 registers, compute in
/// f32 and round only what they store.
pub(crate) enum View<'a> {
    F32(CudaView<'a, f32>),
    Bf16(CudaView<'a, bf16>),
}

impl<'a> View<'a> {
    /// The dtype it holds.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            View::F32(_) => DType::F32,
            View::Bf16(_) => DType::BF16,
        }
    }

    /// The same memory from value `from` on.
    pub(crate) fn from(&self, from: usize) -> View<'a> {
        match self {
            View::F32(v) => View::F32(v.slice(from..)),
            View::Bf16(v) => View::Bf16(v.slice(from..)),
        }
    }
}

/// The one dtype of `views`, the data of one kernel call; an error naming `kernel` if they
/// differ.
pub(crate) fn one_dtype<'v, 'a: 'v>(
    kernel: &str,
    views: impl IntoIterator<Item = &'v View<'a>>,
) -> CResult<DType> {
    let mut dtypes = views.into_iter().map(View::dtype);
    let Some(first) = dtypes.next() else {
        candle_core::bail!("{kernel}: no input");
    };
    if dtypes.any(|d| d != first) {
        candle_core::bail!("{kernel}: its data arguments differ in dtype");
    }
    Ok(first)
}

/// [`View`] of a contiguous f32 or bf16 kernel argument (`what` names it in the error).
pub(crate) fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> CResult<View<'a>> {
    if !l.is_contiguous() {
        candle_core::bail!("{what}: expected a contiguous tensor");
    }
    match s.dtype() {
        DType::F32 => Ok(View::F32(
            s.as_cuda_slice::<f32>()?.slice(l.start_offset()..),
        )),
        DType::BF16 => Ok(View::Bf16(
            s.as_cuda_slice::<bf16>()?.slice(l.start_offset()..),
        )),
        other => candle_core::bail!("{what}: expected an f32 or bf16 tensor, got {other:?}"),
    }
}

/// The name of the instantiation of `kernel` for data of `dtype` (`relu` → `relu_bf16`).
pub(crate) fn typed_name(kernel: &str, dtype: DType) -> String {
    match dtype {
        DType::BF16 => format!("{kernel}_bf16"),
        _ => format!("{kernel}_f32"),
    }
}

/// A fresh kernel output of f32 or bf16 values.
pub(crate) enum Buf {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<bf16>),
}

impl Buf {
    /// The dtype it holds.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Buf::F32(_) => DType::F32,
            Buf::Bf16(_) => DType::BF16,
        }
    }

    /// Its memory from value `from` on.
    pub(crate) fn view_from(&self, from: usize) -> View<'_> {
        match self {
            Buf::F32(s) => View::F32(s.slice(from..)),
            Buf::Bf16(s) => View::Bf16(s.slice(from..)),
        }
    }

    /// `n` uninitialised values of `dtype` (f32 unless bf16); the kernel writes every one.
    pub(crate) fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> CResult<Buf> {
        // SAFETY: every kernel this output is handed to writes each of its `n` values before
        // anything reads them (element-wise maps and per-row kernels cover every index).
        Ok(match dtype {
            DType::BF16 => Buf::Bf16(unsafe { dev.alloc::<bf16>(n)? }),
            _ => Buf::F32(unsafe { dev.alloc::<f32>(n)? }),
        })
    }

    /// The storage candle wraps around it.
    pub(crate) fn into_storage(self, dev: &CudaDevice) -> CudaStorage {
        match self {
            Buf::F32(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
            Buf::Bf16(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
        }
    }
}

/// Pushes a [`View`] or a [`Buf`] as a kernel's pointer argument, whichever dtype it holds.
pub(crate) trait PushTyped<'a> {
    fn view<'b: 'a, 'c: 'b>(&mut self, v: &'b View<'c>) -> &mut Self;
    fn buf<'b: 'a>(&mut self, v: &'b Buf) -> &mut Self;
}

impl<'a> PushTyped<'a> for LaunchArgs<'a> {
    fn view<'b: 'a, 'c: 'b>(&mut self, v: &'b View<'c>) -> &mut Self {
        match v {
            View::F32(v) => self.arg(v),
            View::Bf16(v) => self.arg(v),
        }
    }

    fn buf<'b: 'a>(&mut self, v: &'b Buf) -> &mut Self {
        match v {
            Buf::F32(v) => self.arg(v),
            Buf::Bf16(v) => self.arg(v),
        }
    }
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
/// inputs of one dtype, into a fresh tensor of their shape and dtype: the CUDA arm of the
/// activations. `kernel` is the name without its dtype (`relu` runs `relu_f32` or `relu_bf16`).
pub(crate) fn map(
    module: &Module,
    kernel: &str,
    inputs: &[(&CudaStorage, &Layout)],
) -> CResult<(CudaStorage, Shape)> {
    launch_over(module, kernel, inputs, Grid::Elements)
}

/// A row kernel `kernel(inputs…, out, rows, d, scale)` with one warp per row of the last axis
/// (f32 only: the softmax rows).
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
        views.push(view(s, l, kernel)?);
    }
    let dtype = one_dtype(kernel, &views)?;
    if matches!(grid, Grid::WarpPerRow(_)) && dtype != DType::F32 {
        candle_core::bail!("{kernel}: the row kernels take f32 data");
    }
    let n = shape.elem_count();
    let dev = &first.device;
    let out = Buf::alloc(dev, dtype, n)?;
    let f = dev.get_or_load_custom_func(&typed_name(kernel, dtype), module.name, module.ptx)?;
    let len = n as i64;
    let d = *shape.dims().last().unwrap_or(&1);
    let (rows, di) = ((n / d.max(1)) as i64, int(d, "row length")?);
    let mut b = f.builder();
    for v in &views {
        b.view(v);
    }
    b.buf(&out);
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
    Ok((out.into_storage(dev), shape))
}

/// How a column kernel of `cuda/affine.cu` runs over `(rows, d)` data.
pub(crate) enum Columns {
    /// Element-wise over all `rows·d` values, a column's parameter broadcast: `kernel(inputs…,
    /// out, n, d)` into a fresh `(rows, d)`-shaped output of the data's dtype; the inputs after
    /// the first are f32 parameters.
    Map,
    /// Column sums into a zeroed f32 output of `parts·d` values: `kernel(inputs…, out, rows, d,
    /// chunk)`, one thread per column and block row per chunk of rows; every input is data.
    Sums { parts: usize },
}

/// A kernel of `cuda/affine.cu` (named without its dtype, which is the first input's) over
/// contiguous inputs whose first is `(…, d)`-shaped data, f32 or bf16.
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
        .map(|(s, l)| view(s, l, kernel))
        .collect::<CResult<Vec<_>>>()?;
    let dtype = views[0].dtype();
    let expected = |i: usize| match how {
        Columns::Map if i > 0 => DType::F32,
        _ => dtype,
    };
    if views
        .iter()
        .enumerate()
        .any(|(i, v)| v.dtype() != expected(i))
    {
        candle_core::bail!("{kernel}: expected data of one dtype (f32 or bf16) and f32 parameters");
    }
    let n = first_l.shape().elem_count();
    let d = *first_l.dims().last().unwrap_or(&1);
    let rows = n / d.max(1);
    let dev = &first.device;
    let f = dev.get_or_load_custom_func(&typed_name(kernel, dtype), AFFINE.name, AFFINE.ptx)?;
    let (n64, d64, rows64) = (n as i64, d as i64, rows as i64);
    let (out, shape, cfg, chunk) = match how {
        Columns::Map => (
            Buf::alloc(dev, dtype, n)?,
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
            (
                Buf::F32(dev.alloc_zeros::<f32>(parts * d)?),
                shape,
                cfg,
                chunk as i64,
            )
        }
    };
    let mut b = f.builder();
    for v in &views {
        b.view(v);
    }
    b.buf(&out);
    if chunk == 0 {
        b.arg(&n64).arg(&d64);
    } else {
        b.arg(&rows64).arg(&d64).arg(&chunk);
    }
    unsafe { b.launch(cfg) }.w()?;
    Ok((out.into_storage(dev), shape))
}
