//! ResNet-18/34/50 in torchvision's layout (v1.5: the stride of a bottleneck sits on its 3×3
//! conv), with the ImageNet stem (7×7/2 conv + 3×3/2 max-pool) or the CIFAR stem (3×3/1 conv,
//! no max-pool), an optional width multiplier for CPU-sized models, and `zero_init_residual`.
//! The forward pass returns the last feature map (for dense methods) and its global average.

use super::batchnorm::BatchNorm;
use super::layers::Conv2d;
use super::params::ParamBuilder;
use crate::error::{Error, Result};
use crate::kernels::add_relu;
use candle_core::Tensor;

/// Network depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Depth {
    #[serde(rename = "resnet18")]
    R18,
    #[serde(rename = "resnet34")]
    R34,
    #[serde(rename = "resnet50")]
    R50,
}

/// First layers of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7×7 stride-2 conv, BN, ReLU, 3×3 stride-2 max-pool (224-px images).
    Imagenet,
    /// 3×3 stride-1 conv, BN, ReLU, no max-pool (32-px images).
    Cifar,
}

/// What to build.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResNetConfig {
    pub depth: Depth,
    pub stem: Stem,
    /// Channels of the first stage (64 in the papers); later stages double it.
    pub width: usize,
    /// Start the last BN of every residual block at γ = 0 (MoCo v3, Barlow Twins).
    pub zero_init_residual: bool,
}

/// Output of a forward pass.
#[derive(Clone, Debug)]
pub struct ResNetOutput {
    /// Last stage's feature map, `(n, c, h, w)`.
    pub feature_map: Tensor,
    /// Global average of the map, `(n, c)`: the "representation".
    pub pooled: Tensor,
}

#[derive(Clone, Debug)]
struct Block {
    convs: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

/// How a forward pass lays out its activations and what that changes per layer.
#[derive(Clone, Copy, Debug)]
struct Forward {
    train: bool,
    /// BatchNorm groups (see [`ResNet::set_bn_splits`]).
    splits: usize,
    /// NHWC activations (`kernels::set_channels_last`) instead of NCHW.
    channels_last: bool,
}

impl Forward {
    fn conv(&self, conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
        if self.channels_last {
            return conv.forward_channels_last(x);
        }
        conv.forward(x)
    }

    /// BatchNorm, then a ReLU when `relu`.
    fn bn(&self, bn: &BatchNorm, x: &Tensor, relu: bool) -> Result<Tensor> {
        match (self.channels_last, relu) {
            (true, _) => bn.forward_channels_last(x, self.train, self.splits, relu),
            (false, true) => bn.forward_split_relu(x, self.train, self.splits),
            (false, false) => bn.forward_split(x, self.train, self.splits),
        }
    }
}

impl Block {
    fn forward_t(&self, x: &Tensor, pass: Forward) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = pass.bn(bn, &pass.conv(conv, &h)?, i < last)?;
        }
        let shortcut = match &self.downsample {
            Some((c, bn)) => pass.bn(bn, &pass.conv(c, x)?, false)?,
            None => x.clone(),
        };
        add_relu(&h, &shortcut)
    }
}

/// The ImageNet stem's 3×3 stride-2 max-pool with padding 1, as the maximum of nine strided
/// views. candle's `max_pool2d` has no backward when windows overlap (kernel ≠ stride), so the
/// pool is built from ops that have one. Padding replicates the edge, which for a max is the
/// same as padding with −∞.
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    pool_over(x, (2, 3))
}

/// [`max_pool_3x3_s2_p1`] over the spatial axes `(ya, xa)`: (2, 3) for NCHW, (1, 2) for NHWC.
fn pool_over(x: &Tensor, (ya, xa): (usize, usize)) -> Result<Tensor> {
    x.dims4()?;
    let (h, w) = (x.dim(ya)?, x.dim(xa)?);
    let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // Pad so every view `start .. start + 2·out` (start ≤ 2) fits.
    let x = x
        .pad_with_same(ya, 1, (2 * ho + 1).saturating_sub(h))?
        .pad_with_same(xa, 1, (2 * wo + 1).saturating_sub(w))?;
    let strided = |t: &Tensor, dim: usize, start: usize, out: usize| -> Result<Tensor> {
        let t = t.narrow(dim, start, 2 * out)?;
        let mut shape = t.dims().to_vec();
        shape[dim] = out;
        shape.insert(dim + 1, 2);
        Ok(t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?)
    };
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = strided(&x, ya, dy, ho)?;
        for dx in 0..3 {
            let v = strided(&rows, xa, dx, wo)?;
            out = Some(match out {
                Some(m) => m.maximum(&v)?,
                None => v,
            });
        }
    }
    out.ok_or_else(|| Error::Shape("empty max-pool window".into()))
}

/// A ResNet backbone without its classifier.
#[derive(Clone, Debug)]
pub struct ResNet {
    stem: (Conv2d, BatchNorm),
    maxpool: bool,
    blocks: Vec<Block>,
    out_dim: usize,
    bn_splits: usize,
}

