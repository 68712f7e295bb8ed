//! The cosine regressions of BYOL and SimSiam (docs/recipes.md §7.2, §7.3): a prediction
//! pulled towards a target embedding of the other view, the target carrying no gradient.

use super::info_nce::l2_normalize;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Row-wise cosine `p̂ᵢ·ẑᵢ` of two `(n, C)` tensors, normalised as `F.normalize` does.
fn row_cosines(p: &Tensor, z: &Tensor, what: &str) -> Result<Tensor> {
    if p.rank() != 2 || p.dims() != z.dims() {
        return Err(Error::Shape(format!(
            "{what}: prediction {:?} and target {:?} must both be (n, C)",
            p.dims(),
            z.dims()
        )));
    }
    Ok((l2_normalize(p, 1)? * l2_normalize(z, 1)?)?.sum(1)?)
}

/// BYOL's symmetrised loss: `mean(‖p̂₁ − ẑ₂‖²) + mean(‖p̂₂ − ẑ₁‖²)` with `‖p̂ − ẑ‖² = 2 − 2·cos`,
/// the sum of the two directions' batch means as the official `byol_experiment.py` adds them.
/// `z1`, `z2` are the target network's projections; they are detached here.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::objectives::byol_loss;
/// let p = Tensor::new(&[[1f32, 0.0]], &Device::Cpu)?;
/// let z = Tensor::new(&[[0f32, 3.0]], &Device::Cpu)?;
/// // Orthogonal pairs: 2 − 2·0 in each direction.
/// assert_eq!(byol_loss(&p, &p, &z, &z)?.to_scalar::<f32>()?, 4.0);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn byol_loss(p1: &Tensor, p2: &Tensor, z1: &Tensor, z2: &Tensor) -> Result<Tensor> {
    let side = |p: &Tensor, z: &Tensor| -> Result<Tensor> {
        let cos = row_cosines(p, &z.detach(), "byol_loss")?;
        Ok(((cos * -2.0)? + 2.0)?.mean_all()?)
    };
    Ok((side(p1, z2)? + side(p2, z1)?)?)
}

/// SimSiam's symmetrised loss: `−½·mean(cos(p₁, sg(z₂))) − ½·mean(cos(p₂, sg(z₁)))`, in
/// [−1, 1]; `z1`, `z2` are the same network's projections, detached here (the stop-gradient).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::objectives::simsiam_loss;
/// let z = Tensor::new(&[[1f32, 2.0], [0.0, -1.0]], &Device::Cpu)?;
/// // Predictions equal to their targets: the minimum, −1.
/// assert!((simsiam_loss(&z, &z, &z, &z)?.to_scalar::<f32>()? + 1.0).abs() < 1e-6);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn simsiam_loss(p1: &Tensor, p2: &Tensor, z1: &Tensor, z2: &Tensor) -> Result<Tensor> {
    let side = |p: &Tensor, z: &Tensor| -> Result<Tensor> {
        Ok(row_cosines(p, &z.detach(), "simsiam_loss")?.mean_all()?)
    };
    Ok(((side(p1, z2)? + side(p2, z1)?)? * -0.5)?)
}
