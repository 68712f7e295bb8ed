//! The collective tensor operations methods and models call: across the ranks of the world in
//! scope ([`super::scope`]), the identity in a single process.

use super::{current, rank_and_size};
use crate::error::Result;
use crate::kernels::{self, World};
use candle_core::backprop::GradStore;
use candle_core::Tensor;

/// The element-wise sum of `t` over ranks; its backward sums the gradients over ranks.
pub fn all_reduce_sum(t: &Tensor) -> Result<Tensor> {
    match current() {
        Some(w) => kernels::all_reduce(t, &w),
        None => Ok(t.clone()),
    }
}

/// Every rank's `t` concatenated along axis 0 in rank order; its backward gives each rank the
/// sum over ranks of the gradient of its rows.
pub fn all_gather(t: &Tensor) -> Result<Tensor> {
    match current() {
        Some(w) => kernels::all_gather(t, &w),
        None => Ok(t.clone()),
    }
}

/// [`all_gather`] of `t` without a gradient: keys, queue entries, ShuffleBN's images.
pub fn gather_detached(t: &Tensor) -> Result<Tensor> {
    all_gather(&t.detach())
}

/// The mean over ranks of a value that is only reported (a loss, an accuracy), detached.
pub fn mean_over_ranks(t: &Tensor) -> Result<Tensor> {
    let (_, size) = rank_and_size();
    if size == 1 {
        return Ok(t.detach());
    }
    Ok((all_reduce_sum(&t.detach())? / size as f64)?)
}

/// Statistics of `x` per channel over the global batch, as SyncBN takes them.
pub struct Moments {
    /// `(c,)`, over every rank's rows.
    pub mean: Tensor,
    /// `x` minus the global mean, this rank's rows.
    pub centred: Tensor,
    /// `(c,)`, biased (divided by the number of values per channel over all ranks).
    pub var: Tensor,
}

/// Mean and biased variance per channel of `(n, c, inner)` data over every rank's rows, in two
/// passes (the mean first, then the squares about it, as a single-process BatchNorm sums them),
/// differentiable through both all-reduces.
pub fn global_moments(x: &Tensor) -> Result<Moments> {
    let (n, c, inner) = x.dims3()?;
    let (_, size) = rank_and_size();
    let count = n * inner * size;
    let sum = x.sum(2)?.sum(0)?;
    let mean = (all_reduce_sum(&sum)? / count as f64)?;
    let centred = x.broadcast_sub(&mean.reshape((1, c, 1))?)?;
    let squares = centred.sqr()?.sum(2)?.sum(0)?;
    let var = (all_reduce_sum(&squares)? / count as f64)?;
    Ok(Moments { mean, centred, var })
}

/// Replaces the gradient of each of `vars` that has one by its mean over the ranks of `world`,
/// in one all-reduce of all of them (every rank has the same tensors with a gradient: the
/// same graph).
pub fn average_gradients<'a>(
    world: &World,
    vars: impl Iterator<Item = &'a Tensor>,
    grads: &mut GradStore,
) -> Result<()> {
    let mut flat = Vec::new();
    let mut placed = Vec::new();
    for t in vars {
        if let Some(g) = grads.get(t) {
            let v = g.flatten_all()?.to_vec1::<f32>()?;
            placed.push((t.clone(), g.shape().clone(), v.len()));
            flat.extend(v);
        }
    }
    world.all_reduce_sum(&mut flat)?;
    let scale = 1.0 / world.size() as f32;
    flat.iter_mut().for_each(|v| *v *= scale);
    let mut at = 0;
    for (t, shape, len) in placed {
        let g = Tensor::from_slice(&flat[at..at + len], shape, t.device())?;
        grads.insert(&t, g);
        at += len;
    }
    Ok(())
}
