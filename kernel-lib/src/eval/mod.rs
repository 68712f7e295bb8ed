//! Evaluation of learned representations: the weighted kNN monitor.

mod knn;

pub(crate) use knn::knn_eval;
pub use knn::{extract_features, knn_predict, KnnResult};
