//! MoCo's dictionary as a queue (docs/recipes.md §1.2): K keys from earlier batches, the oldest
//! overwritten first.

use crate::error::{Error, Result};
use crate::objectives::l2_normalize;
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A FIFO of `len` keys of width `dim`, initialised with standard-normal entries normalised per
/// key, as the official code's `randn` + `normalize(dim=0)`.
///
/// Stored key-major (`len × dim`) so an enqueue is one contiguous write; [`KeyQueue::keys`] gives
/// the `dim × len` view the logits need.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sslab::methods::KeyQueue;
/// let mut q = KeyQueue::new(2, 8, 0, &Device::Cpu)?;
/// q.enqueue(&Tensor::ones((4, 2), candle_core::DType::F32, &Device::Cpu)?)?;
/// assert_eq!(q.ptr(), 4);
/// assert!(q.enqueue(&Tensor::ones((3, 2), candle_core::DType::F32, &Device::Cpu)?).is_err());
/// # Ok::<(), sslab::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct KeyQueue {
    buf: Var,
    ptr: usize,
    len: usize,
    dim: usize,
}

impl KeyQueue {
    /// A queue of `len` random unit keys drawn from `seed`.
    pub fn new(dim: usize, len: usize, seed: u64, device: &Device) -> Result<Self> {
        if dim == 0 || len == 0 {
            return Err(Error::config(
                "moco.queue_size",
                format!("queue needs positive width and length, got {dim} × {len}"),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data: Vec<f32> = (0..dim * len)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let t = l2_normalize(&Tensor::from_vec(data, (len, dim), device)?, 1)?;
        Ok(KeyQueue {
            buf: Var::from_tensor(&t)?,
            ptr: 0,
            len,
            dim,
        })
    }

    /// The keys as `(dim, len)`, column j = key j (a view; no copy).
    pub fn keys(&self) -> Result<Tensor> {
        Ok(self.buf.as_tensor().t()?)
    }

    /// The keys as stored, `(len, dim)`.
    pub fn keys_by_row(&self) -> &Tensor {
        self.buf.as_tensor()
    }

    /// Where the next batch will be written.
    pub fn ptr(&self) -> usize {
        self.ptr
    }

    /// K.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a queue has at least one key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Key width C.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Refuses a step that enqueues `b` keys unless K is a multiple of b (so a batch never
    /// wraps), as the official code asserts. Methods call it before their forward, so a bad
    /// batch size fails before any weight moves.
    pub fn check_keys_per_step(&self, b: usize) -> Result<()> {
        if b == 0 || !self.len.is_multiple_of(b) {
            return Err(Error::config(
                "moco.queue_size",
                format!(
                    "queue length {} is not a multiple of the {b} keys enqueued per step \
                     (the batch size, × 2 with the symmetric loss)",
                    self.len
                ),
            ));
        }
        Ok(())
    }

    /// Writes `keys` `(b, dim)` (already normalised) at the pointer and advances it by b. K must
    /// be a multiple of b ([`KeyQueue::check_keys_per_step`]).
    pub fn enqueue(&mut self, keys: &Tensor) -> Result<()> {
        let (b, d) = keys.dims2().map_err(|_| {
            Error::Shape(format!(
                "enqueue expects (batch, dim) keys, got {:?}",
                keys.dims()
            ))
        })?;
        if d != self.dim {
            return Err(Error::Shape(format!(
                "enqueue: keys of width {d} into a queue of width {}",
                self.dim
            )));
        }
        self.check_keys_per_step(b)?;
        let keys = keys.detach().to_dtype(self.buf.dtype())?.contiguous()?;
        self.buf.as_tensor().slice_set(&keys, 0, self.ptr)?;
        self.ptr = (self.ptr + b) % self.len;
        Ok(())
    }

    /// Restores a saved state (checkpoints): keys `(len, dim)` and pointer.
    pub fn restore(&mut self, keys: &Tensor, ptr: usize) -> Result<()> {
        if keys.dims() != [self.len, self.dim] || ptr >= self.len {
            return Err(Error::Shape(format!(
                "queue state {:?} / ptr {ptr} does not fit a {} × {} queue",
                keys.dims(),
                self.len,
                self.dim
            )));
        }
        self.buf.set(&keys.to_dtype(self.buf.dtype())?)?;
        self.ptr = ptr;
        Ok(())
    }
}
