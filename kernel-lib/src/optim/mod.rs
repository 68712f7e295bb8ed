//! Optimisers over parameter groups (SGD, LARS, AdamW, LAMB) and learning-rate schedules.
//!
//! Each trainable tensor falls in one of two groups: ≥2-D tensors (conv kernels, linear
//! weights) and 1-D tensors (biases, BN/LN γ and β). The 1-D group can be excluded from weight
//! decay and from trust-ratio adaptation (LARS/LAMB), as MoCo v3 and Barlow Twins do, and can
//! have its own learning rate (Barlow Twins' 0.0048 vs 0.2). State is a list of tensors per
//! parameter plus the step count, so it can be saved and restored.

pub(crate) mod fused;
mod optimizer;
mod schedule;

pub use optimizer::{GroupSettings, OptimKind, Optimizer, OptimizerState};
pub use schedule::{cosine_momentum, LrSchedule};
