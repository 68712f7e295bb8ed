//! Pure loss functions over tensors. Each documents its formula, its paper and which
//! convention of the reference code it follows.

mod barlow_twins;

pub use barlow_twins::{barlow_twins_loss, BarlowTwinsLoss};
