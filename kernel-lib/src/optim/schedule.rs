//! Learning-rate and momentum schedules, evaluated per step.

use std::f64::consts::PI;

/// Multiplier of the base learning rate at a step.
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// Linear warmup from 0 over `warmup` steps (`lr = base·s/warmup`), then a half cosine from
    /// base to `final_frac·base` at step `total` (Barlow Twins: 0.001; MoCo v3: 0).
    WarmupCosine {
        warmup: usize,
        total: usize,
        final_frac: f64,
    },
    /// Step decay: the rate is multiplied by `gamma` at each milestone step (MoCo v1: ×0.1 at
    /// epochs 120 and 160 of 200), after an optional linear warmup.
    Steps {
        warmup: usize,
        milestones: Vec<usize>,
        gamma: f64,
    },
}

impl LrSchedule {
    /// The multiplier at `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::WarmupCosine {
                warmup,
                total,
                final_frac,
            } => {
                if step < warmup {
                    step as f64 / warmup as f64
                } else {
                    let span = total.saturating_sub(warmup).max(1) as f64;
                    let t = ((step - warmup) as f64 / span).min(1.0);
                    let q = 0.5 * (1.0 + (PI * t).cos());
                    q + final_frac * (1.0 - q)
                }
            }
            LrSchedule::Steps {
                warmup,
                ref milestones,
                gamma,
            } => {
                if step < warmup {
                    step as f64 / warmup as f64
                } else {
                    let passed = milestones.iter().filter(|&&m| step >= m).count();
                    gamma.powi(passed as i32)
                }
            }
        }
    }
}

/// MoCo v3 / BYOL momentum: `m(t) = 1 − ½(1 + cos(π t/T))·(1 − m₀)`, from m₀ at 0 to 1 at T.
pub fn cosine_momentum(m0: f64, step: usize, total: usize) -> f64 {
    let t = (step as f64 / total.max(1) as f64).min(1.0);
    1.0 - 0.5 * (1.0 + (PI * t).cos()) * (1.0 - m0)
}
