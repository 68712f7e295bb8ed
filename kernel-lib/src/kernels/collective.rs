//! Collective operations across ranks as autograd-aware tensor ops (`crate::dist` chooses the
//! world and when they cross ranks).
//!
//! The backward passes are those of `torch.distributed.nn`: an all-reduce's gradient is the
//! all-reduce of the incoming gradients, an all-gather's the sum over ranks of the gradient
//! of this rank's slice. Each rank backpropagates its own loss; the sums make every rank's
//! gradient that of the sum of all ranks' losses, which the later gradient average turns into
//! their mean.

use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Result as CResult, Shape, Tensor};
use std::sync::Arc;

/// The collective operations data-parallel training needs, over f32 buffers of equal length on
/// every rank. Every call is a meeting point: all ranks must make the same calls in the same
/// order. An implementation gives up after its timeout with an error instead of waiting
/// forever for a rank that is gone.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// What carries the data (`"mpi"`, `"nccl"`), for reports.
    fn backend(&self) -> &'static str;
    /// The device this rank trains on: a CUDA rank's GPU (NCCL), the CPU otherwise. A run
    /// on these ranks must be on it.
    fn device(&self) -> candle_core::Device {
        candle_core::Device::Cpu
    }
    /// Element-wise sum over ranks, in place.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()>;
    /// The same in f64 (statistics whose f32 sums would lose the digits that matter).
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()>;
    /// Every rank's `local` (one length on all ranks), concatenated in rank order.
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>>;
    /// Rank `root`'s `data` on every rank.
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every rank of the job with `code`: what a front end calls after an error on one
    /// rank, since the others would otherwise wait in their next collective until it times
    /// out.
    fn abort(&self, code: i32) -> !;
}

/// A shared handle to the ranks a run trains on.
pub type World = Arc<dyn Collective>;

fn host_f32(s: &CpuStorage, l: &Layout) -> CResult<Vec<f32>> {
    Ok(super::storage::slice(s, l, "collective input")?.to_vec())
}

fn failed(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

struct AllReduce(World);

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "all-reduce-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let mut v = host_f32(s, l)?;
        self.0.all_reduce_sum(&mut v).map_err(failed)?;
        Ok((CpuStorage::F32(v), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(
            g.contiguous()?
                .apply_op1_no_bwd(&AllReduce(self.0.clone()))?,
        ))
    }
}

struct AllGather(World);

impl CustomOp1 for AllGather {
    fn name(&self) -> &'static str {
        "all-gather"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let v = host_f32(s, l)?;
        let all = self.0.all_gather(&v).map_err(failed)?;
        let mut dims = l.dims().to_vec();
        if dims.is_empty() {
            candle_core::bail!("all-gather needs a tensor with a leading axis");
        }
        dims[0] *= self.0.size();
        Ok((CpuStorage::F32(all), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let n = x.dim(0)?;
        let summed = g
            .contiguous()?
            .apply_op1_no_bwd(&AllReduce(self.0.clone()))?;
        Ok(Some(summed.narrow(0, self.0.rank() * n, n)?))
    }
}

/// `op` on `t` as f32 host memory, which every [`Collective`] carries: a tensor on a GPU goes
/// to the host and its result comes back (both moves differentiable), so the same operation
/// serves CPU ranks on MPI and CUDA ranks on NCCL, whose backend stages host buffers through
/// its device.
fn on_host(t: &Tensor, what: &str, op: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if t.dtype() != candle_core::DType::F32 {
        return Err(crate::Error::Invalid(format!(
            "{what} across ranks takes f32 tensors, got {:?}",
            t.dtype()
        )));
    }
    if t.device().is_cpu() {
        return op(&t.contiguous()?);
    }
    let host = t.to_device(&candle_core::Device::Cpu)?;
    Ok(op(&host)?.to_device(t.device())?)
}

/// The element-wise sum of `t` over the ranks of `world`, with the all-reduce of the gradient
/// as its backward.
pub fn all_reduce(t: &Tensor, world: &World) -> Result<Tensor> {
    on_host(t, "all-reduce", |h| {
        Ok(h.apply_op1(AllReduce(world.clone()))?)
    })
}

/// Every rank's `t` concatenated along axis 0 in rank order; the backward sums the gradients
/// of all ranks and keeps this rank's rows.
pub fn all_gather(t: &Tensor, world: &World) -> Result<Tensor> {
    on_host(t, "all-gather", |h| {
        Ok(h.apply_op1(AllGather(world.clone()))?)
    })
}
