//! Element-wise activations: ReLU (and the residual `relu(a + b)`) and exact GELU, in parallel
//! chunks with one-pass backward kernels.

use super::par::{par_map, par_zip_map, CHUNK};
use super::precision::f32_or_bf16;
use super::storage::{own_kernel_data, slice, written, CResult};
use crate::error::Result;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

/// The CUDA arm of an element-wise op: `kernel` of `cuda/activation.cu` over the inputs.
#[cfg(feature = "cuda")]
fn on_cuda(kernel: &str, inputs: &[(&CudaStorage, &Layout)]) -> CResult<(CudaStorage, Shape)> {
    super::cuda::map(&super::cuda::ACTIVATION, kernel, inputs)
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(kernel: &str, _: &[(&CudaStorage, &Layout)]) -> CResult<(CudaStorage, Shape)> {
    super::storage::needs_feature(kernel, "cuda")
}
use rayon::prelude::*;

/// ReLU in parallel chunks, with a one-pass backward `g·[y > 0]` (candle's is serial forward
/// and three ops backward: compare, convert, multiply).
pub(crate) struct ReluOp;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "sslab-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, "relu input")?;
        Ok((
            CpuStorage::F32(par_map(x, |v| v.max(0.0))),
            l.shape().clone(),
        ))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CResult<(CudaStorage, Shape)> {
        on_cuda("relu", &[(s, l)])
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(y.apply_op2(&g.contiguous()?, ReluGrad)?))
    }
}

/// `relu(a + b)` in one pass, for a residual block's output: the sum before the ReLU is then
/// never stored. Backward: `g·[y > 0]` to both arguments.
pub(crate) struct AddReluOp;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "sslab-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let a = slice(s1, l1, "residual branch")?;
        let b = slice(s2, l2, "residual shortcut")?;
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "add-relu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let y = par_zip_map(a, b, |a, b| (a + b).max(0.0));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        on_cuda("add_relu", &[(s1, l1), (s2, l2)])
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let d = y.apply_op2(&g.contiguous()?, ReluGrad)?;
        Ok((Some(d.clone()), Some(d)))
    }
}

/// `g·[y > 0]`; arguments (y, g).
pub(super) struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "sslab-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "relu output")?;
        let g = slice(s2, l2, "relu gradient")?;
        if y.len() != g.len() {
            candle_core::bail!("relu gradient: {} values for {} outputs", g.len(), y.len());
        }
        let dx = par_zip_map(y, g, |y, g| if y > 0.0 { g } else { 0.0 });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        on_cuda("relu_grad", &[(s1, l1), (s2, l2)])
    }
}

/// Exact (erf) GELU in parallel chunks, with erf and exp as branch-free polynomials (AVX2 where
/// the CPU has it) instead of libm's scalar `erff`, which took 6% of a ViT step. Values agree
/// with candle's `gelu_erf` to a few float ulps; the backward `g·(Φ(x) + x·φ(x))` is one pass.
/// With `bf16` the CPU result is stored in bf16 ([`gelu_for_product`]).
pub(crate) struct GeluOp {
    pub(crate) bf16: bool,
}

/// erf(x) as the odd rational minimax fit that XLA and Eigen use for f32 (error a few ulps),
/// clamped at ±4 where erf is 1 in f32; no branches, so the element loops vectorise.
#[inline(always)]
fn erf_poly(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    for c in [
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    for c in [-1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

/// eˣ for x ≤ 0 (Cephes' expf: 2ⁿ·e^r with |r| ≤ ln2/2 and a degree-6 polynomial, error
/// about 1 ulp); below -87 it flushes to the smallest normal power of two, effectively 0.
/// (NaN gives that too; above 88, which no caller passes, e⁸⁸.)
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    // Bounded and never NaN (`max` and `min` return the number), so that n below converts
    // to an integer without Rust's saturating `as`, which does not vectorise: it compiled to
    // 16 scalar conversions with compares per vector and made GELU's gradient and softmax
    // about twice as slow.
    #[allow(clippy::manual_clamp)] // `clamp` keeps NaN, which the conversion must not see
    let x = x.max(-87.0).min(88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p * r + c;
    }
    // SAFETY: n is an integer in -126..=127 (x is in -87..=88).
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    (p * r * r + r + 1.0) * scale
}

/// Φ(x), the standard normal CDF.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf_poly(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_chunk(x: &[f32], y: &mut [f32]) {
    for (y, &v) in y.iter_mut().zip(x) {
        *y = normal_cdf(v) * v;
    }
}

/// `dx = g · (Φ(x) + x·φ(x))`.
#[inline(always)]
fn gelu_grad_chunk(x: &[f32], g: &[f32], dx: &mut [f32]) {
    // 1/√(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((d, &v), &g) in dx.iter_mut().zip(x).zip(g) {
        let phi = exp_nonpositive(-0.5 * v * v) * INV_SQRT_2PI;
        *d = g * (normal_cdf(v) + v * phi);
    }
}

