//! The `Run` handle: one training run, stepped interactively.

use super::checkpoint::{Parts, Saved};
use super::config::RunConfig;
use super::device::{device_name, select_device};
use super::folders::prune_checkpoints;
use super::monitors::{Monitors, ProbeSource};
use super::record::{Record, StepReport, TrainSummary};
use super::schedule::Schedule;
use crate::augment::TwoViewRecipe;
use crate::data::{DataSource, Dataset, Loader};
use crate::diagnostics::{GradSpikeTracker, LayerGroups};
use crate::error::{Error, Result};
use crate::eval::{
    dense_probe, knn_eval_across, linear_probe, DenseProbeResult, DenseProbeSettings, KnnResult,
    KnnSettings, LinearProbeResult, LinearProbeSettings,
};
use crate::methods::Method;
use crate::models::{
    export_backbone, load_backbone, read_torch_checkpoint, BackboneKind, ImportReport,
};
use crate::optim::{GroupSettings, OptimKind, OptimName, Optimizer};
use candle_core::{Device, Tensor, Var};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// One training run: method, optimiser, data stream and history.
///
/// ```no_run
/// use sslab::prelude::*;
/// let mut run = Run::new(RunConfig::preset("barlow-twins/tiny")?)?;
/// println!("{}", run.step()?);
/// run.train(20)?;
/// println!("kNN top-1 {:.1}%", run.knn()?.top1);
/// # Ok::<(), sslab::Error>(())
/// ```
pub struct Run {
    pub(super) config: RunConfig,
    pub(super) device: Device,
    pub(super) method: Box<dyn Method>,
    pub(super) optimizer: Optimizer,
    pub(super) schedule: Schedule,
    pub(super) recipe: TwoViewRecipe,
    pub(super) train_data: Arc<dyn Dataset>,
    pub(super) test_data: Arc<dyn Dataset>,
    pub(super) loader: Loader,
    pub(super) warnings: Vec<String>,
    pub(super) record: Record,
    /// Per-layer gradient statistics (when `diagnostics.grad_spikes`).
    pub(super) layer_groups: LayerGroups,
    pub(super) spikes: Option<GradSpikeTracker>,
    pub(super) monitors: Monitors,
    /// Where periodic checkpoints go (`train.checkpoint_every`), and its lock.
    pub(super) checkpoint_dir: Option<(std::path::PathBuf, super::folders::FolderLock)>,
    /// Where the TensorBoard events and `metrics.csv` go ([`Run::log_into`]).
    pub(super) metrics_log: Option<super::metrics_log::MetricsLog>,
    /// The ranks this run trains on ([`Run::distribute`]); `None` for one process.
    pub(super) world: Option<crate::dist::World>,
    /// The code that trains, as pointers taken when the run was built (see [`Hooks`]).
    hooks: Hooks,
}

impl Run {
    /// Builds everything a config describes: device, data, model, optimiser, loader.
    pub fn new(config: RunConfig) -> Result<Self> {
        crate::tune_allocator();
        config.validate()?;
        let device = select_device(&config.device)?;
        let source = DataSource::parse(&config.data.source, config.data.shapes)?;
        let (train_data, test_data) = source.load()?;
        Self::with_data(config, device, train_data, test_data)
    }

