//! Ranks as threads of one process: a [`Collective`] over shared memory, for tests and
//! experiments that want several ranks without a launcher or MPI.

use crate::error::{Error, Result};
use crate::kernels::{Collective, World};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One rank of a world whose ranks are threads of this process ([`ThreadWorld::ranks`] makes
/// all of them; hand one to each thread). Every collective is an exchange of each rank's
/// values: the sums add them in rank order, so every rank gets the same bits, and a rank
/// that does not arrive within the timeout makes the others' call fail instead of hang.
///
/// ```
/// use sslab::dist::{Collective, ThreadWorld};
/// use std::time::Duration;
/// let ranks = ThreadWorld::ranks(2, Duration::from_secs(10));
/// let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
///     let handles: Vec<_> = ranks
///         .iter()
///         .map(|w| {
///             s.spawn(move || {
///                 let mut v = vec![w.rank() as f32 + 1.0; 3];
///                 w.all_reduce_sum(&mut v).map(|_| v)
///             })
///         })
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect::<sslab::Result<_>>()
/// })?;
/// assert_eq!(sums, vec![vec![3.0; 3], vec![3.0; 3]]);
/// # Ok::<(), sslab::Error>(())
/// ```
pub struct ThreadWorld {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    timeout: Duration,
    round: Mutex<Round>,
    done: Condvar,
}

/// The exchange in progress: what the ranks that arrived have put in, and the last
/// completed exchange's values, which every rank of it reads before any can complete the
/// next one (that needs all of them to arrive again).
#[derive(Default)]
struct Round {
    generation: u64,
    slots: Vec<Option<Vec<f64>>>,
    arrived: usize,
    result: Arc<Vec<Vec<f64>>>,
}

impl ThreadWorld {
    /// The `size` ranks of a new world, rank `i` at index `i`, each collective giving up after
    /// `timeout`.
    pub fn ranks(size: usize, timeout: Duration) -> Vec<World> {
        let shared = Arc::new(Shared {
            size: size.max(1),
            timeout,
            round: Mutex::new(Round {
                slots: vec![None; size.max(1)],
                ..Round::default()
            }),
            done: Condvar::new(),
        });
        (0..size.max(1))
            .map(|rank| {
                Arc::new(ThreadWorld {
                    rank,
                    shared: shared.clone(),
                }) as World
            })
            .collect()
    }

    /// Every rank's `mine`, in rank order, once all have called.
    fn exchange(&self, mine: Vec<f64>, what: &str) -> Result<Arc<Vec<Vec<f64>>>> {
        let s = &*self.shared;
        let poisoned = || Error::Invalid(format!("{what}: another rank's thread panicked"));
        let mut r = s.round.lock().map_err(|_| poisoned())?;
        r.slots[self.rank] = Some(mine);
        r.arrived += 1;
        let generation = r.generation;
        if r.arrived == s.size {
            let all = r.slots.iter_mut().map(|v| v.take().unwrap_or_default());
            r.result = Arc::new(all.collect());
            r.arrived = 0;
            r.generation += 1;
            s.done.notify_all();
            return Ok(r.result.clone());
        }
        let deadline = Instant::now() + s.timeout;
        while r.generation == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Invalid(format!(
                    "{what}: rank {} waited {:?} for the other ranks of {} (threads)",
                    self.rank, s.timeout, s.size
                )));
            }
            r = s.done.wait_timeout(r, left).map_err(|_| poisoned())?.0;
        }
        Ok(r.result.clone())
    }

    /// Every rank's values must have the length of this rank's.
    fn same_lengths(&self, all: &[Vec<f64>], what: &str) -> Result<()> {
        let len = all[self.rank].len();
        match all.iter().position(|v| v.len() != len) {
            None => Ok(()),
            Some(other) => Err(Error::Shape(format!(
                "{what}: rank {} has {len} values, rank {other} {}",
                self.rank,
                all[other].len()
            ))),
        }
    }

    fn sum(&self, data: &[f64], what: &str) -> Result<Vec<f64>> {
        let all = self.exchange(data.to_vec(), what)?;
        self.same_lengths(&all, what)?;
        let mut out = vec![0f64; data.len()];
        for v in all.iter() {
            out.iter_mut().zip(v).for_each(|(o, x)| *o += x);
        }
        Ok(out)
    }
}

impl Collective for ThreadWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn backend(&self) -> &'static str {
        "threads"
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()> {
        // Added in f32 in rank order, as an f32 reduction would.
        let all = self.exchange(data.iter().map(|&x| x as f64).collect(), "all-reduce")?;
        self.same_lengths(&all, "all-reduce")?;
        data.fill(0.0);
        for v in all.iter() {
            data.iter_mut().zip(v).for_each(|(o, x)| *o += *x as f32);
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
        let s = self.sum(data, "all-reduce (f64)")?;
        data.copy_from_slice(&s);
        Ok(())
    }

    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>> {
        let all = self.exchange(local.iter().map(|&x| x as f64).collect(), "all-gather")?;
        self.same_lengths(&all, "all-gather")?;
        Ok(all.iter().flatten().map(|&x| x as f32).collect())
    }

    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()> {
        if root >= self.shared.size {
            return Err(Error::Invalid(format!(
                "broadcast from rank {root} in a world of {}",
                self.shared.size
            )));
        }
        let all = self.exchange(data.iter().map(|&x| x as f64).collect(), "broadcast")?;
        self.same_lengths(&all, "broadcast")?;
        data.iter_mut()
            .zip(&all[root])
            .for_each(|(o, x)| *o = *x as f32);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(Vec::new(), "barrier").map(|_| ())
    }

    /// Ends the whole process: its ranks are its threads.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
