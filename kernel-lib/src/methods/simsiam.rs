//! SimSiam (Chen, He 2021; docs/recipes.md §7.3): one ResNet with a 3-layer projector ending in
//! a non-affine BN, a 2-layer bottleneck predictor, and the symmetrised negative cosine between
//! each view's prediction and the other view's projection under a stop-gradient. No target
//! network, no negatives; SGD with the predictor's learning rate held at its base value.

use super::branch::{check_widths, Branch, Head};
use super::{ForwardOutput, Method, MethodSetup};
use crate::error::{Error, Result};
use crate::models::{LastBn, Mlp, ParamBuilder, ParamStore, ResNetConfig};
use crate::objectives::simsiam_loss;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// SimSiam's heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimsiamConfig {
    /// Projector widths after the backbone (hidden, hidden, output).
    pub projector: Vec<usize>,
    /// Bottleneck width of the predictor (its input and output are the projector's).
    pub predictor_hidden: usize,
    /// Keep the predictor's learning rate at its base value instead of the schedule's
    /// (`--fix-pred-lr`, on in the paper's ImageNet runs).
    pub fix_predictor_lr: bool,
}

impl Default for SimsiamConfig {
    /// ImageNet: projector 2048-2048-2048, predictor 2048 → 512 → 2048, fixed predictor lr.
    fn default() -> Self {
        SimsiamConfig {
            projector: vec![2048, 2048, 2048],
            predictor_hidden: 512,
            fix_predictor_lr: true,
        }
    }
}

impl SimsiamConfig {
    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<()> {
        check_widths("simsiam.projector", &self.projector)?;
        if self.predictor_hidden == 0 {
            return Err(Error::config("simsiam.predictor_hidden", "must be ≥ 1"));
        }
        Ok(())
    }
}

/// Builds SimSiam as a run's config describes it.
pub(super) fn build(s: &MethodSetup, device: &Device) -> Result<Box<dyn Method>> {
    Ok(Box::new(Simsiam::new(
        &s.model.resnet(),
        s.simsiam,
        s.seed,
        device,
    )?))
}

/// The SimSiam model.
pub struct Simsiam {
    net: Branch,
    predictor: Mlp,
    fix_predictor_lr: bool,
    params: ParamStore,
}

impl Simsiam {
    /// Builds the network with weights drawn from `seed` on `device`. The projector's layers
    /// have no bias (the official last layer keeps a frozen bias, which its non-affine BN
    /// cancels); the predictor's have biases (the first one's is cancelled by its BN).
    pub fn new(
        backbone: &ResNetConfig,
        config: &SimsiamConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut b = ParamBuilder::new(seed, device);
        let head = Head {
            widths: &config.projector,
            bias: false,
            last_bn: LastBn::NonAffine,
        };
        let net = Branch::new(&mut b, "", backbone, &head)?;
        let out = *config.projector.last().unwrap_or(&1);
        let predictor = Head {
            widths: &[config.predictor_hidden, out],
            bias: true,
            last_bn: LastBn::None,
        }
        .build(&mut b, "predictor", out)?;
        Ok(Simsiam {
            net,
            predictor,
            fix_predictor_lr: config.fix_predictor_lr,
            params: b.finish(),
        })
    }
}

impl Method for Simsiam {
    fn name(&self) -> &'static str {
        "simsiam"
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn unscheduled_prefix(&self) -> Option<&'static str> {
        self.fix_predictor_lr.then_some("predictor.")
    }

    fn forward_train(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput> {
        let z1 = self.net.embed(view_a)?;
        let z2 = self.net.embed(view_b)?;
        let p1 = self.predictor.forward_t(&z1, true)?;
        let p2 = self.predictor.forward_t(&z2, true)?;
        // The stop-gradient: simsiam_loss detaches z1 and z2.
        let loss = simsiam_loss(&p1, &p2, &z1, &z2)?;
        Ok(ForwardOutput {
            parts: vec![("neg_cos".into(), loss.detach())],
            loss,
            cross_correlation: None,
        })
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        self.net.features(images)
    }

    fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        self.net.feature_map(images)
    }
}
