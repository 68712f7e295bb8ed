//! MoCo v1/v2 (He et al. 2020, Chen et al. 2020; docs/recipes.md §1): a query encoder trained by
//! InfoNCE against keys from a momentum (EMA) encoder and a FIFO queue of earlier keys.
//!
//! The pieces DenseCL shares (the two encoders, ShuffleBN, the queue and the EMA) live here and
//! are reused by [`super::DenseCl`].

use super::queue::KeyQueue;
use super::{ForwardOutput, Method, MethodSetup, MomentumSchedule};
use crate::dist;
use crate::error::{Error, Result};
use crate::models::{
    ema_update, LastBn, Mlp, MlpSpec, ParamBuilder, ParamStore, ResNet, ResNetConfig, ResNetOutput,
};
use crate::objectives::{info_nce_queue, l2_normalize, InfoNce};
use crate::optim::cosine_momentum;
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// MoCo's head, queue, temperature and momentum encoder (docs/recipes.md §1); DenseCL uses the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MocoConfig {
    /// Embedding width.
    pub dim: usize,
    /// Hidden width of the v2/DenseCL MLP heads; 0 = the backbone's width.
    pub hidden: usize,
    /// Queue length K; a multiple of the keys enqueued per step (the batch, ×2 if symmetric).
    pub queue_size: usize,
    /// Temperature τ (v1 0.07, v2 0.2).
    pub tau: f64,
    /// EMA momentum m (the start value under the cosine schedule).
    pub momentum: f64,
    /// `fixed` (MoCo v1/v2, DenseCL) or `cosine` (towards 1, as MoCo v3/BYOL).
    pub momentum_schedule: MomentumSchedule,
    /// Sum both directions and enqueue both key sets (MoCo's CIFAR demo option).
    pub symmetric: bool,
    /// BatchNorm groups (single-device ShuffleBN); must divide the batch.
    pub bn_splits: usize,
    /// Shuffle the key batch across the BN groups.
    pub shuffle_bn: bool,
}

impl Default for MocoConfig {
    fn default() -> Self {
        MocoConfig {
            dim: 128,
            hidden: 0,
            queue_size: 65536,
            tau: 0.2,
            momentum: 0.999,
            momentum_schedule: MomentumSchedule::Fixed,
            symmetric: false,
            bn_splits: 8,
            shuffle_bn: true,
        }
    }
}
impl MocoConfig {
    /// Range checks of the section alone; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(Error::config("moco.dim", "must be ≥ 1"));
        }
        check_tau(self.tau)?;
        super::check_momentum("moco.momentum", self.momentum)?;
        if self.bn_splits < 1 {
            return Err(Error::config("moco.bn_splits", "must be ≥ 1"));
        }
        Ok(())
    }

    /// What the section needs of the batch: BatchNorm groups that divide it into groups of two
    /// or more, and a queue that is a multiple of the keys enqueued per step.
    pub fn validate_batch(&self, batch: usize) -> Result<()> {
        if !(batch.is_multiple_of(self.bn_splits) && batch / self.bn_splits >= 2) {
            return Err(Error::config(
                "moco.bn_splits",
                format!(
                    "{} BatchNorm groups must divide the batch of {batch} into groups of ≥ 2",
                    self.bn_splits
                ),
            ));
        }
        let per_step = if self.symmetric { 2 * batch } else { batch };
        if !(self.queue_size >= per_step && self.queue_size.is_multiple_of(per_step)) {
            return Err(Error::config(
                "moco.queue_size",
                format!(
                    "must be a multiple of the {per_step} keys enqueued per step (batch{}), got {}",
                    if self.symmetric {
                        " × 2, symmetric"
                    } else {
                        ""
                    },
                    self.queue_size
                ),
            ));
        }
        Ok(())
    }

    /// The architecture this section describes, on `backbone`.
    pub fn spec(&self, version: MocoVersion, backbone: ResNetConfig) -> MocoSpec {
        MocoSpec {
            backbone,
            version,
            config: self.clone(),
        }
    }
}

/// τ > 0, in a config and mid-run alike.
fn check_tau(tau: f64) -> Result<()> {
    super::check_temperature("moco.tau", tau)
}

