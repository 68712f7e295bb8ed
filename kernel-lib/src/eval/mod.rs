//! Evaluation of learned representations: the weighted kNN monitor.

mod knn;

pub use knn::{extract_features, knn_eval, knn_predict, KnnResult, KnnSettings};
