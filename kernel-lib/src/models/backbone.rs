//! A backbone that is either a ResNet or a ViT, for methods that take both (MoCo v3).

use super::params::ParamBuilder;
use super::resnet::{Depth, ResNet, ResNetConfig, Stem};
use super::vit::{Vit, VitConfig, VitSize};
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

config_names! {
    /// The backbone family a config names (`model.backbone`).
    pub enum BackboneKind {
        Resnet,
        Vit,
    }
}

/// The backbone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `resnet` (the `arch`, `stem`, `width` keys) or `vit` (the `vit_*` keys; methods that
    /// take a ViT).
    pub backbone: BackboneKind,
    /// `resnet18`, `resnet34` or `resnet50`.
    pub arch: Depth,
    /// `imagenet` or `cifar`.
    pub stem: Stem,
    /// First-stage channels (64 in the papers).
    pub width: usize,
    pub zero_init_residual: bool,
    /// ViT size: `tiny` (192 wide, 3 heads), `small` (384, 12), `base` (768, 12).
    pub vit_size: VitSize,
    /// Transformer blocks (12 in the paper).
    pub vit_depth: usize,
    /// Patch side (16 at 224 px, 4 at 32 px).
    pub patch: usize,
    /// Keep the ViT's patch projection at its random initialisation (MoCo v3's fix).
    pub frozen_patch_projection: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            backbone: BackboneKind::Resnet,
            arch: Depth::R18,
            stem: Stem::Cifar,
            width: 64,
            zero_init_residual: true,
            vit_size: VitSize::Small,
            vit_depth: 12,
            patch: 16,
            frozen_patch_projection: false,
        }
    }
}

impl ModelConfig {
    /// The ResNet these keys describe (whatever `backbone` says).
    pub fn resnet(&self) -> ResNetConfig {
        ResNetConfig {
            depth: self.arch,
            stem: self.stem,
            width: self.width,
            zero_init_residual: self.zero_init_residual,
        }
    }

    /// The network these keys describe, for views of `view_size` pixels (a ViT's patch grid).
    pub fn backbone(&self, view_size: usize) -> BackboneConfig {
        match self.backbone {
            BackboneKind::Resnet => BackboneConfig::ResNet(self.resnet()),
            BackboneKind::Vit => {
                let mut v = VitConfig::sized(self.vit_size, self.vit_depth, self.patch, view_size);
                v.frozen_patch_projection = self.frozen_patch_projection;
                BackboneConfig::Vit(v)
            }
        }
    }

    /// Range checks of the `model` section for views of `view_size` pixels; the error names
    /// the key.
    pub fn validate(&self, view_size: usize) -> Result<()> {
        if self.width == 0 || self.width > 1024 {
            return Err(Error::config(
                "model.width",
                format!("must be in 1..=1024, got {}", self.width),
            ));
        }
        if self.backbone == BackboneKind::Vit {
            if self.vit_depth < 1 {
                return Err(Error::config("model.vit_depth", "must be ≥ 1"));
            }
            if self.patch < 1 || !view_size.is_multiple_of(self.patch) {
                return Err(Error::config(
                    "model.patch",
                    format!("patch {} must divide the view size {view_size}", self.patch),
                ));
            }
        }
        Ok(())
    }
}

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

    /// A ViT's last-block [CLS]-to-patch attention per head (`Vit::cls_attention`); `None`
    /// for a ResNet.
    pub fn cls_attention(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match self {
            Backbone::ResNet(_) => Ok(None),
            Backbone::Vit(v) => Ok(Some(v.cls_attention(x)?)),
        }
    }
}
