//! One error type for the whole library.
//!
//! Notebooks lose every variable on a panic, so anything a user can get wrong (a config value, a
//! file, a shape) surfaces here as a message that names the culprit instead.

use std::path::PathBuf;

/// Everything that can go wrong in sslab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing, unknown or out of range; `key` is its dotted path.
    #[error("config: {key}: {msg}")]
    Config { key: String, msg: String },
    /// A data file or folder is unreadable or malformed.
    #[error("data file {path}: {msg}")]
    Data { path: PathBuf, msg: String },
    /// A tensor had the wrong shape or dtype for the call.
    #[error("shape: {0}")]
    Shape(String),
    /// Training produced a non-finite loss; the step was not applied.
    #[error("non-finite loss at step {step}: {loss} ({parts}); the step was not applied and the run is as it was after the previous step: lower the learning rate or check the data")]
    NonFinite {
        step: usize,
        loss: f32,
        /// The loss parts at that step, `name=value` pairs.
        parts: String,
    },
    /// Backpropagation produced a non-finite gradient from a finite loss; the step was not
    /// applied.
    #[error("non-finite gradient at step {step} in '{param}' (a NaN, an infinity, or values whose sum overflows f32; the loss, {loss}, was finite); the step was not applied and the run is as it was after the previous step: lower the learning rate, or look for an operation that divides by zero")]
    NonFiniteGradient {
        step: usize,
        loss: f32,
        /// The first parameter whose gradient sums to a NaN or infinity.
        param: String,
    },
    /// A general invalid argument (unknown preset, empty dataset, ...).
    #[error("{0}")]
    Invalid(String),
    /// An error raised inside candle.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// Plain I/O without a more specific file context.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias used throughout sslab.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