    /// Like [`Run::new`] with datasets supplied by the caller (any [`Dataset`]).
    pub fn with_data(
        config: RunConfig,
        device: Device,
        train_data: Arc<dyn Dataset>,
        test_data: Arc<dyn Dataset>,
    ) -> Result<Self> {
        config.validate()?;
        if train_data.is_empty() || test_data.is_empty() {
            return Err(Error::Invalid(
                "train and test splits must not be empty".into(),
            ));
        }
        let recipe = TwoViewRecipe::new(
            config.augment.recipe,
            config.augment.size,
            config.augment.scale_min,
        );
        crate::kernels::set_conv_tf32(config.cuda.tf32);
        crate::kernels::set_channels_last(config.cuda.channels_last);
        if config.precision == crate::kernels::Precision::Bf16
            && device.is_cpu()
            && !crate::kernels::cpu_has_bf16()
        {
            return Err(Error::config(
                "precision",
                "bf16 on the CPU needs AVX-512 with AVX512-BF16 (Intel Cooper Lake or later, \
                 AMD Zen 4 or later), which this CPU lacks: use precision = \"f32\" here, or \
                 bf16 on a CUDA device",
            ));
        }
        let batch = config.train.batch_size;
        let schedule = Schedule::new(&config, train_data.len());
        let method = (config.method.info().build)(&config.method_setup(), &device)?;
        let mut warnings = Vec::new();
        for (name, q) in method.queues() {
            if q.len() > train_data.len() {
                warnings.push(format!(
                    "{name} holds {} keys but the training split has {} images: an image's \
                     own earlier keys come back as negatives (lower moco.queue_size)",
                    q.len(),
                    train_data.len()
                ));
            }
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        let o = &config.optim;
        let kind = match o.kind {
            OptimName::Sgd => OptimKind::Sgd {
                momentum: o.momentum,
                nesterov: o.nesterov,
            },
            OptimName::Lars => OptimKind::Lars {
                momentum: o.momentum,
                eta: o.eta,
                clip_lr: o.lars_clip_lr,
            },
            OptimName::Adamw => OptimKind::AdamW {
                beta1: o.betas.0,
                beta2: o.betas.1,
                eps: o.eps,
            },
            OptimName::Lamb => OptimKind::Lamb {
                beta1: o.betas.0,
                beta2: o.betas.1,
                eps: o.eps,
            },
        };
        let multi = GroupSettings {
            lr_mult: o.lr,
            weight_decay: o.weight_decay,
            adapt: true,
        };
        let one = GroupSettings {
            lr_mult: o.lr_1d.unwrap_or(o.lr),
            weight_decay: if o.exclude_1d { 0.0 } else { o.weight_decay },
            adapt: !o.exclude_1d,
        };
        let mut optimizer = Optimizer::new(kind, method.params(), multi, one)?;
        if let Some(prefix) = method.unscheduled_prefix() {
            optimizer.hold_lr(|name| name.starts_with(prefix));
        }
        let loader = Loader::new(train_data.clone(), recipe.clone(), batch, config.seed, 0)?;
        let layer_groups = LayerGroups::new(method.params());
        let d = &config.diagnostics;
        let spikes = if d.grad_spikes {
            Some(GradSpikeTracker::new(
                layer_groups.names().to_vec(),
                d.spike_factor,
                d.spike_window,
            )?)
        } else {
            None
        };
        Ok(Run {
            config,
            device,
            method,
            optimizer,
            schedule,
            recipe,
            train_data,
            test_data,
            loader,
            warnings,
            record: Record::default(),
            layer_groups,
            spikes,
            monitors: Monitors::default(),
            checkpoint_dir: None,
            metrics_log: None,
            world: None,
            hooks: Hooks::HERE,
        })
    }

    /// Learning rate of ≥2-D tensors at 0-based step `s`.
    pub fn lr_at(&self, s: usize) -> f64 {
        self.schedule.lr_at(s)
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// A loader of `batch`-sized batches whose next batch is that of step `step` (data order is
    /// a function of seed and step, so this continues a run exactly).
    pub(super) fn loader_at(&self, batch: usize, step: usize) -> Result<Loader> {
        self.sharded_loader(batch, step)
    }

    /// Deep copies of every buffer (BN running statistics) of the online and momentum stores.
    fn buffer_copies(&self) -> Result<Vec<(candle_core::Var, Tensor)>> {
        self.method
            .stores()
            .into_iter()
            .flat_map(|s| s.params.iter())
            .filter(|p| p.kind == crate::models::ParamKind::Buffer)
            .map(|p| Ok((p.var.clone(), p.var.as_tensor().copy()?)))
            .collect()
    }

    /// Sends periodic checkpoints (every `train.checkpoint_every` steps, the last
    /// `train.keep_checkpoints` kept) to `dir/step-NNNNNNNN`; [`Run::load`] on `dir` resumes
    /// from the newest. The folder is created and locked for this run: a second process (or
    /// run) asking for the same folder gets an error.
    pub fn checkpoint_into(&mut self, dir: impl Into<std::path::PathBuf>) -> Result<()> {
        let dir = dir.into();
        let lock = super::folders::FolderLock::acquire(&dir)?;
        self.checkpoint_dir = Some((dir, lock));
        Ok(())
    }

    /// Logs the run from now on into `dir`: TensorBoard event files in `dir/tb/` (the loss and
    /// its parts, the learning rate and throughput every `train.log_every` steps and at the
    /// first, each kNN evaluation, and the figures [`Run::write_figures`] draws) and
    /// `dir/metrics.csv` (one row per logged step, the kNN columns filled where one was
    /// taken). `tensorboard --logdir dir` shows them while the run trains. A row is written
    /// when the next one starts (its step's kNN may still join it), the last when the run is
    /// dropped.
    ///
    /// ```no_run
    /// use sslab::prelude::*;
    /// let mut run = Run::new(RunConfig::preset("barlow-twins/tiny")?)?;
    /// run.log_into("runs/mine")?;
    /// run.train(40)?;
    /// # Ok::<(), sslab::Error>(())
    /// ```
    pub fn log_into(&mut self, dir: impl Into<std::path::PathBuf>) -> Result<()> {
        self.metrics_log = Some(super::metrics_log::MetricsLog::create(dir)?);
        Ok(())
    }

    /// The parts a checkpoint holds.
    fn parts(&self) -> Parts<'_> {
        Parts {
            config: &self.config,
            method: self.method.as_ref(),
            optimizer: &self.optimizer,
            record: &self.record,
        }
    }

    /// Saves the run into `dir` (created if needed) and returns the manifest's path. An earlier
    /// checkpoint in `dir` stays loadable until the new one is complete.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        self.parts().save(dir.as_ref())
    }

