//! What a run has done: one report per step, the kNN evaluations, and the last step's
//! cross-correlation. Checkpoints save it; the diagnostics draw from it.

use crate::eval::KnnResult;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What one optimisation step did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// 1-based index of the step within the run.
    pub step: usize,
    pub loss: f32,
    /// Named parts of the loss (before λ and scale factors).
    pub parts: Vec<(String, f32)>,
    /// Learning rate of ≥2-D tensors at this step.
    pub lr: f64,
    /// Wall time of forward + backward + update.
    pub seconds: f64,
    /// Augmented views processed per second (2 per image).
    pub images_per_sec: f64,
}

impl fmt::Display for StepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {:>5}  loss {:>10.4}", self.step, self.loss)?;
        for (k, v) in &self.parts {
            write!(f, "  {k} {v:.4}")?;
        }
        write!(
            f,
            "  lr {:.4e}  {:.2}s  {:.1} img/s",
            self.lr, self.seconds, self.images_per_sec
        )
    }
}

/// What a call to [`Run::train`] did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub first_loss: f32,
    pub last_loss: f32,
    pub seconds: f64,
    pub images_per_sec: f64,
}

impl fmt::Display for TrainSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} steps in {:.1}s ({:.1} img/s), loss {:.4} -> {:.4}",
            self.steps, self.seconds, self.images_per_sec, self.first_loss, self.last_loss
        )
    }
}

/// The history of a run.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// One report per step taken, in order (`steps[i].step == i + 1`).
    pub steps: Vec<StepReport>,
    /// kNN results with the step each was taken at.
    pub knn: Vec<(usize, KnnResult)>,
    /// The cross-correlation matrix of the last step (methods that have one), detached.
    pub last_cross_correlation: Option<Tensor>,
}

impl Record {
    /// Steps taken.
    pub fn steps_done(&self) -> usize {
        self.steps.len()
    }
}
