//! Weighted kNN (InstDisc style, as in the MoCo CIFAR demo and lightly): L2-normalise the
//! features, take the k most similar bank features, weight each by `exp(sim/t)`, sum the weights
//! per class, predict the argmax (docs/recipes.md §5).

use crate::augment::{normalize, resized_crop, Image, Interpolation, TwoViewRecipe};
use crate::data::Dataset;
use crate::dist::World;
use crate::error::{Error, Result};
use crate::methods::Method;
use crate::objectives::l2_normalize;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Accuracy of a kNN evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnnResult {
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent (of the weighted class scores).
    pub top5: f64,
    pub k: usize,
    pub t: f64,
    /// Number of bank (train) and query (test) samples.
    pub bank: usize,
    pub queries: usize,
}

/// Evaluation-mode features of a whole dataset, L2-normalised, as an `(n, d)` tensor. Images
/// are resized to the recipe's view size and normalised with its constants (no augmentation).
pub fn extract_features(
    method: &dyn Method,
    data: &dyn Dataset,
    recipe: &TwoViewRecipe,
    batch: usize,
    device: &Device,
) -> Result<Tensor> {
    extract_features_across(method, data, recipe, batch, device, None)
}

/// [`extract_features`] shared out among the ranks of `world`: each rank extracts a
/// consecutive `1/size` of the dataset and the shares are all-gathered, so every rank ends
/// with all features in dataset order (evaluation-mode features do not depend on what else
/// is in the batch). `None`, or a world of one, extracts everything here.
pub fn extract_features_across(
    method: &dyn Method,
    data: &dyn Dataset,
    recipe: &TwoViewRecipe,
    batch: usize,
    device: &Device,
    world: Option<&World>,
) -> Result<Tensor> {
    let features = |rows: &[usize]| -> Result<Tensor> {
        let chunks = map_indices(data, rows, recipe, batch, device, |x| {
            l2_normalize(&method.features(x)?, 1)
        })?;
        Ok(Tensor::cat(&chunks, 0)?)
    };
    let n = data.len();
    let Some(w) = world.filter(|w| w.size() > 1 && n > 0) else {
        return features(&(0..n).collect::<Vec<_>>());
    };
    // Equal shares for the all-gather: the last ranks repeat the last image to fill theirs,
    // and those rows are dropped after it.
    let share = n.div_ceil(w.size());
    let rows: Vec<usize> = (0..share)
        .map(|i| (w.rank() * share + i).min(n - 1))
        .collect();
    let mine = features(&rows)?;
    let d = mine.dim(1)?;
    let all = w.all_gather(
        &mine
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?,
    )?;
    let all = Tensor::from_vec(all, (share * w.size(), d), &Device::Cpu)?;
    Ok(all.narrow(0, 0, n)?.to_device(device)?)
}

/// One image as the evaluations see it: the whole image resized to the recipe's view size and
/// normalised with its constants (no augmentation), `(3, size, size)` values.
pub fn eval_input(img: &Image, recipe: &TwoViewRecipe) -> Vec<f32> {
    let size = recipe.a.size;
    let mut fi = resized_crop(
        img,
        (0, 0, img.width, img.height),
        size,
        size,
        Interpolation::Bilinear,
    );
    normalize(&mut fi, recipe.a.mean, recipe.a.std);
    fi.to_chw()
}

/// Runs `f` over a whole dataset in batches of evaluation inputs (resized to the recipe's view
/// size, normalised with its constants, no augmentation) and returns its detached outputs.
pub fn map_batches(
    data: &dyn Dataset,
    recipe: &TwoViewRecipe,
    batch: usize,
    device: &Device,
    f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let all: Vec<usize> = (0..data.len()).collect();
    map_indices(data, &all, recipe, batch, device, f)
}

