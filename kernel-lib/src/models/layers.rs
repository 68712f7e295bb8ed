//! Linear and 2-D convolution layers with PyTorch's parameter layouts and initialisations.

use super::params::{Init, ParamBuilder, ParamKind};
use crate::error::Result;
use crate::kernels;
use candle_core::{Tensor, Var};

/// `y = x Wᵀ + b`, W of shape (out, in).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    /// PyTorch's default init: weight and bias ~ U(±1/√fan_in).
    pub fn new(
        b: &mut ParamBuilder,
        name: &str,
        inp: usize,
        out: usize,
        bias: bool,
    ) -> Result<Self> {
        let init = Init::Uniform {
            bound: 1.0 / (inp as f32).sqrt(),
        };
        Self::with_init(b, name, (inp, out), init, bias.then_some(init))
    }

    /// A layer with the given weight init and, when `bias` is set, a bias with that init (the
    /// ViT's Xavier-uniform weights with zero bias, say).
    pub fn with_init(
        b: &mut ParamBuilder,
        name: &str,
        (inp, out): (usize, usize),
        weight: Init,
        bias: Option<Init>,
    ) -> Result<Self> {
        let weight = b.var(
            &format!("{name}.weight"),
            &[out, inp],
            weight,
            ParamKind::Weight,
        )?;
        let bias = match bias {
            Some(init) => Some(b.var(&format!("{name}.bias"), &[out], init, ParamKind::Bias)?),
            None => None,
        };
        Ok(Linear { weight, bias })
    }

    /// Applies the layer to the last axis of `x` (`(n, in)`, or `(…, in)` for token
    /// sequences). Leading axes are flattened into one matrix product: a broadcast batched
    /// product would copy the weight per sample.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let rows = x.elem_count() / inp.max(1);
        let flat = if dims.len() == 2 {
            x.clone()
        } else {
            x.reshape((rows, inp))?
        };
        // bf16 operands under a bf16 autocast (`kernels::precision`), f32 otherwise.
        let w = self.weight.as_tensor();
        let y = match &self.bias {
            Some(b) => kernels::linear_bias(&flat, w, b.as_tensor())?,
            None => kernels::linear(&flat, w)?,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = y.dim(1)?;
        Ok(y.reshape(out)?)
    }
}

/// A bias-free 2-D convolution (every ResNet conv is followed by BatchNorm).
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Var,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// torchvision ResNet init: kaiming normal, fan_out, ReLU gain (std = √(2 / (out·k·k))).
    pub fn new(
        b: &mut ParamBuilder,
        name: &str,
        inp: usize,
        out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let std = (2.0 / (out * k * k) as f32).sqrt();
        let weight = b.var(
            &format!("{name}.weight"),
            &[out, inp, k, k],
            Init::Normal { std },
            ParamKind::Weight,
        )?;
        Ok(Conv2d {
            weight,
            stride,
            padding,
        })
    }

    /// Applies the convolution to NCHW input: on the CPU through sslab's kernels, elsewhere
    /// through candle's `conv2d` (cuDNN with the `cudnn` feature). [`conv2d_unfolded`] is the
    /// measured alternative there.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::conv2d(x, self.weight.as_tensor(), self.stride, self.padding)
    }

    /// The same convolution of channels-last `(n, h, w, c)` input, NHWC out
    /// ([`kernels::conv2d_channels_last`]); the weight stays `(out, in, k, k)`.
    pub fn forward_channels_last(&self, x: &Tensor) -> Result<Tensor> {
        kernels::conv2d_channels_last(x, self.weight.as_tensor(), self.stride, self.padding)
    }
}

/// A convolution written as an explicit im2col (k² shifted, strided views of the padded
/// input, stacked) and one batched matrix product, so that autograd differentiates matrix
/// products and slices instead of candle's conv2d backward.
///
/// On CUDA, candle's conv2d backward takes a naive transposed-convolution kernel for the input
/// gradient and a transposed cuDNN call for the weight gradient; together they measured 90% of
/// a Barlow Twins step on an H200. This formulation made that step 1.5× faster (1.17 → 0.78 s
/// at batch 256) but held 7.5× the device memory (the k² views and their gradients), and ran
/// out of 139 GB on ResNet-50 at 224 px, so [`Conv2d`] does not use it by default
/// (`benches/RESULTS.md`). Use it in a custom model where memory is plentiful.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &Device::Cpu)?;
/// let y = sslab::models::conv2d_unfolded(&x, &w, 2, 1)?;
/// let d = (y - x.conv2d(&w, 1, 2, 1, 1)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(d < 1e-4);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn conv2d_unfolded(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, wc, k, k2) = w.dims4()?;
    if wc != c || k != k2 || stride == 0 || h + 2 * pad < k || wd + 2 * pad < k {
        return Err(crate::Error::Shape(format!(
            "conv2d: input {:?} and kernel {:?} (stride {stride}, padding {pad}) do not fit",
            x.dims(),
            w.dims()
        )));
    }
    let (ho, wo) = (
        (h + 2 * pad - k) / stride + 1,
        (wd + 2 * pad - k) / stride + 1,
    );
    let w2 = w.reshape((o, c * k * k))?;
    if k == 1 && pad == 0 && stride == 1 {
        return Ok(w2
            .broadcast_matmul(&x.reshape((n, c, h * wd))?)?
            .reshape((n, o, ho, wo))?);
    }
    // Extra zeros at the far edges let every shifted view take ho·stride rows before it is
    // subsampled.
    let extra = stride - 1;
    let xp = x
        .pad_with_zeros(2, pad, pad + extra)?
        .pad_with_zeros(3, pad, pad + extra)?;
    let mut views = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let v = xp.narrow(2, ky, ho * stride)?.narrow(3, kx, wo * stride)?;
            let v = if stride == 1 {
                v
            } else {
                v.contiguous()?
                    .reshape((n, c, ho, stride, wo, stride))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((n, c, ho, wo))?
            };
            views.push(v);
        }
    }
    let cols = Tensor::stack(&views, 2)?.reshape((n, c * k * k, ho * wo))?;
    Ok(w2.broadcast_matmul(&cols)?.reshape((n, o, ho, wo))?)
}
