//! The momentum (key) encoder of MoCo, DenseCL and MoCo v3 (docs/recipes.md §0.3): a separate copy of
//! the online encoder's tensors, moved towards it by an exponential moving average and never
//! trained.

use super::params::ParamStore;
use crate::error::{Error, Result};

/// `θ_k ← m·θ_k + (1 − m)·θ_q` for every trainable tensor of `online`, paired by registration
/// order with `target`. Only parameters are averaged: BatchNorm running statistics (buffers) and
/// frozen tensors are left alone, as in the official code, which iterates over `.parameters()`.
///
/// The two stores must come from the same constructor, the target's names being the online
/// names under a prefix (`momentum.backbone.conv1.weight` for `backbone.conv1.weight`), with the
/// same shapes; anything else is an error rather than a silent mismatch.
///
/// ```
/// use candle_core::Device;
/// use sslab::models::{ema_update, Linear, ParamBuilder};
/// let dev = Device::Cpu;
/// let mut bq = ParamBuilder::new(1, &dev);
/// let q = Linear::new(&mut bq, "fc", 2, 2, true)?;
/// let mut bk = ParamBuilder::new(2, &dev);
/// let k = Linear::new(&mut bk, "momentum.fc", 2, 2, true)?;
/// let (online, target) = (bq.finish(), bk.finish());
/// ema_update(&target, &online, 1.0)?; // m = 1: the target never moves
/// ema_update(&target, &online, 0.0)?; // m = 0: a copy
/// let diff = (k.weight.as_tensor() - q.weight.as_tensor())?.abs()?.max_all()?;
/// assert_eq!(diff.to_scalar::<f32>()?, 0.0);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn ema_update(target: &ParamStore, online: &ParamStore, m: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&m) {
        return Err(Error::config(
            "momentum",
            format!("EMA momentum must be in [0, 1], got {m}"),
        ));
    }
    if target.params.len() != online.params.len() {
        return Err(Error::Invalid(format!(
            "momentum encoder has {} tensors, online encoder {}",
            target.params.len(),
            online.params.len()
        )));
    }
    for (t, o) in target.params.iter().zip(&online.params) {
        if t.kind != o.kind || t.var.dims() != o.var.dims() || !t.name.ends_with(&o.name) {
            return Err(Error::Invalid(format!(
                "momentum encoder tensor '{}' {:?} does not pair with '{}' {:?}",
                t.name,
                t.var.dims(),
                o.name,
                o.var.dims()
            )));
        }
        if !o.kind.trainable() || m == 1.0 {
            continue;
        }
        crate::kernels::ema(&t.var, o.var.as_tensor(), m)?;
    }
    Ok(())
}