    /// Loads a run saved by [`Run::save`] (or the newest checkpoint of a folder of periodic
    /// checkpoints `step-*`), rebuilding data and model from its config and restoring every
    /// tensor, counter and the history.
    pub fn load(dir: impl AsRef<Path>) -> Result<Run> {
        Self::load_with(dir, |_| Ok(()))
    }

    /// Like [`Run::load`], letting `adjust` change the saved config first (a longer
    /// `train.steps` to continue a finished run, another device, a new log interval). Changes
    /// to the model's shape make the load fail with the tensor that no longer fits.
    pub fn load_with(
        dir: impl AsRef<Path>,
        adjust: impl FnOnce(&mut RunConfig) -> Result<()>,
    ) -> Result<Run> {
        let mut saved = Saved::open(dir.as_ref())?;
        let warning = saved.warning.take();
        let mut config = saved.config()?;
        adjust(&mut config)?;
        config.validate()?;
        saved.check_method(&config)?;
        let mut run = Run::new(config)?;
        let total = run.schedule.total_steps();
        run.record = saved.restore(
            run.method.as_mut(),
            &mut run.optimizer,
            (&run.device, total),
        )?;
        run.loader = run.loader_at(run.config.train.batch_size, run.record.steps_done())?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
            run.warnings.push(w);
        }
        Ok(run)
    }

    /// Loads backbone weights from a PyTorch checkpoint of an official release (`.pth`, `.pt`
    /// or `.safetensors`; see [`crate::models::load_backbone`] for the key layouts) into the
    /// online backbone and, where there is one, the momentum encoder's copy.
    pub fn import_backbone(&mut self, path: impl AsRef<Path>) -> Result<ImportReport> {
        let path = path.as_ref();
        let tensors = read_torch_checkpoint(path)?;
        load_backbone(&self.method.stores(), &tensors, path)
    }

    /// Writes the online backbone as safetensors with torchvision/timm key names; returns the
    /// number of tensors written.
    pub fn export_backbone(&self, path: impl AsRef<Path>) -> Result<usize> {
        export_backbone(self.method.params(), path)
    }

    /// Problems noticed while building the run that do not stop it (printed once to stderr).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Measures the periodic monitors on the probe images now (training does this every
    /// `diagnostics.every` steps).
    pub(super) fn take_monitors(&mut self) -> Result<()> {
        let src = ProbeSource {
            test_data: self.test_data.as_ref(),
            recipe: &self.recipe,
            images: self.config.diagnostics.probe_images,
            seed: self.config.seed,
            device: &self.device,
        };
        let cc = (
            self.record.last_cross_correlation.as_ref(),
            self.config.diagnostics.corr_block,
        );
        let step = self.record.steps.len();
        self.monitors.take(step, self.method.as_ref(), &src, cc)
    }

    /// One optimisation step. A non-finite loss returns an error and leaves the weights as they
    /// were.
    pub fn step(&mut self) -> Result<StepReport> {
        (self.hooks.step)(self)
    }

    fn step_here(&mut self) -> Result<StepReport> {
        self.step_inner(|_| {})
    }

    /// One step; `fault` may change the gradients before they are checked and applied (the
    /// tests inject NaN there).
    fn step_inner(
        &mut self,
        fault: impl FnOnce(&mut candle_core::backprop::GradStore),
    ) -> Result<StepReport> {
        // The forward and backward passes of this step in the run's precision, on this thread,
        // and across this run's ranks (if any) until the method's after-step work is done.
        let _precision = crate::kernels::autocast(self.config.precision);
        let ranks = crate::dist::scope_with(self.world.clone(), self.config.train.sync_bn);
        let s = self.record.steps.len();
        let batch = self.loader.next_batch()?;
        let n = batch.indices.len();
        let size = batch.size;
        let t0 = Instant::now();
        let a = Tensor::from_vec(batch.a, (n, 3, size, size), &self.device)?;
        let b = Tensor::from_vec(batch.b, (n, 3, size, size), &self.device)?;
        // A training-mode forward moves BN running statistics; keep copies so a step that
        // turns out non-finite leaves no trace.
        let buffers = self.buffer_copies()?;
        let out = self.method.forward_train(&a, &b)?;
        // The backward pass is queued before the loss is read: on a GPU the read waits for the
        // device, which then runs forward and backward back to back instead of idling while
        // the backward's first kernels are launched. A non-finite loss wastes one backward.
        let mut grads = out.loss.backward()?;
        let mut out = out;
        if let Some(world) = self.world.clone().filter(|w| w.size() > 1) {
            // Every rank steps with the mean gradient, and reports the mean of the ranks'
            // losses (the global batch's loss: each rank's is its share, or already global).
            let vars = self.method.params().trainable().map(|p| p.var.as_tensor());
            crate::dist::average_gradients(&world, vars, &mut grads)?;
            out.loss = crate::dist::mean_over_ranks(&out.loss)?;
            for (_, t) in out.parts.iter_mut() {
                *t = crate::dist::mean_over_ranks(t)?;
            }
        }
        fault(&mut grads);
        // A finite loss can still backpropagate a NaN (a division by zero in a backward pass):
        // applied, it would poison every weight it reaches. The spike tracker's per-layer
        // norms show it when they are measured anyway; otherwise a sum over all gradients (NaN
        // and infinities survive a sum), read from the device with the loss in one copy.
        let (loss, grad_sum) = if self.spikes.is_some() {
            (out.loss.to_scalar::<f32>()?, None)
        } else {
            let sum = gradient_sum(self.method.params(), &grads)?;
            let both = Tensor::stack(&[out.loss.to_dtype(candle_core::DType::F32)?, sum], 0)?
                .to_vec1::<f32>()?;
            (both[0], Some(both[1]))
        };
        // What a step rejected below must undo: the BN statistics its forward moved, and the
        // loader, so the same batch comes next.
        let undo = |run: &mut Self, buffers: Vec<(Var, Tensor)>| -> Result<()> {
            for (var, saved) in buffers {
                var.set(&saved)?;
            }
            run.loader = run.loader_at(run.config.train.batch_size, s)?;
            Ok(())
        };
        if !loss.is_finite() {
            drop(grads);
            undo(self, buffers)?;
            let parts = out
                .parts
                .iter()
                .map(|(k, t)| {
                    let v = t.to_scalar::<f32>().map_or(f32::NAN, |v| v);
                    format!("{k}={v}")
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::NonFinite {
                step: s + 1,
                loss,
                parts,
            });
        }
        let stats = match &self.spikes {
            Some(_) => Some(self.layer_groups.grad_stats(self.method.params(), &grads)?),
            None => None,
        };
        let finite = match (&stats, grad_sum) {
            (Some((norms, _)), _) => norms.iter().all(|v| v.is_finite()),
            (None, sum) => sum.is_none_or(f32::is_finite),
        };
        if !finite {
            let param = first_non_finite(self.method.params(), &grads)?;
            drop(grads);
            undo(self, buffers)?;
            return Err(Error::NonFiniteGradient {
                step: s + 1,
                loss,
                param,
            });
        }
        if let (Some(tracker), Some((norms, max_abs))) = (&mut self.spikes, stats) {
            tracker.record(s + 1, &norms, &max_abs)?;
        }
        let factor = self.schedule.factor(s);
        self.optimizer.set_held_factor(self.schedule.batch_factor());
        self.optimizer.step(&grads, factor)?;
        self.method.after_step(s + 1, self.schedule.total_steps())?;
        drop(ranks);
        let parts = out
            .parts
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_scalar::<f32>()?)))
            .collect::<Result<Vec<_>>>()?;
        // Detached, or the matrix would keep this step's whole graph alive.
        self.record.last_cross_correlation = out.cross_correlation.map(|c| c.detach());
        // Free this step's graph and gradients now: the monitors below run forward passes of
        // their own, and with both alive the first step's peak memory was the training graph
        // plus theirs (2.24 GB for `sslab bench barlow-twins`, whose steps alone need less).
        drop((out.loss, out.parts, grads));
        let seconds = t0.elapsed().as_secs_f64();
        let report = StepReport {
            step: s + 1,
            loss,
            parts,
            lr: self.schedule.lr_at(s),
            seconds,
            images_per_sec: 2.0 * (n * self.rank_and_size().1) as f64 / seconds.max(1e-9),
        };
        self.record.steps.push(report.clone());
        if let Some(log) = &mut self.metrics_log {
            if report.step == 1 || report.step.is_multiple_of(self.config.train.log_every) {
                log.step(&report)?;
                log.flush()?;
            }
        }
        let every = Monitors::every(self.config.diagnostics.every, self.schedule.total_steps());
        if report.step.is_multiple_of(every) || report.step == 1 {
            self.take_monitors()?;
        }
        let every = self.config.train.checkpoint_every;
        if every > 0 && report.step.is_multiple_of(every) && self.is_lead() {
            if let Some((dir, _)) = &self.checkpoint_dir {
                self.parts()
                    .save(&dir.join(format!("step-{:08}", report.step)))?;
                prune_checkpoints(dir, self.config.train.keep_checkpoints);
            }
        }
        Ok(report)
    }

    /// `n` steps with a progress line every `train.log_every` steps (plain text, so it streams
    /// into notebooks). Stops at the first error; completed steps are kept.
    pub fn train(&mut self, n: usize) -> Result<TrainSummary> {
        let (log_every, total) = (self.config.train.log_every, self.schedule.total_steps());
        let mut out = std::io::stdout();
        let mut i = 0;
        self.train_with(n, |r| {
            i += 1;
            if i % log_every == 0 || i == n {
                let _ = writeln!(out, "{r}  [{}/{total}]", r.step);
                let _ = out.flush();
            }
            ControlFlow::Continue(())
        })
    }

    /// Up to `n` steps, calling `on_step` after each: what a front end builds its progress
    /// display and its interrupt on (`ControlFlow::Break` stops after the step just taken).
    /// Stops at the first error; completed steps are kept.
    pub fn train_with(
        &mut self,
        n: usize,
        mut on_step: impl FnMut(&StepReport) -> ControlFlow<()>,
    ) -> Result<TrainSummary> {
        let t0 = Instant::now();
        let first = self.record.steps.len();
        for _ in 0..n {
            let r = self.step()?;
            if on_step(&r).is_break() {
                break;
            }
        }
        let done = &self.record.steps[first..];
        let secs = t0.elapsed().as_secs_f64();
        let views: f64 = 2.0 * (self.config.train.batch_size * done.len()) as f64;
        Ok(TrainSummary {
            steps: done.len(),
            first_loss: done.first().map(|r| r.loss).unwrap_or(f32::NAN),
            last_loss: done.last().map(|r| r.loss).unwrap_or(f32::NAN),
            seconds: secs,
            images_per_sec: views / secs.max(1e-9),
        })
    }

    /// Weighted kNN (k, t from `eval`) of evaluation-mode backbone features: train split as the
    /// bank, scored on the test split. On several ranks each extracts its share of the
    /// features and all get the result (every rank must call it).
    pub fn knn(&mut self) -> Result<KnnResult> {
        let e = &self.config.eval;
        let r = knn_eval_across(
            self.method.as_ref(),
            (self.train_data.as_ref(), self.test_data.as_ref()),
            &self.recipe,
            KnnSettings {
                k: e.knn_k,
                t: e.knn_t,
                batch: e.batch_size,
            },
            &self.device,
            self.world.as_ref(),
        )?;
        self.record.knn.push((self.record.steps.len(), r.clone()));
        if let Some(log) = &mut self.metrics_log {
            log.knn(self.record.steps.len(), &r)?;
            log.flush()?;
        }
        Ok(r)
    }

    /// The dense linear probe (per-location classifier on the frozen last feature map against
    /// the dataset's masks; mIoU and pixel accuracy on the test split). Needs masks: the
    /// built-in shapes have them.
    pub fn dense_probe(&self) -> Result<DenseProbeResult> {
        (self.hooks.dense_probe)(self)
    }

    fn dense_probe_here(&self) -> Result<DenseProbeResult> {
        let e = &self.config.eval;
        dense_probe(
            self.method.as_ref(),
            (self.train_data.as_ref(), self.test_data.as_ref()),
            &self.recipe,
            DenseProbeSettings {
                steps: e.dense_probe_steps,
                lr: e.dense_probe_lr,
                batch: e.batch_size,
                seed: self.config.seed,
                ..DenseProbeSettings::default()
            },
            &self.device,
        )
    }

    /// The linear probe (docs/recipes.md §5): a linear classifier on the frozen, evaluation-mode
    /// backbone features of the train split, trained with the method's protocol (SGD,
    /// `eval.linear_probe_epochs` epochs on features extracted once) and scored top-1/top-5 on
    /// the test split.
    pub fn linear_probe(&self) -> Result<LinearProbeResult> {
        (self.hooks.linear_probe)(self)
    }

    /// The probe's settings for this run: the method's protocol with `eval`'s overrides.
    pub fn linear_probe_settings(&self) -> LinearProbeSettings {
        let e = &self.config.eval;
        let vit = self.config.model.backbone == BackboneKind::Vit;
        let mut s = LinearProbeSettings::for_method(self.config.method, vit)
            .scaled_down(e.linear_probe_epochs);
        if e.linear_probe_lr > 0.0 {
            s.lr = e.linear_probe_lr;
        }
        s.feature_batch = e.batch_size;
        s.seed = self.config.seed;
        s
    }

    fn linear_probe_here(&self) -> Result<LinearProbeResult> {
        linear_probe(
            self.method.as_ref(),
            (self.train_data.as_ref(), self.test_data.as_ref()),
            &self.recipe,
            self.linear_probe_settings(),
            &self.device,
        )
    }

    /// The configuration the run was built from.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }
    /// Every step so far.
    pub fn history(&self) -> &[StepReport] {
        &self.record.steps
    }
    /// kNN results so far, with the step each was taken at.
    pub fn knn_history(&self) -> &[(usize, KnnResult)] {
        &self.record.knn
    }
    /// Steps taken.
    pub fn steps_done(&self) -> usize {
        self.record.steps.len()
    }
    /// Length of the schedule in steps.
    pub fn total_steps(&self) -> usize {
        self.schedule.total_steps()
    }
    /// The device tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// `cpu` or `cuda`.
    pub fn device_name(&self) -> String {
        device_name(&self.device)
    }
    /// The method being trained.
    pub fn method(&self) -> &dyn Method {
        self.method.as_ref()
    }
    /// The method, mutably (to change λ or τ mid-run through its own type).
    pub fn method_mut(&mut self) -> &mut dyn Method {
        self.method.as_mut()
    }
    /// The optimiser.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }
    /// The two-view recipe.
    pub fn recipe(&self) -> &TwoViewRecipe {
        &self.recipe
    }
    /// Training split.
    pub fn train_data(&self) -> &Arc<dyn Dataset> {
        &self.train_data
    }
    /// Test split.
    pub fn test_data(&self) -> &Arc<dyn Dataset> {
        &self.test_data
    }
    /// The cross-correlation matrix of the last step (methods that have one).
    pub fn last_cross_correlation(&self) -> Option<&Tensor> {
        self.record.last_cross_correlation.as_ref()
    }
}

