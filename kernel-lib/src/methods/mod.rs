//! One file per SSL method, each wiring models and an objective behind the [`Method`] trait that
//! `train::Run` drives.

mod barlow_twins;

pub use barlow_twins::{BarlowTwins, BarlowTwinsSpec};

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
    /// Training-mode forward of the two views (`(n, 3, h, w)` each) to the loss.
    fn forward_train(&self, view_a: &Tensor, view_b: &Tensor) -> Result<ForwardOutput>;
    /// Work after the optimiser step (momentum encoder, queues). `step` is the step just taken.
    fn after_step(&mut self, _step: usize, _total_steps: usize) -> Result<()> {
        Ok(())
    }
    /// Evaluation-mode backbone representation `(n, d)` used by kNN and probes.
    fn features(&self, images: &Tensor) -> Result<Tensor>;
}
