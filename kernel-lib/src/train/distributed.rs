//! A [`Run`] on several ranks (docs/distributed.md): each rank loads its share of every
//! global batch, the gradients are averaged over ranks before the optimiser step, and the
//! method's cross-rank parts (SyncBN, Barlow Twins' all-reduced C, MoCo v3's gathered keys,
//! MoCo's ShuffleBN and queue) run through [`crate::dist`] while the step has the world in
//! scope. Every rank then holds the same weights, so any rank's checkpoint resumes on any
//! number of ranks.

use super::run::Run;
use crate::data::{Loader, Shard};
use crate::dist::World;
use crate::error::{Error, Result};
use crate::methods::MethodKind;
use crate::models::ParamStore;
use candle_core::Tensor;

impl Run {
    /// Trains this run on the ranks of `world` from its next step on: this process becomes
    /// rank `world.rank()` and takes that share of every global batch (`train.batch_size`
    /// stays the global batch). Every rank starts from rank 0's weights, momentum encoder,
    /// BatchNorm statistics and queues.
    ///
    /// Refused, with the reason, where ranks cannot train as one process with the global batch
    /// would: a batch that does not divide among the ranks, MoCo's `bn_splits` that does not,
    /// or a device other than the ranks' own (the CPU for MPI, the rank's GPU for NCCL).
    ///
    /// ```no_run
    /// use sslab::prelude::*;
    /// // Under `mpirun -np 2` (a build with the `mpi` feature):
    /// let world = sslab::dist::init_from_env(sslab::dist::DEFAULT_TIMEOUT)?;
    /// let mut run = Run::new(RunConfig::preset("barlow-twins/tiny")?)?;
    /// run.distribute(world)?;
    /// run.train(20)?;
    /// # Ok::<(), sslab::Error>(())
    /// ```
    pub fn distribute(&mut self, world: World) -> Result<()> {
        let size = world.size();
        let batch = self.config.train.batch_size;
        let kind = self.config.method;
        if self.device.location() != world.device().location() {
            return Err(Error::Invalid(format!(
                "this run is on {} and its ranks' collectives ({}) on {:?}: CPU ranks train on \
                 MPI, CUDA ranks on NCCL, each on its GPU (LOCAL_RANK); set the device to match",
                self.device_name(),
                world.backend(),
                world.device()
            )));
        }
        if !batch.is_multiple_of(size) || batch / size < 2 {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "the global batch of {batch} must divide among {size} ranks into shares \
                     of at least 2 (BatchNorm needs two samples)"
                ),
            ));
        }
        if matches!(
            kind,
            MethodKind::MocoV1 | MethodKind::MocoV2 | MethodKind::DenseCl
        ) {
            let splits = self.config.moco.bn_splits;
            if splits > 1 && !splits.is_multiple_of(size) {
                return Err(Error::config(
                    "moco.bn_splits",
                    format!(
                        "{splits} BatchNorm groups do not divide among {size} ranks: use a \
                         multiple of the world size (one group per rank is MoCo's per-GPU \
                         BatchNorm), or 1 for BatchNorm over the global batch"
                    ),
                ));
            }
        }
        for store in self.method.stores() {
            broadcast_store(&world, store)?;
        }
        for (_, q) in self.method.queues_mut() {
            let mut keys = q.keys_by_row().flatten_all()?.to_vec1::<f32>()?;
            world.broadcast(&mut keys, 0)?;
            let t = Tensor::from_vec(keys, q.keys_by_row().shape(), &self.device)?;
            let ptr = q.ptr();
            q.restore(&t, ptr)?;
        }
        self.world = Some(world);
        self.loader = self.loader_at(batch, self.record.steps.len())?;
        Ok(())
    }

    /// This process's rank and the number of ranks (`(0, 1)` for a run on one process).
    pub fn rank_and_size(&self) -> (usize, usize) {
        self.world.as_ref().map_or((0, 1), |w| (w.rank(), w.size()))
    }

    /// Whether this process writes what the run saves: rank 0 (or the only process).
    pub fn is_lead(&self) -> bool {
        self.rank_and_size().0 == 0
    }

    /// This rank's loader of `batch`-sized global batches from `step` on.
    pub(super) fn sharded_loader(&self, batch: usize, step: usize) -> Result<Loader> {
        let (rank, size) = self.rank_and_size();
        Loader::sharded(
            self.train_data.clone(),
            self.recipe.clone(),
            batch,
            self.config.seed,
            step,
            Shard { rank, size },
        )
    }
}

/// Rank 0's tensors of `store` on every rank.
fn broadcast_store(world: &World, store: &ParamStore) -> Result<()> {
    for p in &store.params {
        let t = p.var.as_tensor();
        let mut v = t.flatten_all()?.to_vec1::<f32>()?;
        world.broadcast(&mut v, 0)?;
        p.var.set(&Tensor::from_vec(v, t.shape(), t.device())?)?;
    }
    Ok(())
}
