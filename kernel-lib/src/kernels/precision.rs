//! Mixed precision as PyTorch's autocast does it: under `bf16`, convolutions and matrix
//! products take bf16 operands (f32 accumulation, tensor cores on a GPU), while parameters,
//! optimizer state, normalisation statistics, softmax and losses stay f32. The casts are candle
//! ops, so gradients flow back to the f32 weights through them.
//!
//! Where the activations live between ops depends on the device ([`bf16_activations`]):
//!
//! - On CUDA a layer's product (`linear`, `conv2d`) returns bf16, as in PyTorch, and the ops
//!   after it (BatchNorm, ReLU, the residual add, GELU, a bias) read and write bf16 with f32
//!   arithmetic inside: half the memory and traffic of f32 activations. LayerNorm and softmax
//!   read bf16 and return f32, as autocast's f32 ops do; a model's outputs (pooled features,
//!   heads, tokens) are f32, so losses never see bf16.
//! - On the CPU the tensors stay f32 and each product rounds its operands to bf16 while
//!   packing them (`matmul_bf16.rs`): the CPU's kernels read f32, and its bf16 arithmetic is in
//!   the products alone. The exception is an activation that only a product reads (a ViT
//!   block's LayerNorm, attention and GELU results, [`cpu_bf16_operands`]): the op before the
//!   product rounds it as packing would and stores bf16, the same bits for half the bytes.
//!
//! The setting is per thread and scoped, like `torch.autocast`: a `Run` holds an [`Autocast`]
//! guard for the forward and backward pass of each step, so two runs in one notebook do not
//! see each other's precision.

use crate::error::Result;
use candle_core::{DType, Device, Tensor};
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
    static BF16_ON_CPU: Cell<bool> = const { Cell::new(false) };
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

/// Whether activations on `device` are kept in bf16 between ops: under a bf16 autocast on
/// CUDA (and on the CPU while a test holds [`bf16_activations_on_cpu`]).
pub(crate) fn bf16_activations(device: &Device) -> bool {
    autocast_precision() == Precision::Bf16 && (device.is_cuda() || BF16_ON_CPU.with(|c| c.get()))
}

/// Restores the CPU's f32 activations when dropped (see [`bf16_activations_on_cpu`]).
#[doc(hidden)]
#[must_use = "the CPU returns to f32 activations when the guard is dropped"]
pub struct Bf16OnCpu(bool);

impl Drop for Bf16OnCpu {
    fn drop(&mut self) {
        BF16_ON_CPU.with(|c| c.set(self.0));
    }
}

/// Keeps activations on the CPU in bf16 under a bf16 autocast, as CUDA keeps them, until the
/// guard drops (this thread only). For tests: the ops take the same bf16 tensors as on a GPU,
/// computed through f32 where the CPU has no bf16 kernel, so the data flow of a GPU's bf16 step
/// (which op gets which dtype, where the model returns to f32, how gradients reach the f32
/// weights) runs and is checked without one.
#[doc(hidden)]
pub fn bf16_activations_on_cpu(on: bool) -> Bf16OnCpu {
    Bf16OnCpu(BF16_ON_CPU.with(|c| c.replace(on)))
}

/// `f(x)` computed in f32 when `x` is a bf16 activation: an op that has no bf16 kernel on
/// this device (or must run in f32, as statistics do) widens its input, computes, and rounds
/// its result back to bf16; f32 input passes through.
pub(crate) fn via_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if x.dtype() != DType::BF16 {
        return f(x);
    }
    Ok(f(&x.to_dtype(DType::F32)?)?.to_dtype(DType::BF16)?)
}

