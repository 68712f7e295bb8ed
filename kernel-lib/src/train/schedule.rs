//! A run's learning rate as one function of the step: the schedule's shape (warmup, then cosine
//! or step decay), the linear batch scaling and the per-epoch hold, from the `optim` and `train`
//! sections. `Run`, its report lines and mid-run changes all read the rate here.

use super::config::RunConfig;
use crate::optim::{LrSchedule, ScheduleKind};

/// The learning-rate schedule of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    shape: LrSchedule,
    /// `optim.lr`: the rate of ≥2-D tensors before scaling.
    base_lr: f64,
    /// `batch/256` under the linear scaling rule, else 1.
    batch_scale: f64,
    scale_with_batch: bool,
    /// Hold the rate within an epoch (MoCo v2's per-epoch cosine).
    per_epoch: bool,
    steps_per_epoch: usize,
    total_steps: usize,
}

impl Schedule {
    /// The schedule `config` describes for a training split of `train_len` images.
    pub fn new(config: &RunConfig, train_len: usize) -> Self {
        let (o, batch) = (&config.optim, config.train.batch_size);
        let steps_per_epoch = train_len / batch.max(1);
        let total_steps = if config.train.steps > 0 {
            config.train.steps
        } else {
            ((config.train.epochs * steps_per_epoch as f64).round() as usize).max(1)
        };
        let warmup = ((o.warmup_epochs * steps_per_epoch as f64).round() as usize).min(total_steps);
        let shape = match o.schedule {
            ScheduleKind::Steps => LrSchedule::Steps {
                warmup,
                milestones: o
                    .milestones
                    .iter()
                    .map(|e| (e * steps_per_epoch as f64).round() as usize)
                    .collect(),
                gamma: o.gamma,
            },
            ScheduleKind::Cosine => LrSchedule::WarmupCosine {
                warmup,
                total: total_steps,
                final_frac: o.final_lr_frac,
            },
        };
        let mut s = Schedule {
            shape,
            base_lr: o.lr,
            batch_scale: 1.0,
            scale_with_batch: o.scale_lr_with_batch,
            per_epoch: o.per_epoch,
            steps_per_epoch: steps_per_epoch.max(1),
            total_steps,
        };
        s.set_batch(batch, train_len);
        s
    }

    /// Length of the run in steps.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Shape × batch scaling at 0-based step `s` (what multiplies each group's base rate);
    /// per-epoch schedules hold the value of the epoch's first step.
    pub fn factor(&self, s: usize) -> f64 {
        let s = if self.per_epoch {
            s - s % self.steps_per_epoch
        } else {
            s
        };
        self.shape.factor(s) * self.batch_scale
    }

    /// The batch scaling alone (`batch/256` under the linear scaling rule, else 1): the factor
    /// of tensors held off the schedule.
    pub fn batch_factor(&self) -> f64 {
        self.batch_scale
    }

    /// Learning rate of ≥2-D tensors at 0-based step `s`.
    pub fn lr_at(&self, s: usize) -> f64 {
        self.factor(s) * self.base_lr
    }

    /// A new `optim.lr` mid-run: the shape stays, the rates scale.
    pub fn set_base_lr(&mut self, lr: f64) {
        self.base_lr = lr;
    }

    /// A new batch size mid-run: epochs and (under the linear scaling rule) the scale follow;
    /// the shape, fixed in steps, stays.
    pub fn set_batch(&mut self, batch: usize, train_len: usize) {
        self.steps_per_epoch = (train_len / batch.max(1)).max(1);
        if self.scale_with_batch {
            self.batch_scale = batch as f64 / 256.0;
        }
    }
}
