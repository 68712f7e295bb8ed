//! The dense linear probe: DenseCL's claim is about dense prediction, so sslab measures it
//! directly. A per-location linear classifier on the frozen backbone's last feature map,
//! trained against the dataset's per-pixel masks, scored by mIoU and pixel accuracy.
//!
//! Masks are taken down to the feature grid by a majority vote within each cell (the grid is
//! what the backbone resolves; 4×4 for a 32-px CIFAR-stem ResNet), so scores are per cell.

use super::knn::map_batches;
use crate::augment::TwoViewRecipe;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::methods::Method;
use crate::models::{Linear, ParamBuilder};
use crate::objectives::cross_entropy;
use crate::optim::{GroupSettings, OptimKind, Optimizer};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// How the probe is trained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DenseProbeSettings {
    /// Full-batch AdamW steps on the cached training features.
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Images per forward pass when extracting feature maps.
    pub batch: usize,
    /// Seed of the classifier's initial weights.
    pub seed: u64,
}

impl Default for DenseProbeSettings {
    fn default() -> Self {
        DenseProbeSettings {
            steps: 300,
            lr: 0.01,
            weight_decay: 1e-4,
            batch: 256,
            seed: 0,
        }
    }
}

/// Scores of a dense probe on the test split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenseProbeResult {
    /// Mean intersection-over-union over the classes present in the test masks, in percent.
    pub miou: f64,
    /// Fraction of grid cells labelled correctly, in percent.
    pub pixel_acc: f64,
    /// IoU per class (index = mask value: 0 background, 1 + label for objects), in percent;
    /// `None` for classes absent from both the test masks and the predictions.
    pub per_class_iou: Vec<Option<f64>>,
    /// The feature grid `(h, w)` the masks were reduced to.
    pub grid: (usize, usize),
    /// Final training cross-entropy of the probe.
    pub train_loss: f64,
}

/// Majority mask value in each of the `gh × gw` cells of a `size × size` mask.
pub fn mask_to_grid(mask: &[u8], size: usize, gh: usize, gw: usize, classes: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(gh * gw);
    let mut counts = vec![0usize; classes];
    for cy in 0..gh {
        for cx in 0..gw {
            counts.iter_mut().for_each(|c| *c = 0);
            let (y0, y1) = (
                cy * size / gh,
                ((cy + 1) * size / gh).max(cy * size / gh + 1),
            );
            let (x0, x1) = (
                cx * size / gw,
                ((cx + 1) * size / gw).max(cx * size / gw + 1),
            );
            for y in y0..y1.min(size) {
                for x in x0..x1.min(size) {
                    let v = mask[y * size + x] as usize;
                    if v < classes {
                        counts[v] += 1;
                    }
                }
            }
            // Ties go to the lower value (background first): a deterministic rule.
            let best = (0..classes).max_by_key(|&c| (counts[c], usize::MAX - c));
            out.push(best.unwrap_or(0) as u32);
        }
    }
    out
}

/// Rows `(n·h·w, c)` of feature vectors and their grid labels for a whole split.
fn features_and_labels(
    method: &dyn Method,
    data: &dyn Dataset,
    recipe: &TwoViewRecipe,
    batch: usize,
    device: &Device,
) -> Result<(Tensor, Vec<u32>, (usize, usize))> {
    let classes = data.num_classes() + 1;
    let maps = map_batches(data, recipe, batch, device, |x| method.feature_map(x))?;
    let (_, c, gh, gw) = maps[0].dims4()?;
    let rows: Vec<Tensor> = maps
        .iter()
        .map(|m| -> Result<Tensor> {
            let n = m.dim(0)?;
            Ok(m.permute((0, 2, 3, 1))?.reshape((n * gh * gw, c))?)
        })
        .collect::<Result<_>>()?;
    let mut labels = Vec::with_capacity(data.len() * gh * gw);
    for i in 0..data.len() {
        let img = data.image(i);
        let mask = data.mask(i).ok_or_else(|| {
            Error::Invalid(format!(
                "dense probe needs per-pixel masks; {} has none (the built-in shapes do)",
                data.name()
            ))
        })?;
        if img.width != img.height || mask.len() != img.width * img.height {
            return Err(Error::Shape(format!(
                "dense probe needs square images with full masks; image {i} of {} is {}×{} with a mask of {}",
                data.name(),
                img.width,
                img.height,
                mask.len()
            )));
        }
        labels.extend(mask_to_grid(mask, img.width, gh, gw, classes));
    }
    Ok((Tensor::cat(&rows, 0)?, labels, (gh, gw)))
}

