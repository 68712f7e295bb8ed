//! Where a run's data comes from: a spec string such as `shapes`, `cifar10:PATH`,
//! `cifar100:PATH`, `mnist:PATH`, `fashion-mnist:PATH` or `folder:PATH`.

use super::{
    read_cifar100_bin, read_cifar10_bin, read_idx_images, read_idx_labels, read_image_folder,
    Dataset, InMemoryDataset, Shapes, ShapesConfig,
};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which half of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// A parsed data spec.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// The built-in procedural shapes.
    Shapes(ShapesConfig),
    /// A folder of CIFAR-10 binary batches (`data_batch_*.bin` / `*train*.bin` and
    /// `test_batch.bin` / `*test*.bin`, searched in the folder and one level below).
    Cifar10(PathBuf),
    /// A folder with CIFAR-100 `train.bin` and `test.bin`.
    Cifar100(PathBuf),
    /// A folder with the four MNIST-layout IDX files (`train-images-idx3-ubyte[.gz]`, ...).
    Mnist(PathBuf),
    /// Same layout as MNIST.
    FashionMnist(PathBuf),
    /// `PATH/train/<class>/*` and `PATH/test/<class>/*` image folders.
    Folder(PathBuf),
}

impl DataSource {
    /// Spec forms accepted by [`DataSource::parse`].
    pub const FORMS: &'static str =
        "shapes | cifar10:PATH | cifar100:PATH | mnist:PATH | fashion-mnist:PATH | folder:PATH";

    /// Parses a spec; `shapes` takes its size and seed from `shapes`.
    pub fn parse(spec: &str, shapes: ShapesConfig) -> Result<Self> {
        if spec == "shapes" {
            return Ok(DataSource::Shapes(shapes));
        }
        let (kind, path) = spec.split_once(':').ok_or_else(|| {
            Error::config(
                "data.source",
                format!("'{spec}' is not one of {}", Self::FORMS),
            )
        })?;
        let p = PathBuf::from(path);
        Ok(match kind {
            "cifar10" => DataSource::Cifar10(p),
            "cifar100" => DataSource::Cifar100(p),
            "mnist" => DataSource::Mnist(p),
            "fashion-mnist" => DataSource::FashionMnist(p),
            "folder" => DataSource::Folder(p),
            _ => {
                return Err(Error::config(
                    "data.source",
                    format!(
                        "unknown data kind '{kind}' in '{spec}'; use {}",
                        Self::FORMS
                    ),
                ))
            }
        })
    }

    /// Loads the train and test splits.
    pub fn load(&self) -> Result<(Arc<dyn Dataset>, Arc<dyn Dataset>)> {
        let pair = |a: InMemoryDataset,
                    b: InMemoryDataset|
         -> (Arc<dyn Dataset>, Arc<dyn Dataset>) { (Arc::new(a), Arc::new(b)) };
        Ok(match self {
            DataSource::Shapes(c) => {
                pair(Shapes::split(c, 0, c.train), Shapes::split(c, 1, c.test))
            }
            DataSource::Cifar10(dir) => {
                let (train, test) = find_bins(dir, &["data_batch", "train"], &["test"])?;
                pair(
                    read_cifar10_bin(&refs(&train), "cifar10 train")?,
                    read_cifar10_bin(&refs(&test), "cifar10 test")?,
                )
            }
            DataSource::Cifar100(dir) => {
                let (train, test) = find_bins(dir, &["train"], &["test"])?;
                pair(
                    read_cifar100_bin(&refs(&train), "cifar100 train")?,
                    read_cifar100_bin(&refs(&test), "cifar100 test")?,
                )
            }
            DataSource::Mnist(dir) | DataSource::FashionMnist(dir) => {
                let name = if matches!(self, DataSource::Mnist(_)) {
                    "mnist"
                } else {
                    "fashion-mnist"
                };
                let names: Vec<String> = if name == "mnist" {
                    (0..10).map(|i| i.to_string()).collect()
                } else {
                    [
                        "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                        "sneaker", "bag", "boot",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
                };
                pair(
                    read_idx_split(dir, "train", name, &names)?,
                    read_idx_split(dir, "t10k", name, &names)?,
                )
            }
            DataSource::Folder(dir) => pair(
                read_image_folder(&dir.join("train"), "folder train")?,
                read_image_folder(&dir.join("test"), "folder test")?,
            ),
        })
    }
}

fn refs(v: &[PathBuf]) -> Vec<&Path> {
    v.iter().map(|p| p.as_path()).collect()
}

/// Finds `*.bin` files in `dir` or one level below, split by name.
fn find_bins(dir: &Path, train: &[&str], test: &[&str]) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut bins = Vec::new();
    let mut scan = |d: &Path, recurse: bool| -> Result<Vec<PathBuf>> {
        let rd = std::fs::read_dir(d).map_err(|e| Error::data(d, e.to_string()))?;
        let mut subdirs = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && recurse {
                subdirs.push(p);
            } else if p.extension().and_then(|x| x.to_str()) == Some("bin") {
                bins.push(p);
            }
        }
        Ok(subdirs)
    };
    for sub in scan(dir, true)? {
        scan(&sub, false)?;
    }
    bins.sort();
    let pick = |keys: &[&str]| -> Vec<PathBuf> {
        bins.iter()
            .filter(|p| {
                let n = p
                    .file_name()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default();
                keys.iter().any(|k| n.contains(k))
            })
            .cloned()
            .collect()
    };
    let (tr, te) = (pick(train), pick(test));
    if tr.is_empty() || te.is_empty() {
        return Err(Error::data(
            dir,
            format!(
                "expected training (*{}*.bin) and test (*{}*.bin) binary files here or one folder below",
                train.join("*|*"),
                test.join("*|*")
            ),
        ));
    }
    Ok((tr, te))
}

fn read_idx_split(
    dir: &Path,
    prefix: &str,
    name: &str,
    classes: &[String],
) -> Result<InMemoryDataset> {
    let find = |stem: &str| -> Result<PathBuf> {
        for cand in [format!("{stem}.gz"), stem.to_string()] {
            let p = dir.join(cand);
            if p.exists() {
                return Ok(p);
            }
        }
        Err(Error::data(dir.join(stem), "missing (also tried .gz)"))
    };
    let ip = find(&format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(&format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx_images(&ip)?;
    let labels = read_idx_labels(&lp)?;
    if images.len() != labels.len() {
        return Err(Error::data(
            &lp,
            format!(
                "{} labels for {} images in {}",
                labels.len(),
                images.len(),
                ip.display()
            ),
        ));
    }
    if let Some(bad) = labels.iter().find(|&&l| l >= classes.len()) {
        return Err(Error::data(
            &lp,
            format!("label {bad} out of range 0..{}", classes.len()),
        ));
    }
    let split = if prefix == "train" { "train" } else { "test" };
    Ok(InMemoryDataset {
        name: format!("{name} {split} ({} images)", images.len()),
        images,
        labels,
        masks: None,
        class_names: classes.to_vec(),
    })
}
