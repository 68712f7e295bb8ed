//! InfoNCE against a queue of negatives (MoCo v1/v2 and DenseCL's global branch; docs/recipes.md
//! §0.2, §1.2): a (1 + K)-way softmax classification whose class 0 is the positive key.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor, D};

/// L2-normalises along `dim` as PyTorch's `F.normalize`: `x / max(‖x‖₂, 1e-12)`.
pub fn l2_normalize(x: &Tensor, dim: usize) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(dim)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

/// Mean cross-entropy of logit rows whose correct class is column 0, computed stably
/// (log-softmax with the row maximum subtracted) from ops that all have a backward.
pub fn cross_entropy_first(logits: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let targets = Tensor::zeros(n, DType::U32, logits.device())?;
    cross_entropy(logits, &targets)
}

/// Mean cross-entropy of `(n, classes)` logits against `u32` class indices `(n,)`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.rank() != 2 || targets.dims() != [logits.dim(0)?] {
        return Err(Error::Shape(format!(
            "cross_entropy: logits {:?} and targets {:?} do not match",
            logits.dims(),
            targets.dims()
        )));
    }
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&lse)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// The parts of an InfoNCE loss.
#[derive(Clone, Debug)]
pub struct InfoNce {
    /// Mean cross-entropy, class 0 = positive.
    pub loss: Tensor,
    /// `(n, 1 + K)` logits already divided by τ: positive first, then the queue.
    pub logits: Tensor,
}

/// `info_nce_queue(q, k, queue, τ)`: queries `q` and positive keys `k` are raw `(n, C)`
/// embeddings, normalised here as in the official code; `queue` is `(C, K)` of already
/// normalised keys from earlier batches. Gradients flow into `q` only when `k` and `queue` are
/// detached, which is the caller's business (MoCo's keys come from a no-grad encoder).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::objectives::info_nce_queue;
/// let dev = Device::Cpu;
/// let q = Tensor::new(&[[1f32, 0.0]], &dev)?;
/// let queue = Tensor::new(&[[0f32, 0.0], [1.0, 1.0]], &dev)?; // two keys (0,1)
/// let out = info_nce_queue(&q, &q, &queue, 0.2)?;
/// // Perfect positive, orthogonal negatives: ln(1 + K·e^{−1/τ}).
/// let expect = (1.0 + 2.0 * (-5f32).exp()).ln();
/// assert!((out.loss.to_scalar::<f32>()? - expect).abs() < 1e-6);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn info_nce_queue(q: &Tensor, k: &Tensor, queue: &Tensor, tau: f64) -> Result<InfoNce> {
    if q.rank() != 2 || q.dims() != k.dims() {
        return Err(Error::Shape(format!(
            "info_nce_queue: q {:?} and k {:?} must both be (n, C)",
            q.dims(),
            k.dims()
        )));
    }
    if queue.rank() != 2 || queue.dim(0)? != q.dim(1)? {
        return Err(Error::Shape(format!(
            "info_nce_queue: queue {:?} must be (C, K) with C = {}",
            queue.dims(),
            q.dim(1)?
        )));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::config("tau", format!("must be positive, got {tau}")));
    }
    let q = l2_normalize(q, 1)?;
    let k = l2_normalize(k, 1)?;
    let l_pos = (&q * &k)?.sum_keepdim(1)?;
    let l_neg = q.matmul(queue)?;
    let logits = (Tensor::cat(&[&l_pos, &l_neg], 1)? / tau)?;
    let loss = cross_entropy_first(&logits)?;
    Ok(InfoNce { loss, logits })
}
