//! Checkpoints: everything a run needs to continue as if it had never stopped.
//!
//! A checkpoint folder holds `state-<step>.safetensors` (weights, momentum encoder, BN buffers,
//! optimizer buffers, queues) and `run.json` (config, step count, history, queue pointers),
//! plus a readable `config.toml`. `run.json` is the commit point: it is written last, atomically,
//! and names the tensor file it belongs to, so a kill at any moment leaves the previous
//! checkpoint loadable. Data order and augmentations are pure functions of (seed, step) and
//! ShuffleBN's permutation of (seed, step), so the step count restores every random stream.

use super::config::RunConfig;
use super::folders::step_folders;
use super::run::{Run, StepReport};
use crate::atomic;
use crate::error::{Error, Result};
use crate::eval::KnnResult;
use crate::models::{export_backbone, load_backbone, read_torch_checkpoint, ImportReport};
use crate::optim::OptimizerState;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Format version of `run.json`.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u32,
    method: String,
    steps_done: usize,
    optimizer_steps: usize,
    /// The tensor file of this checkpoint, relative to the folder.
    tensors: String,
    /// The run's configuration as TOML.
    config: String,
    queue_ptrs: Vec<(String, usize)>,
    history: Vec<StepReport>,
    knn_history: Vec<(usize, KnnResult)>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::data(path, e.to_string())
}

impl Run {
    /// Saves the run into `dir` (created if needed) and returns the manifest's path. An earlier
    /// checkpoint in `dir` stays loadable until the new one is complete.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let step = self.history.len();
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for store in self.stores() {
            for p in &store.params {
                tensors.insert(format!("param/{}", p.name), p.var.as_tensor().clone());
            }
        }
        for (k, t) in self.optimizer.state()?.buffers {
            tensors.insert(format!("optim/{k}"), t);
        }
        let mut queue_ptrs = Vec::new();
        for (name, q) in self.method.queues() {
            tensors.insert(format!("queue/{name}"), q.keys_by_row().clone());
            queue_ptrs.push((name.to_string(), q.ptr()));
        }
        let file = format!("state-{step:08}.safetensors");
        let path = dir.join(&file);
        atomic::save_tensors(&path, &tensors)?;
        let config = self.config.to_toml()?;
        let manifest = Manifest {
            version: VERSION,
            method: self.method.name().to_string(),
            steps_done: step,
            optimizer_steps: self.optimizer.steps(),
            tensors: file.clone(),
            config: config.clone(),
            queue_ptrs,
            history: self.history.clone(),
            knn_history: self.knn_history.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Invalid(format!("cannot serialise the run: {e}")))?;
        let run_json = dir.join("run.json");
        atomic::write(&run_json, &json)?;
        atomic::write(&dir.join("config.toml"), config.as_bytes())?;
        // Only now are older tensor files unreferenced.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("state-") && name.ends_with(".safetensors") && name != file {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(run_json)
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
        let dir = resolve(dir.as_ref())?;
        let run_json = dir.join("run.json");
        let bytes = std::fs::read(&run_json).map_err(io(&run_json))?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::data(&run_json, format!("not a sslab checkpoint: {e}")))?;
        if m.version != VERSION {
            return Err(Error::data(
                &run_json,
                format!(
                    "checkpoint format {} (this sslab reads {VERSION})",
                    m.version
                ),
            ));
        }
        let mut config = RunConfig::from_toml_str(&m.config)
            .map_err(|e| Error::data(&run_json, format!("its config is invalid: {e}")))?;
        adjust(&mut config)?;
        config.validate()?;
        if config.method.name() != m.method {
            return Err(Error::data(
                &run_json,
                format!("method '{}' but config for '{}'", m.method, config.method),
            ));
        }
        let mut run = Run::new(config)?;
        if run.total_steps < m.steps_done {
            return Err(Error::config(
                "train.steps",
                format!(
                    "the checkpoint has done {} steps, more than the {} asked for",
                    m.steps_done, run.total_steps
                ),
            ));
        }
        run.restore(&dir, m)?;
        Ok(run)
    }

    fn restore(&mut self, dir: &Path, m: Manifest) -> Result<()> {
        let path = dir.join(&m.tensors);
        if m.tensors.contains('/') || m.tensors.contains("..") {
            return Err(Error::data(dir.join("run.json"), "bad tensor file name"));
        }
        let tensors = candle_core::safetensors::load(&path, &self.device)
            .map_err(|e| Error::data(&path, format!("unreadable tensors: {e}")))?;
        let get = |key: &str| {
            tensors
                .get(key)
                .ok_or_else(|| Error::data(&path, format!("missing tensor '{key}'")))
        };
        for store in self.stores() {
            for p in &store.params {
                let t = get(&format!("param/{}", p.name))?;
                if t.dims() != p.var.dims() {
                    return Err(Error::data(
                        &path,
                        format!(
                            "'{}' has shape {:?}, the model needs {:?}",
                            p.name,
                            t.dims(),
                            p.var.dims()
                        ),
                    ));
                }
                p.var.set(&t.to_dtype(p.var.dtype())?)?;
            }
        }
        let buffers = tensors
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix("optim/")?.to_string(), t.clone())))
            .collect();
        self.optimizer
            .load_state(&OptimizerState {
                step: m.optimizer_steps,
                buffers,
            })
            .map_err(|e| Error::data(&path, e.to_string()))?;
        for (name, q) in self.method.queues_mut() {
            let ptr = m
                .queue_ptrs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .ok_or_else(|| {
                    Error::data(dir.join("run.json"), format!("no pointer for {name}"))
                })?;
            q.restore(get(&format!("queue/{name}"))?, ptr)
                .map_err(|e| Error::data(&path, e.to_string()))?;
        }
        if m.history.len() != m.steps_done {
            return Err(Error::data(
                dir.join("run.json"),
                format!(
                    "{} steps but {} history entries",
                    m.steps_done,
                    m.history.len()
                ),
            ));
        }
        self.method.resume_at(m.steps_done, self.total_steps)?;
        self.loader = self.loader_at(self.config.train.batch_size, m.steps_done)?;
        self.history = m.history;
        self.knn_history = m.knn_history;
        Ok(())
    }
}

impl Run {
    /// Loads backbone weights from a PyTorch checkpoint of an official release (`.pth`, `.pt`
    /// or `.safetensors`; see [`crate::models::load_backbone`] for the key layouts) into the
    /// online backbone and, where there is one, the momentum encoder's copy.
    pub fn import_backbone(&mut self, path: impl AsRef<Path>) -> Result<ImportReport> {
        let path = path.as_ref();
        let tensors = read_torch_checkpoint(path)?;
        load_backbone(&self.stores(), &tensors, path)
    }

    /// Writes the online backbone as safetensors with torchvision/timm key names; returns the
    /// number of tensors written.
    pub fn export_backbone(&self, path: impl AsRef<Path>) -> Result<usize> {
        export_backbone(self.method.params(), path)
    }
}

/// A folder with `run.json`, or a folder of `step-*` checkpoints (the newest complete one).
fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join("run.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    step_folders(dir, true)
        .map_err(io(dir))?
        .pop()
        .ok_or_else(|| Error::data(dir, "no checkpoint here (no run.json, no step-* folders)"))
}
