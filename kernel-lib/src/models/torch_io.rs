//! PyTorch checkpoints in and out: backbone weights from the official releases' state dicts
//! (`.pth`/`.pt` through candle's pickle reader, or `.safetensors`), and our backbones out as
//! a safetensors file with torchvision/timm key names.
//!
//! sslab names backbone tensors exactly as torchvision's ResNet and timm's ViT do, under a
//! `backbone.` prefix, so a release differs from us only in its prefix:
//! MoCo v1/v2 `module.encoder_q.`, MoCo v3 `module.base_encoder.`, DenseCL (OpenSelfSup)
//! `backbone.` or `encoder_q.0.`, Barlow Twins' torchvision `resnet50.pth` none.

use super::params::ParamStore;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Prefixes of the official releases, tried in this order.
pub const RELEASE_PREFIXES: &[&str] = &[
    "module.encoder_q.",
    "module.base_encoder.",
    "encoder_q.0.",
    "module.backbone.",
    "backbone.",
    "module.",
    "",
];

/// Keys a backbone checkpoint may hold that sslab does not use: classifier heads, BN step
/// counters and the ViT's fixed position table.
fn ignorable(key: &str) -> bool {
    key.starts_with("fc.")
        || key.starts_with("head.")
        || key.starts_with("head_dist.")
        || key.ends_with("num_batches_tracked")
        || key == "pos_embed"
}

/// Reads every tensor of a PyTorch checkpoint, unwrapping a `state_dict` or `model` entry.
pub fn read_torch_checkpoint(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(Error::data(path, "no such file"));
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors {
        // An sslab export carries its length and content hash beside it.
        crate::integrity::verify_sidecar(path)?;
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::data(path, format!("not a readable safetensors file: {e}")))?;
        return Ok(map.into_iter().collect());
    }
    let mut last_err = String::new();
    for key in [None, Some("state_dict"), Some("model")] {
        match candle_core::pickle::read_all_with_key(path, key) {
            Ok(v) if !v.is_empty() => return Ok(v),
            Ok(_) => {}
            Err(e) => last_err = e.to_string(),
        }
    }
    Err(Error::data(
        path,
        format!("no tensors found in this PyTorch checkpoint {last_err}"),
    ))
}

/// What an import loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportReport {
    /// The prefix the checkpoint's backbone keys carried.
    pub prefix: String,
    /// Tensors loaded.
    pub loaded: usize,
    /// Checkpoint tensors left out (heads, momentum encoder, queues, BN counters).
    pub ignored: usize,
}

/// Loads backbone weights into every `backbone.*` tensor of `stores` (a query store and its
/// momentum copy, `momentum.backbone.*`, get the same values). The prefix is the release
/// prefix that matches the most backbone tensors; missing, unexpected and mis-shaped keys are
/// all listed in the error.
pub fn load_backbone(
    stores: &[&ParamStore],
    tensors: &[(String, Tensor)],
    source: &Path,
) -> Result<ImportReport> {
    let ours: Vec<String> = stores
        .iter()
        .flat_map(|s| s.params.iter())
        .filter_map(|p| p.name.strip_prefix("backbone.").map(String::from))
        .collect();
    let prefix = RELEASE_PREFIXES
        .iter()
        .max_by_key(|pre| {
            let hits = tensors
                .iter()
                .filter(|(k, _)| {
                    k.strip_prefix(**pre)
                        .is_some_and(|r| ours.iter().any(|o| o == r))
                })
                .count();
            // Ties go to the earlier (more specific) prefix.
            (
                hits,
                usize::MAX - RELEASE_PREFIXES.iter().position(|p| p == *pre).unwrap_or(0),
            )
        })
        .copied()
        .unwrap_or("");
    let by_name: HashMap<&str, &Tensor> = tensors
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?, t)))
        .collect();
    // A nested prefix (e.g. `module.` also covering `module.encoder_k.`) is not a backbone.
    let unexpected: Vec<String> = by_name
        .keys()
        .filter(|k| !ignorable(k) && !k.contains("encoder_k") && !k.starts_with("momentum"))
        .filter(|k| !ours.iter().any(|o| o == *k))
        .filter(|k| looks_like_backbone(k))
        .map(|k| format!("{prefix}{k}"))
        .collect();
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut loaded = 0;
    for store in stores {
        for p in &store.params {
            let Some(name) = p
                .name
                .strip_prefix("backbone.")
                .or_else(|| p.name.strip_prefix("momentum.backbone."))
            else {
                continue;
            };
            match by_name.get(name) {
                None => missing.push(format!("{prefix}{name}")),
                Some(t) if t.dims() != p.var.dims() => wrong.push(format!(
                    "{prefix}{name}: {:?} in the file, {:?} in the model",
                    t.dims(),
                    p.var.dims()
                )),
                Some(t) => {
                    let t = t.to_dtype(p.var.dtype())?.to_device(p.var.device())?;
                    p.var.set(&t)?;
                    loaded += 1;
                }
            }
        }
    }
    if !missing.is_empty() || !unexpected.is_empty() || !wrong.is_empty() {
        let list = |v: &mut Vec<String>| {
            v.sort();
            v.dedup();
            let n = v.len();
            let shown: Vec<String> = v.iter().take(12).cloned().collect();
            format!(
                "{n} ({}{})",
                shown.join(", "),
                if n > 12 { ", ..." } else { "" }
            )
        };
        return Err(Error::data(
            source,
            format!(
                "backbone keys (prefix '{prefix}') do not fit the model: missing {}; \
                 unexpected {}; wrong shape {}",
                list(&mut missing),
                list(&mut unexpected.clone()),
                list(&mut wrong)
            ),
        ));
    }
    Ok(ImportReport {
        prefix: prefix.to_string(),
        loaded,
        ignored: tensors.len().saturating_sub(by_name.len())
            + by_name
                .keys()
                .filter(|k| !ours.iter().any(|o| o == *k))
                .count(),
    })
}

/// Whether a key names a backbone tensor of some ResNet or ViT (so a stray one is an error,
/// not a head to skip).
fn looks_like_backbone(k: &str) -> bool {
    [
        "conv1.",
        "bn1.",
        "layer",
        "blocks.",
        "patch_embed.",
        "cls_token",
        "norm.",
    ]
    .iter()
    .any(|p| k.starts_with(p))
}

/// Writes the `backbone.*` tensors of `store` to a safetensors file with torchvision/timm key
/// names (prefix dropped), adding the `num_batches_tracked` counters PyTorch's BatchNorm
/// expects, so `model.load_state_dict(safetensors.torch.load_file(path), strict=False)`
/// loads it into `torchvision.models.resnet50()` or a timm ViT. Its length and content hash go
/// to `<path>.digest.json`, which [`read_torch_checkpoint`] checks when it is there.
pub fn export_backbone(store: &ParamStore, path: impl AsRef<Path>) -> Result<usize> {
    let path = path.as_ref();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for p in &store.params {
        let Some(name) = p.name.strip_prefix("backbone.") else {
            continue;
        };
        out.insert(name.to_string(), p.var.as_tensor().to_device(&Device::Cpu)?);
        if let Some(bn) = name.strip_suffix(".running_var") {
            out.insert(
                format!("{bn}.num_batches_tracked"),
                Tensor::new(0i64, &Device::Cpu)?,
            );
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid("this model has no backbone tensors".into()));
    }
    crate::atomic::save_tensors(path, &out)?;
    crate::integrity::write_sidecar(path)?;
    Ok(out.len())
}
