//! One file per SSL method, each wiring models and an objective behind the [`Method`] trait that
//! `train::Run` drives. A method's file holds all of it: its config section (with `Default` and
//! `validate`), heads, forward, after-step, and how it is built from a run's config.
//!
//! [`REGISTRY`] is the only list of methods: what a run, the presets, the probes and the front
//! ends need to know of a method they read from its [`MethodInfo`]. Adding a method is one new
//! file, a [`MethodKind`] variant with its registry line, and its presets (and, for a new
//! config section, its field in `RunConfig` and [`MethodSetup`]).

mod barlow_twins;
mod branch;
mod byol;
mod densecl;
mod moco;
mod moco_v3;
mod queue;
mod simclr;
mod simsiam;
mod vicreg;

pub use barlow_twins::{BarlowTwins, BarlowTwinsConfig, BarlowTwinsSpec};
pub use byol::{Byol, ByolConfig};
pub use densecl::{DenseCl, DenseClConfig, DenseClSpec};
pub use moco::{Moco, MocoConfig, MocoSpec, MocoVersion};
pub use moco_v3::{MocoV3, MocoV3Config, MocoV3Spec};
pub use queue::KeyQueue;
pub use simclr::{Simclr, SimclrConfig};
pub use simsiam::{Simsiam, SimsiamConfig};
pub use vicreg::{Vicreg, VicregConfig};

use crate::error::{Error, Result};
use crate::models::{BackboneKind, ModelConfig, ParamStore};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The methods sslab trains, as a config's `method` key names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MethodKind {
    BarlowTwins,
    MocoV1,
    MocoV2,
    DenseCl,
    MocoV3,
    Simclr,
    Byol,
    Simsiam,
    Vicreg,
}

impl MethodKind {
    /// The name a config and the command line use (`barlow-twins`, `densecl`, ...).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The same as [`MethodKind::name`].
    pub fn as_str(self) -> &'static str {
        self.name()
    }

    /// The registry entry of this method.
    pub fn info(self) -> &'static MethodInfo {
        // Every kind has exactly one entry (a test checks it); the first is only a fallback
        // the registry never needs.
        REGISTRY
            .iter()
            .find(|m| m.kind == self)
            .unwrap_or(&REGISTRY[0])
    }

    /// The method a name means; the error lists the known ones.
    pub fn parse(name: &str) -> Result<Self> {
        Self::find(name).map_err(|msg| Error::config("method", msg))
    }

    /// [`MethodKind::parse`] with the bare message, for serde.
    fn find(name: &str) -> std::result::Result<Self, String> {
        REGISTRY
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.kind)
            .ok_or_else(|| format!("unknown method '{name}'; known: {}", names().join(", ")))
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq<&str> for MethodKind {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

impl TryFrom<String> for MethodKind {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        MethodKind::find(&s)
    }
}

impl From<MethodKind> for String {
    fn from(k: MethodKind) -> String {
        k.name().to_string()
    }
}

config_names! {
    /// How a momentum encoder's momentum moves over a run (`moco.momentum_schedule`,
    /// `moco_v3.momentum_schedule`).
    pub enum MomentumSchedule {
        /// The configured momentum throughout (MoCo v1/v2, DenseCL).
        Fixed,
        /// From the configured value towards 1 on a half cosine (MoCo v3, BYOL).
        Cosine,
    }
}

/// The parts of a run's config a method is built from.
#[derive(Clone, Copy, Debug)]
pub struct MethodSetup<'a> {
    pub model: &'a ModelConfig,
    pub barlow_twins: &'a BarlowTwinsConfig,
    pub moco: &'a MocoConfig,
    pub densecl: &'a DenseClConfig,
    pub moco_v3: &'a MocoV3Config,
    pub simclr: &'a SimclrConfig,
    pub byol: &'a ByolConfig,
    pub simsiam: &'a SimsiamConfig,
    pub vicreg: &'a VicregConfig,
    /// View side in pixels (a ViT's patch grid depends on it).
    pub view_size: usize,
    pub batch_size: usize,
    /// Seed of the weights.
    pub seed: u64,
}

