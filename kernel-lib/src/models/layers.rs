//! Linear and 2-D convolution layers with PyTorch's parameter layouts and initialisations.

use super::cpu_ops::Conv2dOp;
use super::params::{Init, ParamBuilder, ParamKind};
use crate::error::Result;
use candle_core::{DType, Tensor, Var};

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
        let bound = 1.0 / (inp as f32).sqrt();
        let weight = b.var(
            &format!("{name}.weight"),
            &[out, inp],
            Init::Uniform { bound },
            ParamKind::Weight,
        )?;
        let bias = if bias {
            Some(b.var(
                &format!("{name}.bias"),
                &[out],
                Init::Uniform { bound },
                ParamKind::Bias,
            )?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Applies the layer to `(n, in)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.as_tensor().t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b.as_tensor())?,
            None => y,
        })
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
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let op = Conv2dOp {
                stride: self.stride,
                pad: self.padding,
            };
            return Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?);
        }
        Ok(x.conv2d(w, self.padding, self.stride, 1, 1)?)
    }
}
