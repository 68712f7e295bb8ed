//! The linear probe (docs/recipes.md §5): a linear classifier on frozen, evaluation-mode backbone
//! features, trained with SGD (momentum 0.9) and scored top-1/top-5 on the test split.
//!
//! The papers train it on augmented crops for 90-100 epochs; on small data sslab extracts the
//! features once (no augmentation, as the kNN monitor does) and trains on the cache, so a probe
//! of a few thousand images takes seconds. Weight decay and schedule shape come from each
//! method's protocol ([`LinearProbeSettings::for_method`]); epochs, feature scale and rate are
//! scaled down ([`LinearProbeSettings::scaled_down`]).

use super::knn::map_batches;
use crate::augment::TwoViewRecipe;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::methods::{Method, MethodKind};
use crate::models::{Init, ParamBuilder, ParamKind};
use crate::objectives::cross_entropy;
use crate::optim::{GroupSettings, OptimKind, Optimizer};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// How the learning rate falls over the probe's epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeSchedule {
    /// Half-cosine to 0, per epoch (MoCo v3, Barlow Twins).
    Cosine,
    /// ×0.1 at 60% and 80% of the epochs (MoCo v1/v2, DenseCL: epochs 60 and 80 of 100).
    Steps,
}

/// How the probe is trained.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearProbeSettings {
    pub epochs: usize,
    /// Mini-batch of cached features.
    pub batch: usize,
    /// Learning rate at this batch (already scaled where the protocol scales it).
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: ProbeSchedule,
    /// Images per forward pass when extracting features.
    pub feature_batch: usize,
    /// Seed of the classifier's initial weights and of the batch order.
    pub seed: u64,
    /// Standardise each feature with the training split's mean and standard deviation first
    /// (MAE's non-affine BatchNorm before the probe): the papers' learning rates assume their
    /// own ResNet-50 feature scale, and small backbones at init are far from it.
    pub standardize: bool,
}

impl LinearProbeSettings {
    /// The paper protocol of docs/recipes.md §5 for `method` (`vit` for a ViT backbone), at batch
    /// 256: MoCo v1/v2 and DenseCL lr 30, wd 0, steps, 100 epochs; MoCo v3 lr 0.1 (ResNet) or
    /// 3 (ViT) × B/256, wd 0, cosine, 90 epochs; Barlow Twins lr 0.3, wd 1e-6, cosine, 100
    /// epochs. Raw features, as the papers.
    ///
    /// ```
    /// use sslab::eval::{LinearProbeSettings, ProbeSchedule};
    /// use sslab::methods::MethodKind;
    /// let s = LinearProbeSettings::for_method(MethodKind::BarlowTwins, false);
    /// assert_eq!((s.lr, s.weight_decay, s.schedule), (0.3, 1e-6, ProbeSchedule::Cosine));
    /// assert!(!s.standardize);
    /// ```
    pub fn for_method(method: MethodKind, vit: bool) -> Self {
        let p = (method.info().probe)(vit);
        let (lr, weight_decay, epochs) = (p.lr, p.weight_decay, p.epochs);
        let schedule = if p.cosine {
            ProbeSchedule::Cosine
        } else {
            ProbeSchedule::Steps
        };
        LinearProbeSettings {
            epochs,
            batch: 256,
            lr,
            weight_decay,
            schedule,
            feature_batch: 256,
            seed: 0,
            standardize: false,
        }
    }

    /// The protocol scaled down for small backbones and data (what `Run::linear_probe` uses):
    /// `epochs` epochs, features standardised, and MoCo v3's ResNet rate 0.1 for every method,
    /// since the papers' rates (0.1 to 30) each fit their own feature scale, not a
    /// standardised one. Weight decay and schedule shape stay the method's.
    pub fn scaled_down(self, epochs: usize) -> Self {
        LinearProbeSettings {
            epochs,
            lr: 0.1,
            standardize: true,
            ..self
        }
    }

