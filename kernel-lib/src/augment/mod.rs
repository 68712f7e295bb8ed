//! Augmentations on plain image buffers: crops whose geometry is kept (so the exact map between
//! two views of one image is known), flips, colour jitter in random order, grayscale, Gaussian
//! blur, solarize, normalisation, and the two-view recipes of each method.
//!
//! Semantics follow torchvision/PIL as used by the official code (docs/recipes.md §0.7). Everything
//! here is pure CPU code over `Vec`s: no tensors, no device.

mod blur;
mod color;
mod geometry;
mod image;
mod recipe;

pub use blur::gaussian_blur;
pub use color::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, color_jitter, grayscale,
    normalize, solarize, JitterParams,
};
pub use geometry::{random_resized_crop_box, resized_crop, CropBox, Interpolation};
pub use image::{FloatImage, Image};
pub use recipe::{RecipeName, TwoViewRecipe, View, ViewAug, IMAGENET_MEAN, IMAGENET_STD};
