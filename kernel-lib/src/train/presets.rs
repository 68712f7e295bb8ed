//! Named configurations. Paper presets follow methods.md exactly; `*/tiny` keeps the structure
//! but shrinks width, batch and resolution so a run takes minutes on two CPU cores.

use super::config::*;
use crate::data::ShapesConfig;
use crate::error::{Error, Result};
use crate::models::{Depth, Stem};

/// Every preset name, for help text and completion.
pub const PRESETS: &[&str] = &[
    "barlow-twins/tiny",
    "barlow-twins/cifar",
    "barlow-twins/imagenet",
];

/// Looks a preset up; a bare method name means its `tiny` preset.
pub fn preset(name: &str) -> Result<RunConfig> {
    let mut cfg = match name {
        "barlow-twins" | "barlow-twins/tiny" => barlow_twins_tiny(),
        "barlow-twins/cifar" => barlow_twins_cifar(),
        "barlow-twins/imagenet" => barlow_twins_imagenet(),
        _ => {
            return Err(Error::config(
                "preset",
                format!("unknown preset '{name}'; known: {}", PRESETS.join(", ")),
            ))
        }
    };
    cfg.validate()?;
    if !name.contains('/') {
        cfg.preset = format!("{name}/tiny");
    }
    Ok(cfg)
}

/// Paper setting (methods.md §3): ResNet-50, projector 8192-8192-8192, λ 0.0051, LARS
/// (η 0.001, wd 1.5e-6 as in the paper; the code default is 1e-6), lr 0.2 for weights and
/// 0.0048 for biases/BN, both × B/256, 10 warmup epochs then cosine to 0.001×, B = 2048,
/// 1000 epochs, bicubic BYOL augmentations at 224 px. Needs ImageNet: `data.source`.
pub fn barlow_twins_imagenet() -> RunConfig {
    RunConfig {
        method: "barlow-twins".into(),
        preset: "barlow-twins/imagenet".into(),
        seed: 0,
        device: "auto".into(),
        data: DataConfig {
            source: "folder:imagenet".into(),
            shapes: ShapesConfig::default(),
        },
        model: ModelConfig {
            arch: Depth::R50,
            stem: Stem::Imagenet,
            width: 64,
            zero_init_residual: true,
        },
        augment: AugmentConfig {
            recipe: "barlow-twins".into(),
            size: 224,
            scale_min: None,
        },
        barlow_twins: BarlowTwinsConfig::default(),
        optim: OptimConfig {
            lr_1d: Some(0.0048),
            ..OptimConfig::default()
        },
        train: TrainConfig::default(),
        eval: EvalConfig::default(),
    }
}

/// solo-learn's CIFAR recipe (methods.md §6.1): ResNet-18 (CIFAR stem), projector
/// 2048-2048-2048, λ 0.005, scale_loss 0.1, LARS lr 0.3 (× B/256), η 0.02, wd 1e-4, biases and
/// BN excluded, 10 warmup epochs + cosine, B = 256, 1000 epochs, BYOL augmentations at 32 px
/// without blur; solo-learn's LARS variant clips the adaptive rate (`lars_clip_lr`).
pub fn barlow_twins_cifar() -> RunConfig {
    let mut c = barlow_twins_imagenet();
    c.preset = "barlow-twins/cifar".into();
    c.data.source = "cifar10:data/cifar10".into();
    c.model = ModelConfig {
        arch: Depth::R18,
        stem: Stem::Cifar,
        width: 64,
        zero_init_residual: true,
    };
    c.augment = AugmentConfig {
        recipe: "byol-cifar".into(),
        size: 32,
        scale_min: None,
    };
    c.barlow_twins = BarlowTwinsConfig {
        projector: vec![2048, 2048, 2048],
        lambda: 0.005,
        scale_loss: 0.1,
    };
    c.optim = OptimConfig {
        lr: 0.3,
        lr_1d: None,
        weight_decay: 1e-4,
        eta: 0.02,
        lars_clip_lr: true,
        final_lr_frac: 0.0,
        ..OptimConfig::default()
    };
    c.train = TrainConfig {
        batch_size: 256,
        epochs: 1000.0,
        steps: 0,
        log_every: 50,
    };
    c
}

/// CPU-sized: ResNet-18 (CIFAR stem) at width 16, projector 512-512-512, the CIFAR optimiser
/// settings, batch 128, 250 steps on the built-in shapes at 32 px: about nine minutes on two
/// cores. Crops keep at least 20% of the image (the CIFAR recipe's 8% often cuts the single
/// shape out of a 32-px image).
pub fn barlow_twins_tiny() -> RunConfig {
    let mut c = barlow_twins_cifar();
    c.preset = "barlow-twins/tiny".into();
    c.data.source = "shapes".into();
    c.model.width = 16;
    c.barlow_twins = BarlowTwinsConfig {
        projector: vec![512, 512, 512],
        lambda: 0.0051,
        scale_loss: 0.1,
    };
    c.augment.scale_min = Some(0.2);
    c.optim.warmup_epochs = 0.5;
    c.train = TrainConfig {
        batch_size: 128,
        epochs: 0.0,
        steps: 250,
        log_every: 20,
    };
    c
}
