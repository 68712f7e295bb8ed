//! One MLP builder for every projector and predictor in docs/recipes.md: layer count and widths,
//! bias on/off, BN + ReLU on hidden layers, and an optional (affine or not) BN on the output.

use super::batchnorm::BatchNorm;
use super::layers::Linear;
use super::params::ParamBuilder;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Normalisation after the last linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LastBn {
    /// Nothing (Barlow Twins, MoCo v1/v2 heads, the MoCo v3 ResNet predictor).
    None,
    /// BN with γ/β (unused by the four papers, offered for ablations).
    Affine,
    /// BN without γ/β (MoCo v3 projectors; the ViT predictor).
    NonAffine,
}

/// Shape of an MLP head.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpSpec {
    /// Widths from input to output: `[in, hidden..., out]` (at least two entries).
    pub dims: Vec<usize>,
    /// Whether the linear layers have biases.
    pub bias: bool,
    /// BN (affine) between each hidden linear layer and its ReLU.
    pub hidden_bn: bool,
    /// Normalisation after the last layer.
    pub last_bn: LastBn,
}

/// Linear layers with optional BN, ReLU in between.
#[derive(Clone, Debug)]
pub struct Mlp {
    layers: Vec<(Linear, Option<BatchNorm>)>,
    last_bn: Option<BatchNorm>,
}

impl Mlp {
    /// Builds the head described by `spec` under the name prefix `name`.
    pub fn new(b: &mut ParamBuilder, name: &str, spec: &MlpSpec) -> Result<Self> {
        if spec.dims.len() < 2 || spec.dims.contains(&0) {
            return Err(Error::config(
                name,
                format!(
                    "MLP widths must be ≥ 2 positive numbers, got {:?}",
                    spec.dims
                ),
            ));
        }
        let n = spec.dims.len() - 1;
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let lin = Linear::new(
                b,
                &format!("{name}.{i}.linear"),
                spec.dims[i],
                spec.dims[i + 1],
                spec.bias,
            )?;
            let bn = if i + 1 < n && spec.hidden_bn {
                Some(BatchNorm::new(
                    b,
                    &format!("{name}.{i}.bn"),
                    spec.dims[i + 1],
                    true,
                    1.0,
                )?)
            } else {
                None
            };
            layers.push((lin, bn));
        }
        let out = spec.dims[n];
        let last_bn = match spec.last_bn {
            LastBn::None => None,
            LastBn::Affine => Some(BatchNorm::new(
                b,
                &format!("{name}.{}.bn", n - 1),
                out,
                true,
                1.0,
            )?),
            LastBn::NonAffine => Some(BatchNorm::new(
                b,
                &format!("{name}.{}.bn", n - 1),
                out,
                false,
                1.0,
            )?),
        };
        Ok(Mlp { layers, last_bn })
    }

    /// Applies the head to `(n, in)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let n = self.layers.len();
        let mut h = x.clone();
        for (i, (lin, bn)) in self.layers.iter().enumerate() {
            h = lin.forward(&h)?;
            if i + 1 < n {
                if let Some(bn) = bn {
                    h = bn.forward_t(&h, train)?;
                }
                h = crate::kernels::relu(&h)?;
            }
        }
        if let Some(bn) = &self.last_bn {
            h = bn.forward_t(&h, train)?;
        }
        // f32 out, as a network's outputs are (bf16 activations stay inside, see ResNet).
        Ok(h.to_dtype(candle_core::DType::F32)?)
    }
}
