//! Evaluation of learned representations: the weighted kNN monitor, the linear probe and the
//! dense linear probe.

mod dense_probe;
mod knn;
mod linear_probe;

pub use dense_probe::{dense_probe, mask_to_grid, DenseProbeResult, DenseProbeSettings};
pub use knn::{
    eval_input, extract_features, extract_features_across, knn_eval, knn_eval_across, knn_predict,
    map_batches, KnnResult, KnnSettings,
};
pub use linear_probe::{
    linear_probe, linear_probe_on_features, LinearProbeResult, LinearProbeSettings, ProbeSchedule,
};
