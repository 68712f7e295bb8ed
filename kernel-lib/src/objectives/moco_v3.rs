//! MoCo v3's contrastive loss (Chen, Xie, He 2021; docs/recipes.md §2.2): keys from the current batch
//! (no queue), the positive of row i is column i, and each direction is scaled by 2τ.

use super::info_nce::{cross_entropy, l2_normalize};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// `ctr(q, k) = 2τ · CE(q̂ k̂ᵀ / τ, diag)` over raw `(n, C)` embeddings (normalised here).
pub fn moco_v3_ctr(q: &Tensor, k: &Tensor, tau: f64) -> Result<Tensor> {
    if q.rank() != 2 || q.dims() != k.dims() {
        return Err(Error::Shape(format!(
            "moco_v3_ctr: q {:?} and k {:?} must both be (n, C)",
            q.dims(),
            k.dims()
        )));
    }
    moco_v3_ctr_at(q, k, tau, 0)
}

/// [`moco_v3_ctr`] of a rank's `(n, C)` queries against every rank's keys `(m, C)`, the
/// positive of query i being key `offset + i` (the official code's labels
/// `arange(n) + n·rank` against the all-gathered keys).
pub fn moco_v3_ctr_at(q: &Tensor, k: &Tensor, tau: f64, offset: usize) -> Result<Tensor> {
    let (n, c) = q.dims2()?;
    if k.rank() != 2 || k.dim(1)? != c || k.dim(0)? < offset + n {
        return Err(Error::Shape(format!(
            "moco_v3_ctr: keys {:?} do not hold the positives {offset}..{} of queries {:?}",
            k.dims(),
            offset + n,
            q.dims()
        )));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::config(
            "moco_v3.tau",
            format!("must be > 0, got {tau}"),
        ));
    }
    let logits = (l2_normalize(q, 1)?.matmul(&l2_normalize(k, 1)?.t()?)? / tau)?;
    let labels =
        Tensor::arange(offset as u32, (offset + n) as u32, q.device())?.to_dtype(DType::U32)?;
    Ok((cross_entropy(&logits, &labels)? * (2.0 * tau))?)
}

/// The symmetrised loss `ctr(q1, k2) + ctr(q2, k1)`: predictions of each crop against the
/// momentum keys of the other.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::objectives::moco_v3_loss;
/// let q = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu)?;
/// // Perfect positives, orthogonal negatives: each ctr is 2τ·ln(1 + (n−1)·e^{−1/τ}).
/// let l = moco_v3_loss(&q, &q, &q, &q, 0.2)?.to_scalar::<f32>()?;
/// let expect = 2.0 * (2.0 * 0.2 * (1.0 + (-5f32).exp()).ln());
/// assert!((l - expect).abs() < 1e-6);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn moco_v3_loss(
    q1: &Tensor,
    q2: &Tensor,
    k1: &Tensor,
    k2: &Tensor,
    tau: f64,
) -> Result<Tensor> {
    Ok((moco_v3_ctr(q1, k2, tau)? + moco_v3_ctr(q2, k1, tau)?)?)
}
