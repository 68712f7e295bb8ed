//! Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021, eq. 1–2).
//!
//! `L = Σᵢ (1 − Cᵢᵢ)² + λ Σᵢ Σ_{j≠i} Cᵢⱼ²` with `C = ẑ_Aᵀ ẑ_B / N`, where ẑ is each view's
//! embedding normalised per dimension over the batch. This follows the official code
//! (docs/recipes.md §3.2): a non-affine BatchNorm in training mode, i.e. batch mean and *biased*
//! variance with eps 1e-5, and division by the batch size N; identical views then give
//! `Cᵢᵢ = var/(var+eps) ≈ 1`. (The paper's pseudocode uses the unbiased std, giving (N−1)/N.)

use crate::dist;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// The loss and its pieces.
#[derive(Clone, Debug)]
pub struct BarlowTwinsLoss {
    /// `on_diag + λ·off_diag`, a scalar.
    pub loss: Tensor,
    /// `Σᵢ (1 − Cᵢᵢ)²`, a scalar.
    pub on_diag: Tensor,
    /// `Σ_{i≠j} Cᵢⱼ²`, a scalar (not yet multiplied by λ).
    pub off_diag: Tensor,
    /// The D × D cross-correlation matrix C.
    pub c: Tensor,
}

/// Per-dimension batch normalisation without affine parameters (biased variance, eps 1e-5),
/// over the global batch when ranks share it (the official code's SyncBN).
fn batch_standardize(z: &Tensor) -> Result<Tensor> {
    let (n, d) = z.dims2()?;
    let m = dist::global_moments(&z.reshape((n, d, 1))?)?;
    let std = (m.var + 1e-5)?.sqrt()?.reshape((1, d))?;
    Ok(m.centred.reshape((n, d))?.broadcast_div(&std)?)
}

/// Barlow Twins loss of two `(N, D)` embeddings. See the module docs for the convention.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let z = Tensor::new(&[[1f32, 1.], [-1., 1.], [1., -1.], [-1., -1.]], &Device::Cpu)?;
/// let out = sslab::objectives::barlow_twins_loss(&z, &z, 0.0051)?;
/// assert!(out.loss.to_scalar::<f32>()? < 1e-6); // identical views: C = I
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn barlow_twins_loss(z_a: &Tensor, z_b: &Tensor, lambda: f64) -> Result<BarlowTwinsLoss> {
    if z_a.rank() != 2 || z_a.dims() != z_b.dims() {
        return Err(Error::Shape(format!(
            "barlow_twins_loss needs two (N, D) embeddings of one shape, got {:?} and {:?}",
            z_a.dims(),
            z_b.dims()
        )));
    }
    let n = z_a.dim(0)?;
    if n < 2 {
        return Err(Error::Shape(format!(
            "barlow_twins_loss needs a batch of at least 2, got {n}"
        )));
    }
    let a = batch_standardize(z_a)?;
    let b = batch_standardize(z_b)?;
    // Across ranks, C and its diagonal are sums over every rank's rows: all-reduced with
    // their gradient (docs/distributed.md), so each rank backpropagates the global loss.
    let n = n * dist::rank_and_size().1;
    let c = (dist::all_reduce_sum(&a.t()?.matmul(&b)?)? / n as f64)?;
    let diag = (dist::all_reduce_sum(&(&a * &b)?.sum(0)?)? / n as f64)?;
    let on_diag = diag.affine(-1.0, 1.0)?.sqr()?.sum_all()?;
    let off_diag = (c.sqr()?.sum_all()? - diag.sqr()?.sum_all()?)?;
    let loss = (&on_diag + (&off_diag * lambda)?)?;
    Ok(BarlowTwinsLoss {
        loss,
        on_diag,
        off_diag,
        c,
    })
}
