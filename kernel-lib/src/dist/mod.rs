//! Data-parallel training across processes (docs/distributed.md).
//!
//! N processes ("ranks") each take a shard of the global batch. What must cross ranks goes
//! through a [`Collective`]: the gradients (all-reduced and averaged before the optimiser
//! step, so every rank steps identically), BatchNorm statistics over the global batch
//! (SyncBN), Barlow Twins' cross-correlation, MoCo v3's keys, MoCo's ShuffleBN and its queue.
//!
//! Methods and models do not hold a collective: [`Run`](crate::train::Run) puts its world in
//! scope for the duration of a step ([`scope`]) and the operations below read it. Outside a
//! step, or in a run of one process, every operation here is the identity, so a method is
//! written once for both.
//!
//! The tensor operations are autograd-aware as `torch.distributed.nn` is: the backward of an
//! all-reduce all-reduces the gradient, and the backward of an all-gather sums the gradients
//! of every rank's copy and keeps this rank's slice. With the gradients averaged over ranks
//! afterwards, N ranks compute the gradient of the mean of their losses, which is the loss of
//! the global batch when each rank's loss is its share (a mean over its own queries), or the
//! global loss itself (Barlow Twins, the same value on every rank). Official Barlow Twins
//! all-reduces its cross-correlation outside autograd and gets 1/N of that gradient
//! (docs/distributed.md).

mod ops;
mod rendezvous;
mod thread_world;

#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "nccl")]
mod nccl_world;

pub use crate::kernels::{Collective, World};
pub use ops::{
    all_gather, all_reduce_sum, average_gradients, gather_detached, global_moments,
    mean_over_ranks, Moments,
};

#[cfg(feature = "mpi")]
pub use mpi_world::MpiWorld;
#[cfg(feature = "nccl")]
pub use nccl_world::NcclWorld;
pub use rendezvous::Rendezvous;
pub use thread_world::ThreadWorld;

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::time::Duration;

/// How long a collective waits for the other ranks by default before it fails: long enough
/// for a rank that evaluates kNN or writes a checkpoint while the others wait, short enough
/// that a stalled job ends in minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The launchers sslab reads its rank from: what a process started by one of them finds in
/// its environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// `mpirun`/`mpiexec` (Open MPI, MPICH) or `srun` (Slurm with PMI/PMIx): an MPI world.
    Mpi,
    /// `torchrun`'s `RANK`/`WORLD_SIZE`/`MASTER_ADDR`: CUDA ranks on NCCL.
    Torchrun,
}

impl Launcher {
    /// The launcher whose variables are set in `env`, if any (MPI's take precedence: `srun`
    /// under a torchrun-style wrapper still sets both).
    pub fn detect(env: impl Fn(&str) -> Option<String>) -> Option<Launcher> {
        const MPI: [&str; 5] = [
            "OMPI_COMM_WORLD_SIZE",
            "PMIX_RANK",
            "PMI_SIZE",
            "PMI_RANK",
            "SLURM_PROCID",
        ];
        if MPI.iter().any(|k| env(k).is_some()) {
            return Some(Launcher::Mpi);
        }
        if env("RANK").is_some() && env("WORLD_SIZE").is_some() {
            return Some(Launcher::Torchrun);
        }
        None
    }
}

/// Joins the world the launcher of this process set up, with `timeout` on every collective.
///
/// CPU ranks run on MPI (`mpirun -np 2 sslab train ... --distributed`); CUDA ranks on NCCL,
/// one GPU each (`LOCAL_RANK`), from torchrun's variables (`torchrun --nproc-per-node 8 sslab
/// train ... --distributed`, feature `nccl`). A process started without a launcher gets an
/// error that says how to launch it. Call it once per process, and keep the world until the
/// end: the last handle dropped finalises MPI.
pub fn init_from_env(timeout: Duration) -> Result<World> {
    match Launcher::detect(|k| std::env::var(k).ok()) {
        Some(Launcher::Mpi) => init_mpi(timeout),
        Some(Launcher::Torchrun) => init_nccl(timeout),
        None => Err(Error::Invalid(
            "--distributed: no launcher found (no OMPI_COMM_WORLD_SIZE, PMI_RANK, PMIX_RANK or \
             SLURM_PROCID for CPU ranks, no RANK/WORLD_SIZE for CUDA ranks in the environment); \
             start the ranks with e.g. `mpirun -np 2 sslab train barlow-twins --distributed` \
             or `torchrun --nproc-per-node 8 sslab train barlow-twins --distributed`"
                .into(),
        )),
    }
}

/// What torchrun (or any launcher that sets its variables) tells a CUDA rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorchrunEnv {
    /// `RANK`.
    pub rank: usize,
    /// `WORLD_SIZE`.
    pub size: usize,
    /// `LOCAL_RANK`, the rank's GPU on its machine (`RANK` when unset, as on one machine).
    pub local_rank: usize,
    /// Where the ranks meet for NCCL's id.
    pub rendezvous: Rendezvous,
}

impl TorchrunEnv {
    /// Reads and checks the variables.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<TorchrunEnv> {
        let num = |key: &str| -> Result<Option<usize>> {
            env(key)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::config(key, format!("'{v}' is not a non-negative whole number"))
                    })
                })
                .transpose()
        };
        let (Some(rank), Some(size)) = (num("RANK")?, num("WORLD_SIZE")?) else {
            return Err(Error::config("RANK", "CUDA ranks need RANK and WORLD_SIZE"));
        };
        if size == 0 || rank >= size {
            return Err(Error::config(
                "RANK",
                format!("rank {rank} is not one of WORLD_SIZE = {size} ranks"),
            ));
        }
        Ok(TorchrunEnv {
            rank,
            size,
            local_rank: num("LOCAL_RANK")?.unwrap_or(rank),
            rendezvous: Rendezvous::from_env(&env)?,
        })
    }
}

