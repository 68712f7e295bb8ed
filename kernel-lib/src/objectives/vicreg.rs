//! VICReg's loss (Bardes, Ponce, LeCun 2022; docs/recipes.md §7.4), as the official
//! `main_vicreg.py` computes it: invariance (MSE between the views' embeddings), variance (a
//! hinge on each dimension's standard deviation) and covariance (squared off-diagonal
//! covariances), weighted 25 / 25 / 1 by default.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

/// The official hinge target γ on each dimension's standard deviation.
pub const VICREG_GAMMA: f64 = 1.0;
/// The ε added to the variance before its square root.
pub const VICREG_EPS: f64 = 1e-4;

/// The three terms, unweighted, and the weighted total.
#[derive(Clone, Debug)]
pub struct VicregLoss {
    /// `sim·invariance + std·variance + cov·covariance`.
    pub loss: Tensor,
    /// `mean((za − zb)²)` over all entries.
    pub invariance: Tensor,
    /// `½·mean(relu(γ − std(za))) + ½·mean(relu(γ − std(zb)))`, std over the batch with
    /// `√(var + ε)` (unbiased variance).
    pub variance: Tensor,
    /// `Σ_{i≠j} C(za)ᵢⱼ² / D + Σ_{i≠j} C(zb)ᵢⱼ² / D`, `C` the covariance over the batch
    /// (divided by N − 1).
    pub covariance: Tensor,
}

/// The weights of the three terms (`vicreg.sim`, `vicreg.std`, `vicreg.cov`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VicregWeights {
    pub sim: f64,
    pub std: f64,
    pub cov: f64,
}

/// The one-view parts: `(variance hinge mean, Σ off-diagonal covariance² / D)`.
fn one_view(z: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, d) = z.dims2()?;
    let x = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let var = (x.sqr()?.sum(0)? / (n - 1) as f64)?;
    let std = (var + VICREG_EPS)?.sqrt()?;
    let hinge = (std.neg()? + VICREG_GAMMA)?.relu()?.mean_all()?;
    let cov = (x.t()?.matmul(&x)? / (n - 1) as f64)?;
    let off = (Tensor::ones((d, d), DType::F32, z.device())?.to_dtype(z.dtype())?
        - Tensor::eye(d, DType::F32, z.device())?.to_dtype(z.dtype())?)?;
    let cov_term = ((cov.sqr()? * off)?.sum_all()? / d as f64)?;
    Ok((hinge, cov_term))
}

/// VICReg's loss over the two views' `(N, D)` expander outputs.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::objectives::{vicreg_loss, VicregWeights};
/// // Two dimensions of ±2 that never move together: identical views (no invariance cost),
/// // std ≥ γ = 1 (no variance cost), zero covariance.
/// let z = Tensor::new(&[[2f32, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]], &Device::Cpu)?;
/// let w = VicregWeights { sim: 25.0, std: 25.0, cov: 1.0 };
/// assert_eq!(vicreg_loss(&z, &z, w)?.loss.to_scalar::<f32>()?, 0.0);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn vicreg_loss(za: &Tensor, zb: &Tensor, w: VicregWeights) -> Result<VicregLoss> {
    vicreg_loss_gathered(za, zb, za, zb, w)
}

/// [`vicreg_loss`] on one rank: the invariance over this rank's `(n, D)` rows `za`, `zb`, the
/// variance and covariance over every rank's rows `za_all`, `zb_all` (all-gathered, with
/// their gradient), as the official code computes them after its `FullGatherLayer`. The mean
/// of the ranks' values is the one-process loss over the whole batch, and
/// `vicreg_loss(za, zb, w)` is `vicreg_loss_gathered(za, zb, za, zb, w)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::objectives::{vicreg_loss, vicreg_loss_gathered, VicregWeights};
/// let za = Tensor::new(&[[2f32, 1.0], [0.5, -2.0], [-1.0, 0.3], [-2.0, -1.5]], &Device::Cpu)?;
/// let zb = (&za * 0.8)?;
/// let w = VicregWeights { sim: 25.0, std: 25.0, cov: 1.0 };
/// let whole = vicreg_loss(&za, &zb, w)?.loss.to_scalar::<f32>()?;
/// let rank = |r: usize| -> sslab::Result<f32> {
///     let (a, b) = (za.narrow(0, 2 * r, 2)?, zb.narrow(0, 2 * r, 2)?);
///     Ok(vicreg_loss_gathered(&a, &b, &za, &zb, w)?.loss.to_scalar::<f32>()?)
/// };
/// assert!((whole - (rank(0)? + rank(1)?) / 2.0).abs() < 1e-4);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn vicreg_loss_gathered(
    za: &Tensor,
    zb: &Tensor,
    za_all: &Tensor,
    zb_all: &Tensor,
    w: VicregWeights,
) -> Result<VicregLoss> {
    if za.rank() != 2 || za.dims() != zb.dims() || za.dim(0)? < 1 {
        return Err(Error::Shape(format!(
            "vicreg_loss: views {:?} and {:?} must both be (N, D)",
            za.dims(),
            zb.dims()
        )));
    }
    if za_all.rank() != 2
        || za_all.dims() != zb_all.dims()
        || za_all.dim(1)? != za.dim(1)?
        || za_all.dim(0)? < 2.max(za.dim(0)?)
    {
        return Err(Error::Shape(format!(
            "vicreg_loss: the views of all ranks {:?} and {:?} must both be (M, {}) with M ≥ 2 \
             and at least this rank's {} rows",
            za_all.dims(),
            zb_all.dims(),
            za.dim(1)?,
            za.dim(0)?
        )));
    }
    let invariance = (za - zb)?.sqr()?.mean_all()?;
    let (ha, ca) = one_view(za_all)?;
    let (hb, cb) = one_view(zb_all)?;
    let variance = ((ha + hb)? * 0.5)?;
    let covariance = (ca + cb)?;
    let loss = (((&invariance * w.sim)? + (&variance * w.std)?)? + (&covariance * w.cov)?)?;
    Ok(VicregLoss {
        loss,
        invariance,
        variance,
        covariance,
    })
}