/// Checks what MoCo v1/v2 need beyond the section's own ranges.
pub(super) fn validate(s: &MethodSetup) -> Result<()> {
    s.moco.validate_batch(s.batch_size)
}

/// Builds MoCo v1 as a run's config describes it.
pub(super) fn build_v1(s: &MethodSetup, device: &Device) -> Result<Box<dyn Method>> {
    let spec = s.moco.spec(MocoVersion::V1, s.model.resnet());
    Ok(Box::new(Moco::new(&spec, s.seed, device)?))
}

/// Builds MoCo v2 as a run's config describes it.
pub(super) fn build_v2(s: &MethodSetup, device: &Device) -> Result<Box<dyn Method>> {
    let spec = s.moco.spec(MocoVersion::V2, s.model.resnet());
    Ok(Box::new(Moco::new(&spec, s.seed, device)?))
}

/// Which MoCo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MocoVersion {
    /// Linear 128-d head, τ 0.07.
    V1,
    /// Two-layer MLP head without BN, τ 0.2.
    V2,
}

/// Architecture and loss settings shared by MoCo and DenseCL: the backbone, the version (its
/// head) and the `moco` section.
#[derive(Clone, Debug, PartialEq)]
pub struct MocoSpec {
    pub backbone: ResNetConfig,
    pub version: MocoVersion,
    pub config: MocoConfig,
}

impl MocoSpec {
    /// The paper's v1 or v2 setting on `backbone` (τ 0.07 for v1, 0.2 for v2; the rest is the
    /// section's default).
    pub fn paper(version: MocoVersion, backbone: ResNetConfig) -> Self {
        let tau = match version {
            MocoVersion::V1 => 0.07,
            MocoVersion::V2 => 0.2,
        };
        MocoSpec {
            backbone,
            version,
            config: MocoConfig {
                tau,
                ..MocoConfig::default()
            },
        }
    }
}

/// One encoder's outputs.
#[derive(Clone, Debug)]
pub(crate) struct Encoded {
    /// Backbone feature map flattened to `(n, C, S²)`.
    pub map: Tensor,
    /// Global head output `(n, D)`, raw.
    pub global: Tensor,
    /// Dense head output `(n, D, S²)`, raw (DenseCL only).
    pub grid: Option<Tensor>,
}

/// Backbone + global head (+ DenseCL's dense head), the unit the EMA copies.
#[derive(Clone, Debug)]
pub(crate) struct Encoder {
    pub backbone: ResNet,
    head: Mlp,
    dense_head: Option<Mlp>,
}