/// The linear-probe protocol a method's paper evaluates with, at batch 256.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeProtocol {
    pub lr: f64,
    pub weight_decay: f64,
    /// Cosine (else step decay at 60 % and 80 %).
    pub cosine: bool,
    pub epochs: usize,
}

/// What the rest of sslab knows of a method.
pub struct MethodInfo {
    pub kind: MethodKind,
    /// The `method` key's value.
    pub name: &'static str,
    /// The preset a bare method name means (`sslab train densecl`).
    pub default_preset: &'static str,
    /// Whether `model.backbone = "vit"` is allowed.
    pub takes_vit: bool,
    /// The loss hyper-parameters the short names `lambda`/`λ` and `tau`/`τ` mean.
    pub lambda_key: &'static str,
    pub tau_key: &'static str,
    /// The loss hyper-parameters the method takes mid-run ([`Method::set_param`]).
    pub live_keys: &'static [&'static str],
    /// The probe protocol for a ResNet and for a ViT backbone.
    pub probe: fn(vit: bool) -> ProbeProtocol,
    /// Checks across sections beyond each section's own ranges.
    pub validate: fn(&MethodSetup) -> Result<()>,
    /// Builds the method with weights drawn from the setup's seed.
    pub build: fn(&MethodSetup, &Device) -> Result<Box<dyn Method>>,
}

/// MoCo v1/v2 and DenseCL: lr 30, no decay, step decay, 100 epochs.
fn moco_probe(_vit: bool) -> ProbeProtocol {
    ProbeProtocol {
        lr: 30.0,
        weight_decay: 0.0,
        cosine: false,
        epochs: 100,
    }
}

/// An EMA momentum in [0, 1] under config key `key`.
fn check_momentum(key: &str, m: f64) -> Result<()> {
    if (0.0..=1.0).contains(&m) {
        return Ok(());
    }
    Err(Error::config(key, format!("must be in [0, 1], got {m}")))
}

/// A temperature τ > 0 (finite) under config key `key`.
fn check_temperature(key: &str, tau: f64) -> Result<()> {
    if tau > 0.0 && tau.is_finite() {
        return Ok(());
    }
    Err(Error::config(key, format!("must be > 0, got {tau}")))
}

fn no_checks(_: &MethodSetup) -> Result<()> {
    Ok(())
}

