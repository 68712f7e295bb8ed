//! Evaluation of learned representations: the weighted kNN monitor and the dense linear probe.

mod dense_probe;
mod knn;

pub use dense_probe::{dense_probe, mask_to_grid, DenseProbeResult, DenseProbeSettings};
pub use knn::{extract_features, knn_eval, knn_predict, map_batches, KnnResult, KnnSettings};