wide!(gelu_wide = gelu_chunk(x: &[f32], y: &mut [f32]));
wide!(gelu_grad_wide = gelu_grad_chunk(x: &[f32], g: &[f32], dx: &mut [f32]));
impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "sslab-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, "gelu input")?;
        let y = f32_or_bf16(x.len(), (CHUNK, 1), self.bf16, |start, y| {
            gelu_wide(&x[start..start + y.len()], y)
        });
        Ok((y, l.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CResult<(CudaStorage, Shape)> {
        on_cuda("gelu", &[(s, l)])
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(x.apply_op2(&g.contiguous()?, GeluGrad)?))
    }
}

/// The GELU input gradient from the input and the output gradient.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "sslab-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "gelu input")?;
        let g = slice(s2, l2, "gelu gradient")?;
        let dx = written(x.len(), |dx| {
            dx.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(d, (x, g))| gelu_grad_wide(x, g, d));
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
        on_cuda("gelu_grad", &[(s1, l1), (s2, l2)])
    }
}

/// ReLU: on the CPU sslab's parallel kernel with a one-pass backward, on CUDA (f32, or bf16
/// activations, `cuda` build) its CUDA kernels, elsewhere candle's.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if own_kernel_data(x) {
        return Ok(x.contiguous()?.apply_op1(ReluOp)?);
    }
    Ok(x.relu()?)
}

/// `relu(a + b)`: on the CPU and CUDA one kernel (the sum is never stored), elsewhere
/// candle's ops. Operands of different dtypes (a bf16 activation and an f32 one) add in the
/// wider, f32, as PyTorch promotes them.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() != b.dtype() {
        let f32 = candle_core::DType::F32;
        return add_relu(&a.to_dtype(f32)?, &b.to_dtype(f32)?);
    }
    if own_kernel_data(a) && own_kernel_data(b) && a.dims() == b.dims() {
        return Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)?);
    }
    Ok((a + b)?.relu()?)
}

/// Exact (erf) GELU: on the CPU sslab's parallel kernel with a one-pass derivative, on CUDA
/// its CUDA kernels (f32 or bf16), elsewhere candle's `gelu_erf` (a bf16 input through f32).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if own_kernel_data(x) {
        return Ok(x.contiguous()?.apply_op1(GeluOp { bf16: false })?);
    }
    if x.dtype() == candle_core::DType::BF16 {
        // As the CUDA kernel: f32 arithmetic, one rounding each way.
        return super::precision::via_f32(x, gelu);
    }
    Ok(x.gelu_erf()?)
}

/// [`gelu`] for a result that only a linear layer ([`linear_bias`](super::linear_bias))
/// reads, as a ViT's MLP: under a bf16 [`autocast`](super::autocast) on a CPU with the bf16
/// kernels it is stored in bf16, the values the product's packing would round it to (the
/// same bits everywhere after), for half the bytes. The backward reads the f32 input, not
/// this result. Otherwise it is [`gelu`].
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sslab::kernels::{autocast, cpu_has_bf16, gelu_for_product, Precision};
/// let x = Tensor::new(&[0f32, 100.0], &Device::Cpu)?;
/// let _bf16 = autocast(Precision::Bf16);
/// let y = gelu_for_product(&x)?;
/// assert_eq!(y.dtype(), if cpu_has_bf16() { DType::BF16 } else { DType::F32 });
/// // 100 is exact in bf16 (7 significant bits).
/// assert_eq!(y.to_dtype(DType::F32)?.to_vec1::<f32>()?, [0.0, 100.0]);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn gelu_for_product(x: &Tensor) -> Result<Tensor> {
    if super::storage::on_cpu_f32(x) && super::precision::cpu_bf16_operands(x.device()) {
        return Ok(x.contiguous()?.apply_op1(GeluOp { bf16: true })?);
    }
    gelu(x)
}
