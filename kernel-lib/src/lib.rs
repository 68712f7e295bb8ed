//! sslab: a self-supervised learning lab on candle.
//!
//! Train and take apart SSL methods step by step from notebooks and the `sslab` REPL. The one
//! entry point is [`train::Run`]:
//!
//! ```no_run
//! use sslab::prelude::*;
//! let mut run = Run::new(RunConfig::preset("barlow-twins/tiny")?)?;
//! let before = run.knn()?;
//! run.train(100)?;
//! println!("kNN {:.1}% -> {:.1}%", before.top1, run.knn()?.top1);
//! # Ok::<(), sslab::Error>(())
//! ```
//!
//! Module map: `augment` (views with known geometry), `data` (datasets, loader), `models`
//! (ResNet, MLP heads, BatchNorm), `objectives` (losses), `methods` (one per SSL method),
//! `optim` (SGD, LARS, AdamW, LAMB, schedules), `eval` (kNN), `train` (`Run`, configs).

// Notebook users lose every variable on a panic: library code returns errors instead.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[macro_use]
mod names;
mod atomic;
pub mod augment;
pub mod data;
pub mod diagnostics;
pub mod dist;
mod error;
pub mod eval;
mod integrity;
pub mod kernels;
pub mod methods;
pub mod models;
pub mod objectives;
pub mod optim;
pub mod plot;
pub mod train;

pub use error::{Error, Result};

/// candle, as sslab builds on it: notebooks can name `sslab::candle::Tensor` without a
/// dependency of their own (and so without a second, mismatched copy).
pub use candle_core as candle;

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Keeps freed memory in the process instead of returning it to the kernel (glibc only).
///
/// Every candle op allocates a fresh buffer; with glibc's defaults large ones are `mmap`ed and
/// unmapped again, so each step re-faults and zeroes its pages (20-70% of a CPU step in
/// `docs/kernels.md`). Raising the mmap and trim thresholds makes the heap reuse
/// them. Called once by `Run::new`; harmless to call again.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only changes glibc's allocation thresholds; any value is valid.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}

/// What a notebook or script needs in one `use`.
pub mod prelude {
    pub use crate::data::Dataset;
    pub use crate::eval::KnnResult;
    pub use crate::methods::Method;
    pub use crate::train::{Run, RunConfig, StepReport, TrainSummary};
    pub use crate::{Error, Result};
}