/// Every method, in the order help texts list them.
pub static REGISTRY: [MethodInfo; 9] = [
    MethodInfo {
        kind: MethodKind::BarlowTwins,
        name: "barlow-twins",
        default_preset: "barlow-twins/tiny",
        takes_vit: false,
        lambda_key: "barlow_twins.lambda",
        tau_key: "moco.tau",
        live_keys: &["barlow_twins.lambda"],
        probe: |_| ProbeProtocol {
            lr: 0.3,
            weight_decay: 1e-6,
            cosine: true,
            epochs: 100,
        },
        validate: no_checks,
        build: barlow_twins::build,
    },
    MethodInfo {
        kind: MethodKind::MocoV1,
        name: "moco-v1",
        default_preset: "moco-v1/tiny",
        takes_vit: false,
        lambda_key: "barlow_twins.lambda",
        tau_key: "moco.tau",
        live_keys: &["moco.tau"],
        probe: moco_probe,
        validate: moco::validate,
        build: moco::build_v1,
    },
    MethodInfo {
        kind: MethodKind::MocoV2,
        name: "moco-v2",
        default_preset: "moco-v2/tiny",
        takes_vit: false,
        lambda_key: "barlow_twins.lambda",
        tau_key: "moco.tau",
        live_keys: &["moco.tau"],
        probe: moco_probe,
        validate: moco::validate,
        build: moco::build_v2,
    },
    MethodInfo {
        kind: MethodKind::DenseCl,
        name: "densecl",
        default_preset: "densecl/tiny",
        takes_vit: false,
        lambda_key: "densecl.lambda",
        tau_key: "moco.tau",
        live_keys: &["densecl.lambda", "moco.tau"],
        probe: moco_probe,
        validate: densecl::validate,
        build: densecl::build,
    },
    MethodInfo {
        kind: MethodKind::MocoV3,
        name: "moco-v3",
        default_preset: "moco-v3/vit-tiny",
        takes_vit: true,
        lambda_key: "barlow_twins.lambda",
        tau_key: "moco_v3.tau",
        live_keys: &["moco_v3.tau"],
        probe: |vit| ProbeProtocol {
            lr: if vit { 3.0 } else { 0.1 },
            weight_decay: 0.0,
            cosine: true,
            epochs: 90,
        },
        validate: no_checks,
        build: moco_v3::build,
    },
    MethodInfo {
        kind: MethodKind::Simclr,
        name: "simclr",
        default_preset: "simclr/tiny",
        takes_vit: false,
        lambda_key: "barlow_twins.lambda",
        tau_key: "simclr.tau",
        live_keys: &["simclr.tau"],
        // SimCLR's linear evaluation: SGD with Nesterov momentum, lr 0.1 × B/256, no decay,
        // 90 epochs, cosine.
        probe: |_| ProbeProtocol {
            lr: 0.1,
            weight_decay: 0.0,
            cosine: true,
            epochs: 90,
        },
        validate: no_checks,
        build: simclr::build,
    },
    MethodInfo {
        kind: MethodKind::Byol,
        name: "byol",
        default_preset: "byol/tiny",
        takes_vit: false,
        lambda_key: "barlow_twins.lambda",
        tau_key: "moco.tau",
        live_keys: &[],
        // BYOL's linear evaluation: SGD with Nesterov momentum, no decay, 80 epochs, cosine;
        // the rate is swept in the paper, 0.2 is within its sweep.
        probe: |_| ProbeProtocol {
            lr: 0.2,
            weight_decay: 0.0,
            cosine: true,
            epochs: 80,
        },
        validate: no_checks,
        build: byol::build,
    },
    MethodInfo {
        kind: MethodKind::Simsiam,
        name: "simsiam",
        default_preset: "simsiam/tiny",
        takes_vit: false,
        lambda_key: "barlow_twins.lambda",
        tau_key: "moco.tau",
        live_keys: &[],
        // SimSiam's linear evaluation: LARS, lr 0.02 × B/256, no decay, 90 epochs, cosine.
        probe: |_| ProbeProtocol {
            lr: 0.02,
            weight_decay: 0.0,
            cosine: true,
            epochs: 90,
        },
        validate: no_checks,
        build: simsiam::build,
    },
    MethodInfo {
        kind: MethodKind::Vicreg,
        name: "vicreg",
        default_preset: "vicreg/tiny",
        takes_vit: false,
        lambda_key: "vicreg.sim",
        tau_key: "moco.tau",
        live_keys: &["vicreg.sim", "vicreg.std", "vicreg.cov"],
        // VICReg's linear evaluation: lr 0.02 × B/256, weight decay 1e-6, 100 epochs, cosine.
        probe: |_| ProbeProtocol {
            lr: 0.02,
            weight_decay: 1e-6,
            cosine: true,
            epochs: 100,
        },
        validate: no_checks,
        build: vicreg::build,
    },
];

/// Every loss hyper-parameter some method takes mid-run.
pub fn live_keys() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().flat_map(|m| m.live_keys.iter().copied())
}

/// Every method's name, in registry order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|m| m.name).collect()
}

impl MethodSetup<'_> {
    /// Every check of the method's sections: their own ranges, the backbone, and the method's
    /// checks across sections.
    pub fn validate(&self, kind: MethodKind) -> Result<()> {
        self.barlow_twins.validate()?;
        self.moco_v3.validate()?;
        self.moco.validate()?;
        self.densecl.validate()?;
        self.simclr.validate()?;
        self.byol.validate()?;
        self.simsiam.validate()?;
        self.vicreg.validate()?;
        let info = kind.info();
        if self.model.backbone == BackboneKind::Vit && !info.takes_vit {
            return Err(Error::config(
                "model.backbone",
                format!("{} is built on a ResNet; vit is for moco-v3", info.name),
            ));
        }
        (info.validate)(self)
    }
}

