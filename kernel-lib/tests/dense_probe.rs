//! The dense linear probe: mask reduction to the grid, and a probe that must score perfectly
//! when the features encode the mask (and at chance-like levels when they do not).

use candle_core::{Device, Tensor};
use sslab::augment::{Image, TwoViewRecipe};
use sslab::data::InMemoryDataset;
use sslab::eval::{dense_probe, mask_to_grid, DenseProbeSettings};
use sslab::methods::{ForwardOutput, Method};
use sslab::models::ParamStore;
use sslab::Result;

#[test]
fn masks_reduce_to_the_grid_by_majority() {
    // 4×4 mask, 2×2 grid: cells of 2×2 pixels.
    #[rustfmt::skip]
    let mask = [
        0, 0, 1, 1,
        0, 2, 1, 0,
        3, 3, 2, 2,
        3, 0, 2, 0,
    ];
    assert_eq!(mask_to_grid(&mask, 4, 2, 2, 4), vec![0, 1, 3, 2]);
    // A tie goes to the lower value.
    assert_eq!(mask_to_grid(&[1, 2, 2, 1], 2, 1, 1, 3), vec![1]);
}

/// A "backbone" whose 4×4 feature map is the average-pooled input colour: a perfect dense
/// representation for data whose colour is the mask.
struct Pool {
    params: ParamStore,
    scramble: bool,
}

impl Method for Pool {
    fn name(&self) -> &'static str {
        "pool"
    }
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn forward_train(&mut self, _: &Tensor, _: &Tensor) -> Result<ForwardOutput> {
        Err(sslab::Error::Invalid("not trainable".into()))
    }
    fn features(&self, images: &Tensor) -> Result<Tensor> {
        Ok(images.mean((2, 3))?)
    }
    fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        let m = images.avg_pool2d(4)?;
        if self.scramble {
            // Features unrelated to the location: the image's mean colour everywhere.
            let n = m.dim(0)?;
            return Ok(images
                .mean_keepdim((2, 3))?
                .broadcast_as((n, 3, 4, 4))?
                .contiguous()?);
        }
        Ok(m)
    }
}

/// 16×16 images: a background and an object quadrant whose colour codes its class (1..=3).
fn data(n: usize, seed: usize) -> InMemoryDataset {
    let colours = [[0u8, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]];
    let mut images = Vec::new();
    let mut masks = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let class = (i + seed) % 3;
        let quadrant = (i / 3 + seed) % 4;
        let (qx, qy) = (quadrant % 2, quadrant / 2);
        let mut px = vec![0u8; 16 * 16 * 3];
        let mut mask = vec![0u8; 16 * 16];
        for y in 0..16 {
            for x in 0..16 {
                let inside = x / 8 == qx && y / 8 == qy;
                let v = if inside { class as u8 + 1 } else { 0 };
                mask[y * 16 + x] = v;
                px[(y * 16 + x) * 3..][..3].copy_from_slice(&colours[v as usize]);
            }
        }
        images.push(Image::new(16, 16, 3, px).unwrap());
        masks.push(mask);
        labels.push(class);
    }
    InMemoryDataset {
        name: "quadrants".into(),
        images,
        labels,
        masks: Some(masks),
        class_names: vec!["r".into(), "g".into(), "b".into()],
    }
}

#[test]
fn probe_scores_perfectly_when_features_encode_the_mask() {
    let dev = Device::Cpu;
    let recipe = TwoViewRecipe::named("moco-v2-cifar", 16, None).unwrap();
    let (train, test) = (data(48, 0), data(24, 1));
    let settings = DenseProbeSettings {
        steps: 200,
        lr: 0.05,
        ..DenseProbeSettings::default()
    };
    let good = Pool {
        params: ParamStore::default(),
        scramble: false,
    };
    let r = dense_probe(&good, (&train, &test), &recipe, settings, &dev).unwrap();
    assert_eq!(r.grid, (4, 4));
    assert!(r.pixel_acc > 99.9 && r.miou > 99.9, "{r:?}");
    // Location-blind features cannot say which cells hold the object.
    let blind = Pool {
        params: ParamStore::default(),
        scramble: true,
    };
    let r = dense_probe(&blind, (&train, &test), &recipe, settings, &dev).unwrap();
    assert!(r.miou < 60.0, "{r:?}");
    // Datasets without masks are refused with a message.
    let mut no_masks = data(6, 0);
    no_masks.masks = None;
    let err = dense_probe(&good, (&no_masks, &test), &recipe, settings, &dev)
        .unwrap_err()
        .to_string();
    assert!(err.contains("masks"), "{err}");
}