impl Encoder {
    /// Registers the encoder under `prefix` ("" for the query, "momentum." for the key copy).
    fn new(b: &mut ParamBuilder, prefix: &str, spec: &MocoSpec, dense: bool) -> Result<Self> {
        let mut backbone = ResNet::new(b, &format!("{prefix}backbone"), &spec.backbone)?;
        backbone.set_bn_splits(spec.config.bn_splits);
        let c = backbone.out_dim();
        let hidden = if spec.config.hidden == 0 {
            c
        } else {
            spec.config.hidden
        };
        let dims = match spec.version {
            MocoVersion::V1 => vec![c, spec.config.dim],
            MocoVersion::V2 => vec![c, hidden, spec.config.dim],
        };
        let mlp = |dims: Vec<usize>| MlpSpec {
            dims,
            bias: true,
            hidden_bn: false,
            last_bn: LastBn::None,
        };
        let head = Mlp::new(b, &format!("{prefix}head"), &mlp(dims))?;
        // DenseCL's dense head: 1×1 conv → ReLU → 1×1 conv, i.e. the same MLP at every location.
        let dense_head = if dense {
            Some(Mlp::new(
                b,
                &format!("{prefix}dense_head"),
                &mlp(vec![c, hidden, spec.config.dim]),
            )?)
        } else {
            None
        };
        Ok(Encoder {
            backbone,
            head,
            dense_head,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Encoded> {
        let out = self.backbone.forward_t(x, train)?;
        let (n, c, h, w) = out.feature_map.dims4()?;
        let map = out.feature_map.reshape((n, c, h * w))?;
        let global = self.head.forward_t(&out.pooled, train)?;
        let grid = match &self.dense_head {
            Some(head) => {
                let rows = map.transpose(1, 2)?.reshape((n * h * w, c))?;
                let d = head.forward_t(&rows, train)?;
                let dim = d.dim(1)?;
                Some(d.reshape((n, h * w, dim))?.transpose(1, 2)?)
            }
            None => None,
        };
        Ok(Encoded { map, global, grid })
    }
}

/// The machinery MoCo and DenseCL share: query encoder, momentum encoder, ShuffleBN and the
/// global queue.
pub(crate) struct MomentumPair {
    pub spec: MocoSpec,
    pub query: Encoder,
    key: Encoder,
    pub params: ParamStore,
    pub key_params: ParamStore,
    pub queue: KeyQueue,
    seed: u64,
    /// Steps completed; seeds the ShuffleBN permutation, so a step is reproducible from
    /// (seed, step) alone.
    steps: usize,
    /// The current momentum.
    momentum: f64,
}

impl MomentumPair {
    pub fn new(spec: &MocoSpec, dense: bool, seed: u64, device: &Device) -> Result<Self> {
        spec.config.validate()?;
        // The same seed draws the same values in the same order: the key encoder starts as an
        // exact copy of the query encoder, as the official code's `param_k.data.copy_(param_q)`.
        let mut bq = ParamBuilder::new(seed, device);
        let query = Encoder::new(&mut bq, "", spec, dense)?;
        let mut bk = ParamBuilder::new(seed, device);
        let key = Encoder::new(&mut bk, "momentum.", spec, dense)?;
        let queue = KeyQueue::new(
            spec.config.dim,
            spec.config.queue_size,
            seed ^ 0x5155_4555_4531,
            device,
        )?;
        Ok(MomentumPair {
            spec: spec.clone(),
            query,
            key,
            params: bq.finish(),
            key_params: bk.finish(),
            queue,
            seed,
            steps: 0,
            momentum: spec.config.momentum,
        })
    }

    /// The permutation of ShuffleBN for the current step and its inverse.
    fn shuffle(&self, n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ 0x5348_5546_464c_4542 ^ (self.steps as u64).wrapping_mul(0x9E37_79B9),
        );
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.shuffle(&mut rng);
        let mut inv = vec![0u32; n];
        for (i, &p) in perm.iter().enumerate() {
            inv[p as usize] = i as u32;
        }
        Ok((
            Tensor::from_vec(perm, n, device)?,
            Tensor::from_vec(inv, n, device)?,
        ))
    }

    /// Keys of a batch: the momentum encoder in training mode behind ShuffleBN, detached.
    ///
    /// Across ranks (docs/distributed.md) this is the official `_batch_shuffle_ddp`: every
    /// rank's images are gathered, one permutation of the global batch (drawn from seed and
    /// step, so the same on every rank) deals each rank its share, the keys are gathered back
    /// and put in the original order, and each rank keeps its own rows.
    pub fn encode_keys(&self, x: &Tensor) -> Result<Encoded> {
        let n = x.dim(0)?;
        let (rank, size) = dist::rank_and_size();
        let splits = self.spec.config.bn_splits.max(1);
        if !(n * size).is_multiple_of(splits) {
            return Err(Error::config(
                "moco.bn_splits",
                format!(
                    "batch of {} does not divide into {} BatchNorm groups",
                    n * size,
                    self.spec.config.bn_splits
                ),
            ));
        }
        if !self.spec.config.shuffle_bn {
            let e = self.key.forward(x, true)?;
            return Ok(Encoded {
                map: e.map.detach(),
                global: e.global.detach(),
                grid: e.grid.map(|g| g.detach()),
            });
        }
        let all = dist::gather_detached(x)?;
        let (perm, inv) = self.shuffle(n * size, x.device())?;
        let mine = perm.narrow(0, rank * n, n)?;
        let e = self.key.forward(&all.index_select(&mine, 0)?, true)?;
        let back = |t: Tensor| -> Result<Tensor> {
            let every = dist::gather_detached(&t.contiguous()?)?;
            Ok(every.index_select(&inv, 0)?.narrow(0, rank * n, n)?)
        };
        Ok(Encoded {
            map: back(e.map)?,
            global: back(e.global)?,
            grid: e.grid.map(back).transpose()?,
        })
    }

    /// Queries of a batch (training mode, with gradient).
    pub fn encode_queries(&self, x: &Tensor) -> Result<Encoded> {
        self.query.forward(x, true)
    }

    /// After the optimiser step: move the momentum encoder (with the query weights the step
    /// produced, which is where the official code's EMA at the start of the next forward lands).
    pub fn after_step(&mut self, step: usize, total: usize) -> Result<()> {
        self.resume_at(step, total);
        ema_update(&self.key_params, &self.params, self.momentum)
    }

    /// Changes τ of the InfoNCE.
    pub fn set_tau(&mut self, tau: f64) -> Result<()> {
        check_tau(tau)?;
        self.spec.config.tau = tau;
        Ok(())
    }

    /// Sets the step counter (it seeds ShuffleBN) and the momentum as they were after `step`.
    pub fn resume_at(&mut self, step: usize, total: usize) {
        self.momentum = if self.spec.config.momentum_schedule == MomentumSchedule::Cosine {
            cosine_momentum(self.spec.config.momentum, step, total)
        } else {
            self.spec.config.momentum
        };
        self.steps = step;
    }

    /// The momentum used by the last EMA update.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// Steps completed.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The query backbone in evaluation mode (kNN, probes, similarity maps).
    pub fn query_backbone(&self, images: &Tensor) -> Result<ResNetOutput> {
        self.query.backbone.forward_t(images, false)
    }

    /// The query encoder's dense head in evaluation mode, `(n, d, h, w)`.
    pub fn query_dense_map(&self, images: &Tensor) -> Result<Tensor> {
        let (n, _, h, w) = self
            .query
            .backbone
            .forward_t(images, false)?
            .feature_map
            .dims4()?;
        let e = self.query.forward(images, false)?;
        let grid = e
            .grid
            .ok_or_else(|| Error::Invalid("this encoder has no dense head".into()))?;
        let d = grid.dim(1)?;
        Ok(grid.reshape((n, d, h, w))?)
    }
}

/// Scalar summaries of an InfoNCE: mean positive and negative cosine, and how often the
/// positive is the top logit (MoCo's "acc1").
fn contrastive_parts(nce: &InfoNce, tau: f64) -> Result<Vec<(String, Tensor)>> {
    let logits = nce.logits.detach();
    let k = logits.dim(1)? - 1;
    let pos = (logits.narrow(1, 0, 1)?.mean_all()? * tau)?;
    let neg = (logits.narrow(1, 1, k)?.mean_all()? * tau)?;
    let acc = logits
        .argmax(1)?
        .eq(0u32)?
        .to_dtype(DType::F32)?
        .mean_all()?;
    Ok(vec![
        ("pos_cos".into(), pos),
        ("neg_cos".into(), neg),
        ("acc".into(), acc),
    ])
}

/// MoCo v1/v2.
///
/// ```no_run
/// use candle_core::{Device, Tensor};
/// use sslab::methods::{Method, Moco, MocoSpec, MocoVersion};
/// use sslab::models::{Depth, ResNetConfig, Stem};
/// let backbone = ResNetConfig { depth: Depth::R18, stem: Stem::Cifar, width: 8, zero_init_residual: false };
/// let mut spec = MocoSpec::paper(MocoVersion::V2, backbone);
/// spec.config.queue_size = 64;
/// let mut moco = Moco::new(&spec, 0, &Device::Cpu)?;
/// let x = Tensor::randn(0f32, 1.0, (16, 3, 32, 32), &Device::Cpu)?;
/// let out = moco.forward_train(&x, &x)?;
/// println!("loss {}", out.loss.to_scalar::<f32>()?);
/// # Ok::<(), sslab::Error>(())
/// ```
pub struct Moco {
    pair: MomentumPair,
    /// Normalised keys of the last forward, enqueued after the optimiser step.
    pending: Option<Tensor>,
}

impl Moco {
    /// Builds the query and key encoders (identical at start) and a random queue.
    pub fn new(spec: &MocoSpec, seed: u64, device: &Device) -> Result<Self> {
        Ok(Moco {
            pair: MomentumPair::new(spec, false, seed, device)?,
            pending: None,
        })
    }

    /// The settings.
    pub fn spec(&self) -> &MocoSpec {
        &self.pair.spec
    }

    /// Keys of a batch as the momentum encoder gives them (normalised), for inspection.
    pub fn keys(&self, images: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.pair.encode_keys(images)?.global, 1)
    }

    /// Queries of a batch (normalised, training-mode forward), for inspection.
    pub fn queries(&self, images: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.pair.encode_queries(images)?.global.detach(), 1)
    }

