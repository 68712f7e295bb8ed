//! Linear and 2-D convolution layers with PyTorch's parameter layouts and initialisations.

use super::cpu_ops::{on_cpu_f32, Conv2dOp};
use super::params::{Init, ParamBuilder, ParamKind};
use crate::error::Result;
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
        let y = flat.matmul(&self.weight.as_tensor().t()?)?;
        let y = match &self.bias {
            Some(b) if on_cpu_f32(&y) => y.apply_op2(b.as_tensor(), super::cpu_ops::AddBiasOp)?,
            Some(b) => y.broadcast_add(b.as_tensor())?,
            None => y,
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

    /// Applies the convolution to NCHW input (on the CPU through sslab's im2col + GEMM kernel,
    /// elsewhere through candle's `conv2d`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.as_tensor();
        if on_cpu_f32(x) {
            let op = Conv2dOp {
                stride: self.stride,
                pad: self.padding,
            };
            return Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?);
        }
        Ok(x.conv2d(w, self.padding, self.stride, 1, 1)?)
    }
}

/// ReLU: on the CPU sslab's parallel kernel with a one-pass backward, elsewhere candle's.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(x) {
        return Ok(x.contiguous()?.apply_op1(super::cpu_ops::ReluOp)?);
    }
    Ok(x.relu()?)
}

/// Exact (erf) GELU: on the CPU sslab's parallel kernel with a one-pass derivative,
/// elsewhere candle's `gelu_erf`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(x) {
        return Ok(x.contiguous()?.apply_op1(super::cpu_ops::GeluOp)?);
    }
    Ok(x.gelu_erf()?)
}
