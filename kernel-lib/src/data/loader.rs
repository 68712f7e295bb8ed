//! The two-view loader: shuffled epochs from a seed, `drop_last`, and the next batch (with its
//! augmentations) prepared on a background thread while the current one trains.
//!
//! Every random choice is a pure function of `(seed, step, slot)`, so batch `s` is the same
//! whichever thread makes it and whenever the loader is restarted at `s` (exact resume).

use super::Dataset;
use crate::augment::{CropBox, TwoViewRecipe};
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One training batch on the host: two views in NCHW order plus where each view came from.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Global step this batch belongs to.
    pub step: usize,
    /// Dataset indices of the samples.
    pub indices: Vec<usize>,
    /// Labels (for monitoring only; SSL never trains on them).
    pub labels: Vec<usize>,
    /// View A, `n × 3 × size × size`.
    pub a: Vec<f32>,
    /// View B, same shape.
    pub b: Vec<f32>,
    /// Crop geometry of view A per sample.
    pub crops_a: Vec<CropBox>,
    /// Crop geometry of view B per sample.
    pub crops_b: Vec<CropBox>,
    /// View side in pixels.
    pub size: usize,
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 finaliser over a combined word: decorrelates nearby (seed, step) pairs.
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Builds batch `step` deterministically.
pub fn make_batch(
    data: &dyn Dataset,
    recipe: &TwoViewRecipe,
    batch: usize,
    seed: u64,
    step: usize,
) -> Batch {
    make_shard(data, recipe, batch, seed, step, Shard::WHOLE)
}

/// Which consecutive share of each global batch a loader makes: rank `rank` of `size` takes
/// slots `rank·b .. (rank+1)·b` with `b = batch / size`, the same images and augmentations
/// those slots get in the whole batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub size: usize,
}

impl Shard {
    /// The whole batch (one process).
    pub const WHOLE: Shard = Shard { rank: 0, size: 1 };
}

/// [`make_batch`]'s `shard` of the global batch of `batch` samples (`batch` a multiple of the
/// shard count).
pub fn make_shard(
    data: &dyn Dataset,
    recipe: &TwoViewRecipe,
    batch: usize,
    seed: u64,
    step: usize,
    shard: Shard,
) -> Batch {
    let per_epoch = data.len() / batch;
    let epoch = step / per_epoch;
    let mut perm: Vec<usize> = (0..data.len()).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(seed, epoch as u64)));
    let local = batch / shard.size.max(1);
    let first = shard.rank * local;
    let start = (step % per_epoch) * batch + first;
    let indices = perm[start..start + local].to_vec();
    let views: Vec<_> = indices
        .par_iter()
        .enumerate()
        .map(|(i_local, &i)| {
            let slot = first + i_local;
            let mut rng =
                ChaCha8Rng::seed_from_u64(mix(mix(seed ^ 0xA5A5, step as u64), slot as u64));
            let img = data.image(i);
            (recipe.a.apply(img, &mut rng), recipe.b.apply(img, &mut rng))
        })
        .collect();
    let mut out = Batch {
        step,
        labels: indices.iter().map(|&i| data.label(i)).collect(),
        indices,
        a: Vec::with_capacity(local * 3 * recipe.a.size * recipe.a.size),
        b: Vec::with_capacity(local * 3 * recipe.b.size * recipe.b.size),
        crops_a: Vec::with_capacity(local),
        crops_b: Vec::with_capacity(local),
        size: recipe.a.size,
    };
    for (va, vb) in views {
        out.a.extend_from_slice(&va.chw);
        out.b.extend_from_slice(&vb.chw);
        out.crops_a.push(va.crop);
        out.crops_b.push(vb.crop);
    }
    out
}

/// A background producer of [`Batch`]es for steps `start, start+1, ...`.
pub struct Loader {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
    next: usize,
    steps_per_epoch: usize,
}

impl Loader {
    /// Starts producing batches from step `start`. Errors when the dataset holds fewer
    /// samples than one batch (drop_last would leave nothing) or the recipe's views differ in
    /// size.
    pub fn new(
        data: Arc<dyn Dataset>,
        recipe: TwoViewRecipe,
        batch: usize,
        seed: u64,
        start: usize,
    ) -> Result<Self> {
        Self::sharded(data, recipe, batch, seed, start, Shard::WHOLE)
    }

    /// A loader of this rank's `shard` of every global batch of `batch` samples.
    pub fn sharded(
        data: Arc<dyn Dataset>,
        recipe: TwoViewRecipe,
        batch: usize,
        seed: u64,
        start: usize,
        shard: Shard,
    ) -> Result<Self> {
        if shard.size == 0 || !batch.is_multiple_of(shard.size) || shard.rank >= shard.size {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "the global batch of {batch} does not divide among {} ranks",
                    shard.size
                ),
            ));
        }
        if batch == 0 || data.len() < batch {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "{batch} does not fit the dataset {} ({} samples): need 1 ≤ batch ≤ dataset size",
                    data.name(),
                    data.len()
                ),
            ));
        }
        if recipe.a.size != recipe.b.size {
            return Err(Error::config(
                "augment.size",
                "both views must have the same size",
            ));
        }
        let steps_per_epoch = data.len() / batch;
        let (tx, rx) = sync_channel(2);
        let handle = std::thread::Builder::new()
            .name("sslab-loader".into())
            .spawn(move || {
                let mut step = start;
                loop {
                    let b = make_shard(data.as_ref(), &recipe, batch, seed, step, shard);
                    if tx.send(b).is_err() {
                        return; // the loader was dropped
                    }
                    step += 1;
                }
            })?;
        Ok(Loader {
            rx: Some(rx),
            handle: Some(handle),
            next: start,
            steps_per_epoch,
        })
    }

    /// The next batch (blocks until the background thread has it ready).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let b = self
            .rx
            .as_ref()
            .and_then(|rx| rx.recv().ok())
            .ok_or_else(|| Error::Invalid("the loader thread stopped unexpectedly".into()))?;
        self.next += 1;
        Ok(b)
    }

    /// The step of the batch `next_batch` will return.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Batches per epoch (drop_last).
    pub fn steps_per_epoch(&self) -> usize {
        self.steps_per_epoch
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it exits.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
