//! Per-method two-view recipes (docs/recipes.md §1.5, §2.7, §3.3, §6).

use super::blur::gaussian_blur;
use super::color::{color_jitter, grayscale, normalize, solarize, JitterParams};
use super::geometry::{random_resized_crop_box, resized_crop, CropBox, Interpolation};
use super::image::Image;
use rand::Rng;
use serde::Deserialize;

/// ImageNet channel means, used by every ImageNet recipe and by lightly on CIFAR.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// CIFAR-10 constants of the official MoCo CIFAR demo.
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 standard deviations of the official MoCo CIFAR demo.
pub const CIFAR_STD: [f32; 3] = [0.2023, 0.1994, 0.2010];

/// One view's pipeline: crop → flip → jitter → grayscale → blur → solarize → normalise (with
/// grayscale optionally before jitter, as in MoCo v1). Flip commutes with the colour operations,
/// so its place in the official orders does not matter.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewAug {
    pub size: usize,
    pub scale: (f32, f32),
    pub ratio: (f32, f32),
    pub interpolation: Interpolation,
    pub flip_p: f32,
    pub jitter: JitterParams,
    pub jitter_p: f32,
    pub gray_p: f32,
    /// MoCo v1 applies grayscale before the jitter.
    pub gray_before_jitter: bool,
    pub blur_p: f32,
    pub blur_sigma: (f32, f32),
    pub solarize_p: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// One augmented view: CHW floats, ready for a tensor, and where it came from.
#[derive(Clone, Debug)]
pub struct View {
    pub chw: Vec<f32>,
    pub crop: CropBox,
}

impl ViewAug {
    fn base(size: usize, scale_min: f32) -> Self {
        ViewAug {
            size,
            scale: (scale_min, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            interpolation: Interpolation::Bilinear,
            flip_p: 0.5,
            jitter: JitterParams {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.4,
                hue: 0.1,
            },
            jitter_p: 0.8,
            gray_p: 0.2,
            gray_before_jitter: false,
            blur_p: 0.0,
            blur_sigma: (0.1, 2.0),
            solarize_p: 0.0,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Applies the pipeline to one image.
    pub fn apply<R: Rng>(&self, img: &Image, rng: &mut R) -> View {
        let (x, y, w, h) =
            random_resized_crop_box(rng, img.width, img.height, self.scale, self.ratio);
        let mut f = resized_crop(img, (x, y, w, h), self.size, self.size, self.interpolation);
        let flipped = rng.gen::<f32>() < self.flip_p;
        if flipped {
            f.flip_horizontal();
        }
        let gray = |f: &mut _, rng: &mut R| {
            if rng.gen::<f32>() < self.gray_p {
                grayscale(f);
            }
        };
        if self.gray_before_jitter {
            gray(&mut f, rng);
        }
        if rng.gen::<f32>() < self.jitter_p {
            color_jitter(&mut f, &self.jitter, rng);
        }
        if !self.gray_before_jitter {
            gray(&mut f, rng);
        }
        if rng.gen::<f32>() < self.blur_p {
            gaussian_blur(&mut f, rng.gen_range(self.blur_sigma.0..=self.blur_sigma.1));
        }
        if rng.gen::<f32>() < self.solarize_p {
            solarize(&mut f);
        }
        normalize(&mut f, self.mean, self.std);
        View {
            chw: f.to_chw(),
            crop: CropBox {
                x,
                y,
                w,
                h,
                out_w: self.size,
                out_h: self.size,
                flipped,
            },
        }
    }
}

config_names! {
    /// The named two-view recipes (`augment.recipe`): each method's own, BYOL's, and the 32-px
    /// CIFAR variants. The names are serde's kebab-case of the variants (`moco-v2-cifar`).
    pub enum RecipeName {
        MocoV1,
        MocoV2,
        Byol,
        BarlowTwins,
        MocoV3,
        MocoV2Cifar,
        ByolCifar,
    }
}

impl RecipeName {
    /// The recipe a name means, if any.
    pub fn parse(name: &str) -> Option<Self> {
        use serde::de::IntoDeserializer;
        let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            name.into_deserializer();
        Self::deserialize(de).ok()
    }
}

/// The two views' pipelines of a method (identical for symmetric recipes).
#[derive(Clone, Debug, PartialEq)]
pub struct TwoViewRecipe {
    pub name: String,
    pub a: ViewAug,
    pub b: ViewAug,
}

impl TwoViewRecipe {
    /// A recipe by name at output size `size` with crop scale lower bound `scale_min` (`None`:
    /// the recipe's own). `byol` is the asymmetric BYOL recipe shared by Barlow Twins (bicubic)
    /// and MoCo v3 (bilinear); the `-cifar` variants are the 32-px recipes of docs/recipes.md §6.
    pub fn named(name: &str, size: usize, scale_min: Option<f32>) -> Option<Self> {
        Some(Self::new(RecipeName::parse(name)?, size, scale_min))
    }

    /// The recipe `name` at output size `size` with crop scale lower bound `scale_min`
    /// (`None`: the recipe's own).
    pub fn new(name: RecipeName, size: usize, scale_min: Option<f32>) -> Self {
        let byol = |interp, smin: f32, blur_a: f32, blur_b: f32| {
            let mut a = ViewAug::base(size, scale_min.unwrap_or(smin));
            a.interpolation = interp;
            a.jitter.saturation = 0.2;
            a.blur_p = blur_a;
            let mut b = a.clone();
            b.blur_p = blur_b;
            b.solarize_p = 0.2;
            (a, b)
        };
        let (a, b) = match name {
            RecipeName::MocoV1 => {
                let mut a = ViewAug::base(size, scale_min.unwrap_or(0.2));
                a.jitter.hue = 0.4;
                a.jitter_p = 1.0;
                a.gray_before_jitter = true;
                (a.clone(), a)
            }
            RecipeName::MocoV2 => {
                let mut a = ViewAug::base(size, scale_min.unwrap_or(0.2));
                a.blur_p = 0.5;
                (a.clone(), a)
            }
            RecipeName::Byol | RecipeName::MocoV3 => byol(Interpolation::Bilinear, 0.08, 1.0, 0.1),
            RecipeName::BarlowTwins => byol(Interpolation::Bicubic, 0.08, 1.0, 0.1),
            RecipeName::MocoV2Cifar => {
                let mut a = ViewAug::base(size, scale_min.unwrap_or(0.08));
                a.mean = CIFAR_MEAN;
                a.std = CIFAR_STD;
                (a.clone(), a)
            }
            RecipeName::ByolCifar => {
                let (mut a, mut b) = byol(Interpolation::Bilinear, 0.08, 0.0, 0.0);
                for v in [&mut a, &mut b] {
                    v.mean = CIFAR_MEAN;
                    v.std = CIFAR_STD;
                }
                (a, b)
            }
        };
        TwoViewRecipe {
            name: name.as_str().to_string(),
            a,
            b,
        }
    }
}
