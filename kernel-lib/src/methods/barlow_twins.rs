//! Barlow Twins (Zbontar et al. 2021; docs/recipes.md §3): a ResNet, a bias-free projector with BN +
//! ReLU on its hidden layers, and the cross-correlation loss. Both views share every weight; no
//! momentum encoder, predictor or stop-gradient.

use super::{ForwardOutput, Method, MethodSetup};
use crate::error::{Error, Result};
use crate::models::{LastBn, Mlp, MlpSpec, ParamBuilder, ParamStore, ResNet, ResNetConfig};
use crate::objectives::barlow_twins_loss;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Barlow Twins' head and loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BarlowTwinsConfig {
    /// Projector widths after the backbone.
    pub projector: Vec<usize>,
    pub lambda: f64,
    pub scale_loss: f64,
}

impl Default for BarlowTwinsConfig {
    fn default() -> Self {
        BarlowTwinsConfig {
            projector: vec![8192, 8192, 8192],
            lambda: 0.0051,
            scale_loss: 1.0,
        }
    }
}
impl BarlowTwinsConfig {
    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.projector.is_empty() || self.projector.contains(&0) {
            return Err(Error::config(
                "barlow_twins.projector",
                format!(
                    "needs one or more positive widths, got {:?}",
                    self.projector
                ),
            ));
        }
        check_lambda(self.lambda)?;
        if !(self.scale_loss.is_finite() && self.scale_loss > 0.0) {
            return Err(Error::config(
                "barlow_twins.scale_loss",
                format!("must be > 0, got {}", self.scale_loss),
            ));
        }
        Ok(())
    }
}

/// λ ≥ 0, in a config and mid-run alike.
fn check_lambda(v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        return Ok(());
    }
    Err(Error::config(
        "barlow_twins.lambda",
        format!("must be ≥ 0, got {v}"),
    ))
}

/// Builds the method a run's config describes.
pub(super) fn build(s: &MethodSetup, device: &Device) -> Result<Box<dyn Method>> {
    let spec = BarlowTwinsSpec {
        backbone: s.model.resnet(),
        config: s.barlow_twins.clone(),
    };
    Ok(Box::new(BarlowTwins::new(&spec, s.seed, device)?))
}

/// Architecture and loss settings: the backbone and the `barlow_twins` section.
#[derive(Clone, Debug, PartialEq)]
pub struct BarlowTwinsSpec {
    pub backbone: ResNetConfig,
    pub config: BarlowTwinsConfig,
}

/// The Barlow Twins model.
pub struct BarlowTwins {
    backbone: ResNet,
    projector: Mlp,
    lambda: f64,
    scale_loss: f64,
    params: ParamStore,
}

impl BarlowTwins {
    /// Builds the model with weights drawn from `seed` on `device`.
    pub fn new(spec: &BarlowTwinsSpec, seed: u64, device: &Device) -> Result<Self> {
        spec.config.validate()?;
        let mut b = ParamBuilder::new(seed, device);
        let backbone = ResNet::new(&mut b, "backbone", &spec.backbone)?;
        let mut dims = vec![backbone.out_dim()];
        dims.extend(&spec.config.projector);
        let projector = Mlp::new(
            &mut b,
            "projector",
            &MlpSpec {
                dims,
                bias: false,
                hidden_bn: true,
                last_bn: LastBn::None,
            },
        )?;
        Ok(BarlowTwins {
            backbone,
            projector,
            lambda: spec.config.lambda,
            scale_loss: spec.config.scale_loss,
            params: b.finish(),
        })
    }

    /// The embedding z of a batch of images (training mode).
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.backbone.forward_t(x, true)?.pooled;
        self.projector.forward_t(&h, true)
    }

    /// Changes λ (meaningful mid-run).
    pub fn set_lambda(&mut self, lambda: f64) {
        self.lambda = lambda;
    }
}

impl Method for BarlowTwins {
    fn name(&self) -> &'static str {
        "barlow-twins"
    }

    fn set_param(&mut self, key: &str, value: f64) -> Result<bool> {
        if key != "barlow_twins.lambda" {
            return Ok(false);
        }
        check_lambda(value)?;
        self.set_lambda(value);
        Ok(true)
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn forward_train(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput> {
        // Each view goes through the network on its own, so BN statistics are per view.
        let za = self.embed(view_a)?;
        let zb = self.embed(view_b)?;
        let out = barlow_twins_loss(&za, &zb, self.lambda)?;
        let loss = if self.scale_loss != 1.0 {
            (out.loss * self.scale_loss)?
        } else {
            out.loss
        };
        Ok(ForwardOutput {
            loss,
            parts: vec![
                ("on_diag".to_string(), out.on_diag),
                ("off_diag".to_string(), out.off_diag),
            ],
            cross_correlation: Some(out.c),
        })
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.backbone.forward_t(images, false)?.pooled)
    }

    fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.backbone.forward_t(images, false)?.feature_map)
    }
}
