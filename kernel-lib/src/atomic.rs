//! Files written so that a crash never leaves a half-written one where a good one was: the
//! bytes go to a temporary file in the target folder, are synced, then renamed over the target.
//! Figures, checkpoints and backbone exports all write this way.

use crate::error::{Error, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tempfile::NamedTempFile;

/// Creates the folder of `path`, lets `fill` write a temporary file there, syncs it and renames
/// it to `path`. Errors name `path`.
fn write_with(path: &Path, fill: impl FnOnce(&mut NamedTempFile) -> Result<()>) -> Result<()> {
    let io = |e: std::io::Error| Error::data(path, e.to_string());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = NamedTempFile::new_in(dir).map_err(io)?;
    fill(&mut tmp)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        tmp.write_all(bytes)
            .map_err(|e| Error::data(path, e.to_string()))
    })
}

/// Saves named tensors as a safetensors file at `path` atomically.
pub(crate) fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    write_with(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp.path())
            .map_err(|e| Error::data(path, e.to_string()))
    })
}
