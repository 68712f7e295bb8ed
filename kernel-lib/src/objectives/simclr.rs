//! SimCLR's NT-Xent loss (Chen et al. 2020; docs/recipes.md §7.1), as the official TF2 code's
//! `add_contrastive_loss` computes it: for each view, a (2N − 1)-way classification of its
//! partner among the other view's N embeddings and its own view's N − 1 others, the
//! self-similarity masked with −10⁹.

use super::info_nce::{cross_entropy, l2_normalize};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

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
    if za.rank() != 2 || za.dims() != zb.dims() || za.dim(0)? < 2 {
        return Err(Error::Shape(format!(
            "nt_xent: views {:?} and {:?} must both be (N, C) with N ≥ 2",
            za.dims(),
            zb.dims()
        )));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::config(
            "simclr.tau",
            format!("must be > 0, got {tau}"),
        ));
    }
    let n = za.dim(0)?;
    let (a, b) = (l2_normalize(za, 1)?, l2_normalize(zb, 1)?);
    let mask = (Tensor::eye(n, DType::F32, za.device())?.to_dtype(za.dtype())? * LARGE_NUM)?;
    let labels = Tensor::arange(0u32, n as u32, za.device())?;
    let side = |x: &Tensor, y: &Tensor| -> Result<Tensor> {
        let cross = x.matmul(&y.t()?)?;
        let own = (x.matmul(&x.t()?)? - &mask)?;
        let logits = (Tensor::cat(&[&cross, &own], 1)? / tau)?;
        cross_entropy(&logits, &labels)
    };
    Ok((side(&a, &b)? + side(&b, &a)?)?)
}
