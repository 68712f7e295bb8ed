//! Changing a run's settings between steps: the knobs that can move mid-run, and a clear
//! refusal for those fixed when the run was built.

use super::run::Run;
use crate::error::{Error, Result};
use crate::methods::MethodKind;

/// Short names a user may type for the usual knobs; the method's registry entry says which
/// loss a λ or τ belongs to.
fn resolve_alias(method: MethodKind, key: &str) -> String {
    match key {
        "lr" => "optim.lr".into(),
        "batch" => "train.batch_size".into(),
        "lambda" | "λ" => method.info().lambda_key.into(),
        "tau" | "τ" => method.info().tau_key.into(),
        "wd" => "optim.weight_decay".into(),
        _ => key.into(),
    }
}

/// Keys that only change how the run reports or evaluates itself.
const REPORTING: &[&str] = &[
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "eval.knn_k",
    "eval.knn_t",
    "eval.batch_size",
    "eval.dense_probe_steps",
    "eval.dense_probe_lr",
    "eval.linear_probe_epochs",
    "eval.linear_probe_lr",
    "diagnostics.every",
    "diagnostics.corr_block",
];

impl Run {
    /// Changes one setting between steps. Accepted: the learning rate (`lr`/`optim.lr`,
    /// `optim.lr_1d`: the schedule keeps its shape and scales), the loss hyper-parameters (`λ`,
    /// `τ`), the batch size (data order continues from the current step; MoCo's queue must
    /// still divide), and reporting/evaluation keys. Anything fixed at build time (model,
    /// data, optimizer kind, schedule length) is refused with the reason.
    ///
    /// ```no_run
    /// # use sslab::prelude::*;
    /// let mut run = Run::new(RunConfig::preset("barlow-twins/tiny")?)?;
    /// run.train(10)?;
    /// run.set("lr", "0.1")?;
    /// run.set("lambda", "0.01")?;
    /// # Ok::<(), sslab::Error>(())
    /// ```
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let key = resolve_alias(self.config.method, key.trim());
        let mut cfg = self.config.clone();
        cfg.set(&key, value)?;
        if crate::methods::live_keys().any(|k| k == key) {
            // The config took it, so it is a number.
            let v: f64 = value
                .trim()
                .parse()
                .map_err(|_| Error::config(&key, format!("'{value}' is not a number")))?;
            if !self.method.set_param(&key, v)? {
                return Err(Error::config(
                    &key,
                    format!("{} has no such hyper-parameter", self.method.name()),
                ));
            }
        } else if key == "train.batch_size" {
            let batch = cfg.train.batch_size;
            if batch > self.train_data.len() {
                return Err(Error::config(
                    &key,
                    format!(
                        "{batch} is more than the {} training images",
                        self.train_data.len()
                    ),
                ));
            }
            for (_, q) in self.method.queues() {
                q.check_keys_per_step(batch)?;
            }
            self.loader = self.loader_at(batch, self.record.steps.len())?;
            self.schedule.set_batch(batch, self.train_data.len());
        } else if key == "precision" {
            return Err(Error::config(
                &key,
                "fixed when the run was built, as in PyTorch where autocast wraps the whole \
                 training loop: save, then load the checkpoint (f32, it loads into either \
                 precision) with the other precision in a new run",
            ));
        } else if !(key == "optim.lr" || key == "optim.lr_1d" || REPORTING.contains(&key.as_str()))
        {
            return Err(Error::config(
                &key,
                "fixed when the run was built (model, data, optimizer, schedule length); \
                 change it in the config and start a new run",
            ));
        }
        if key == "optim.lr" || key == "optim.lr_1d" {
            self.schedule.set_base_lr(cfg.optim.lr);
            self.optimizer
                .set_lr_mults(cfg.optim.lr, cfg.optim.lr_1d.unwrap_or(cfg.optim.lr));
        }
        self.config = cfg;
        Ok(())
    }
}
