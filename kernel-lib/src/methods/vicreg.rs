//! VICReg (Bardes, Ponce, LeCun 2022; docs/recipes.md §7.4): one ResNet with a 3-layer expander
//! (BN + ReLU on the hidden layers) shared by both views, and the variance–invariance–
//! covariance loss on the expander outputs. No negatives, predictor or target network.

use super::branch::{check_widths, Branch, Head};
use super::{ForwardOutput, Method, MethodSetup};
use crate::dist;
use crate::error::{Error, Result};
use crate::models::{LastBn, ParamBuilder, ParamStore, ResNetConfig};
use crate::objectives::{vicreg_loss_gathered, VicregWeights};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// VICReg's expander and loss weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VicregConfig {
    /// Expander widths after the backbone.
    pub expander: Vec<usize>,
    /// Weight of the invariance term (λ in the paper).
    pub sim: f64,
    /// Weight of the variance term (μ).
    pub std: f64,
    /// Weight of the covariance term (ν).
    pub cov: f64,
}

impl Default for VicregConfig {
    /// ImageNet: expander 8192-8192-8192, weights 25 / 25 / 1.
    fn default() -> Self {
        VicregConfig {
            expander: vec![8192, 8192, 8192],
            sim: 25.0,
            std: 25.0,
            cov: 1.0,
        }
    }
}

/// A loss weight ≥ 0 under `key`, in a config and mid-run alike.
fn check_weight(key: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        return Ok(());
    }
    Err(Error::config(key, format!("must be ≥ 0, got {v}")))
}

impl VicregConfig {
    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<()> {
        check_widths("vicreg.expander", &self.expander)?;
        check_weight("vicreg.sim", self.sim)?;
        check_weight("vicreg.std", self.std)?;
        check_weight("vicreg.cov", self.cov)
    }

    fn weights(&self) -> VicregWeights {
        VicregWeights {
            sim: self.sim,
            std: self.std,
            cov: self.cov,
        }
    }
}

/// Builds VICReg as a run's config describes it.
pub(super) fn build(s: &MethodSetup, device: &Device) -> Result<Box<dyn Method>> {
    Ok(Box::new(Vicreg::new(
        &s.model.resnet(),
        s.vicreg,
        s.seed,
        device,
    )?))
}

/// The VICReg model.
pub struct Vicreg {
    net: Branch,
    config: VicregConfig,
    params: ParamStore,
}

impl Vicreg {
    /// Builds the network with weights drawn from `seed` on `device`. The expander's layers
    /// have no bias (the official hidden layers have biases, which their BN cancels; its last
    /// layer has none).
    pub fn new(
        backbone: &ResNetConfig,
        config: &VicregConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut b = ParamBuilder::new(seed, device);
        let head = Head {
            widths: &config.expander,
            bias: false,
            last_bn: LastBn::None,
        };
        let net = Branch::new(&mut b, "", backbone, &head)?;
        Ok(Vicreg {
            net,
            config: config.clone(),
            params: b.finish(),
        })
    }
}

impl Method for Vicreg {
    fn name(&self) -> &'static str {
        "vicreg"
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn set_param(&mut self, key: &str, value: f64) -> Result<bool> {
        let slot = match key {
            "vicreg.sim" => &mut self.config.sim,
            "vicreg.std" => &mut self.config.std,
            "vicreg.cov" => &mut self.config.cov,
            _ => return Ok(false),
        };
        check_weight(key, value)?;
        *slot = value;
        Ok(true)
    }

    fn forward_train(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput> {
        let za = self.net.embed(view_a)?;
        let zb = self.net.embed(view_b)?;
        // Across ranks the variance and covariance are over the global batch: every rank's
        // embeddings gathered with their gradient (the official `FullGatherLayer`); the
        // invariance stays per rank and is averaged with the gradients.
        let (za_all, zb_all) = (dist::all_gather(&za)?, dist::all_gather(&zb)?);
        let out = vicreg_loss_gathered(&za, &zb, &za_all, &zb_all, self.config.weights())?;
        Ok(ForwardOutput {
            loss: out.loss,
            parts: vec![
                ("invariance".into(), out.invariance.detach()),
                ("variance".into(), out.variance.detach()),
                ("covariance".into(), out.covariance.detach()),
            ],
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
