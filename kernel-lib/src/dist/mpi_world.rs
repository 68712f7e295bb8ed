//! The MPI world of CPU ranks (feature `mpi`), on the system's MPI through the `mpi` crate.
//!
//! Every collective is started non-blocking and polled until it completes or its deadline
//! passes: a blocking MPI collective would wait forever for a rank that stopped without
//! exiting (a rank that exits is noticed by `mpirun`, which ends the job). On a timeout the
//! request is abandoned with its buffers, since MPI offers no way to cancel a collective;
//! the world is unusable afterwards and the front end aborts the job.

use super::Collective;
use crate::error::{Error, Result};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// CPU ranks on MPI: `mpirun -np N` (or `srun`) starts them, [`MpiWorld::init`] joins.
pub struct MpiWorld {
    inner: Mutex<Inner>,
    rank: usize,
    size: usize,
    timeout: Duration,
}

struct Inner {
    world: SimpleCommunicator,
    // Dropped last (fields drop in order): finalises MPI.
    _universe: Universe,
}

// MPI is initialised for serialised use from any thread (`Threading::Serialized`), and the
// mutex serialises every call, which is all MPI asks of handles used from several threads.
unsafe impl Send for Inner {}

impl MpiWorld {
    /// Initialises MPI (once per process) and joins its world.
    pub fn init(timeout: Duration) -> Result<Self> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::Invalid("MPI is already initialised in this process".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(MpiWorld {
            inner: Mutex::new(Inner {
                world,
                _universe: universe,
            }),
            rank,
            size,
            timeout,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Polls `req` until it completes or the timeout passes. Between polls it sleeps a little
    /// longer each time (up to 1 ms), so a rank waiting for a slower one leaves it the CPU.
    fn wait<D: ?Sized>(&self, mut req: Request<'static, D>, what: &str) -> Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(5);
        loop {
            match req.test() {
                Ok(_) => return Ok(()),
                Err(r) => req = r,
            }
            if start.elapsed() > self.timeout {
                // A pending request panics when dropped; it is abandoned instead (see the
                // module docs).
                std::mem::forget(req);
                return Err(Error::Invalid(format!(
                    "rank {} of {}: {what} across ranks timed out after {:.0} s: another rank \
                     stopped or is stalled",
                    self.rank,
                    self.size,
                    self.timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }
}

impl MpiWorld {
    /// Element-wise sum over ranks of f32 or f64 data, in place.
    fn sum<T>(&self, data: &mut [T]) -> Result<()>
    where
        T: mpi::datatype::Equivalence + Copy + Default + 'static,
    {
        let g = self.lock();
        let send = lend(data.to_vec());
        let recv = lend(vec![T::default(); data.len()]);
        let (send_ptr, recv_ptr) = (send as *mut [T], recv as *mut [T]);
        let req =
            g.world
                .immediate_all_reduce_into(StaticScope, &*send, recv, SystemOperation::sum());
        self.wait(req, "all-reduce")?;
        // SAFETY: both came from `lend` and the request completed.
        let (_, out) = unsafe { (reclaim(send_ptr), reclaim(recv_ptr)) };
        data.copy_from_slice(&out);
        Ok(())
    }
}

/// A buffer an MPI request may hold for `'static`; taken back with [`reclaim`] once the
/// request completed, leaked if it never does.
fn lend<T: Clone>(v: Vec<T>) -> &'static mut [T] {
    Box::leak(v.into_boxed_slice())
}

/// # Safety
/// `buf` must come from [`lend`] and no request may still use it.
unsafe fn reclaim<T>(buf: *mut [T]) -> Vec<T> {
    unsafe { Box::from_raw(buf) }.into_vec()
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()> {
        self.sum(data)
    }

    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
        self.sum(data)
    }

    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>> {
        let g = self.lock();
        let send = lend(local.to_vec());
        let recv = lend(vec![0f32; local.len() * self.size]);
        let (send_ptr, recv_ptr) = (send as *mut [f32], recv as *mut [f32]);
        let req = g.world.immediate_all_gather_into(StaticScope, &*send, recv);
        self.wait(req, "all-gather")?;
        // SAFETY: both came from `lend` and the request completed.
        let (_, out) = unsafe { (reclaim(send_ptr), reclaim(recv_ptr)) };
        Ok(out)
    }

    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()> {
        let g = self.lock();
        let buf = lend(data.to_vec());
        let ptr = buf as *mut [f32];
        let req = g
            .world
            .process_at_rank(root as i32)
            .immediate_broadcast_into(StaticScope, buf);
        self.wait(req, "broadcast")?;
        // SAFETY: from `lend`, and the request completed.
        let out = unsafe { reclaim(ptr) };
        data.copy_from_slice(&out);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let g = self.lock();
        let req = g.world.immediate_barrier();
        self.wait(req, "barrier")
    }

    fn abort(&self, code: i32) -> ! {
        let g = self.lock();
        g.world.abort(code)
    }
}
