//! `Run`: the interactive handle notebooks and the REPL share (step, train n, evaluate), its
//! configuration and presets, and the per-step history.

mod checkpoint;
mod config;
mod device;
mod distributed;
mod folders;
mod inspect;
mod metrics_log;
mod monitors;
mod presets;
mod record;
mod run;
mod schedule;
mod summary;
mod sweep;
mod trace;
mod tune;

pub use config::{
    AugmentConfig, BarlowTwinsConfig, CudaConfig, DataConfig, DiagnosticsConfig, EvalConfig,
    ModelConfig, OptimConfig, RunConfig, TrainConfig,
};
pub use device::select_device;
pub use folders::FolderLock;
pub use inspect::{Diagnostic, FeatureSource};
pub use presets::{preset_id, PRESETS};
pub use record::{Record, StepReport, TrainSummary};
pub use run::Run;
pub use schedule::Schedule;
pub use summary::{Evaluations, RunSummary};
pub use sweep::{Sweep, SweepCell, SweepResults};
pub use trace::StepTrace;
