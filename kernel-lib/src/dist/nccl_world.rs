//! CUDA ranks on NCCL (cargo feature `nccl`): one communicator per process on its GPU, made
//! from rank 0's unique id ([`super::Rendezvous`]), through cudarc's `nccl::safe::Comm` as
//! candle re-exports it.
//!
//! The [`Collective`] interface carries host buffers, so each call copies its values to the
//! GPU, runs the NCCL collective on the device's stream and copies the result back: the
//! gradients of a step cross PCIe twice, which is small next to a step on the GPU and keeps
//! one implementation of every method for MPI and NCCL alike.

use super::Rendezvous;
use crate::error::{Error, Result};
use crate::kernels::Collective;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::Device;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The communicator, used by one thread at a time (the [`Mutex`] of [`NcclWorld`]).
struct CommCell(Comm);

// SAFETY: an NCCL communicator may be driven from any thread as long as calls on it do not
// overlap; every use goes through the mutex that holds this cell.
unsafe impl Send for CommCell {}

/// One CUDA rank of an NCCL world.
pub struct NcclWorld {
    comm: Mutex<CommCell>,
    stream: Arc<CudaStream>,
    device: Device,
    rank: usize,
    size: usize,
    timeout: Duration,
}

fn nccl<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Invalid(format!("NCCL {what}: {e:?}"))
}

impl NcclWorld {
    /// Joins the world of `size` ranks as `rank`, on `device` (a CUDA device, one per rank),
    /// meeting the others at `rendezvous` for rank 0's unique id; every collective then gives
    /// up after `timeout`.
    pub fn init(
        device: &Device,
        rank: usize,
        size: usize,
        rendezvous: &Rendezvous,
        timeout: Duration,
    ) -> Result<NcclWorld> {
        let Device::Cuda(cuda) = device else {
            return Err(Error::Invalid(format!(
                "NCCL ranks run on CUDA devices, not {device:?}"
            )));
        };
        let mine = if rank == 0 {
            let id = Id::new().map_err(nccl("unique id"))?;
            Some(id.internal().iter().map(|&c| c as u8).collect::<Vec<u8>>())
        } else {
            None
        };
        let bytes = rendezvous.share(rank, size, mine.as_deref(), timeout)?;
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| {
                Error::Invalid(format!(
                    "rendezvous: an NCCL id is 128 bytes, got {}",
                    bytes.len()
                ))
            })?;
        let stream = cuda.cuda_stream();
        // ncclCommInitRank takes the calling thread's current device.
        stream
            .context()
            .bind_to_thread()
            .map_err(nccl("binding the GPU"))?;
        let comm = Comm::from_rank(stream.clone(), rank, size, Id::uninit(internal))
            .map_err(nccl("communicator"))?;
        Ok(NcclWorld {
            comm: Mutex::new(CommCell(comm)),
            stream,
            device: device.clone(),
            rank,
            size,
            timeout,
        })
    }

    /// Runs `op` on the communicator, then waits for the stream with the deadline: a rank
    /// that is gone leaves the collective unfinished, and the error ends this one.
    fn run(&self, what: &str, op: impl FnOnce(&Comm) -> Result<()>) -> Result<()> {
        let cell = self
            .comm
            .lock()
            .map_err(|_| Error::Invalid(format!("NCCL {what}: the communicator is poisoned")))?;
        self.stream.context().bind_to_thread().map_err(nccl(what))?;
        op(&cell.0)?;
        let done = self.stream.record_event(None).map_err(nccl(what))?;
        let deadline = Instant::now() + self.timeout;
        while !done.try_is_complete().map_err(nccl(what))? {
            if Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "NCCL {what}: rank {} waited {:?} for the other ranks of {}",
                    self.rank, self.timeout, self.size
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    fn to_device<T: candle_core::cuda::cudarc::driver::DeviceRepr>(
        &self,
        v: &[T],
    ) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(v).map_err(nccl("copy to the GPU"))
    }

    fn to_host<T: candle_core::cuda::cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        d: &CudaSlice<T>,
        out: &mut [T],
    ) -> Result<()> {
        self.stream
            .memcpy_dtoh(d, out)
            .map_err(nccl("copy to the host"))
    }

    fn reduce<T>(&self, data: &mut [T], what: &str) -> Result<()>
    where
        T: candle_core::cuda::cudarc::driver::DeviceRepr
            + candle_core::cuda::cudarc::nccl::safe::NcclType
            + Default
            + Clone,
    {
        if data.is_empty() {
            return Ok(());
        }
        let mut buf = self.to_device(data)?;
        self.run(what, |c| {
            c.all_reduce_in_place(&mut buf, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(nccl(what))
        })?;
        self.to_host(&buf, data)
    }
}

impl Collective for NcclWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn device(&self) -> Device {
        self.device.clone()
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()> {
        self.reduce(data, "all-reduce")
    }

    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
        self.reduce(data, "all-reduce (f64)")
    }

    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>> {
        if local.is_empty() {
            return Ok(Vec::new());
        }
        let send = self.to_device(local)?;
        let mut recv = self
            .stream
            .alloc_zeros::<f32>(local.len() * self.size)
            .map_err(nccl("all-gather buffer"))?;
        self.run("all-gather", |c| {
            c.all_gather(&send, &mut recv)
                .map(|_| ())
                .map_err(nccl("all-gather"))
        })?;
        let mut out = vec![0f32; local.len() * self.size];
        self.to_host(&recv, &mut out)?;
        Ok(out)
    }

    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()> {
        if root >= self.size {
            return Err(Error::Invalid(format!(
                "broadcast from rank {root} in a world of {}",
                self.size
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut buf = self.to_device(data)?;
        self.run("broadcast", |c| {
            c.broadcast_in_place(&mut buf, root as i32)
                .map(|_| ())
                .map_err(nccl("broadcast"))
        })?;
        self.to_host(&buf, data)
    }

    fn barrier(&self) -> Result<()> {
        self.reduce(&mut [0f32], "barrier")
    }

    /// Ends this process with `code`: the launcher (torchrun, Slurm) then ends the other ranks,
    /// and NCCL's work on this GPU ends with the process.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
