//! SimCLR's NT-Xent loss (Chen et al. 2020; docs/recipes.md §7.1), as the official TF2 code's
//! `add_contrastive_loss` computes it: for each view, a (2N − 1)-way classification of its
//! partner among the other view's N embeddings and its own view's N − 1 others, the
//! self-similarity masked with −10⁹.

use super::info_nce::{cross_entropy, l2_normalize};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// The official code's mask value for the self-similarities.
const LARGE_NUM: f64 = 1e9;

/// `NT-Xent(za, zb, τ)` over raw `(N, C)` embeddings of the two views (normalised here):
/// `loss_a + loss_b`, each a mean cross-entropy over N rows of logits `[za·zbᵀ, za·zaᵀ − 10⁹·I] / τ`
/// (and the same from b), the positive in column i. The official code adds the two means; the
/// paper's `1/2N Σ` is half of that (the factor is absorbed by the learning rate).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::objectives::nt_xent;
/// // Two orthogonal samples, each view equal to its partner: every row has its positive at
/// // cosine 1 and two negatives at 0 (one cross-view, one same-view), so each mean is
/// // ln(1 + 2·e^{−1/τ}).
/// let z = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu)?;
/// let l = nt_xent(&z, &z, 0.5)?.to_scalar::<f32>()?;
/// let expect = 2.0 * (1.0 + 2.0 * (-2f32).exp()).ln();
/// assert!((l - expect).abs() < 1e-6);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn nt_xent(za: &Tensor, zb: &Tensor, tau: f64) -> Result<Tensor> {
    nt_xent_at(za, zb, za, zb, tau, 0)
}

/// [`nt_xent`] of one rank's `(n, C)` views against every rank's views `(m, C)` (the
/// all-gathered `za_all`, `zb_all`), the rank's rows sitting at `offset..offset + n` among
/// them: row i's positive is column `offset + i` of the cross-view block and its own
/// similarity, masked, is that column of the same-view block. This is the official code's
/// cross-replica form (`labels_idx = arange(n) + replica_id · n`); the mean of the ranks'
/// values is the one-process value over the whole batch, and `nt_xent(za, zb, τ)` is
/// `nt_xent_at(za, zb, za, zb, τ, 0)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::objectives::{nt_xent, nt_xent_at};
/// let z = Tensor::new(&[[1f32, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]], &Device::Cpu)?;
/// let w = (&z + 0.1)?;
/// let whole = nt_xent(&z, &w, 0.5)?.to_scalar::<f32>()?;
/// let first = nt_xent_at(&z.narrow(0, 0, 2)?, &w.narrow(0, 0, 2)?, &z, &w, 0.5, 0)?;
/// let second = nt_xent_at(&z.narrow(0, 2, 2)?, &w.narrow(0, 2, 2)?, &z, &w, 0.5, 2)?;
/// let halves = ((first + second)? / 2.0)?.to_scalar::<f32>()?;
/// assert!((whole - halves).abs() < 1e-5);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn nt_xent_at(
    za: &Tensor,
    zb: &Tensor,
    za_all: &Tensor,
    zb_all: &Tensor,
    tau: f64,
    offset: usize,
) -> Result<Tensor> {
    if za.rank() != 2 || za.dims() != zb.dims() || za_all.dims() != zb_all.dims() {
        return Err(Error::Shape(format!(
            "nt_xent: views {:?} and {:?} (all ranks: {:?} and {:?}) must be (n, C) and (m, C)",
            za.dims(),
            zb.dims(),
            za_all.dims(),
            zb_all.dims()
        )));
    }
    let (n, c) = za.dims2()?;
    let m = za_all.dim(0)?;
    if za_all.rank() != 2 || za_all.dim(1)? != c || m < 2 || m < offset + n {
        return Err(Error::Shape(format!(
            "nt_xent: the views of all ranks {:?} must be (m, {c}) with m ≥ 2 and hold this \
             rank's rows {offset}..{}",
            za_all.dims(),
            offset + n
        )));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::config(
            "simclr.tau",
            format!("must be > 0, got {tau}"),
        ));
    }
    let (a, b) = (l2_normalize(za, 1)?, l2_normalize(zb, 1)?);
    let (a_all, b_all) = if za_all.id() == za.id() && zb_all.id() == zb.id() {
        (a.clone(), b.clone())
    } else {
        (l2_normalize(za_all, 1)?, l2_normalize(zb_all, 1)?)
    };
    let mut mask = vec![0f32; n * m];
    for i in 0..n {
        mask[i * m + offset + i] = LARGE_NUM as f32;
    }
    let mask = Tensor::from_vec(mask, (n, m), za.device())?.to_dtype(za.dtype())?;
    let labels = Tensor::arange(offset as u32, (offset + n) as u32, za.device())?;
    let side = |x: &Tensor, y_all: &Tensor, x_all: &Tensor| -> Result<Tensor> {
        let cross = x.matmul(&y_all.t()?)?;
        let own = (x.matmul(&x_all.t()?)? - &mask)?;
        let logits = (Tensor::cat(&[&cross, &own], 1)? / tau)?;
        cross_entropy(&logits, &labels)
    };
    Ok((side(&a, &b_all, &a_all)? + side(&b, &a_all, &b_all)?)?)
}
