//! A backbone that is either a ResNet or a ViT, for methods that take both (MoCo v3).

use super::params::ParamBuilder;
use super::resnet::{ResNet, ResNetConfig};
use super::vit::{Vit, VitConfig};
use crate::error::Result;
use candle_core::Tensor;

/// Which network, and its shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BackboneConfig {
    ResNet(ResNetConfig),
    Vit(VitConfig),
}

/// A built backbone.
#[derive(Clone, Debug)]
pub enum Backbone {
    ResNet(ResNet),
    Vit(Vit),
}

impl Backbone {
    /// Builds the network under `name`.
    pub fn new(b: &mut ParamBuilder, name: &str, cfg: &BackboneConfig) -> Result<Self> {
        Ok(match cfg {
            BackboneConfig::ResNet(c) => Backbone::ResNet(ResNet::new(b, name, c)?),
            BackboneConfig::Vit(c) => Backbone::Vit(Vit::new(b, name, c)?),
        })
    }

    /// Width of the representation.
    pub fn out_dim(&self) -> usize {
        match self {
            Backbone::ResNet(r) => r.out_dim(),
            Backbone::Vit(v) => v.out_dim(),
        }
    }

    /// The representation `(n, d)`: ResNet's pooled map or ViT's [CLS] token (ViT has no
    /// BatchNorm, so `train` only matters for the ResNet).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Backbone::ResNet(r) => Ok(r.forward_t(x, train)?.pooled),
            Backbone::Vit(v) => v.forward(x),
        }
    }

    /// Evaluation-mode feature map `(n, c, h, w)`: ResNet's last stage, ViT's patch tokens.
    pub fn feature_map(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Backbone::ResNet(r) => Ok(r.forward_t(x, false)?.feature_map),
            Backbone::Vit(v) => v.feature_map(x),
        }
    }
}
