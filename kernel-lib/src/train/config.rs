//! Run configuration: serde + TOML, every field defaulted, unknown keys and out-of-range values
//! rejected with a message naming the key. A file may start from a preset (`preset = "..."`) and
//! override any field; `RunConfig::set("optim.lr", "0.1")` does the same for one key.

use crate::augment::RecipeName;
use crate::data::ShapesConfig;
use crate::error::{Error, Result};
use crate::kernels::Precision;
pub use crate::methods::{
    BarlowTwinsConfig, ByolConfig, DenseClConfig, MocoConfig, MocoV3Config, SimclrConfig,
    SimsiamConfig, VicregConfig,
};
use crate::methods::{MethodKind, MethodSetup};
pub use crate::models::ModelConfig;
use crate::optim::{OptimName, ScheduleKind};
use serde::{Deserialize, Serialize};

/// Everything a run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The method (`methods::REGISTRY` lists them).
    pub method: MethodKind,
    /// The preset this config started from (informational; set by `preset()`).
    pub preset: String,
    /// Seed of weights, data order and augmentations.
    pub seed: u64,
    /// `auto` (CUDA when built and present, else CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `f32`, or `bf16`: bf16 convolutions and matrix products with f32 weights, optimizer
    /// state, statistics and losses (CUDA only; `kernels::precision`).
    pub precision: Precision,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub augment: AugmentConfig,
    pub barlow_twins: BarlowTwinsConfig,
    /// MoCo v1/v2, and DenseCL's global branch, queue and momentum encoder.
    pub moco: MocoConfig,
    pub densecl: DenseClConfig,
    pub moco_v3: MocoV3Config,
    pub simclr: SimclrConfig,
    pub byol: ByolConfig,
    pub simsiam: SimsiamConfig,
    pub vicreg: VicregConfig,
    pub optim: OptimConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub diagnostics: DiagnosticsConfig,
    /// Settings of the CUDA kernels (ignored on the CPU).
    pub cuda: CudaConfig,
}

/// How sslab computes on a GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CudaConfig {
    /// f32 convolutions may use TF32 tensor cores, as PyTorch's default
    /// (`torch.backends.cudnn.allow_tf32`); `false` forces strict fp32, for comparisons with
    /// the CPU. Process-wide: the run built last sets it ([`crate::kernels::set_conv_tf32`]).
    pub tf32: bool,
    /// ResNets keep their activations channels-last (NHWC) on the GPU, as PyTorch with
    /// `memory_format=torch.channels_last`: cuDNN's tensor-core convolutions read NHWC without
    /// transposing (`kernels::set_channels_last`). Same numbers up to summation order.
    /// Process-wide, as `tf32`.
    pub channels_last: bool,
}

impl Default for CudaConfig {
    fn default() -> Self {
        CudaConfig {
            tf32: true,
            channels_last: false,
        }
    }
}

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `shapes`, `cifar10:PATH`, `cifar100:PATH`, `mnist:PATH`, `fashion-mnist:PATH`, `folder:PATH`.
    pub source: String,
    /// Size, split lengths and seed of the built-in shapes.
    pub shapes: ShapesConfig,
}

/// The two-view augmentation recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// The named recipe (`augment::RecipeName`).
    pub recipe: RecipeName,
    /// View side in pixels.
    pub size: usize,
    /// Lower bound of the crop area fraction; unset = the recipe's own.
    pub scale_min: Option<f32>,
}

/// Optimiser and learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// `sgd`, `lars`, `adamw` or `lamb`.
    pub kind: OptimName,
    /// Base learning rate of ≥2-D tensors.
    pub lr: f64,
    /// Base learning rate of 1-D tensors (biases, BN); unset = `lr`. (TOML has no null: to
    /// undo a preset's value, set it equal to `lr`.)
    pub lr_1d: Option<f64>,
    /// Multiply the base rates by batch/256 (linear scaling rule).
    pub scale_lr_with_batch: bool,
    pub weight_decay: f64,
    /// Exclude 1-D tensors from weight decay and trust-ratio adaptation.
    pub exclude_1d: bool,
    /// SGD/LARS momentum.
    pub momentum: f64,
    pub nesterov: bool,
    /// LARS trust coefficient η.
    pub eta: f64,
    /// LARS variant of solo-learn (Lightning Bolts): trust ratio clipped to the SGD step.
    pub lars_clip_lr: bool,
    /// Adam-family β₁, β₂, ε.
    pub betas: (f64, f64),
    pub eps: f64,
    /// Linear warmup length in epochs (fractional allowed).
    pub warmup_epochs: f64,
    /// Cosine end point as a fraction of the base rate.
    pub final_lr_frac: f64,
    /// `cosine` (after the warmup) or `steps` (×`gamma` at each of `milestones`).
    pub schedule: ScheduleKind,
    /// Epochs at which `steps` multiplies the rate by `gamma` (MoCo v1: 120, 160).
    pub milestones: Vec<f64>,
    pub gamma: f64,
    /// Hold the rate constant within an epoch (MoCo v2's `--cos` is per epoch).
    pub per_epoch: bool,
}

