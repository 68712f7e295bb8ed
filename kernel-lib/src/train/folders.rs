//! The layout of a folder of periodic checkpoints: one `step-NNNNNNNN` folder per checkpoint,
//! the zero-padded names sorting by step.

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
        let _ = std::fs::remove_dir_all(p);
    }
}