    /// The rate during `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let e = self.epochs.max(1) as f64;
        match self.schedule {
            ProbeSchedule::Cosine => {
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / e).cos())
            }
            ProbeSchedule::Steps => {
                let drops = [0.6, 0.8]
                    .iter()
                    .filter(|&&m| epoch as f64 >= m * e)
                    .count();
                self.lr * 0.1f64.powi(drops as i32)
            }
        }
    }
}

/// Accuracy of a linear probe, in the format of [`super::KnnResult`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearProbeResult {
    /// Top-1 accuracy on the test split, in percent.
    pub top1: f64,
    /// Top-5 accuracy on the test split, in percent.
    pub top5: f64,
    /// Top-1 accuracy on the (cached) training features, in percent.
    pub train_top1: f64,
    /// Mean cross-entropy of the last epoch.
    pub train_loss: f64,
    pub settings: LinearProbeSettings,
    /// Number of training and test samples.
    pub train: usize,
    pub test: usize,
}

/// Trains the probe on `(n, d)` training features and scores it on the test features.
///
/// ```
/// use sslab::candle::{Device, Tensor};
/// use sslab::eval::{linear_probe_on_features, LinearProbeSettings};
/// use sslab::methods::MethodKind;
/// // Two classes told apart by the sign of the first coordinate.
/// let x = Tensor::new(&[[1f32, 0.3], [2.0, -0.5], [-1.0, 0.2], [-2.0, -0.1]], &Device::Cpu)?;
/// let y = [0usize, 0, 1, 1];
/// let s = LinearProbeSettings::for_method(MethodKind::BarlowTwins, false).scaled_down(30);
/// let r = linear_probe_on_features((&x, &y), (&x, &y), 2, s)?;
/// assert_eq!(r.top1, 100.0);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn linear_probe_on_features(
    (xtr, ytr): (&Tensor, &[usize]),
    (xte, yte): (&Tensor, &[usize]),
    classes: usize,
    s: LinearProbeSettings,
) -> Result<LinearProbeResult> {
    if s.epochs == 0 || s.batch == 0 || !(s.lr > 0.0 && s.lr.is_finite()) {
        return Err(Error::config(
            "linear probe",
            "needs at least one epoch, a batch and a positive learning rate",
        ));
    }
    let (n, d) = xtr.dims2()?;
    if ytr.len() != n || xte.dim(0)? != yte.len() || xte.dim(1)? != d {
        return Err(Error::Shape(format!(
            "linear probe: train {:?} with {} labels, test {:?} with {} labels",
            xtr.dims(),
            ytr.len(),
            xte.dims(),
            yte.len()
        )));
    }
    if let Some(&bad) = ytr.iter().chain(yte).find(|&&y| y >= classes) {
        return Err(Error::Invalid(format!(
            "linear probe: label {bad} but only {classes} classes"
        )));
    }
    let (xtr, xte) = if s.standardize {
        standardize(xtr, xte)?
    } else {
        (xtr.clone(), xte.clone())
    };
    let (xtr, xte) = (&xtr, &xte);
    let dev = xtr.device().clone();
    // The protocols' fc: weights ~ N(0, 0.01²), bias 0.
    let mut b = ParamBuilder::new(s.seed, &dev);
    let w = b.var(
        "probe.weight",
        &[classes, d],
        Init::Normal { std: 0.01 },
        ParamKind::Weight,
    )?;
    let bias = b.var("probe.bias", &[classes], Init::Const(0.0), ParamKind::Bias)?;
    let store = b.finish();
    let group = GroupSettings {
        lr_mult: 1.0,
        weight_decay: s.weight_decay,
        adapt: false,
    };
    // PyTorch's SGD applies the weight decay to the bias too.
    let mut opt = Optimizer::new(
        OptimKind::Sgd {
            momentum: 0.9,
            nesterov: false,
        },
        &store,
        group,
        group,
    )?;
    let logits = |x: &Tensor| -> Result<Tensor> {
        Ok(x.matmul(&w.as_tensor().t()?)?
            .broadcast_add(bias.as_tensor())?)
    };
    let labels = |y: &[usize]| -> Result<Tensor> {
        let v: Vec<u32> = y.iter().map(|&c| c as u32).collect();
        Ok(Tensor::from_vec(v, y.len(), &dev)?)
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut train_loss = f64::NAN;
    for epoch in 0..s.epochs {
        order.shuffle(&mut rng);
        let lr = s.lr_at(epoch);
        let (mut sum, mut count) = (0.0, 0usize);
        for chunk in order.chunks(s.batch) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &dev)?;
            let x = xtr.index_select(&idx, 0)?;
            let y: Vec<usize> = chunk.iter().map(|&i| ytr[i as usize]).collect();
            let loss = cross_entropy(&logits(&x)?, &labels(&y)?)?;
            let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !l.is_finite() {
                return Err(Error::Invalid(format!(
                    "linear probe diverged at epoch {epoch} (loss {l}); lower its learning rate ({})",
                    s.lr
                )));
            }
            sum += l * chunk.len() as f64;
            count += chunk.len();
            opt.step(&loss.backward()?, lr)?;
        }
        train_loss = sum / count.max(1) as f64;
    }
    let score = |x: &Tensor, y: &[usize]| -> Result<(f64, f64)> {
        let ranked = logits(x)?.arg_sort_last_dim(false)?.to_vec2::<u32>()?;
        let (mut t1, mut t5) = (0usize, 0usize);
        for (r, &c) in ranked.iter().zip(y) {
            t1 += usize::from(r[0] as usize == c);
            t5 += usize::from(r.iter().take(5).any(|&p| p as usize == c));
        }
        let m = y.len().max(1) as f64;
        Ok((100.0 * t1 as f64 / m, 100.0 * t5 as f64 / m))
    };
    let (top1, top5) = score(xte, yte)?;
    let (train_top1, _) = score(xtr, ytr)?;
    Ok(LinearProbeResult {
        top1,
        top5,
        train_top1,
        train_loss,
        settings: s,
        train: n,
        test: yte.len(),
    })
}

