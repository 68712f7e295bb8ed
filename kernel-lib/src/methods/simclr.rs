//! SimCLR v1 (Chen, Kornblith, Norouzi, Hinton 2020; docs/recipes.md §7.1): one ResNet and a
//! 2-layer projector with BN shared by both views, NT-Xent over the 2N − 2 in-batch negatives
//! (every rank's, across ranks), LARS. No momentum encoder, queue or predictor.

use super::branch::{check_widths, Branch, Head};
use super::{ForwardOutput, Method, MethodSetup};
use crate::dist;
use crate::error::Result;
use crate::models::{LastBn, ParamBuilder, ParamStore, ResNetConfig};
use crate::objectives::nt_xent_at;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// SimCLR's head and temperature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimclrConfig {
    /// Projector widths after the backbone (hidden, output).
    pub projector: Vec<usize>,
    /// τ of NT-Xent.
    pub tau: f64,
}

impl Default for SimclrConfig {
    /// ImageNet, v1: a 2048-wide hidden layer, 128-d output, τ 0.1.
    fn default() -> Self {
        SimclrConfig {
            projector: vec![2048, 128],
            tau: 0.1,
        }
    }
}

impl SimclrConfig {
    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<()> {
        check_widths("simclr.projector", &self.projector)?;
        super::check_temperature("simclr.tau", self.tau)
    }
}

/// Builds SimCLR as a run's config describes it.
pub(super) fn build(s: &MethodSetup, device: &Device) -> Result<Box<dyn Method>> {
    Ok(Box::new(Simclr::new(
        &s.model.resnet(),
        s.simclr,
        s.seed,
        device,
    )?))
}

/// The SimCLR model.
pub struct Simclr {
    net: Branch,
    tau: f64,
    params: ParamStore,
}

impl Simclr {
    /// Builds the network with weights drawn from `seed` on `device`. The projector's linear
    /// layers have no bias and each is followed by BN (the official `ProjectionHead` with
    /// `use_bn`; its last BN has a scale but no shift, sslab's has both, the shift starting at 0).
    pub fn new(
        backbone: &ResNetConfig,
        config: &SimclrConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut b = ParamBuilder::new(seed, device);
        let head = Head {
            widths: &config.projector,
            bias: false,
            last_bn: LastBn::Affine,
        };
        let net = Branch::new(&mut b, "", backbone, &head)?;
        Ok(Simclr {
            net,
            tau: config.tau,
            params: b.finish(),
        })
    }
}

impl Method for Simclr {
    fn name(&self) -> &'static str {
        "simclr"
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn set_param(&mut self, key: &str, value: f64) -> Result<bool> {
        if key != "simclr.tau" {
            return Ok(false);
        }
        super::check_temperature(key, value)?;
        self.tau = value;
        Ok(true)
    }

    fn forward_train(&mut self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput> {
        // Both views in one batch, as the official code concatenates them: BN statistics are
        // over the 2N images (per view in the other two-view methods).
        let n = view_a.dim(0)?;
        let z = self.net.embed(&Tensor::cat(&[view_a, view_b], 0)?)?;
        let (za, zb) = (z.narrow(0, 0, n)?, z.narrow(0, n, n)?);
        // Across ranks every rank's embeddings are the negatives, gathered with their gradient
        // (the official cross-replica concat), and this rank's rows sit at its offset.
        let (za_all, zb_all) = (dist::all_gather(&za)?, dist::all_gather(&zb)?);
        let offset = dist::rank_and_size().0 * n;
        let loss = nt_xent_at(&za, &zb, &za_all, &zb_all, self.tau, offset)?;
        Ok(ForwardOutput {
            parts: vec![("nt_xent".into(), loss.detach())],
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
