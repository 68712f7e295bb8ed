//! DenseCL (Wang et al. 2021; docs/recipes.md §4): MoCo v2 plus a dense head contrasting every
//! location of the last feature map with its best-matching location in the other view.

use super::moco::{MocoConfig, MocoSpec, MocoVersion, MomentumPair};
use super::queue::KeyQueue;
use super::{ForwardOutput, Method, MethodSetup};
use crate::dist;
use crate::error::{Error, Result};
use crate::models::ParamStore;
use crate::objectives::{dense_correspondence, densecl_loss, l2_normalize, DenseClInputs};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// DenseCL's dense branch (docs/recipes.md §4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DenseClConfig {
    /// Weight λ of the dense loss.
    pub lambda: f64,
    /// λ = 0 for this many first steps (official hook, off by default).
    pub lambda_warmup_steps: usize,
}

impl Default for DenseClConfig {
    fn default() -> Self {
        DenseClConfig {
            lambda: 0.5,
            lambda_warmup_steps: 0,
        }
    }
}
impl DenseClConfig {
    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<()> {
        check_lambda(self.lambda)
    }
}

/// λ in [0, 1], in a config and mid-run alike.
fn check_lambda(lambda: f64) -> Result<()> {
    if (0.0..=1.0).contains(&lambda) {
        return Ok(());
    }
    Err(Error::config(
        "densecl.lambda",
        format!("must be in [0, 1], got {lambda}"),
    ))
}

/// Checks what DenseCL needs beyond the sections' own ranges: MoCo's batch rules, and the
/// official code's one-directional loss.
pub(super) fn validate(s: &MethodSetup) -> Result<()> {
    s.moco.validate_batch(s.batch_size)?;
    check_asymmetric(s.moco)
}

/// DenseCL's loss runs one direction only, as in the official code.
fn check_asymmetric(moco: &MocoConfig) -> Result<()> {
    if moco.symmetric {
        return Err(Error::config(
            "moco.symmetric",
            "DenseCL's loss is asymmetric in the official code; set it to false",
        ));
    }
    Ok(())
}

/// Builds DenseCL as a run's config describes it (MoCo v2's encoders and queue).
pub(super) fn build(s: &MethodSetup, device: &Device) -> Result<Box<dyn Method>> {
    let spec = DenseClSpec {
        moco: s.moco.spec(MocoVersion::V2, s.model.resnet()),
        config: s.densecl.clone(),
    };
    Ok(Box::new(DenseCl::new(&spec, s.seed, device)?))
}

/// DenseCL's settings: MoCo v2's (global head, queue, τ, momentum, ShuffleBN; version v2,
/// `symmetric` false) and the `densecl` section.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseClSpec {
    pub moco: MocoSpec,
    pub config: DenseClConfig,
}

/// The DenseCL model: MoCo v2's encoders with a dense head each, and two queues.
pub struct DenseCl {
    pair: MomentumPair,
    dense_queue: KeyQueue,
    lambda: f64,
    lambda_warmup_steps: usize,
    /// (global keys, pooled dense keys) of the last forward, enqueued after the step.
    pending: Option<(Tensor, Tensor)>,
    /// The last step's correspondence `(n, S²)`, for diagnostics.
    last_correspondence: Option<Tensor>,
}

impl DenseCl {
    /// Builds both encoders (identical at start) and both queues.
    pub fn new(spec: &DenseClSpec, seed: u64, device: &Device) -> Result<Self> {
        if spec.moco.version != MocoVersion::V2 {
            return Err(Error::config(
                "method",
                "DenseCL is built on MoCo v2's head",
            ));
        }
        check_asymmetric(&spec.moco.config)?;
        spec.config.validate()?;
        let pair = MomentumPair::new(&spec.moco, true, seed, device)?;
        let dense_queue = KeyQueue::new(
            spec.moco.config.dim,
            spec.moco.config.queue_size,
            seed ^ 0x4445_4e53_4551,
            device,
        )?;
        Ok(DenseCl {
            pair,
            dense_queue,
            lambda: spec.config.lambda,
            lambda_warmup_steps: spec.config.lambda_warmup_steps,
            pending: None,
            last_correspondence: None,
        })
    }