/// Trains the probe on the train split's feature maps (evaluation-mode backbone, frozen) and
/// scores it on the test split.
pub fn dense_probe(
    method: &dyn Method,
    (train, test): (&dyn Dataset, &dyn Dataset),
    recipe: &TwoViewRecipe,
    settings: DenseProbeSettings,
    device: &Device,
) -> Result<DenseProbeResult> {
    if settings.steps == 0 || settings.lr.is_nan() || settings.lr <= 0.0 {
        return Err(Error::config(
            "eval.dense_probe",
            "needs at least one step and a positive learning rate",
        ));
    }
    let classes = train.num_classes() + 1;
    let (xtr, ytr, grid) = features_and_labels(method, train, recipe, settings.batch, device)?;
    let (xte, yte, _) = features_and_labels(method, test, recipe, settings.batch, device)?;
    let (xtr, xte) = super::linear_probe::standardize(&xtr, &xte)?;
    let c = xtr.dim(1)?;
    let mut b = ParamBuilder::new(settings.seed, device);
    let head = Linear::new(&mut b, "probe", c, classes, true)?;
    let store = b.finish();
    let group = GroupSettings {
        lr_mult: settings.lr,
        weight_decay: settings.weight_decay,
        adapt: true,
    };
    let mut opt = Optimizer::new(
        OptimKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        &store,
        group,
        GroupSettings {
            weight_decay: 0.0,
            ..group
        },
    )?;
    let targets = Tensor::from_vec(ytr, xtr.dim(0)?, device)?;
    let mut train_loss = f64::NAN;
    for s in 0..settings.steps {
        let loss = cross_entropy(&head.forward(&xtr)?, &targets)?;
        train_loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = loss.backward()?;
        // Cosine decay over the probe's steps.
        let factor = 0.5 * (1.0 + (std::f64::consts::PI * s as f64 / settings.steps as f64).cos());
        opt.step(&grads, factor)?;
    }
    let pred: Vec<u32> = head
        .forward(&xte)?
        .argmax(1)?
        .to_dtype(DType::U32)?
        .to_vec1()?;
    let mut inter = vec![0usize; classes];
    let mut union = vec![0usize; classes];
    let mut present = vec![false; classes];
    let mut correct = 0usize;
    for (&p, &t) in pred.iter().zip(&yte) {
        let (p, t) = (p as usize, t as usize);
        present[t] = true;
        if p == t {
            correct += 1;
            inter[t] += 1;
            union[t] += 1;
        } else {
            union[t] += 1;
            union[p] += 1;
        }
    }
    let per_class_iou: Vec<Option<f64>> = (0..classes)
        .map(|k| (union[k] > 0).then(|| 100.0 * inter[k] as f64 / union[k] as f64))
        .collect();
    let scored: Vec<f64> = (0..classes)
        .filter(|&k| present[k])
        .filter_map(|k| per_class_iou[k])
        .collect();
    Ok(DenseProbeResult {
        miou: scored.iter().sum::<f64>() / scored.len().max(1) as f64,
        pixel_acc: 100.0 * correct as f64 / yte.len().max(1) as f64,
        per_class_iou,
        grid,
        train_loss,
    })
}

/// `mIoU 41.20%, pixel accuracy 80.15% (4x4 grid)`.
impl std::fmt::Display for DenseProbeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mIoU {:.2}%, pixel accuracy {:.2}% ({}x{} grid)",
            self.miou, self.pixel_acc, self.grid.0, self.grid.1
        )
    }
}
