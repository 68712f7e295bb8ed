//! What happens inside a run, as data that draws itself: gradient spikes per layer,
//! cross-correlation snapshots, dense similarity maps against the crop geometry, and collapse
//! monitors. `train::Run` feeds these; each returns plain data plus a [`crate::plot::Figure`].

mod attention;
mod collapse;
mod correlation;
mod correspondence;
mod embedding;
mod grad_spikes;

pub use attention::AttentionMaps;
pub use collapse::{
    collapse_stats, effective_rank, singular_values, symmetric_eigenvalues, uniformity,
    CollapseStats, RANKME_EPSILON,
};
pub use correlation::{
    correlation_stats, correlation_strip, cross_correlation, CorrelationSnapshot, CorrelationStats,
    CorrelationView,
};
pub use correspondence::{
    correspondence_accuracy, geometric_truth, similarity_map, CorrespondenceAccuracy, SimilarityMap,
};
pub use embedding::{tsne_2d, EmbeddingMap};
pub use grad_spikes::{layer_of, GradSpikeTracker, LayerGroups, Spike, SpikeLead};