impl ResNet {
    /// Builds the network under the name prefix `name`.
    pub fn new(b: &mut ParamBuilder, name: &str, cfg: &ResNetConfig) -> Result<Self> {
        if cfg.width == 0 {
            return Err(Error::config("model.width", "must be positive"));
        }
        let (counts, bottleneck): ([usize; 4], bool) = match cfg.depth {
            Depth::R18 => ([2, 2, 2, 2], false),
            Depth::R34 => ([3, 4, 6, 3], false),
            Depth::R50 => ([3, 4, 6, 3], true),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let w = cfg.width;
        let stem = match cfg.stem {
            Stem::Imagenet => Conv2d::new(b, &format!("{name}.conv1"), 3, w, 7, 2, 3)?,
            Stem::Cifar => Conv2d::new(b, &format!("{name}.conv1"), 3, w, 3, 1, 1)?,
        };
        let stem_bn = BatchNorm::new(b, &format!("{name}.bn1"), w, true, 1.0)?;
        let gamma_last = if cfg.zero_init_residual { 0.0 } else { 1.0 };
        let mut blocks = Vec::new();
        let mut inp = w;
        for (stage, &count) in counts.iter().enumerate() {
            let planes = w << stage;
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let p = format!("{name}.layer{}.{i}", stage + 1);
                let out = planes * expansion;
                let mut convs = Vec::new();
                if bottleneck {
                    let specs = [
                        (inp, planes, 1, 1, 0),
                        (planes, planes, 3, stride, 1),
                        (planes, out, 1, 1, 0),
                    ];
                    for (j, (ci, co, k, s, pad)) in specs.into_iter().enumerate() {
                        let conv =
                            Conv2d::new(b, &format!("{p}.conv{}", j + 1), ci, co, k, s, pad)?;
                        let g = if j == 2 { gamma_last } else { 1.0 };
                        convs.push((
                            conv,
                            BatchNorm::new(b, &format!("{p}.bn{}", j + 1), co, true, g)?,
                        ));
                    }
                } else {
                    let specs = [(inp, planes, stride), (planes, planes, 1)];
                    for (j, (ci, co, s)) in specs.into_iter().enumerate() {
                        let conv = Conv2d::new(b, &format!("{p}.conv{}", j + 1), ci, co, 3, s, 1)?;
                        let g = if j == 1 { gamma_last } else { 1.0 };
                        convs.push((
                            conv,
                            BatchNorm::new(b, &format!("{p}.bn{}", j + 1), co, true, g)?,
                        ));
                    }
                }
                let downsample = if stride != 1 || inp != out {
                    Some((
                        Conv2d::new(b, &format!("{p}.downsample.0"), inp, out, 1, stride, 0)?,
                        BatchNorm::new(b, &format!("{p}.downsample.1"), out, true, 1.0)?,
                    ))
                } else {
                    None
                };
                blocks.push(Block { convs, downsample });
                inp = out;
            }
        }
        Ok(ResNet {
            stem: (stem, stem_bn),
            maxpool: cfg.stem == Stem::Imagenet,
            blocks,
            out_dim: inp,
            bn_splits: 1,
        })
    }

    /// Width of the pooled representation (512·width/64 for ResNet-18/34, 2048·width/64 for 50).
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Normalises training batches in `splits` groups ([`BatchNorm::forward_split`]): MoCo's
    /// single-device stand-in for per-GPU BatchNorm. 1 (the default) is plain BN.
    pub fn set_bn_splits(&mut self, splits: usize) {
        self.bn_splits = splits.max(1);
    }

    /// Number of BatchNorm groups in training mode.
    pub fn bn_splits(&self) -> usize {
        self.bn_splits
    }

    /// Runs the network on NCHW images.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<ResNetOutput> {
        if x.rank() != 4 || x.dim(1)? != 3 {
            return Err(Error::Shape(format!(
                "ResNet expects (n, 3, h, w) images, got {:?}",
                x.dims()
            )));
        }
        let pass = Forward {
            train,
            splits: self.bn_splits,
            channels_last: crate::kernels::channels_last_on(x.device()),
        };
        // Channels-last: converted once here, back at the outputs.
        let x = if pass.channels_last {
            x.permute((0, 2, 3, 1))?.contiguous()?
        } else {
            x.clone()
        };
        let mut h = pass.bn(&self.stem.1, &pass.conv(&self.stem.0, &x)?, true)?;
        if self.maxpool {
            let spatial = if pass.channels_last { (1, 2) } else { (2, 3) };
            h = pool_over(&h, spatial)?;
        }
        for b in &self.blocks {
            h = b.forward_t(&h, pass)?;
        }
        // The network's outputs are f32 whatever its activations were (bf16 under a bf16
        // autocast on CUDA, `kernels::precision`): the pool then sums in f32 and what follows
        // (heads, losses, dense correspondence) never sees bf16. They are NCHW either way.
        let h = h.to_dtype(candle_core::DType::F32)?;
        let h = if pass.channels_last {
            h.permute((0, 3, 1, 2))?.contiguous()?
        } else {
            h
        };
        let pooled = h.mean((2, 3))?;
        Ok(ResNetOutput {
            feature_map: h,
            pooled,
        })
    }
}
