//! A ResNet with an MLP head on its pooled features: the encoder of the methods whose views go
//! through one network each (Barlow Twins' shape, shared by SimCLR, BYOL, SimSiam and VICReg).

use crate::error::Result;
use crate::models::{LastBn, Mlp, MlpSpec, ParamBuilder, ResNet, ResNetConfig};
use candle_core::Tensor;

/// The head after the backbone: widths after the backbone's feature width, biases, and the
/// normalisation of the last layer (hidden layers always have BN + ReLU in these methods).
#[derive(Clone, Debug)]
pub(super) struct Head<'a> {
    pub widths: &'a [usize],
    pub bias: bool,
    pub last_bn: LastBn,
}

impl Head<'_> {
    /// The MLP from `input` features, under `name`.
    pub fn build(&self, b: &mut ParamBuilder, name: &str, input: usize) -> Result<Mlp> {
        let mut dims = vec![input];
        dims.extend(self.widths);
        Mlp::new(
            b,
            name,
            &MlpSpec {
                dims,
                bias: self.bias,
                hidden_bn: true,
                last_bn: self.last_bn,
            },
        )
    }
}

/// Backbone + projector.
pub(super) struct Branch {
    pub backbone: ResNet,
    pub projector: Mlp,
}

impl Branch {
    /// Builds `{prefix}backbone` and `{prefix}projector`.
    pub fn new(
        b: &mut ParamBuilder,
        prefix: &str,
        backbone: &ResNetConfig,
        head: &Head,
    ) -> Result<Self> {
        let backbone = ResNet::new(b, &format!("{prefix}backbone"), backbone)?;
        let projector = head.build(b, &format!("{prefix}projector"), backbone.out_dim())?;
        Ok(Branch {
            backbone,
            projector,
        })
    }

    /// The projection of a batch of images (training mode).
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.backbone.forward_t(x, true)?.pooled;
        self.projector.forward_t(&h, true)
    }

    /// Evaluation-mode pooled features.
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.backbone.forward_t(images, false)?.pooled)
    }

    /// Evaluation-mode last feature map.
    pub fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.backbone.forward_t(images, false)?.feature_map)
    }
}

/// A list of head widths under `key`: one or more, all positive.
pub(super) fn check_widths(key: &str, widths: &[usize]) -> Result<()> {
    if widths.is_empty() || widths.contains(&0) {
        return Err(crate::error::Error::config(
            key,
            format!("needs one or more positive widths, got {widths:?}"),
        ));
    }
    Ok(())
}