/// Budget and batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub batch_size: usize,
    /// Length of the run in epochs (used when `steps` is 0).
    pub epochs: f64,
    /// Length of the run in steps; 0 = from `epochs`.
    pub steps: usize,
    /// Print a progress line every this many steps during `train`.
    pub log_every: usize,
    /// Save a checkpoint every this many steps into the run's checkpoint folder (0: never).
    pub checkpoint_every: usize,
    /// Periodic checkpoints kept (the oldest are deleted).
    pub keep_checkpoints: usize,
    /// On several ranks ([`Run::distribute`](super::Run::distribute)): BatchNorm statistics
    /// over the global batch (SyncBN: what one process with the global batch computes, and
    /// what the official Barlow Twins and MoCo v3 do); `false`: each rank's own rows, as DDP
    /// without SyncBN. MoCo's `bn_splits` groups are per rank either way. Written into a
    /// saved config only when off, so configs saved before it existed print back the same.
    #[serde(skip_serializing_if = "is_true")]
    pub sync_bn: bool,
}

fn is_true(v: &bool) -> bool {
    *v
}

/// Evaluation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub knn_k: usize,
    pub knn_t: f64,
    /// Images per forward pass when extracting features.
    pub batch_size: usize,
    /// Full-batch AdamW steps of the dense linear probe.
    pub dense_probe_steps: usize,
    pub dense_probe_lr: f64,
    /// Epochs of the linear probe on cached features (the papers' 90-100, scaled down).
    pub linear_probe_epochs: usize,
    /// Learning rate of the linear probe on standardised features; 0 = 0.1
    /// (`LinearProbeSettings::scaled_down`).
    pub linear_probe_lr: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: "shapes".into(),
            shapes: ShapesConfig::default(),
        }
    }
}
impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            recipe: RecipeName::ByolCifar,
            size: 32,
            scale_min: None,
        }
    }
}
impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimName::Lars,
            lr: 0.2,
            lr_1d: None,
            scale_lr_with_batch: true,
            weight_decay: 1.5e-6,
            exclude_1d: true,
            momentum: 0.9,
            nesterov: false,
            eta: 0.001,
            lars_clip_lr: false,
            betas: (0.9, 0.999),
            eps: 1e-8,
            warmup_epochs: 10.0,
            final_lr_frac: 0.001,
            schedule: ScheduleKind::Cosine,
            milestones: vec![120.0, 160.0],
            gamma: 0.1,
            per_epoch: false,
        }
    }
}
impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 2048,
            epochs: 1000.0,
            steps: 0,
            log_every: 10,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            sync_bn: true,
        }
    }
}
/// What the run records besides the loss (see `diagnostics`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Record per-layer gradient norms every step (MoCo v3's spike tracker).
    pub grad_spikes: bool,
    /// A gradient norm above `spike_factor` × its layer's running median is a spike.
    pub spike_factor: f64,
    /// Steps in the running median.
    pub spike_window: usize,
    /// Take the cross-correlation, collapse and correspondence monitors every this many steps
    /// (0: ten times per run).
    pub every: usize,
    /// Held-out images (two views each) the monitors are measured on.
    pub probe_images: usize,
    /// Side of the drawn block of a cross-correlation snapshot (top-left corner of C).
    pub corr_block: usize,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        DiagnosticsConfig {
            grad_spikes: true,
            spike_factor: 5.0,
            spike_window: 50,
            every: 0,
            probe_images: 128,
            corr_block: 64,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            knn_k: 200,
            knn_t: 0.1,
            batch_size: 256,
            dense_probe_steps: 300,
            dense_probe_lr: 0.01,
            linear_probe_epochs: 30,
            linear_probe_lr: 0.0,
        }
    }
}