/// Entry points that run a backward pass, as function pointers fixed when the run is built.
///
/// candle numbers tensors from a global counter, and gradients are keyed by those numbers.
/// evcxr (the notebook kernel) links a private copy of every dependency into each cell, so a
/// `Run` built in one cell and stepped from another would take fresh, colliding numbers from
/// the second cell's counter. Calling through these pointers runs the code, and the counter,
/// of the copy that built the run's tensors. Everywhere else the pointers are just the
/// functions.
#[derive(Clone, Copy)]
struct Hooks {
    step: fn(&mut Run) -> Result<StepReport>,
    dense_probe: fn(&Run) -> Result<DenseProbeResult>,
    linear_probe: fn(&Run) -> Result<LinearProbeResult>,
}

impl Hooks {
    const HERE: Hooks = Hooks {
        step: Run::step_here,
        dense_probe: Run::dense_probe_here,
        linear_probe: Run::linear_probe_here,
    };
}

/// The sum of every gradient of `store`'s trainable tensors, an f32 scalar on the device
/// (non-finite iff some gradient holds a NaN or infinity, or the sum overflows).
fn gradient_sum(
    store: &crate::models::ParamStore,
    grads: &candle_core::backprop::GradStore,
) -> Result<Tensor> {
    let sums = store
        .trainable()
        .filter_map(|p| grads.get(p.var.as_tensor()))
        .map(|g| Ok(g.sum_all()?.to_dtype(candle_core::DType::F32)?))
        .collect::<Result<Vec<Tensor>>>()?;
    let device = store.params.first().map(|p| p.var.device().clone());
    match device {
        Some(d) if sums.is_empty() => Ok(Tensor::zeros((), candle_core::DType::F32, &d)?),
        _ => Ok(Tensor::stack(&sums, 0)?.sum_all()?),
    }
}

