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

/// The contents of a contiguous f32 or bf16 tensor's storage (`what` names it in the error):
/// the operands a CPU product takes ([`matmul_bf16`](super::matmul_bf16)).
#[derive(Clone, Copy)]
pub(crate) enum Values<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

impl<'a> Values<'a> {
    /// The values in `r`.
    pub(crate) fn range(self, r: std::ops::Range<usize>) -> Values<'a> {
        match self {
            Values::F32(v) => Values::F32(&v[r]),
            Values::Bf16(v) => Values::Bf16(&v[r]),
        }
    }
}

/// [`slice`] for an operand that may also be bf16 (see [`Values`]).
pub(crate) fn values<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<Values<'a>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous tensor")
    };
    match s {
        CpuStorage::BF16(v) => Ok(Values::Bf16(&v[a..b])),
        _ => Ok(Values::F32(&s.as_slice::<f32>()?[a..b])),
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

/// Whether one of sslab's element-wise kernels takes the activation `x`: as [`own_kernel`],
/// and also bf16 on CUDA in a `cuda` build (the activations a bf16 autocast keeps there, which
/// the kernels of `cuda/activation.cu`, `affine.cu` and `batch_norm.cu` read and write as bf16).
pub(crate) fn own_kernel_data(x: &Tensor) -> bool {
    own_kernel(x)
        || (cfg!(feature = "cuda") && x.device().is_cuda() && x.dtype() == candle_core::DType::BF16)
}

/// The error of a CUDA arm in a build without the feature it needs. No CUDA tensor reaches one
/// there (the dispatchers' [`own_kernel`] sends it to candle's ops), so this is a guard, written
/// once for every op that has a CUDA arm.
#[cfg(not(feature = "cudnn"))]
pub(crate) fn needs_feature<T>(what: &str, feature: &str) -> CResult<T> {
    candle_core::bail!("{what} on CUDA needs sslab built with the `{feature}` feature")
}

/// Whether [`written`] fills new buffers with NaN before the kernel writes them (tests only:
/// a kernel that reads a value it has not written then shows NaN).
static POISON_OUTPUTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every buffer [`written`] hands out start as NaN (`true`) or uninitialised (`false`,
/// the default). For tests that check that the CPU kernels write every value of their
/// outputs before reading it: a run with poisoning must give the same numbers as one without.
#[doc(hidden)]
pub fn poison_outputs(on: bool) {
    POISON_OUTPUTS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A plain value type that [`written`] may hand out uninitialised: every bit pattern is a
/// valid value, and `POISON` is the one a test fills new buffers with.
pub(crate) trait Plain: Copy {
    const POISON: Self;
}

impl Plain for f32 {
    const POISON: Self = f32::NAN;
}

/// Packed pairs of bf16 (the bf16 matrix product's panels); all ones is a pair of NaNs.
impl Plain for u32 {
    const POISON: Self = u32::MAX;
}

/// An activation stored in bf16 for a product to read; all ones is a NaN.
impl Plain for half::bf16 {
    const POISON: Self = half::bf16::NAN;
}

/// A vector of `len` values filled by `write`, which must write every element and read none
/// before writing it. The buffer is not zeroed first: a kernel's output filled with zeros
/// and then overwritten costs a second pass over memory (3-7% of a ViT or ResNet training
/// step on the CPU went to `memset`, measured with `perf`).
pub(crate) fn written<T: Plain>(len: usize, write: impl FnOnce(&mut [T])) -> Vec<T> {
    let mut v = Vec::<T>::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    if POISON_OUTPUTS.load(std::sync::atomic::Ordering::Relaxed) {
        spare.fill(std::mem::MaybeUninit::new(T::POISON));
    }
    // SAFETY: `spare` is `len` allocated `MaybeUninit<T>`, which has the layout of `T`;
    // every bit pattern is a valid `T` (`Plain`), and `write`'s contract is to store to each
    // element before any load of it, so no uninitialised value is ever read.
    let out = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
    write(out);
    // SAFETY: all `len` elements were written by `write` above (its contract).
    unsafe { v.set_len(len) };
    v
}
