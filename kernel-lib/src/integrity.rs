//! What a saved file must still be when it is read back: its length and a content hash
//! (xxh3-64), recorded at save and checked on load, so a damaged block or a partial copy is
//! refused with the file's name instead of loading silently different weights; and tensors
//! checked finite before they become a run's state.

use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A file's length and xxh3-64 content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The file's name, relative to the folder it was saved in.
    pub name: String,
    pub bytes: u64,
    /// xxh3-64 of the content, 16 hex digits.
    pub xxh3: String,
}

fn hex(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

impl Digest {
    /// The digest of `dir/name` as it is on disk now.
    pub fn of(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::data(&path, e.to_string()))?;
        Ok(Digest {
            name: name.to_string(),
            bytes: bytes.len() as u64,
            xxh3: hex(&bytes),
        })
    }

    /// Checks that `dir/name` is still what was saved: an error naming the file and what
    /// differs (missing, length, content).
    pub fn verify(&self, dir: &Path) -> Result<()> {
        let path = dir.join(&self.name);
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::data(&path, format!("recorded at save but unreadable now: {e}")))?;
        if bytes.len() as u64 != self.bytes {
            return Err(Error::data(
                &path,
                format!(
                    "damaged: {} bytes, but {} were written (cut short or replaced)",
                    bytes.len(),
                    self.bytes
                ),
            ));
        }
        let now = hex(&bytes);
        if now != self.xxh3 {
            return Err(Error::data(
                &path,
                format!(
                    "damaged: its content hash is {now}, but {} was recorded when it was \
                     written (changed on disk since: a bad block, a partial copy, an edit)",
                    self.xxh3
                ),
            ));
        }
        Ok(())
    }
}

/// Where the digest of a standalone file (a backbone export) is kept: `<file>.digest.json`
/// beside it, so the file itself stays a plain safetensors file for PyTorch.
pub fn sidecar(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".digest.json");
    path.with_file_name(name)
}

/// Records the digest of `path` in its [`sidecar`].
pub fn write_sidecar(path: &Path) -> Result<()> {
    let (dir, name) = split(path)?;
    let digest = Digest::of(dir, &name)?;
    let json = serde_json::to_vec_pretty(&digest)
        .map_err(|e| Error::Invalid(format!("cannot serialise a digest: {e}")))?;
    crate::atomic::write(&sidecar(path), &json)
}

/// Checks `path` against its [`sidecar`] when there is one (a file sslab wrote); a file without
/// one (from elsewhere) passes.
pub fn verify_sidecar(path: &Path) -> Result<()> {
    let side = sidecar(path);
    let Ok(bytes) = std::fs::read(&side) else {
        return Ok(());
    };
    let digest: Digest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::data(&side, format!("not a digest: {e}")))?;
    let (dir, name) = split(path)?;
    if digest.name != name {
        return Err(Error::data(
            &side,
            format!("records '{}', not '{name}'", digest.name),
        ));
    }
    digest.verify(dir)
}

fn split(path: &Path) -> Result<(&Path, String)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| Error::data(path, "not a file path"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// The first named tensor holding a NaN or an infinity: an error naming it and the file.
pub fn check_finite<'a>(
    file: &Path,
    tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
) -> Result<()> {
    let mut names: Vec<(&String, &Tensor)> = tensors.into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, t) in names {
        if !t.dtype().is_float() {
            continue;
        }
        let values = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            let count = values.iter().filter(|v| !v.is_finite()).count();
            return Err(Error::data(
                file,
                format!("tensor '{name}' holds {count} non-finite values (first: {bad}); refusing to load it"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_or_length_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), vec![7u8; 10_000]).unwrap();
        let d = Digest::of(dir.path(), "a.bin").unwrap();
        assert_eq!(d.bytes, 10_000);
        d.verify(dir.path()).unwrap();
        let mut bytes = vec![7u8; 10_000];
        bytes[5_000] = 8;
        std::fs::write(dir.path().join("a.bin"), &bytes).unwrap();
        let e = d.verify(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a.bin") && e.contains("content hash"), "{e}");
        std::fs::write(dir.path().join("a.bin"), vec![7u8; 9_999]).unwrap();
        let e = d.verify(dir.path()).unwrap_err().to_string();
        assert!(e.contains("9999 bytes") && e.contains("10000"), "{e}");
        std::fs::remove_file(dir.path().join("a.bin")).unwrap();
        assert!(d.verify(dir.path()).is_err());
    }

    #[test]
    fn non_finite_tensors_are_named() {
        let dev = candle_core::Device::Cpu;
        let ok = Tensor::new(&[1f32, 2.0], &dev).unwrap();
        let bad = Tensor::new(&[1f32, f32::NAN, f32::INFINITY], &dev).unwrap();
        let (a, b) = ("param/w".to_string(), "optim/w#0".to_string());
        check_finite(Path::new("x"), [(&a, &ok)]).unwrap();
        let e = check_finite(Path::new("x"), [(&a, &ok), (&b, &bad)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim/w#0") && e.contains("2 non-finite"), "{e}");
    }
}
