//! The `summary.json` contract: what a finished run reports, written by `sslab train` and by
//! every cell of a sweep, and read back by the sweep's table.

use super::run::Run;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// What one finished run reports. Evaluations that were not run are `None`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub method: String,
    pub preset: String,
    pub data: String,
    pub seed: u64,
    pub steps: usize,
    pub resumed_from_step: Option<usize>,
    pub batch_size: usize,
    pub first_loss: f32,
    pub final_loss: f32,
    pub knn_top1: f64,
    pub knn_top5: f64,
    pub knn_top1_at_init: Option<f64>,
    pub linear_top1: Option<f64>,
    pub linear_top5: Option<f64>,
    pub dense_probe_miou: Option<f64>,
    pub dense_probe_pixel_acc: Option<f64>,
    pub dense_probe_miou_at_init: Option<f64>,
    /// Steps where a layer's gradient norm exceeded `diagnostics.spike_factor` × its running
    /// median (`None` with the tracker off).
    pub grad_spikes: Option<usize>,
    pub images_per_sec: f64,
    pub device: String,
    /// Wall time of the whole run, evaluations included.
    pub seconds: f64,
    pub train_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
    /// `(step, top-1)` of every kNN evaluation of the run, in order (init, the periodic ones
    /// of [`Evaluations::knn_every`], the end). Empty in summaries written before it existed.
    #[serde(default)]
    pub knn_curve: Vec<(usize, f64)>,
}

impl RunSummary {
    /// Reads a `summary.json`, naming the file in any error.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{} is not a run summary: {e}", path.display())))
    }

    /// Writes it as pretty JSON, atomically (a sweep treats an existing summary as a finished
    /// cell, so a half-written one must never appear).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("summary: {e}")))?;
        crate::atomic::write(path.as_ref(), json.as_bytes())
    }

    /// kNN top-1 gain over initialisation, in points.
    pub fn knn_change(&self) -> Option<f64> {
        self.knn_top1_at_init.map(|i| self.knn_top1 - i)
    }
}

/// Which evaluations [`Run::train_to_end`] runs besides the final kNN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evaluations {
    /// kNN (and the dense probe, if on) before training too.
    pub at_init: bool,
    pub linear_probe: bool,
    pub dense_probe: bool,
    /// kNN every this many steps during training too (0: only at init and at the end); the
    /// curve lands in [`RunSummary::knn_curve`] and in the run's log.
    pub knn_every: usize,
}

impl Run {
    /// Trains to the end of the schedule and evaluates, printing progress: the whole of
    /// `sslab train` and of a sweep cell.
    ///
    /// A resumed run (steps already done) reports its own first kNN as the value at init.
    pub fn train_to_end(&mut self, evals: Evaluations) -> Result<RunSummary> {
        let t0 = Instant::now();
        let resumed = (self.steps_done() > 0).then(|| self.steps_done());
        let knn_init = match (resumed, self.knn_history().first()) {
            (Some(_), Some((_, k))) => Some(k.clone()),
            (None, _) if evals.at_init => {
                let k = self.knn()?;
                println!("kNN top-1 at init: {k}");
                Some(k)
            }
            _ => None,
        };
        let probe_init = if evals.dense_probe && evals.at_init && resumed.is_none() {
            let p = self.dense_probe()?;
            println!("dense probe at init: {p}");
            Some(p)
        } else {
            None
        };
        let summary = self.train_with_knn(evals.knn_every)?;
        println!("{summary}");
        let fin = self.knn()?;
        println!("kNN top-1 at end:  {fin}");
        if let Some(i) = &knn_init {
            println!("kNN top-1 change:  {:+.2} points", fin.top1 - i.top1);
        }
        let linear = if evals.linear_probe {
            let l = self.linear_probe()?;
            println!("linear probe:      {l}");
            Some(l)
        } else {
            None
        };
        let probe = if evals.dense_probe {
            let p = self.dense_probe()?;
            println!("dense probe at end:  {p}");
            Some(p)
        } else {
            None
        };
        let cfg = self.config();
        let grad_spikes = self.spikes.as_ref().map(|t| t.spikes().len());
        Ok(RunSummary {
            method: cfg.method.name().to_string(),
            preset: cfg.preset.clone(),
            data: cfg.data.source.clone(),
            seed: cfg.seed,
            steps: self.steps_done(),
            resumed_from_step: resumed,
            batch_size: cfg.train.batch_size,
            first_loss: summary.first_loss,
            final_loss: summary.last_loss,
            knn_top1: fin.top1,
            knn_top5: fin.top5,
            knn_top1_at_init: knn_init.map(|k| k.top1),
            linear_top1: linear.as_ref().map(|l| l.top1),
            linear_top5: linear.as_ref().map(|l| l.top5),
            dense_probe_miou: probe.as_ref().map(|p| p.miou),
            dense_probe_pixel_acc: probe.as_ref().map(|p| p.pixel_acc),
            dense_probe_miou_at_init: probe_init.map(|p| p.miou),
            grad_spikes,
            images_per_sec: summary.images_per_sec,
            device: self.device_name(),
            seconds: t0.elapsed().as_secs_f64(),
            train_seconds: summary.seconds,
            peak_rss_bytes: crate::peak_rss_bytes(),
            knn_curve: self
                .knn_history()
                .iter()
                .map(|(step, k)| (*step, k.top1))
                .collect(),
        })
    }

    /// Trains to the end of the schedule, with a kNN evaluation after every `every` steps
    /// (none with 0) except the last, which the caller evaluates.
    fn train_with_knn(&mut self, every: usize) -> Result<super::record::TrainSummary> {
        let total = self.total_steps();
        let remaining = total.saturating_sub(self.steps_done());
        if every == 0 {
            return self.train(remaining);
        }
        let mut merged: Option<super::record::TrainSummary> = None;
        while self.steps_done() < total {
            let n = (every - self.steps_done() % every).min(total - self.steps_done());
            let s = self.train(n)?;
            merged = Some(match merged {
                None => s,
                Some(m) => {
                    let seconds = m.seconds + s.seconds;
                    let images = m.images_per_sec * m.seconds + s.images_per_sec * s.seconds;
                    super::record::TrainSummary {
                        steps: m.steps + s.steps,
                        first_loss: m.first_loss,
                        last_loss: s.last_loss,
                        seconds,
                        images_per_sec: images / seconds.max(1e-9),
                    }
                }
            });
            if self.steps_done() < total {
                let k = self.knn()?;
                println!("kNN top-1 at step {}: {k}", self.steps_done());
            }
        }
        merged.map_or_else(|| self.train(0), Ok)
    }
}