/// The name of the first trainable tensor of `store` whose gradient sums to a non-finite value
/// (`?` if each sum is finite and only their total overflowed).
fn first_non_finite(
    store: &crate::models::ParamStore,
    grads: &candle_core::backprop::GradStore,
) -> Result<String> {
    for p in store.trainable() {
        if let Some(g) = grads.get(p.var.as_tensor()) {
            let s = g.sum_all()?.to_dtype(candle_core::DType::F32)?;
            if !s.to_scalar::<f32>()?.is_finite() {
                return Ok(p.name.clone());
            }
        }
    }
    Ok("?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NaN injected into one gradient of a finite-loss step is caught at that step: the
    /// weights, BN statistics, history and next batch are as after the previous step.
    #[test]
    fn a_nan_gradient_is_caught_and_leaves_the_run_as_it_was() {
        for spikes in [true, false] {
            let mut c = RunConfig::preset("barlow-twins/tiny").unwrap();
            c.device = "cpu".into();
            c.model.width = 4;
            c.barlow_twins.projector = vec![32, 32];
            c.data.shapes.size = 16;
            c.augment.size = 16;
            c.data.shapes.train = 64;
            c.data.shapes.test = 16;
            c.train.batch_size = 16;
            c.diagnostics.grad_spikes = spikes;
            let mut run = Run::new(c.clone()).unwrap();
            run.step().unwrap();
            let snapshot = |run: &Run| -> Vec<Vec<f32>> {
                run.method
                    .stores()
                    .iter()
                    .flat_map(|s| s.params.iter())
                    .map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
                    .collect()
            };
            let before = snapshot(&run);
            let victim = run.method.params().trainable().nth(3).unwrap().var.clone();
            let e = run
                .step_inner(|grads| {
                    let g = grads.get(victim.as_tensor()).unwrap();
                    let nan = (g.ones_like().unwrap() * f64::NAN).unwrap();
                    grads.insert(victim.as_tensor(), nan);
                })
                .unwrap_err();
            assert!(
                matches!(e, Error::NonFiniteGradient { step: 2, .. }),
                "spikes {spikes}: {e}"
            );
            assert!(e.to_string().contains("non-finite gradient"), "{e}");
            assert_eq!(
                snapshot(&run),
                before,
                "spikes {spikes}: the failed step left a trace"
            );
            assert_eq!(run.steps_done(), 1);
            // The same run goes on as an untouched one does.
            let mut twin = Run::new(c).unwrap();
            twin.step().unwrap();
            let (a, b) = (run.step().unwrap(), twin.step().unwrap());
            assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "spikes {spikes}");
        }
    }
}
