//! Models: ResNet-18/34/50 (ImageNet and CIFAR stems), ViT (MoCo v3's), MLP heads, BatchNorm with PyTorch's
//! conventions, and the named parameter store every model registers into.
//!
//! Parameters are initialised on the host from a seeded generator and then moved to the device,
//! so the same seed gives the same network on the CPU and on CUDA (candle cannot seed its CPU
//! generator).

mod backbone;
mod batchnorm;
mod ema;
mod layers;
mod mlp;
mod params;
mod resnet;
mod torch_io;
mod vit;

pub use backbone::{Backbone, BackboneConfig, BackboneKind, ModelConfig};
pub use batchnorm::BatchNorm;
pub use ema::ema_update;
pub use layers::{conv2d_unfolded, Conv2d, Linear};
pub use mlp::{LastBn, Mlp, MlpSpec};
pub use params::{Init, Param, ParamBuilder, ParamKind, ParamStore};
pub use resnet::{max_pool_3x3_s2_p1, Depth, ResNet, ResNetConfig, ResNetOutput, Stem};
pub use torch_io::{
    export_backbone, load_backbone, read_torch_checkpoint, ImportReport, RELEASE_PREFIXES,
};
pub use vit::{sincos_position_embedding, Vit, VitConfig, VitSize};
