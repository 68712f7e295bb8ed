//! One file per SSL method, each wiring models and an objective behind the [`Method`] trait that
//! `train::Run` drives.

mod barlow_twins;
mod densecl;
mod moco;
mod moco_v3;
mod queue;

pub use barlow_twins::{BarlowTwins, BarlowTwinsSpec};
pub use densecl::{DenseCl, DenseClSpec};
pub use moco::{Moco, MocoSpec, MocoVersion};
pub use moco_v3::{MocoV3, MocoV3Spec};
pub use queue::KeyQueue;

use crate::error::Result;
use crate::models::ParamStore;
use candle_core::Tensor;

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
    /// Work after the optimiser step (momentum encoder, queues). `step` is the step just taken.
    fn after_step(&mut self, _step: usize, _total_steps: usize) -> Result<()> {
        Ok(())
    }
    /// The momentum (key) encoder's tensors, for methods that have one.
    fn momentum_params(&self) -> Option<&ParamStore> {
        None
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

    /// Evaluation-mode dense projection head on the feature map `(n, d, h, w)`, for methods
    /// that have one (DenseCL).
    fn dense_head_map(&self, _images: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}