/// `f(a, b)`, a product, in this thread's precision. Under a bf16 autocast, when the operands
/// are f32 or bf16 and not both bf16 already, both are cast to bf16 (rounded and computed in
/// f32 on the CPU: the numbers of a bf16 product with f32 accumulation); the result is bf16
/// when `layer` (a model's linear or convolution) and the device keeps bf16 activations, f32
/// otherwise. Anything else is `f(a, b)` as it is.
pub(crate) fn autocast_pair(
    a: &Tensor,
    b: &Tensor,
    layer: bool,
    f: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let float = |t: &Tensor| matches!(t.dtype(), DType::F32 | DType::BF16);
    let casts = autocast_precision() == Precision::Bf16
        && float(a)
        && float(b)
        && (a.dtype() == DType::F32 || b.dtype() == DType::F32);
    if !casts {
        return f(a, b);
    }
    let keep = layer && bf16_activations(a.device());
    if a.device().is_cpu() {
        // The CPU's products go through `cpu_bf16` before they get here, and its
        // convolutions round their own products' operands (`conv2d`); what is left (another
        // op, or bf16 activations under `bf16_activations_on_cpu`) is rounded to bf16 and
        // computed in f32.
        let round =
            |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?) };
        let y = f(&round(a)?, &round(b)?)?;
        return Ok(if keep { y.to_dtype(DType::BF16)? } else { y });
    }
    let y = f(&a.to_dtype(DType::BF16)?, &b.to_dtype(DType::BF16)?)?;
    Ok(if keep { y } else { y.to_dtype(DType::F32)? })
}

/// Whether an activation on `device` that only a product reads (a ViT block's LayerNorm and
/// GELU outputs, the inputs of its linear layers) is stored in bf16: under a bf16 autocast on
/// a CPU with the bf16 kernels, where the tensors are otherwise f32. The product would round
/// it to bf16 as it packs it anyway, so the numbers are the same bits; what changes is that
/// the op writes, the product reads (forward, and again for the weight gradient) and the
/// graph keeps half the bytes.
pub(crate) fn cpu_bf16_operands(device: &Device) -> bool {
    autocast_precision() == Precision::Bf16
        && device.is_cpu()
        && !bf16_activations(device)
        && super::matmul_bf16::available()
}

/// Whether `x` may be the input of a CPU bf16 product: f32, or bf16 that an op stored for a
/// product ([`cpu_bf16_operands`]).
pub(crate) fn cpu_operand(x: &Tensor) -> bool {
    super::storage::on_cpu_f32(x) || (x.dtype() == DType::BF16 && cpu_bf16_operands(x.device()))
}

/// Whether a product of `a` and `b` takes the CPU's bf16 kernel (`matmul_bf16.rs`): this
/// thread autocasts to bf16 and both are CPU operands ([`cpu_operand`]: f32, or bf16 stored
/// for a product).
pub(crate) fn cpu_bf16(a: &Tensor, b: &Tensor) -> bool {
    autocast_precision() == Precision::Bf16 && cpu_operand(a) && cpu_operand(b)
}

/// Whether this CPU has the bf16 kernels a `precision = "bf16"` run needs (AVX-512 with
/// AVX512-BF16: Intel since Cooper Lake, AMD since Zen 4).
pub fn cpu_has_bf16() -> bool {
    super::matmul_bf16::available()
}

/// Values per f32 scratch block of [`f32_or_bf16`]'s bf16 output: in L1 while it is rounded.
const SCRATCH: usize = 2048;

/// An op's output of `len` values, computed in f32 block by block in parallel: `f(start,
/// out)` writes values `start..start + out.len()` (blocks of `block`, cut at multiples of
/// `unit`, a row). With `bf16` the values are rounded to bf16 (to nearest even, as a bf16
/// product packs f32) through a small f32 scratch and stored as bf16: the output of an op
/// that only a bf16 product reads (`precision::cpu_bf16_operands`).
pub(crate) fn f32_or_bf16(
    len: usize,
    (block, unit): (usize, usize),
    bf16: bool,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> candle_core::CpuStorage {
    use rayon::prelude::*;
    let block = block.max(1);
    if !bf16 {
        return candle_core::CpuStorage::F32(super::storage::written(len, |y: &mut [f32]| {
            y.par_chunks_mut(block)
                .enumerate()
                .for_each(|(i, yb)| f(i * block, yb));
        }));
    }
    let sub = (SCRATCH / unit.max(1)).max(1) * unit.max(1);
    candle_core::CpuStorage::BF16(super::storage::written(len, |y: &mut [half::bf16]| {
        y.par_chunks_mut(block).enumerate().for_each(|(i, yb)| {
            let mut scratch = vec![0f32; sub.min(yb.len())];
            for (j, ys) in yb.chunks_mut(sub).enumerate() {
                let s = &mut scratch[..ys.len()];
                f(i * block + j * sub, s);
                super::matmul_bf16::round_into(s, ys);
            }
        });
    }))
}
