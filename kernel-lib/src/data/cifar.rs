//! CIFAR-10/100 in the original binary format: one label byte (two for CIFAR-100: coarse, fine)
//! then 1024 R, 1024 G, 1024 B bytes per record.

use super::InMemoryDataset;
use crate::augment::Image;
use crate::error::{Error, Result};
use std::path::Path;

/// CIFAR-10 class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

fn read_records(
    files: &[&Path],
    label_bytes: usize,
    classes: usize,
) -> Result<(Vec<Image>, Vec<usize>)> {
    let rec = label_bytes + 3072;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for &f in files {
        let bytes = std::fs::read(f).map_err(|e| Error::data(f, e.to_string()))?;
        if bytes.is_empty() || bytes.len() % rec != 0 {
            return Err(Error::data(
                f,
                format!(
                    "{} bytes is not a whole number of {rec}-byte CIFAR records (truncated or not a CIFAR-{} binary file)",
                    bytes.len(),
                    classes
                ),
            ));
        }
        for r in bytes.chunks_exact(rec) {
            let label = r[label_bytes - 1] as usize;
            if label >= classes {
                return Err(Error::data(
                    f,
                    format!("label {label} out of range 0..{classes}: not a CIFAR-{classes} file"),
                ));
            }
            let px = &r[label_bytes..];
            let mut hwc = vec![0u8; 3072];
            for i in 0..1024 {
                for c in 0..3 {
                    hwc[i * 3 + c] = px[c * 1024 + i];
                }
            }
            images.push(Image {
                width: 32,
                height: 32,
                channels: 3,
                pixels: hwc,
            });
            labels.push(label);
        }
    }
    Ok((images, labels))
}

/// Reads CIFAR-10 binary batch files (e.g. `data_batch_1.bin` … or `test_batch.bin`).
pub fn read_cifar10_bin(files: &[&Path], name: &str) -> Result<InMemoryDataset> {
    let (images, labels) = read_records(files, 1, 10)?;
    Ok(InMemoryDataset {
        name: format!("{name} ({} images)", images.len()),
        images,
        labels,
        masks: None,
        class_names: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

/// Reads CIFAR-100 binary files (`train.bin`, `test.bin`) with the fine labels.
pub fn read_cifar100_bin(files: &[&Path], name: &str) -> Result<InMemoryDataset> {
    let (images, labels) = read_records(files, 2, 100)?;
    Ok(InMemoryDataset {
        name: format!("{name} ({} images)", images.len()),
        images,
        labels,
        masks: None,
        class_names: (0..100).map(|i| format!("class{i}")).collect(),
    })
}