    /// λ in force at the next step (0 during the warm-up).
    pub fn lambda_now(&self) -> f64 {
        if self.pair.steps() < self.lambda_warmup_steps {
            0.0
        } else {
            self.lambda
        }
    }

    /// Changes λ (meaningful mid-run).
    pub fn set_lambda(&mut self, lambda: f64) -> Result<()> {
        check_lambda(lambda)?;
        self.lambda = lambda;
        Ok(())
    }

    /// The correspondence `(n, S²)` of the last training step (view-a location → view-b
    /// location).
    pub fn last_correspondence(&self) -> Option<&Tensor> {
        self.last_correspondence.as_ref()
    }

    /// The momentum of the last EMA update.
    pub fn momentum(&self) -> f64 {
        self.pair.momentum()
    }
}

impl Method for DenseCl {
    fn name(&self) -> &'static str {
        "densecl"
    }

    fn has_dense_head(&self) -> bool {
        true
    }

    fn set_param(&mut self, key: &str, value: f64) -> Result<bool> {
        match key {
            "densecl.lambda" => self.set_lambda(value)?,
            "moco.tau" => self.pair.set_tau(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn params(&self) -> &ParamStore {
        &self.pair.params
    }

    fn momentum_params(&self) -> Option<&ParamStore> {
        Some(&self.pair.key_params)
    }

    fn queues(&self) -> Vec<(&'static str, &KeyQueue)> {
        vec![
            ("queue", &self.pair.queue),
            ("dense_queue", &self.dense_queue),
        ]
    }

    fn queues_mut(&mut self) -> Vec<(&'static str, &mut KeyQueue)> {
        vec![
            ("queue", &mut self.pair.queue),
            ("dense_queue", &mut self.dense_queue),
        ]
    }

    fn resume_at(&mut self, steps_done: usize, total_steps: usize) -> Result<()> {
        self.pair.resume_at(steps_done, total_steps);
        Ok(())
    }

    fn forward_train(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput> {
        // The queues take every rank's keys.
        let global = view_a.dim(0)? * dist::rank_and_size().1;
        self.pair.queue.check_keys_per_step(global)?;
        // Keys first (detached): see `Moco::direction`.
        let k = self.pair.encode_keys(view_b)?;
        let q = self.pair.encode_queries(view_a)?;
        let missing = || Error::Invalid("DenseCL encoder lost its dense head".into());
        let (q_grid, k_grid) = (
            q.grid.as_ref().ok_or_else(missing)?,
            k.grid.as_ref().ok_or_else(missing)?,
        );
        let correspondence = dense_correspondence(&q.map, &k.map)?;
        let queue = self.pair.queue.keys()?;
        let dense_queue = self.dense_queue.keys()?;
        let out = densecl_loss(
            DenseClInputs {
                q: &q.global,
                k: &k.global,
                queue: &queue,
                q_grid,
                k_grid,
                correspondence: &correspondence,
                dense_queue: &dense_queue,
            },
            self.pair.spec.config.tau,
            self.lambda_now(),
        )?;
        // Queue 2 holds one vector per image: the dense key grid pooled before normalisation.
        let k2 = l2_normalize(&k_grid.mean(2)?, 1)?;
        self.pending = Some((
            dist::gather_detached(&l2_normalize(&k.global, 1)?)?,
            dist::gather_detached(&k2)?,
        ));
        self.last_correspondence = Some(correspondence);
        Ok(ForwardOutput {
            loss: out.loss,
            parts: vec![
                ("global".into(), out.global.detach()),
                ("dense".into(), out.dense.detach()),
            ],
            cross_correlation: None,
        })
    }

    fn after_step(&mut self, step: usize, total_steps: usize) -> Result<()> {
        if let Some((k, k2)) = self.pending.take() {
            self.pair.queue.enqueue(&k)?;
            self.dense_queue.enqueue(&k2)?;
        }
        self.pair.after_step(step, total_steps)
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.pair.query_backbone(images)?.pooled)
    }

    fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.pair.query_backbone(images)?.feature_map)
    }

    fn dense_head_map(&self, images: &Tensor) -> Result<Option<Tensor>> {
        self.pair.query_dense_map(images).map(Some)
    }
}
