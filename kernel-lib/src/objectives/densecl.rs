//! DenseCL's correspondence and losses (Wang et al. 2021; docs/recipes.md §4.2). Pure functions, so
//! diagnostics (similarity maps, correspondence accuracy) reuse exactly what training uses.

use super::info_nce::{cross_entropy_first, info_nce_queue, l2_normalize};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

fn check_grid(name: &str, t: &Tensor) -> Result<(usize, usize, usize)> {
    t.dims3().map_err(|_| {
        Error::Shape(format!(
            "{name} must be (n, channels, locations), got {:?}",
            t.dims()
        ))
    })
}

/// For every location s of view 1, the location `j*(s) = argmax_j cos(q_b[:, s], k_b[:, j])` of
/// view 2, from the two views' **backbone** feature maps `(n, C, S²)` (flattened grids; not the
/// projected features). Returns `(n, S²)` u32 indices. Not differentiable, as in the official
/// code.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::objectives::dense_correspondence;
/// // Two locations whose features are swapped between the views.
/// let q = Tensor::new(&[[[1f32, 0.0], [0.0, 1.0]]], &Device::Cpu)?;
/// let k = Tensor::new(&[[[0f32, 1.0], [1.0, 0.0]]], &Device::Cpu)?;
/// let j = dense_correspondence(&q, &k)?;
/// assert_eq!(j.to_vec2::<u32>()?, vec![vec![1, 0]]);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn dense_correspondence(q_b: &Tensor, k_b: &Tensor) -> Result<Tensor> {
    let (n, c, l) = check_grid("q_b", q_b)?;
    if k_b.dims() != [n, c, l] {
        return Err(Error::Shape(format!(
            "dense_correspondence: q_b {:?} and k_b {:?} differ",
            q_b.dims(),
            k_b.dims()
        )));
    }
    let sim = similarity_matrix(q_b, k_b)?;
    Ok(sim.argmax(2)?.to_dtype(DType::U32)?)
}

/// The `(n, S², S²)` cosine similarities between every location of view 1 (rows) and of view 2
/// (columns): what the correspondence takes the argmax of, and what similarity maps draw.
pub fn similarity_matrix(q_b: &Tensor, k_b: &Tensor) -> Result<Tensor> {
    let q = l2_normalize(&q_b.detach(), 1)?;
    let k = l2_normalize(&k_b.detach(), 1)?;
    Ok(q.transpose(1, 2)?.contiguous()?.matmul(&k)?)
}

/// Dense InfoNCE over all `n·S²` locations: the positive of query location s is the key grid at
/// `correspondence[s]`, the negatives are `dense_queue` `(D, K)` (pooled dense keys of earlier
/// batches). Grids are raw `(n, D, S²)` dense-head outputs, normalised per location here.
pub fn dense_info_nce(
    q_grid: &Tensor,
    k_grid: &Tensor,
    correspondence: &Tensor,
    dense_queue: &Tensor,
    tau: f64,
) -> Result<Tensor> {
    let (n, d, l) = check_grid("q_grid", q_grid)?;
    if k_grid.dims() != [n, d, l] || correspondence.dims() != [n, l] {
        return Err(Error::Shape(format!(
            "dense_info_nce: q_grid {:?}, k_grid {:?} and correspondence {:?} do not match",
            q_grid.dims(),
            k_grid.dims(),
            correspondence.dims()
        )));
    }
    if dense_queue.rank() != 2 || dense_queue.dim(0)? != d {
        return Err(Error::Shape(format!(
            "dense_info_nce: dense queue {:?} must be ({d}, K)",
            dense_queue.dims()
        )));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::config("tau", format!("must be positive, got {tau}")));
    }
    let q = l2_normalize(q_grid, 1)?;
    let k = l2_normalize(k_grid, 1)?;
    let index = correspondence
        .to_dtype(DType::U32)?
        .unsqueeze(1)?
        .broadcast_as((n, d, l))?
        .contiguous()?;
    let k_matched = k.contiguous()?.gather(&index, 2)?;
    let l_pos = (&q * &k_matched)?.sum(1)?.reshape((n * l, 1))?;
    let q_flat = q.transpose(1, 2)?.reshape((n * l, d))?;
    let l_neg = q_flat.matmul(dense_queue)?;
    let logits = (Tensor::cat(&[&l_pos, &l_neg], 1)? / tau)?;
    cross_entropy_first(&logits)
}

/// Everything DenseCL's loss needs for one direction (view 1 queries, view 2 keys).
#[derive(Clone, Copy, Debug)]
pub struct DenseClInputs<'a> {
    /// Global query and key embeddings `(n, D)`, raw.
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    /// Global queue `(D, K)`.
    pub queue: &'a Tensor,
    /// Dense query and key grids `(n, D, S²)`, raw.
    pub q_grid: &'a Tensor,
    pub k_grid: &'a Tensor,
    /// `(n, S²)` from [`dense_correspondence`] of the backbone maps.
    pub correspondence: &'a Tensor,
    /// Dense queue `(D, K)` of pooled dense keys.
    pub dense_queue: &'a Tensor,
}

/// DenseCL's loss and its parts.
#[derive(Clone, Debug)]
pub struct DenseClLoss {
    /// `(1 − λ)·global + λ·dense`.
    pub loss: Tensor,
    pub global: Tensor,
    pub dense: Tensor,
}

/// `L = (1 − λ)·L_global + λ·L_dense` with λ = 0.5 in the paper; λ = 0 is MoCo v2 exactly.
pub fn densecl_loss(inputs: DenseClInputs<'_>, tau: f64, lambda: f64) -> Result<DenseClLoss> {
    if !(0.0..=1.0).contains(&lambda) {
        return Err(Error::config(
            "densecl.lambda",
            format!("must be in [0, 1], got {lambda}"),
        ));
    }
    let global = info_nce_queue(inputs.q, inputs.k, inputs.queue, tau)?.loss;
    let dense = dense_info_nce(
        inputs.q_grid,
        inputs.k_grid,
        inputs.correspondence,
        inputs.dense_queue,
        tau,
    )?;
    let loss = ((&global * (1.0 - lambda))? + (&dense * lambda)?)?;
    Ok(DenseClLoss {
        loss,
        global,
        dense,
    })
}