/// Extracts the evaluation-mode backbone features of both splits once (frozen backbone) and
/// trains and scores the probe on them.
pub fn linear_probe(
    method: &dyn Method,
    (train, test): (&dyn Dataset, &dyn Dataset),
    recipe: &TwoViewRecipe,
    settings: LinearProbeSettings,
    device: &Device,
) -> Result<LinearProbeResult> {
    let feats = |data: &dyn Dataset| -> Result<(Tensor, Vec<usize>)> {
        let chunks = map_batches(data, recipe, settings.feature_batch, device, |x| {
            method.features(x)
        })?;
        let labels = (0..data.len()).map(|i| data.label(i)).collect();
        Ok((Tensor::cat(&chunks, 0)?, labels))
    };
    let (xtr, ytr) = feats(train)?;
    let (xte, yte) = feats(test)?;
    let classes = train.num_classes().max(test.num_classes());
    linear_probe_on_features((&xtr, &ytr), (&xte, &yte), classes, settings)
}

/// Both feature sets standardised per column with the training set's mean and (biased)
/// standard deviation, so a probe trains at one learning rate whatever the feature scale.
pub(super) fn standardize(train: &Tensor, test: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean = train.mean_keepdim(0)?;
    let std = train
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(0)?
        .sqrt()?
        .clamp(1e-6, f64::MAX)?;
    let z = |x: &Tensor| -> Result<Tensor> { Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?) };
    Ok((z(train)?, z(test)?))
}

/// `top-1 40.10% (top-5 88.00%, train 52.30%, 30 epochs at lr 0.1)`.
impl std::fmt::Display for LinearProbeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "top-1 {:.2}% (top-5 {:.2}%, train {:.2}%, {} epochs at lr {})",
            self.top1, self.top5, self.train_top1, self.settings.epochs, self.settings.lr
        )
    }
}
