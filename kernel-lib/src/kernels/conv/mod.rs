//! CPU kernels with explicit backward passes for the two operations that dominate a ResNet step
//! in candle 0.11 (see `docs/kernels.md`): 2-D convolution and training-mode batch
//! normalisation.
//!
//! * Convolution runs as im2col + GEMM per sample (parallel over the batch); its input gradient
//!   is GEMM + col2im and its weight gradient GEMMs over groups of samples — instead of
//!   candle's direct `conv_transpose2d` loop. 3×3 layers of 16 or more channels take
//!   [`winograd`] (at stride 2: the forward always, the gradients where measured faster).
//! * Batch normalisation computes the normalised activations in two passes and its gradient in
//!   two more, instead of ~10 generic ops each with its own backward.
//!
//! * On CUDA the three passes are cuDNN calls with algorithms measured per shape ([`cudnn`],
//!   with the `cudnn` feature; what it decides is in [`plan`], testable without a GPU).
//!
//! Other devices and dtypes use candle's own ops; tests check the paths agree (values and
//! gradients).

#[cfg(feature = "cudnn")]
mod cudnn;
mod im2col;
pub(crate) mod plan;
pub(crate) mod winograd;

use super::matmul::{matmul_nt_narrow, product, NARROW};
use super::par::{images_per_group, sum_over_groups};
use super::storage::{slice, written, CResult};
use crate::error::Result;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape, Tensor};
use im2col::{col2im, group_cols, to_group_matrix};
use plan::{ConvRoute, Pass};
use rayon::prelude::*;

/// Geometry of a convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
    /// Products with bf16-rounded operands and f32 sums (CPU autocast bf16).
    bf16: bool,
    /// Layout of the activations and the kernel (cuDNN only takes NHWC).
    format: plan::Format,
}

impl ConvGeom {
    pub(crate) fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> CResult<Self> {
        if x.len() != 4 || wt.len() != 4 || x[1] != wt[1] || wt[2] != wt[3] {
            candle_core::bail!("conv2d: input {x:?} and kernel {wt:?} do not match");
        }
        let (n, c, h, w, o, k) = (x[0], x[1], x[2], x[3], wt[0], wt[2]);
        if h + 2 * pad < k || w + 2 * pad < k || stride == 0 {
            candle_core::bail!("conv2d: kernel {k} larger than padded input {h}x{w}");
        }
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        Ok(ConvGeom {
            n,
            c,
            h,
            w,
            o,
            k,
            stride,
            pad,
            ho,
            wo,
            bf16: false,
            format: plan::Format::Nchw,
        })
    }

