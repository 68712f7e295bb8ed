//! Mixed precision as PyTorch's autocast does it: under `bf16`, convolutions and matrix
//! products take bf16 operands (f32 accumulation, tensor cores on a GPU) and return f32, while
//! parameters, optimizer state, normalisation statistics, softmax and losses stay f32. The
//! casts are candle ops, so gradients flow back to the f32 weights through them.
//!
//! The setting is per thread and scoped, like `torch.autocast`: a `Run` holds an [`Autocast`]
//! guard for the forward and backward pass of each step, so two runs in one notebook do not
//! see each other's precision.

use crate::error::Result;
use candle_core::{DType, Tensor};
use std::cell::Cell;

config_names! {
    /// How a training step computes (`precision` in a run's config).
    #[derive(Default)]
    pub enum Precision {
        /// f32 everywhere (convolutions on CUDA may still use TF32, see `cuda.tf32`).
        #[default]
        F32,
        /// bf16 convolutions and matrix products with f32 results, weights and statistics.
        Bf16,
    }
}

thread_local! {
    static AUTOCAST: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// Restores the previous precision of this thread when dropped (see [`autocast`]).
#[must_use = "the precision returns to the previous one when the guard is dropped"]
pub struct Autocast(Precision);

impl Drop for Autocast {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.0));
    }
}

/// Computes convolutions and matrix products on this thread in `p` until the guard drops.
///
/// ```
/// use sslab::kernels::{autocast, autocast_precision, Precision};
/// {
///     let _bf16 = autocast(Precision::Bf16);
///     assert_eq!(autocast_precision(), Precision::Bf16);
/// }
/// assert_eq!(autocast_precision(), Precision::F32);
/// ```
pub fn autocast(p: Precision) -> Autocast {
    Autocast(AUTOCAST.with(|a| a.replace(p)))
}

/// The precision of this thread's convolutions and matrix products.
pub fn autocast_precision() -> Precision {
    AUTOCAST.with(|a| a.get())
}

/// `f(a, b)` with both operands cast to bf16 and the result cast back to f32 when this thread
/// autocasts to bf16 and the operands are f32; otherwise `f(a, b)` as it is.
pub(crate) fn autocast_pair(
    a: &Tensor,
    b: &Tensor,
    f: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let casts = autocast_precision() == Precision::Bf16
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32;
    if !casts {
        return f(a, b);
    }
    if a.device().is_cpu() {
        // The CPU's products go through `cpu_bf16` before they get here, and its
        // convolutions round their own products' operands (`conv2d`); what is left (another
        // op) is rounded to bf16 and computed in f32: the numbers of a bf16 product with f32
        // accumulation.
        let round =
            |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?) };
        return f(&round(a)?, &round(b)?);
    }
    let y = f(&a.to_dtype(DType::BF16)?, &b.to_dtype(DType::BF16)?)?;
    Ok(y.to_dtype(DType::F32)?)
}

/// Whether a product of `a` and `b` takes the CPU's bf16 kernel (`matmul_bf16.rs`): this
/// thread autocasts to bf16 and both are f32 on the CPU.
pub(crate) fn cpu_bf16(a: &Tensor, b: &Tensor) -> bool {
    autocast_precision() == Precision::Bf16
        && super::storage::on_cpu_f32(a)
        && super::storage::on_cpu_f32(b)
}

/// Whether this CPU has the bf16 kernels a `precision = "bf16"` run needs (AVX-512 with
/// AVX512-BF16: Intel since Cooper Lake, AMD since Zen 4).
pub fn cpu_has_bf16() -> bool {
    super::matmul_bf16::available()
}
