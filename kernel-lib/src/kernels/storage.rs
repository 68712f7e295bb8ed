//! Reading candle's CPU storage from inside a kernel, and the test every dispatcher makes first.

use candle_core::{CpuStorage, Layout, Tensor};

/// candle's result type, which `CustomOp` implementations return.
pub(crate) type CResult<T> = candle_core::Result<T>;

/// The f32 contents of a contiguous tensor's storage (`what` names it in the error).
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

/// Whether one of sslab's own kernels takes `x`: f32 on the CPU, or on CUDA in a build with the
/// `cuda` feature (kernels that have a CUDA arm); anything else goes through candle's ops.
pub(crate) fn own_kernel(x: &Tensor) -> bool {
    x.dtype() == candle_core::DType::F32
        && (x.device().is_cpu() || (cfg!(feature = "cuda") && x.device().is_cuda()))
}

/// The error of a CUDA arm in a build without the feature it needs. No CUDA tensor reaches one
/// there (the dispatchers' [`own_kernel`] sends it to candle's ops), so this is a guard, written
/// once for every op that has a CUDA arm.
#[cfg(not(feature = "cudnn"))]
pub(crate) fn needs_feature<T>(what: &str, feature: &str) -> CResult<T> {
    candle_core::bail!("{what} on CUDA needs sslab built with the `{feature}` feature")
}