/// Merges `over` into `base`, key by key, recursing into tables.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn check(ok: bool, key: &str, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::config(key, msg()))
    }
}

impl RunConfig {
    /// `self` with the keys of `over` replacing its own, validated.
    pub(super) fn with_overrides(&self, over: toml::Value) -> Result<Self> {
        let mut base = toml::Value::try_from(self)
            .map_err(|e| Error::Invalid(format!("cannot serialise config: {e}")))?;
        merge(&mut base, over);
        let cfg: RunConfig = serde_path_to_error::deserialize(base).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "<config>".into() } else { key };
            Error::config(key, e.into_inner().message().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets one dotted key from a TOML value literal (`"0.1"`, `"[512, 512]"`, `"\"sgd\""`;
    /// bare words are taken as strings), then re-validates.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let mut over = parsed;
        for part in key.split('.').rev() {
            if part.is_empty() {
                let shown = if key.is_empty() { "(empty key)" } else { key };
                return Err(Error::config(
                    shown,
                    "empty key segment: expected SECTION.KEY, e.g. optim.lr",
                ));
            }
            let mut t = toml::Table::new();
            t.insert(part.to_string(), over);
            over = toml::Value::Table(t);
        }
        let new = self.with_overrides(over).map_err(|e| match e {
            Error::Config { msg, .. } => Error::config(key, msg),
            other => other,
        })?;
        *self = new;
        Ok(())
    }

    /// Checks ranges and names; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        check(
            self.device == "auto" || self.device == "cpu" || self.device.starts_with("cuda"),
            "device",
            || format!("'{}' is not auto, cpu, cuda or cuda:N", self.device),
        )?;
        crate::data::DataSource::parse(&self.data.source, self.data.shapes)?;
        let s = &self.data.shapes;
        check(matches!(s.size, 16..=256), "data.shapes.size", || {
            format!("must be in 16..=256, got {}", s.size)
        })?;
        check(s.train >= 10 && s.test >= 10, "data.shapes", || {
            format!(
                "train and test need at least 10 images, got {} and {}",
                s.train, s.test
            )
        })?;
        check(matches!(self.augment.size, 8..=512), "augment.size", || {
            format!("must be in 8..=512, got {}", self.augment.size)
        })?;
        if let Some(m) = self.augment.scale_min {
            check(m > 0.0 && m <= 1.0, "augment.scale_min", || {
                format!("must be in (0, 1], got {m}")
            })?;
        }
        self.model.validate(self.augment.size)?;
        self.method_setup().validate(self.method)?;
        let o = &self.optim;
        check(
            o.milestones.iter().all(|m| m.is_finite() && *m >= 0.0),
            "optim.milestones",
            || format!("epochs must be ≥ 0, got {:?}", o.milestones),
        )?;
        check(o.gamma.is_finite() && o.gamma > 0.0, "optim.gamma", || {
            format!("must be > 0, got {}", o.gamma)
        })?;
        check(o.lr.is_finite() && o.lr > 0.0, "optim.lr", || {
            format!("must be > 0, got {}", o.lr)
        })?;
        if let Some(l) = o.lr_1d {
            check(l.is_finite() && l >= 0.0, "optim.lr_1d", || {
                format!("must be ≥ 0, got {l}")
            })?;
        }
        check(
            o.weight_decay.is_finite() && o.weight_decay >= 0.0,
            "optim.weight_decay",
            || format!("must be ≥ 0, got {}", o.weight_decay),
        )?;
        check((0.0..1.0).contains(&o.momentum), "optim.momentum", || {
            format!("must be in [0, 1), got {}", o.momentum)
        })?;
        check(o.eta.is_finite() && o.eta > 0.0, "optim.eta", || {
            format!("must be > 0, got {}", o.eta)
        })?;
        check(
            (0.0..1.0).contains(&o.betas.0) && (0.0..1.0).contains(&o.betas.1),
            "optim.betas",
            || format!("both must be in [0, 1), got {:?}", o.betas),
        )?;
        check(o.eps > 0.0, "optim.eps", || {
            format!("must be > 0, got {}", o.eps)
        })?;
        check(
            o.warmup_epochs.is_finite() && o.warmup_epochs >= 0.0,
            "optim.warmup_epochs",
            || format!("must be ≥ 0, got {}", o.warmup_epochs),
        )?;
        check(
            (0.0..=1.0).contains(&o.final_lr_frac),
            "optim.final_lr_frac",
            || format!("must be in [0, 1], got {}", o.final_lr_frac),
        )?;
        let t = &self.train;
        check(t.batch_size >= 2, "train.batch_size", || {
            format!(
                "must be ≥ 2 (BatchNorm and the loss need a batch), got {}",
                t.batch_size
            )
        })?;
        check(
            t.epochs.is_finite() && t.epochs >= 0.0,
            "train.epochs",
            || format!("must be a finite number ≥ 0, got {}", t.epochs),
        )?;
        check(
            t.steps > 0 || (t.epochs.is_finite() && t.epochs > 0.0),
            "train.epochs",
            || {
                format!(
                    "set train.steps or a positive train.epochs, got {}",
                    t.epochs
                )
            },
        )?;
        check(t.log_every > 0, "train.log_every", || "must be ≥ 1".into())?;
        check(t.keep_checkpoints > 0, "train.keep_checkpoints", || {
            "must be ≥ 1".into()
        })?;
        let e = &self.eval;
        check(e.knn_k > 0, "eval.knn_k", || "must be ≥ 1".into())?;
        check(e.knn_t.is_finite() && e.knn_t > 0.0, "eval.knn_t", || {
            format!("must be > 0, got {}", e.knn_t)
        })?;
        check(e.batch_size > 0, "eval.batch_size", || "must be ≥ 1".into())?;
        check(e.dense_probe_steps > 0, "eval.dense_probe_steps", || {
            "must be ≥ 1".into()
        })?;
        check(
            e.dense_probe_lr.is_finite() && e.dense_probe_lr > 0.0,
            "eval.dense_probe_lr",
            || format!("must be > 0, got {}", e.dense_probe_lr),
        )?;
        check(
            e.linear_probe_epochs > 0,
            "eval.linear_probe_epochs",
            || "must be ≥ 1".into(),
        )?;
        check(
            e.linear_probe_lr.is_finite() && e.linear_probe_lr >= 0.0,
            "eval.linear_probe_lr",
            || format!("must be ≥ 0 (0 = the default), got {}", e.linear_probe_lr),
        )?;
        let d = &self.diagnostics;
        check(
            d.spike_factor.is_finite() && d.spike_factor > 1.0,
            "diagnostics.spike_factor",
            || format!("must be > 1, got {}", d.spike_factor),
        )?;
        check(d.spike_window >= 3, "diagnostics.spike_window", || {
            format!("must be ≥ 3 steps, got {}", d.spike_window)
        })?;
        check(
            (2..=4096).contains(&d.probe_images),
            "diagnostics.probe_images",
            || format!("must be in 2..=4096, got {}", d.probe_images),
        )?;
        check(
            (1..=1024).contains(&d.corr_block),
            "diagnostics.corr_block",
            || format!("must be in 1..=1024, got {}", d.corr_block),
        )?;
        Ok(())
    }

    /// The parts of this config a method is built from.
    pub fn method_setup(&self) -> MethodSetup<'_> {
        MethodSetup {
            model: &self.model,
            barlow_twins: &self.barlow_twins,
            moco: &self.moco,
            densecl: &self.densecl,
            moco_v3: &self.moco_v3,
            simclr: &self.simclr,
            byol: &self.byol,
            simsiam: &self.simsiam,
            vicreg: &self.vicreg,
            view_size: self.augment.size,
            batch_size: self.train.batch_size,
            seed: self.seed,
        }
    }

    /// Shrinks the run when the environment asks for a quick pass (`SSLAB_BUDGET=small`, as
    /// CI sets it for the notebooks): 512 training and 128 test images and at most 12 steps.
    /// The code paths are the same; only the sizes change. Without the variable the config is
    /// returned unchanged.
    pub fn with_env_budget(mut self) -> Result<Self> {
        if std::env::var("SSLAB_BUDGET").as_deref() == Ok("small") {
            self.data.shapes.train = self.data.shapes.train.min(512);
            self.data.shapes.test = self.data.shapes.test.min(128);
            self.train.steps = if self.train.steps == 0 {
                12
            } else {
                self.train.steps.min(12)
            };
            self.train.batch_size = self.train.batch_size.min(64);
            self.moco.queue_size = self.moco.queue_size.min(256);
            self.eval.dense_probe_steps = self.eval.dense_probe_steps.min(30);
            self.train.log_every = self.train.log_every.min(4);
            self.validate()?;
        }
        Ok(self)
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("cannot serialise config: {e}")))
    }
}
