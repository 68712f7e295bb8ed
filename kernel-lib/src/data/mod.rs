//! Datasets: the `Dataset` trait, the built-in procedural shapes (the default, no download),
//! readers for CIFAR-10/100 binary, MNIST/Fashion-MNIST IDX and image folders, and the
//! prefetching two-view loader.

mod cifar;
mod folder;
mod idx;
mod loader;
mod shapes;
mod source;

pub use crate::augment::Image;
pub use cifar::{read_cifar100_bin, read_cifar10_bin};
pub use folder::{read_image_folder, write_image_folder};
pub use idx::{read_idx_images, read_idx_labels};
pub use loader::{make_batch, make_shard, Batch, Loader, Shard};
pub use shapes::{Shapes, ShapesConfig, SHAPE_NAMES};
pub use source::{DataSource, Split};

/// A labelled image collection. Images are u8 HWC, RGB or gray; a mask, where present, gives a
/// per-pixel class id (0 = background, `label + 1` = object).
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether the dataset has no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `i`-th image.
    fn image(&self, i: usize) -> &Image;
    /// The `i`-th label, in `0..num_classes()`.
    fn label(&self, i: usize) -> usize;
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Class names, index = label.
    fn class_names(&self) -> &[String];
    /// The `i`-th per-pixel mask (H × W), if the dataset has masks.
    fn mask(&self, _i: usize) -> Option<&[u8]> {
        None
    }
    /// A short description, e.g. `cifar10 train (4000 images)`.
    fn name(&self) -> &str;
}

/// A dataset held in memory: what every reader returns.
#[derive(Clone, Debug)]
pub struct InMemoryDataset {
    pub name: String,
    pub images: Vec<Image>,
    pub labels: Vec<usize>,
    pub masks: Option<Vec<Vec<u8>>>,
    pub class_names: Vec<String>,
}

impl Dataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn image(&self, i: usize) -> &Image {
        &self.images[i]
    }
    fn label(&self, i: usize) -> usize {
        self.labels[i]
    }
    fn num_classes(&self) -> usize {
        self.class_names.len()
    }
    fn class_names(&self) -> &[String] {
        &self.class_names
    }
    fn mask(&self, i: usize) -> Option<&[u8]> {
        self.masks.as_ref().map(|m| m[i].as_slice())
    }
    fn name(&self) -> &str {
        &self.name
    }
}
