//! BYOL (Grill et al. 2020; docs/recipes.md §7.2): an online ResNet + projector + predictor and
//! a target network, the EMA of the online backbone + projector with a momentum rising from
//! τ_base = 0.996 to 1 on a cosine; each view's prediction regresses the other view's target
//! projection, `2 − 2·cos`, summed over both directions. No negatives.

use super::branch::{check_widths, Branch, Head};
use super::{ForwardOutput, Method, MethodSetup, MomentumSchedule};
use crate::error::{Error, Result};
use crate::models::{ema_update, LastBn, Mlp, ParamBuilder, ParamStore, ResNetConfig};
use crate::objectives::byol_loss;
use crate::optim::cosine_momentum;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// BYOL's heads and target momentum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByolConfig {
    /// Projector widths after the backbone (hidden, output).
    pub projector: Vec<usize>,
    /// Hidden width of the predictor (its output is the projector's).
    pub predictor_hidden: usize,
    /// τ_base, the target's EMA momentum at the first step.
    pub momentum: f64,
    /// `cosine` (τ_base → 1 over the run; the paper) or `fixed`.
    pub momentum_schedule: MomentumSchedule,
}

impl Default for ByolConfig {
    /// ImageNet: projector and predictor 4096 → 256, τ_base 0.996, cosine.
    fn default() -> Self {
        ByolConfig {
            projector: vec![4096, 256],
            predictor_hidden: 4096,
            momentum: 0.996,
            momentum_schedule: MomentumSchedule::Cosine,
        }
    }
}

impl ByolConfig {
    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<()> {
        check_widths("byol.projector", &self.projector)?;
        if self.predictor_hidden == 0 {
            return Err(Error::config("byol.predictor_hidden", "must be ≥ 1"));
        }
        super::check_momentum("byol.momentum", self.momentum)
    }
}

/// Builds BYOL as a run's config describes it.
pub(super) fn build(s: &MethodSetup, device: &Device) -> Result<Box<dyn Method>> {
    Ok(Box::new(Byol::new(
        &s.model.resnet(),
        s.byol,
        s.seed,
        device,
    )?))
}

/// The BYOL model.
pub struct Byol {
    config: ByolConfig,
    online: Branch,
    predictor: Mlp,
    target: Branch,
    params: ParamStore,
    /// The online tensors the target mirrors (backbone + projector, in order).
    shared: ParamStore,
    target_params: ParamStore,
    momentum: f64,
}

impl Byol {
    /// Builds the online network, its predictor and the target (identical to the online
    /// network at the start). Projector and predictor are `Linear → BN → ReLU → Linear` with
    /// biases, as the official `MLP` (haiku's `Linear` has a bias by default).
    pub fn new(
        backbone: &ResNetConfig,
        config: &ByolConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let head = Head {
            widths: &config.projector,
            bias: true,
            last_bn: LastBn::None,
        };
        let mut b = ParamBuilder::new(seed, device);
        let online = Branch::new(&mut b, "", backbone, &head)?;
        let shared_len = b.store.params.len();
        let out = *config.projector.last().unwrap_or(&1);
        let predictor = Head {
            widths: &[config.predictor_hidden, out],
            ..head
        }
        .build(&mut b, "predictor", out)?;
        let params = b.finish();
        let shared = ParamStore {
            params: params.params[..shared_len].to_vec(),
        };
        let mut bt = ParamBuilder::new(seed, device);
        let target = Branch::new(&mut bt, "target.", backbone, &head)?;
        Ok(Byol {
            config: config.clone(),
            online,
            predictor,
            target,
            params,
            shared,
            target_params: bt.finish(),
            momentum: config.momentum,
        })
    }

    /// The momentum of the last EMA update.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    fn predict(&self, x: &Tensor) -> Result<Tensor> {
        self.predictor.forward_t(&self.online.embed(x)?, true)
    }
}

impl Method for Byol {
    fn name(&self) -> &'static str {
        "byol"
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn momentum_params(&self) -> Option<&ParamStore> {
        Some(&self.target_params)
    }

    fn forward_train(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput> {
        // Targets first, detached (no graph is kept for them); each view on its own, so BN
        // statistics are per view as in the official code.
        let z1 = self.target.embed(view_a)?.detach();
        let z2 = self.target.embed(view_b)?.detach();
        let p1 = self.predict(view_a)?;
        let p2 = self.predict(view_b)?;
        let loss = byol_loss(&p1, &p2, &z1, &z2)?;
        Ok(ForwardOutput {
            parts: vec![("regression".into(), loss.detach())],
            loss,
            cross_correlation: None,
        })
    }

    fn after_step(&mut self, step: usize, total_steps: usize) -> Result<()> {
        self.resume_at(step, total_steps)?;
        ema_update(&self.target_params, &self.shared, self.momentum)
    }

    fn resume_at(&mut self, steps_done: usize, total_steps: usize) -> Result<()> {
        self.momentum = match self.config.momentum_schedule {
            MomentumSchedule::Cosine => {
                cosine_momentum(self.config.momentum, steps_done, total_steps)
            }
            MomentumSchedule::Fixed => self.config.momentum,
        };
        Ok(())
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        self.online.features(images)
    }

    fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        self.online.feature_map(images)
    }
}