/// [`map_batches`] over the images at `rows`, in that order.
fn map_indices(
    data: &dyn Dataset,
    rows: &[usize],
    recipe: &TwoViewRecipe,
    batch: usize,
    device: &Device,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let size = recipe.a.size;
    let mut chunks = Vec::new();
    for part in rows.chunks(batch.max(1)) {
        let mut buf = Vec::with_capacity(part.len() * 3 * size * size);
        for &i in part {
            buf.extend(eval_input(data.image(i), recipe));
        }
        let x = Tensor::from_vec(buf, (part.len(), 3, size, size), device)?;
        // Detach: the weights are variables, so without it every chunk would keep its whole
        // forward graph (all activations) alive until the end of the pass.
        chunks.push(f(&x)?.detach());
    }
    if chunks.is_empty() {
        return Err(Error::Invalid(format!("dataset {} is empty", data.name())));
    }
    Ok(chunks)
}

/// Predicts class scores of every query from the bank; returns per query the classes ranked by
/// weighted vote.
pub fn knn_predict(
    bank: &Tensor,
    bank_labels: &[usize],
    queries: &Tensor,
    classes: usize,
    k: usize,
    t: f64,
) -> Result<Vec<Vec<usize>>> {
    let n = bank.dim(0)?;
    if n != bank_labels.len() {
        return Err(Error::Shape(format!(
            "{n} bank features but {} labels",
            bank_labels.len()
        )));
    }
    let k = k.min(n);
    let mut out = Vec::with_capacity(queries.dim(0)?);
    let bank_t = bank.t()?;
    let q_total = queries.dim(0)?;
    let chunk = 256;
    let mut s = 0;
    while s < q_total {
        let e = (s + chunk).min(q_total);
        let sim = queries
            .narrow(0, s, e - s)?
            .matmul(&bank_t)?
            .to_vec2::<f32>()?;
        for row in sim {
            let mut idx: Vec<usize> = (0..n).collect();
            if k < n {
                idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            }
            let mut score = vec![0f64; classes];
            for &j in &idx[..k] {
                score[bank_labels[j]] += (row[j] as f64 / t).exp();
            }
            let mut ranked: Vec<usize> = (0..classes).collect();
            ranked.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
            out.push(ranked);
        }
        s = e;
    }
    Ok(out)
}

/// Neighbours, temperature and feature-extraction batch of a kNN evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnSettings {
    pub k: usize,
    pub t: f64,
    pub batch: usize,
}

/// Scores `test` against a bank built from `train`.
pub fn knn_eval(
    method: &dyn Method,
    data: (&dyn Dataset, &dyn Dataset),
    recipe: &TwoViewRecipe,
    settings: KnnSettings,
    device: &Device,
) -> Result<KnnResult> {
    knn_eval_across(method, data, recipe, settings, device, None)
}

/// [`knn_eval`] with the feature extraction shared out among the ranks of `world`
/// ([`extract_features_across`]); every rank gets the result of one process.
pub fn knn_eval_across(
    method: &dyn Method,
    (train, test): (&dyn Dataset, &dyn Dataset),
    recipe: &TwoViewRecipe,
    KnnSettings { k, t, batch }: KnnSettings,
    device: &Device,
    world: Option<&World>,
) -> Result<KnnResult> {
    let bank = extract_features_across(method, train, recipe, batch, device, world)?;
    let q = extract_features_across(method, test, recipe, batch, device, world)?;
    let labels: Vec<usize> = (0..train.len()).map(|i| train.label(i)).collect();
    let classes = train.num_classes().max(test.num_classes());
    let ranked = knn_predict(&bank, &labels, &q, classes, k, t)?;
    let (mut top1, mut top5) = (0usize, 0usize);
    for (i, r) in ranked.iter().enumerate() {
        let y = test.label(i);
        top1 += usize::from(r[0] == y);
        top5 += usize::from(r.iter().take(5).any(|&c| c == y));
    }
    let m = test.len() as f64;
    Ok(KnnResult {
        top1: 100.0 * top1 as f64 / m,
        top5: 100.0 * top5 as f64 / m,
        k,
        t,
        bank: train.len(),
        queries: test.len(),
    })
}

/// `61.70% (top-5 92.10%, k=200, t=0.1)`: the front ends print it after their own label.
impl std::fmt::Display for KnnResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2}% (top-5 {:.2}%, k={}, t={})",
            self.top1, self.top5, self.k, self.t
        )
    }
}
