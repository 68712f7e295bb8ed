//! MoCo v3 (Chen, Xie, He 2021; docs/recipes.md §2): online = backbone + projector + predictor,
//! momentum encoder = EMA of backbone + projector (not the predictor), no queue, symmetrised
//! `ctr(q1, k2) + ctr(q2, k1)` with the 2τ factor. Works on ResNets and ViTs; with a ViT the
//! patch projection can stay frozen at its random init (the paper's fix for gradient spikes).

use super::{ForwardOutput, Method, MethodSetup, MomentumSchedule};
use crate::dist;
use crate::error::{Error, Result};
use crate::models::{
    ema_update, Backbone, BackboneConfig, LastBn, Mlp, MlpSpec, ParamBuilder, ParamStore,
};
use crate::objectives::{l2_normalize, moco_v3_ctr_at};
use crate::optim::cosine_momentum;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// MoCo v3's heads, temperature and momentum (docs/recipes.md §2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MocoV3Config {
    /// Hidden width of projector and predictor.
    pub hidden: usize,
    /// Output width.
    pub dim: usize,
    /// τ (0.2 for ViT, 1.0 for ResNet-50).
    pub tau: f64,
    /// m₀.
    pub momentum: f64,
    /// `cosine` (to 1, per iteration; the paper) or `fixed`.
    pub momentum_schedule: MomentumSchedule,
}

impl Default for MocoV3Config {
    fn default() -> Self {
        MocoV3Config {
            hidden: 4096,
            dim: 256,
            tau: 0.2,
            momentum: 0.99,
            momentum_schedule: MomentumSchedule::Cosine,
        }
    }
}
impl MocoV3Config {
    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 || self.dim == 0 {
            return Err(Error::config("moco_v3.hidden", "head widths must be ≥ 1"));
        }
        check_tau(self.tau)?;
        super::check_momentum("moco_v3.momentum", self.momentum)?;
        Ok(())
    }
}

/// τ > 0, in a config and mid-run alike.
fn check_tau(tau: f64) -> Result<()> {
    super::check_temperature("moco_v3.tau", tau)
}

/// Builds MoCo v3 (ResNet or ViT, as `model.backbone` says) as a run's config describes it.
pub(super) fn build(s: &MethodSetup, device: &Device) -> Result<Box<dyn Method>> {
    let spec = MocoV3Spec {
        backbone: s.model.backbone(s.view_size),
        config: s.moco_v3.clone(),
    };
    Ok(Box::new(MocoV3::new(&spec, s.seed, device)?))
}

/// Architecture and loss settings: the backbone (ResNet or ViT) and the `moco_v3` section.
#[derive(Clone, Debug, PartialEq)]
pub struct MocoV3Spec {
    pub backbone: BackboneConfig,
    pub config: MocoV3Config,
}

struct Encoder {
    backbone: Backbone,
    projector: Mlp,
}