/// The result of one training forward pass.
#[derive(Clone, Debug)]
pub struct ForwardOutput {
    /// The scalar to minimise.
    pub loss: Tensor,
    /// Named scalar parts of the loss (e.g. `on_diag`, `off_diag`), for reports.
    pub parts: Vec<(String, Tensor)>,
    /// The cross-correlation matrix of the two views' embeddings, where the method has one.
    pub cross_correlation: Option<Tensor>,
}

/// What a training loop needs from a method.
pub trait Method: Send {
    /// The method's name, e.g. `barlow-twins`.
    fn name(&self) -> &'static str;
    /// Every tensor of the method (trainable, buffers, frozen).
    fn params(&self) -> &ParamStore;
    /// Training-mode forward of the two views (`(n, 3, h, w)` each) to the loss. Mutable
    /// because methods with queues keep this step's keys until [`Method::after_step`].
    fn forward_train(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput>;
    /// A name prefix of tensors whose learning rate stays at its base value (times the batch
    /// scaling) instead of following the schedule: SimSiam's predictor (`fix_pred_lr`).
    fn unscheduled_prefix(&self) -> Option<&'static str> {
        None
    }
    /// Work after the optimiser step (momentum encoder, queues). `step` is the step just taken.
    fn after_step(&mut self, _step: usize, _total_steps: usize) -> Result<()> {
        Ok(())
    }
    /// The momentum (key) encoder's tensors, for methods that have one.
    fn momentum_params(&self) -> Option<&ParamStore> {
        None
    }
    /// Every store of the method: the online one, then the momentum encoder's where there is
    /// one (what a checkpoint saves).
    fn stores(&self) -> Vec<&ParamStore> {
        let mut stores = vec![self.params()];
        stores.extend(self.momentum_params());
        stores
    }
    /// The method's key queues by name (MoCo: `queue`; DenseCL: also `dense_queue`).
    fn queues(&self) -> Vec<(&'static str, &KeyQueue)> {
        Vec::new()
    }
    /// Changes a loss hyper-parameter mid-run (`barlow_twins.lambda`, `moco.tau`, ...): `Ok(true)`
    /// if this method has it, `Ok(false)` if not, an error for a bad value.
    fn set_param(&mut self, _key: &str, _value: f64) -> Result<bool> {
        Ok(false)
    }

    /// The queues, mutably (checkpoint restore).
    fn queues_mut(&mut self) -> Vec<(&'static str, &mut KeyQueue)> {
        Vec::new()
    }

    /// Restores what the method derives from the step count (ShuffleBN seed, momentum) as it
    /// was after `steps_done` steps of a `total_steps` schedule (checkpoint restore).
    fn resume_at(&mut self, _steps_done: usize, _total_steps: usize) -> Result<()> {
        Ok(())
    }

    /// Evaluation-mode backbone representation `(n, d)` used by kNN and probes.
    fn features(&self, images: &Tensor) -> Result<Tensor>;
    /// Evaluation-mode last backbone feature map `(n, c, h, w)`, for dense probes and
    /// similarity maps.
    fn feature_map(&self, images: &Tensor) -> Result<Tensor>;

    /// A ViT backbone's last-block [CLS]-to-patch attention per head, `(n, heads, g, g)`, each
    /// head's map summing to 1; `None` for a ResNet backbone.
    fn cls_attention(&self, _images: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Whether the method has a dense projection head (DenseCL): similarity maps then default
    /// to its output.
    fn has_dense_head(&self) -> bool {
        false
    }

    /// Evaluation-mode dense projection head on the feature map `(n, d, h, w)`, for methods
    /// that have one (DenseCL).
    fn dense_head_map(&self, _images: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}