    /// The geometry of an NHWC input `(n, h, w, c)` and an OHWI kernel `(o, k, k, c)`.
    pub(crate) fn nhwc(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> CResult<Self> {
        let (&[n, h, w, c], &[o, k, k2, ci]) = (x, wt) else {
            candle_core::bail!("conv2d channels-last: input {x:?} and kernel {wt:?} are not 4-D");
        };
        let mut g = ConvGeom::new(&[n, c, h, w], &[o, ci, k, k2], stride, pad)?;
        g.format = plan::Format::Nhwc;
        Ok(g)
    }

    /// An error unless the geometry is NCHW, the only layout of the CPU kernels.
    fn nchw_only(&self) -> CResult<()> {
        if self.format != plan::Format::Nchw {
            candle_core::bail!("conv2d: the CPU kernels take NCHW data");
        }
        Ok(())
    }
    /// This geometry with its products in bf16 (`true`) or f32.
    pub(crate) fn with_bf16(mut self, bf16: bool) -> Self {
        self.bf16 = bf16;
        self
    }
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
    fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    /// Whether the forward pass takes [`winograd`].
    fn winograd(&self) -> bool {
        winograd::applies(self.k, self.stride, self.pad, (self.c, self.o))
    }
    /// Whether the input-gradient pass takes it.
    fn winograd_input_grad(&self) -> bool {
        let (k, s, p, ch) = (self.k, self.stride, self.pad, (self.c, self.o));
        winograd::applies_input_grad(k, s, p, ch, (self.ho, self.wo))
    }
    /// Whether the weight-gradient pass takes it.
    fn winograd_weight_grad(&self) -> bool {
        let (k, s, p, ch) = (self.k, self.stride, self.pad, (self.c, self.o));
        winograd::applies_weight_grad(k, s, p, ch, (self.ho, self.wo))
    }
    /// A 1×1 stride-1 unpadded conv needs no im2col: the input already is the column matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// Output pixels per GEMM the im2col weight gradient aims for. One image of ResNet-18's later
/// stride-2 layers has 16 or 64 output pixels, and a per-image `dW += dYₙ · colsₙᵀ` over 16
/// pixels reads and writes all of dW for 16 multiply-adds per entry; below this many pixels
/// several images share one product (256×512 1×1 dW: 97-134 → 160-165 GFLOP/s). The forward
/// and input gradient stay per image: grouped, their column matrix outgrows the L2 cache and
/// measured no faster.
const IM2COL_COLS: usize = 256;

/// Forward convolution (no bias).
pub(crate) struct Conv2dOp {
    pub stride: usize,
    pub pad: usize,
    /// bf16 operands with f32 sums on the CPU, in the backward too (PyTorch's CPU autocast).
    pub bf16: bool,
    /// NCHW input with an OIHW kernel, or (cuDNN only) NHWC input with an OHWI kernel; the
    /// output and both gradients come in the same layout.
    pub format: plan::Format,
}

impl Conv2dOp {
    /// The NCHW convolution (every device).
    pub(crate) fn nchw(stride: usize, pad: usize, bf16: bool) -> Self {
        let format = plan::Format::Nchw;
        Conv2dOp {
            stride,
            pad,
            bf16,
            format,
        }
    }

    /// The geometry of input and kernel shaped `x` and `w` in this op's layout.
    fn geom(&self, x: &[usize], w: &[usize]) -> CResult<ConvGeom> {
        let (s, p) = (self.stride, self.pad);
        match self.format {
            plan::Format::Nchw => Ok(ConvGeom::new(x, w, s, p)?.with_bf16(self.bf16)),
            plan::Format::Nhwc => ConvGeom::nhwc(x, w, s, p),
        }
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "sslab-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = self.geom(l1.dims(), l2.dims())?;
        g.nchw_only()?;
        let x = slice(s1, l1, "conv2d input")?;
        let w = slice(s2, l2, "conv2d kernel")?;
        let shape = Shape::from((g.n, g.o, g.ho, g.wo));
        // An empty batch (a notebook's empty slice): the kernels below split the batch into
        // groups of images, and an empty one has none.
        if g.n == 0 {
            return Ok((CpuStorage::F32(Vec::new()), shape));
        }
        if g.winograd() {
            let y = winograd::forward(x, w, (g.n, g.c, g.h, g.w), g.o, g.stride, g.bf16);
            return Ok((CpuStorage::F32(y), shape));
        }
        let (ckk, hw, chw) = (g.ckk(), g.hw_out(), g.c * g.h * g.w);
        let y = written(g.n * g.o * hw, |y| {
            y.par_chunks_mut(g.o * hw)
                .zip(x.par_chunks(chw))
                .for_each_init(Vec::new, |cols, (yn, xn)| {
                    let cols = group_cols(&g, xn, cols);
                    product(
                        g.bf16,
                        (g.o, hw, ckk),
                        yn,
                        false,
                        (w, (ckk, 1)),
                        (cols, (hw, 1)),
                    );
                });
        });
        Ok((CpuStorage::F32(y), shape))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        let g = self.geom(l1.dims(), l2.dims())?;
        cuda_pass(Pass::Forward, &g, (s1, l1), (s2, l2))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let g = self.geom(x.dims(), w.dims())?;
        let dy = dy.contiguous()?;
        // An input that no gradient flows to (a network's images) needs none: the stem's
        // input gradient was a whole pass over the batch thrown away.
        let dx = if x.track_op() {
            Some(dy.apply_op2(w, Conv2dInputGrad(g))?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2(&dy, Conv2dWeightGrad(g))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// The input gradient of a convolution of an input shaped `x_dims` (contiguous `dy`).
pub(crate) fn conv2d_dx(
    dy: &Tensor,
    w: &Tensor,
    x_dims: &[usize],
    stride: usize,
    pad: usize,
    bf16: bool,
) -> CResult<Tensor> {
    let g = ConvGeom::new(x_dims, w.dims(), stride, pad)?.with_bf16(bf16);
    dy.apply_op2(w, Conv2dInputGrad(g))
}

/// The weight gradient of a convolution with a kernel shaped `w_dims` (contiguous `dy`).
pub(crate) fn conv2d_dw(
    x: &Tensor,
    dy: &Tensor,
    w_dims: &[usize],
    stride: usize,
    pad: usize,
    bf16: bool,
) -> CResult<Tensor> {
    let g = ConvGeom::new(x.dims(), w_dims, stride, pad)?.with_bf16(bf16);
    x.apply_op2(dy, Conv2dWeightGrad(g))
}

/// `dX = col2im(Wᵀ · dY)`; arguments (dY, W).
struct Conv2dInputGrad(ConvGeom);

impl CustomOp2 for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "sslab-conv2d-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = self.0;
        g.nchw_only()?;
        let dy = slice(s1, l1, "conv2d output gradient")?;
        let w = slice(s2, l2, "conv2d kernel")?;
        let shape = Shape::from((g.n, g.c, g.h, g.w));
        if g.n == 0 {
            return Ok((CpuStorage::F32(Vec::new()), shape));
        }
        if g.winograd_input_grad() {
            let (dims, x_dims) = ((g.n, g.o, g.ho, g.wo), (g.c, g.h, g.w));
            let dx = winograd::input_grad(dy, w, dims, x_dims, g.stride, g.bf16);
            return Ok((CpuStorage::F32(dx), shape));
        }
        let (ckk, hw) = (g.ckk(), g.hw_out());
        // Every image's dx is written whole: by the product (pointwise: ckk × hw is c × h × w),
        // or by col2im, which zeroes it first. Neither it nor the columns (this thread's
        // scratch, overwritten by the product) is zero-filled on allocation: those fills were
        // 2% of a Barlow Twins bf16 step in `memset`.
        let dx = written(g.n * g.c * g.h * g.w, |dx| {
            dx.par_chunks_mut(g.c * g.h * g.w)
                .zip(dy.par_chunks(g.o * hw))
                .for_each(|(dxn, dyn_)| {
                    let (l, r) = ((w, (1, ckk)), (dyn_, (hw, 1)));
                    if g.pointwise() {
                        product(g.bf16, (ckk, hw, g.o), dxn, false, l, r);
                    } else {
                        winograd::with_scratch(|cols, _| {
                            let cols = winograd::grow(cols, ckk * hw);
                            product(g.bf16, (ckk, hw, g.o), cols, false, l, r);
                            col2im(&g, cols, dxn);
                        });
                    }
                });
        });
        Ok((CpuStorage::F32(dx), shape))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        cuda_pass(Pass::InputGrad, &self.0, (s1, l1), (s2, l2))
    }
}

/// `dW = Σₙ dYₙ · im2col(Xₙ)ᵀ`; arguments (X, dY).
struct Conv2dWeightGrad(ConvGeom);

impl CustomOp2 for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "sslab-conv2d-dw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let g = self.0;
        g.nchw_only()?;
        let x = slice(s1, l1, "conv2d input")?;
        let dy = slice(s2, l2, "conv2d output gradient")?;
        let shape = Shape::from((g.o, g.c, g.k, g.k));
        if g.n == 0 {
            // No images, no contribution.
            return Ok((CpuStorage::F32(vec![0.0; g.o * g.ckk()]), shape));
        }
        if g.winograd_weight_grad() {
            let dw = winograd::weight_grad(x, dy, (g.n, g.c, g.h, g.w), g.o, g.stride, g.bf16);
            return Ok((CpuStorage::F32(dw), shape));
        }
        let (ckk, hw, o, chw) = (g.ckk(), g.hw_out(), g.o, g.c * g.h * g.w);
        let group = images_per_group(g.n, hw, IM2COL_COLS);
        let init = || (Vec::new(), Vec::new());
        let dw = sum_over_groups(
            (g.n, group),
            o * ckk,
            init,
            |(cols, dyg), dw, imgs, first| {
                let ld = imgs.len() * hw;
                let c = group_cols(&g, &x[imgs.start * chw..imgs.end * chw], cols);
                let d = to_group_matrix(&dy[imgs.start * o * hw..imgs.end * o * hw], (o, hw), dyg);
                if ckk <= NARROW {
                    // The stem's few taps: f32 dot products (a sliver of the step).
                    matmul_nt_narrow(d, c, (o, ckk, ld, ld), dw, !first);
                } else {
                    product(g.bf16, (o, ckk, ld), dw, !first, (d, (ld, 1)), (c, (1, ld)));
                }
            },
        );
        Ok((CpuStorage::F32(dw), shape))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> CResult<(CudaStorage, Shape)> {
        cuda_pass(Pass::WeightGrad, &self.0, (s1, l1), (s2, l2))
    }
}

/// One pass on CUDA: cuDNN where this build has it ([`cudnn`]); without it the dispatcher
/// never routes here (see [`plan::route`]), and a direct call says what is missing.
fn cuda_pass(
    pass: Pass,
    g: &ConvGeom,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> CResult<(CudaStorage, Shape)> {
    #[cfg(feature = "cudnn")]
    return cudnn::conv_pass(pass, g, a, b);
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = (g, a, b);
        super::storage::needs_feature(&format!("conv2d {pass:?}"), "cudnn")
    }
}

/// How many convolution algorithms this process has measured on CUDA and keeps (one per shape,
/// pass, dtype and TF32 setting met so far); 0 in a build without the `cudnn` feature.
pub fn cached_conv_algorithms() -> usize {
    #[cfg(feature = "cudnn")]
    return cudnn::searches();
    #[cfg(not(feature = "cudnn"))]
    0
}

/// A bias-free 2-D convolution of NCHW input `x` with an `(out, in, k, k)` kernel, with an
/// explicit backward: on the CPU (f32) sslab's kernels above; on CUDA (f32, f16, bf16, in a
/// build with the `cudnn` feature) cuDNN's three passes with measured algorithms (`cudnn.rs`);
/// anywhere else candle's `conv2d`. Under a bf16 [`autocast`](crate::kernels::autocast) a GPU's
/// operands are cast to bf16 and the result stays bf16 (the dtype its activations keep); the
/// CPU keeps f32 tensors and runs its products on bf16-rounded operands with f32 sums
/// (AVX512-BF16).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::ones((1, 2, 5, 5), candle_core::DType::F32, &Device::Cpu)?;
/// let w = Tensor::ones((3, 2, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let y = sslab::kernels::conv2d(&x, &w, 2, 1)?;
/// assert_eq!(y.dims(), &[1, 3, 3, 3]);
/// // The centre output sees all 2 × 3 × 3 ones.
/// assert_eq!(y.get(0)?.get(0)?.get(1)?.get(1)?.to_scalar::<f32>()?, 18.0);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let bf16_out = super::precision::bf16_activations(x.device());
    if x.device().is_cpu() && !bf16_out {
        // Under bf16 autocast on a CPU with AVX512-BF16, the products (Winograd's per-position
        // GEMMs, im2col's GEMM) take bf16-rounded operands with f32 sums; tensors stay f32.
        let bf16 = super::precision::autocast_precision() == super::precision::Precision::Bf16
            && super::precision::cpu_has_bf16()
            && x.dtype() == candle_core::DType::F32;
        return conv2d_in(x, w, stride, pad, bf16);
    }
    // Under bf16 autocast: bf16 operands, the result bf16 where activations stay bf16 (CUDA).
    super::precision::autocast_pair(x, w, true, |x, w| conv2d_in(x, w, stride, pad, false))
}

/// [`conv2d`] of channels-last data: NHWC input `(n, h, w, c)` and the usual `(out, in, k, k)`
/// kernel, NHWC output `(n, ho, wo, out)`. On CUDA with cuDNN it is cuDNN's NHWC convolution
/// (the kernel read as OHWI, one small transposed copy or cast per call; under a bf16 autocast
/// the output is a bf16 activation, as [`conv2d`]'s); elsewhere the same convolution through
/// NCHW, transposing in and out.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1.0, (2, 6, 6, 3), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &Device::Cpu)?;
/// let y = sslab::kernels::conv2d_channels_last(&x, &w, 1, 1)?;
/// let nchw = sslab::kernels::conv2d(&x.permute((0, 3, 1, 2))?.contiguous()?, &w, 1, 1)?;
/// let diff = (y.permute((0, 3, 1, 2))? - nchw)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert_eq!(diff, 0.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn conv2d_channels_last(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    if x.rank() != 4 || w.rank() != 4 {
        return Err(crate::error::Error::Shape(format!(
            "conv2d channels-last takes a 4-D input and kernel, got {:?} and {:?}",
            x.dims(),
            w.dims()
        )));
    }
    if plan::route(x.device(), x.dtype(), cfg!(feature = "cudnn")) == ConvRoute::Cudnn {
        let ohwi = w.permute((0, 2, 3, 1))?;
        let op = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            let nhwc = Conv2dOp {
                format: plan::Format::Nhwc,
                ..Conv2dOp::nchw(stride, pad, false)
            };
            Ok(x.contiguous()?.apply_op2(&w.contiguous()?, nhwc)?)
        };
        return super::precision::autocast_pair(x, &ohwi, true, op);
    }
    let y = conv2d(&x.permute((0, 3, 1, 2))?.contiguous()?, w, stride, pad)?;
    Ok(y.permute((0, 2, 3, 1))?.contiguous()?)
}

/// [`conv2d`] in the operands' own dtype (CPU products in bf16 with `bf16`).
fn conv2d_in(x: &Tensor, w: &Tensor, stride: usize, pad: usize, bf16: bool) -> Result<Tensor> {
    match plan::route(x.device(), x.dtype(), cfg!(feature = "cudnn")) {
        ConvRoute::CpuKernel | ConvRoute::Cudnn => {
            let op = Conv2dOp::nchw(stride, pad, bf16);
            Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?)
        }
        ConvRoute::Candle => Ok(x.conv2d(w, pad, stride, 1, 1)?),
    }
}