impl Encoder {
    fn new(b: &mut ParamBuilder, prefix: &str, spec: &MocoV3Spec) -> Result<Self> {
        let backbone = Backbone::new(b, &format!("{prefix}backbone"), &spec.backbone)?;
        let c = backbone.out_dim();
        // ResNet: 2-layer projector; ViT: 3 layers. Both end in a non-affine BN (§2.3).
        let dims = match spec.backbone {
            BackboneConfig::ResNet(_) => vec![c, spec.config.hidden, spec.config.dim],
            BackboneConfig::Vit(_) => {
                vec![c, spec.config.hidden, spec.config.hidden, spec.config.dim]
            }
        };
        let projector = Mlp::new(
            b,
            &format!("{prefix}projector"),
            &MlpSpec {
                dims,
                bias: false,
                hidden_bn: true,
                last_bn: LastBn::NonAffine,
            },
        )?;
        Ok(Encoder {
            backbone,
            projector,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.projector
            .forward_t(&self.backbone.forward_t(x, true)?, true)
    }
}

/// The MoCo v3 model.
pub struct MocoV3 {
    spec: MocoV3Spec,
    query: Encoder,
    predictor: Mlp,
    key: Encoder,
    params: ParamStore,
    /// The query tensors the momentum encoder mirrors (backbone + projector, in order).
    shared: ParamStore,
    key_params: ParamStore,
    momentum: f64,
}

impl MocoV3 {
    /// Builds the online encoder, its predictor and the momentum copy (identical at start).
    pub fn new(spec: &MocoV3Spec, seed: u64, device: &Device) -> Result<Self> {
        spec.config.validate()?;
        let mut bq = ParamBuilder::new(seed, device);
        let query = Encoder::new(&mut bq, "", spec)?;
        let shared_len = bq.store.params.len();
        // Predictor: 2 layers; last BN only for the ViT (§2.3).
        let last_bn = match spec.backbone {
            BackboneConfig::ResNet(_) => LastBn::None,
            BackboneConfig::Vit(_) => LastBn::NonAffine,
        };
        let predictor = Mlp::new(
            &mut bq,
            "predictor",
            &MlpSpec {
                dims: vec![spec.config.dim, spec.config.hidden, spec.config.dim],
                bias: false,
                hidden_bn: true,
                last_bn,
            },
        )?;
        let params = bq.finish();
        let shared = ParamStore {
            params: params.params[..shared_len].to_vec(),
        };
        let mut bk = ParamBuilder::new(seed, device);
        let key = Encoder::new(&mut bk, "momentum.", spec)?;
        Ok(MocoV3 {
            spec: spec.clone(),
            query,
            predictor,
            key,
            params,
            shared,
            key_params: bk.finish(),
            momentum: spec.config.momentum,
        })
    }

    /// The momentum of the last EMA update.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// The settings.
    pub fn spec(&self) -> &MocoV3Spec {
        &self.spec
    }

    fn keys(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.key.forward(x)?.detach())
    }
}

impl Method for MocoV3 {
    fn name(&self) -> &'static str {
        "moco-v3"
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn momentum_params(&self) -> Option<&ParamStore> {
        Some(&self.key_params)
    }

    fn forward_train(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput> {
        // Each crop goes through the networks on its own: BN statistics are per crop. Keys
        // first (detached): see `Moco::direction`.
        // Across ranks every rank's keys are the negatives (all-gathered, as the official
        // `concat_all_gather`), and a rank's positives sit at its offset among them.
        let k1 = dist::gather_detached(&self.keys(view_a)?)?;
        let k2 = dist::gather_detached(&self.keys(view_b)?)?;
        let q1 = self
            .predictor
            .forward_t(&self.query.forward(view_a)?, true)?;
        let q2 = self
            .predictor
            .forward_t(&self.query.forward(view_b)?, true)?;
        let tau = self.spec.config.tau;
        let n = q1.dim(0)?;
        let offset = dist::rank_and_size().0 * n;
        let l12 = moco_v3_ctr_at(&q1, &k2, tau, offset)?;
        let l21 = moco_v3_ctr_at(&q2, &k1, tau, offset)?;
        let pos = (l2_normalize(&q1.detach(), 1)? * l2_normalize(&k2.narrow(0, offset, n)?, 1)?)?
            .sum(1)?
            .mean_all()?;
        Ok(ForwardOutput {
            loss: (&l12 + &l21)?,
            parts: vec![
                ("ctr_12".into(), l12.detach()),
                ("ctr_21".into(), l21.detach()),
                ("pos_cos".into(), pos),
            ],
            cross_correlation: None,
        })
    }

    fn after_step(&mut self, step: usize, total_steps: usize) -> Result<()> {
        self.resume_at(step, total_steps)?;
        ema_update(&self.key_params, &self.shared, self.momentum)
    }

    fn set_param(&mut self, key: &str, value: f64) -> Result<bool> {
        if key != "moco_v3.tau" {
            return Ok(false);
        }
        check_tau(value)?;
        self.spec.config.tau = value;
        Ok(true)
    }

    fn resume_at(&mut self, steps_done: usize, total_steps: usize) -> Result<()> {
        self.momentum = if self.spec.config.momentum_schedule == MomentumSchedule::Cosine {
            cosine_momentum(self.spec.config.momentum, steps_done, total_steps)
        } else {
            self.spec.config.momentum
        };
        Ok(())
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        self.query.backbone.forward_t(images, false)
    }

    fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        self.query.backbone.feature_map(images)
    }

    fn cls_attention(&self, images: &Tensor) -> Result<Option<Tensor>> {
        self.query.backbone.cls_attention(images)
    }
}