#[cfg(feature = "mpi")]
fn init_mpi(timeout: Duration) -> Result<World> {
    Ok(std::sync::Arc::new(MpiWorld::init(timeout)?))
}

#[cfg(not(feature = "mpi"))]
fn init_mpi(_timeout: Duration) -> Result<World> {
    Err(Error::Invalid(
        "this sslab was built without MPI: build it with `cargo build --release -p sslab-repl \
         --features mpi` (needs Open MPI's headers and libclang: apt-get install \
         libopenmpi-dev openmpi-bin libclang-dev)"
            .into(),
    ))
}

/// A CUDA rank on GPU `LOCAL_RANK` in the NCCL world of `WORLD_SIZE` ranks.
#[cfg(feature = "nccl")]
fn init_nccl(timeout: Duration) -> Result<World> {
    let env = TorchrunEnv::from_env(|k| std::env::var(k).ok())?;
    let device = candle_core::Device::new_cuda(env.local_rank)?;
    Ok(std::sync::Arc::new(NcclWorld::init(
        &device,
        env.rank,
        env.size,
        &env.rendezvous,
        timeout,
    )?))
}

#[cfg(not(feature = "nccl"))]
fn init_nccl(_timeout: Duration) -> Result<World> {
    Err(Error::Invalid(
        "RANK/WORLD_SIZE are set as torchrun sets them for CUDA ranks, and this sslab was \
         built without NCCL: build it with `--features cuda,cudnn,nccl` (links libnccl.so.2), \
         or launch CPU ranks with mpirun or srun (docs/distributed.md)"
            .into(),
    ))
}

thread_local! {
    static CURRENT: RefCell<(Option<World>, bool)> = const { RefCell::new((None, true)) };
}

/// Puts `world` in scope on this thread until the guard is dropped (the previous one comes
/// back then): the operations of this module cross ranks only inside such a scope. BatchNorm
/// takes its statistics over every rank's rows ([`sync_bn`]).
pub fn scope(world: Option<World>) -> Scope {
    scope_with(world, true)
}

/// [`scope`], choosing whether BatchNorm's statistics cross ranks (`train.sync_bn`).
pub fn scope_with(world: Option<World>, sync_bn: bool) -> Scope {
    let prev = CURRENT.with(|c| c.replace((world, sync_bn)));
    Scope { prev: Some(prev) }
}

/// The guard of [`scope`].
pub struct Scope {
    prev: Option<(Option<World>, bool)>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(prev) = self.prev.take() {
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
}

/// Whether BatchNorm with one group takes its statistics over every rank's rows (SyncBN) in
/// the current scope, or over this rank's own.
pub fn sync_bn() -> bool {
    CURRENT.with(|c| c.borrow().1)
}

/// The world in scope when it has more than one rank.
pub fn current() -> Option<World> {
    CURRENT.with(|c| c.borrow().0.clone().filter(|w| w.size() > 1))
}

/// `(rank, size)` of the world in scope; `(0, 1)` outside one.
pub fn rank_and_size() -> (usize, usize) {
    current().map_or((0, 1), |w| (w.rank(), w.size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup of the given variables, as `std::env::var` would give them.
    pub(super) fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    /// mpirun, srun and torchrun are told apart by what they set; MPI's variables win where
    /// both are set; no launcher, no world.
    #[test]
    fn launchers_are_recognised_by_their_variables() {
        let mpi = [("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "1")];
        assert_eq!(Launcher::detect(env(&mpi)), Some(Launcher::Mpi));
        assert_eq!(
            Launcher::detect(env(&[("SLURM_PROCID", "0")])),
            Some(Launcher::Mpi)
        );
        let torch = [("RANK", "0"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "node0")];
        assert_eq!(Launcher::detect(env(&torch)), Some(Launcher::Torchrun));
        let t = TorchrunEnv::from_env(env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap();
        assert_eq!((t.rank, t.size, t.local_rank), (5, 8, 1));
        assert_eq!(t.rendezvous, Rendezvous::Tcp("node1:29501".into()));
        let bad_rank = [("RANK", "4"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "a")];
        assert!(TorchrunEnv::from_env(env(&bad_rank)).is_err());
        let no_port = [("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "a")];
        assert!(TorchrunEnv::from_env(env(&no_port)).is_err());
        let local = [("RANK", "x"), ("WORLD_SIZE", "1")];
        assert!(TorchrunEnv::from_env(env(&local)).is_err());
        let both = [("RANK", "0"), ("WORLD_SIZE", "4"), ("PMI_RANK", "0")];
        assert_eq!(Launcher::detect(env(&both)), Some(Launcher::Mpi));
        assert_eq!(Launcher::detect(env(&[("RANK", "0")])), None);
        assert_eq!(Launcher::detect(env(&[])), None);
    }

    /// Outside a scope, and in a world of one, the collective operations are the identity and
    /// BatchNorm syncs by default.
    #[test]
    fn outside_a_world_the_operations_are_the_identity() {
        let t = candle_core::Tensor::new(&[1f32, 2.0, 3.0], &candle_core::Device::Cpu).unwrap();
        assert!(current().is_none());
        assert_eq!(rank_and_size(), (0, 1));
        assert!(sync_bn());
        let s = all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(s, vec![1.0, 2.0, 3.0]);
        let g = gather_detached(&t).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![1.0, 2.0, 3.0]);
        let _off = scope_with(None, false);
        assert!(!sync_bn());
    }
}
