//! The layout of a folder of periodic checkpoints: one `step-NNNNNNNN` folder per checkpoint,
//! the zero-padded names sorting by step; and the lock that keeps two processes from writing
//! one folder.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The `step-*` checkpoint folders of `dir`, oldest first (zero-padded names sort by step);
/// with `complete`, only those whose `run.json` was written.
pub(super) fn step_folders(dir: &Path, complete: bool) -> std::io::Result<Vec<PathBuf>> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                && (!complete || p.join("run.json").is_file())
        })
        .collect();
    steps.sort();
    Ok(steps)
}

/// Deletes all but the newest `keep` `step-*` checkpoint folders of `dir` (best effort: a
/// folder that cannot be removed stays).
pub(super) fn prune_checkpoints(dir: &Path, keep: usize) {
    let Ok(steps) = step_folders(dir, false) else {
        return;
    };
    let n = steps.len().saturating_sub(keep);
    for p in &steps[..n] {
        // `run.json` first: a kill in the middle leaves a folder that no longer claims to be a
        // complete checkpoint, never one that claims it with its tensors half deleted.
        let _ = std::fs::remove_file(p.join("run.json"));
        let _ = std::fs::remove_dir_all(p);
    }
}

/// An exclusive lock on a folder (`.lock` in it, an OS file lock), held while a run writes
/// there. The OS drops it when the process ends, however it ends, so a killed run leaves no
/// stale lock behind.
#[derive(Debug)]
pub struct FolderLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl FolderLock {
    /// Creates `dir` if needed and locks it, or says that another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::data(dir, e.to_string()))?;
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::data(&path, e.to_string()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::data(
                    dir,
                    format!(
                        "in use by another sslab process ({}): two runs writing one folder \
                         would overwrite each other's checkpoints; use another --out",
                        holder.trim()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::data(&path, e.to_string())),
        }
        // Who holds it, for the message above (the lock, not this text, is what counts).
        let _ = std::fs::write(&path, format!("pid {}", std::process::id()));
        Ok(FolderLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