    /// The momentum of the last EMA update.
    pub fn momentum(&self) -> f64 {
        self.pair.momentum()
    }

    /// Changes τ (meaningful mid-run).
    pub fn set_tau(&mut self, tau: f64) -> Result<()> {
        self.pair.set_tau(tau)
    }

    fn direction(&self, x_q: &Tensor, x_k: &Tensor) -> Result<(InfoNce, Tensor)> {
        // Keys first: they are detached, so their forward graph is freed before the queries'
        // exists, and the peak memory holds one encoder's graph, not two.
        let k = self.pair.encode_keys(x_k)?.global;
        let q = self.pair.encode_queries(x_q)?.global;
        let nce = info_nce_queue(&q, &k, &self.pair.queue.keys()?, self.pair.spec.config.tau)?;
        Ok((nce, l2_normalize(&k, 1)?))
    }
}

impl Method for Moco {
    fn name(&self) -> &'static str {
        match self.pair.spec.version {
            MocoVersion::V1 => "moco-v1",
            MocoVersion::V2 => "moco-v2",
        }
    }

    fn params(&self) -> &ParamStore {
        &self.pair.params
    }

    fn momentum_params(&self) -> Option<&ParamStore> {
        Some(&self.pair.key_params)
    }

    fn queues(&self) -> Vec<(&'static str, &KeyQueue)> {
        vec![("queue", &self.pair.queue)]
    }

    fn queues_mut(&mut self) -> Vec<(&'static str, &mut KeyQueue)> {
        vec![("queue", &mut self.pair.queue)]
    }

    fn set_param(&mut self, key: &str, value: f64) -> Result<bool> {
        if key != "moco.tau" {
            return Ok(false);
        }
        self.set_tau(value)?;
        Ok(true)
    }

    fn resume_at(&mut self, steps_done: usize, total_steps: usize) -> Result<()> {
        self.pair.resume_at(steps_done, total_steps);
        Ok(())
    }

    fn forward_train(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput> {
        let per_view = if self.pair.spec.config.symmetric {
            2
        } else {
            1
        };
        // The queue takes every rank's keys.
        let global = view_a.dim(0)? * dist::rank_and_size().1;
        self.pair.queue.check_keys_per_step(per_view * global)?;
        let tau = self.pair.spec.config.tau;
        let (loss, parts, keys) = if self.pair.spec.config.symmetric {
            let (ab, k2) = self.direction(view_a, view_b)?;
            let (ba, k1) = self.direction(view_b, view_a)?;
            let mut parts = contrastive_parts(&ab, tau)?;
            parts.insert(0, ("loss_12".into(), ab.loss.detach()));
            parts.insert(1, ("loss_21".into(), ba.loss.detach()));
            let (k1, k2) = (dist::gather_detached(&k1)?, dist::gather_detached(&k2)?);
            ((ab.loss + ba.loss)?, parts, Tensor::cat(&[&k1, &k2], 0)?)
        } else {
            let (nce, k) = self.direction(view_a, view_b)?;
            let parts = contrastive_parts(&nce, tau)?;
            (nce.loss, parts, dist::gather_detached(&k)?)
        };
        self.pending = Some(keys);
        Ok(ForwardOutput {
            loss,
            parts,
            cross_correlation: None,
        })
    }

    fn after_step(&mut self, step: usize, total_steps: usize) -> Result<()> {
        // Enqueue after the loss (and its backward): a batch never contrasts with its own keys.
        if let Some(k) = self.pending.take() {
            self.pair.queue.enqueue(&k)?;
        }
        self.pair.after_step(step, total_steps)
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.pair.query_backbone(images)?.pooled)
    }

    fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.pair.query_backbone(images)?.feature_map)
    }
}
