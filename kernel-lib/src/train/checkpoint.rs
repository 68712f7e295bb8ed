//! Checkpoints: everything a run needs to continue as if it had never stopped.
//!
//! A checkpoint folder holds `state-<step>.safetensors` (weights, momentum encoder, BN buffers,
//! optimizer buffers, queues) and `run.json` (config, step count, history, queue pointers),
//! plus a readable `config.toml`. `run.json` is the commit point: it is written last, atomically,
//! and names the tensor file it belongs to, so a kill at any moment leaves the previous
//! checkpoint loadable. `run.json` also records the length and content hash (xxh3) of the
//! tensor file and `config.toml`; a load checks them first and refuses a damaged file by name,
//! then refuses any non-finite tensor by name. Data order and augmentations are pure functions of (seed, step) and
//! ShuffleBN's permutation of (seed, step), so the step count restores every random stream.

use super::config::RunConfig;
use super::folders::step_folders;
use super::record::{Record, StepReport};
use crate::atomic;
use crate::error::{Error, Result};
use crate::eval::KnnResult;
use crate::integrity::{check_finite, Digest};
use crate::methods::Method;
use crate::optim::{Optimizer, OptimizerState};
use candle_core::{Device, Tensor};
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
    /// Length and content hash of each file of the checkpoint, checked on load. Empty in
    /// checkpoints written before hashes were recorded: those load with a warning.
    #[serde(default)]
    files: Vec<Digest>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::data(path, e.to_string())
}

/// The parts of a run a checkpoint holds.
pub(super) struct Parts<'a> {
    pub config: &'a RunConfig,
    pub method: &'a dyn Method,
    pub optimizer: &'a Optimizer,
    pub record: &'a Record,
}

impl Parts<'_> {
    /// Saves the parts into `dir` (created if needed) and returns the manifest's path. An
    /// earlier checkpoint in `dir` stays loadable until the new one is complete.
    pub(super) fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let step = self.record.steps.len();
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for store in self.method.stores() {
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
        atomic::write(&dir.join("config.toml"), config.as_bytes())?;
        // Hashed as read back: what a later load must find on disk.
        let files = vec![Digest::of(dir, &file)?, Digest::of(dir, "config.toml")?];
        let manifest = Manifest {
            version: VERSION,
            method: self.method.name().to_string(),
            steps_done: step,
            optimizer_steps: self.optimizer.steps(),
            tensors: file.clone(),
            config: config.clone(),
            queue_ptrs,
            history: self.record.steps.clone(),
            knn_history: self.record.knn.clone(),
            files,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Invalid(format!("cannot serialise the run: {e}")))?;
        let run_json = dir.join("run.json");
        atomic::write(&run_json, &json)?;
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
}

/// A checkpoint read from disk and checked, not yet applied: its manifest and folder.
pub(super) struct Saved {
    dir: PathBuf,
    manifest: Manifest,
    /// Said once the run is built: why the files could not be checked.
    pub warning: Option<String>,
}

impl Saved {
    /// Reads the checkpoint in `dir` (a folder with `run.json`, or the newest complete one of a
    /// folder of `step-*` checkpoints).
    pub(super) fn open(dir: &Path) -> Result<Self> {
        let dir = resolve(dir)?;
        let run_json = dir.join("run.json");
        let bytes = std::fs::read(&run_json).map_err(io(&run_json))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::data(&run_json, format!("not a sslab checkpoint: {e}")))?;
        if manifest.version != VERSION {
            return Err(Error::data(
                &run_json,
                format!(
                    "checkpoint format {} (this sslab reads {VERSION})",
                    manifest.version
                ),
            ));
        }
        // Every recorded file must be what was written, before anything of it is used.
        for f in &manifest.files {
            f.verify(&dir)?;
        }
        let warning = manifest.files.is_empty().then(|| {
            format!(
                "{} was written before checkpoints recorded content hashes: its files are \
                 loaded unchecked (saving it again records them)",
                run_json.display()
            )
        });
        Ok(Saved {
            dir,
            manifest,
            warning,
        })
    }

    /// The saved config.
    pub(super) fn config(&self) -> Result<RunConfig> {
        RunConfig::from_toml_str(&self.manifest.config).map_err(|e| {
            Error::data(
                self.dir.join("run.json"),
                format!("its config is invalid: {e}"),
            )
        })
    }

    /// Checks that `config` (the saved one, possibly adjusted) still trains the saved method.
    pub(super) fn check_method(&self, config: &RunConfig) -> Result<()> {
        let m = &self.manifest;
        if config.method.name() != m.method {
            return Err(Error::data(
                self.dir.join("run.json"),
                format!("method '{}' but config for '{}'", m.method, config.method),
            ));
        }
        Ok(())
    }

    /// Restores every tensor, counter and queue into a freshly built method and optimizer of
    /// a `total_steps` schedule; returns the saved record.
    pub(super) fn restore(
        self,
        method: &mut dyn Method,
        optimizer: &mut Optimizer,
        (device, total_steps): (&Device, usize),
    ) -> Result<Record> {
        let (dir, m) = (self.dir, self.manifest);
        if total_steps < m.steps_done {
            return Err(Error::config(
                "train.steps",
                format!(
                    "the checkpoint has done {} steps, more than the {} asked for",
                    m.steps_done, total_steps
                ),
            ));
        }
        let path = dir.join(&m.tensors);
        if m.tensors.contains('/') || m.tensors.contains("..") {
            return Err(Error::data(dir.join("run.json"), "bad tensor file name"));
        }
        let on_host = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| Error::data(&path, format!("unreadable tensors: {e}")))?;
        // Weights, optimizer state and queues: a NaN or infinity would surface steps later as
        // a non-finite loss with no hint of where it came from.
        check_finite(&path, &on_host)?;
        let tensors = on_host
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect::<Result<HashMap<String, Tensor>>>()?;
        let get = |key: &str| {
            tensors
                .get(key)
                .ok_or_else(|| Error::data(&path, format!("missing tensor '{key}'")))
        };
        for store in method.stores() {
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
        optimizer
            .load_state(&OptimizerState {
                step: m.optimizer_steps,
                buffers,
            })
            .map_err(|e| Error::data(&path, e.to_string()))?;
        for (name, q) in method.queues_mut() {
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
        method.resume_at(m.steps_done, total_steps)?;
        Ok(Record {
            steps: m.history,
            knn: m.knn_history,
            last_cross_correlation: None,
        })
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
