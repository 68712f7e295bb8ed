//! Vision Transformer as MoCo v3 builds it (docs/recipes.md §2.4; timm 0.4.9 `VisionTransformer` with
//! MoCo v3's `vits.py` changes): patch embedding, [CLS] token, fixed 2-D sin-cos position
//! embedding, pre-norm blocks, final LayerNorm, output = the [CLS] token.
//!
//! LayerNorm, attention (straight from the fused qkv projection, no head-split copies) and GELU
//! are sslab's kernels with explicit backward passes (CPU and CUDA), or tensor ops elsewhere:
//! candle's fused versions have no backward and would silently stop the gradient
//! (docs/kernels.md).

use super::layers::Linear;
use super::params::{Init, ParamBuilder, ParamKind};
use crate::error::{Error, Result};
use crate::kernels::{attention_for_product, attention_probabilities, layer_norm};
use crate::kernels::{gelu_for_product, layer_norm_for_product};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// Named ViT sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VitSize {
    /// 192 wide, 3 heads.
    Tiny,
    /// 384 wide, 12 heads (MoCo v3's ViT-S, not DeiT's 6).
    Small,
    /// 768 wide, 12 heads.
    Base,
}

/// A ViT's shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VitConfig {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    /// Patch side (16 at 224 px, 4 at 32 px).
    pub patch: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Keep the patch projection at its random initialisation (MoCo v3 §4.2's fix).
    pub frozen_patch_projection: bool,
}

impl VitConfig {
    /// The named size at `depth` blocks (12 in the paper; shallower for CPU presets).
    pub fn sized(size: VitSize, depth: usize, patch: usize, image_size: usize) -> Self {
        let (dim, heads) = match size {
            VitSize::Tiny => (192, 3),
            VitSize::Small => (384, 12),
            VitSize::Base => (768, 12),
        };
        VitConfig {
            dim,
            depth,
            heads,
            patch,
            image_size,
            frozen_patch_projection: false,
        }
    }
}

/// The fixed 2-D sin-cos position embedding `(1 + h·w, dim)`: row 0 ([CLS]) is zero; token
/// `1 + r·w + c` holds `[sin(r·ω), cos(r·ω), sin(c·ω), cos(c·ω)]` with `ω_d = 10000^(−d/P)`,
/// `P = dim/4`. The first half varies with the row, as MoCo v3's code does (its `meshgrid` is
/// ij-indexed although the variable is called `w`).
pub fn sincos_position_embedding(h: usize, w: usize, dim: usize) -> Result<Vec<f32>> {
    if !dim.is_multiple_of(4) || dim == 0 {
        return Err(Error::config(
            "model.vit",
            format!("width {dim} must be a positive multiple of 4 for the sin-cos embedding"),
        ));
    }
    let p = dim / 4;
    let mut out = vec![0f32; (1 + h * w) * dim];
    for r in 0..h {
        for c in 0..w {
            let row = &mut out[(1 + r * w + c) * dim..][..dim];
            for d in 0..p {
                let omega = 1.0 / 10000f64.powf(d as f64 / p as f64);
                let (a, b) = (r as f64 * omega, c as f64 * omega);
                row[d] = a.sin() as f32;
                row[p + d] = a.cos() as f32;
                row[2 * p + d] = b.sin() as f32;
                row[3 * p + d] = b.cos() as f32;
            }
        }
    }
    Ok(out)
}

/// LayerNorm over the last axis, from tensor ops (every step has a backward).
#[derive(Clone, Debug)]
struct LayerNorm {
    weight: Var,
    bias: Var,
    eps: f64,
}

impl LayerNorm {
    fn new(b: &mut ParamBuilder, name: &str, dim: usize) -> Result<Self> {
        Ok(LayerNorm {
            weight: b.var(
                &format!("{name}.weight"),
                &[dim],
                Init::Const(1.0),
                ParamKind::Norm,
            )?,
            bias: b.var(
                &format!("{name}.bias"),
                &[dim],
                Init::Const(0.0),
                ParamKind::Norm,
            )?,
            eps: 1e-6,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, self.weight.as_tensor(), self.bias.as_tensor(), self.eps)
    }

    /// [`Self::forward`] for a linear layer to read: bf16 under a bf16 autocast on the CPU
    /// (the same bits the product's packing would round it to; `kernels::precision`).
    fn forward_for_product(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        layer_norm_for_product(x, w, b, self.eps)
    }
}

/// A linear layer with MoCo v3's ViT init: uniform weights within `bound`, zero bias.
fn dense(b: &mut ParamBuilder, name: &str, inp: usize, out: usize, bound: f32) -> Result<Linear> {
    Linear::with_init(
        b,
        name,
        (inp, out),
        Init::Uniform { bound },
        Some(Init::Const(0.0)),
    )
}

/// Xavier-uniform: bound √(6/(fan_in + fan_out)).
fn xavier(b: &mut ParamBuilder, name: &str, inp: usize, out: usize) -> Result<Linear> {
    dense(b, name, inp, out, (6.0 / (inp + out) as f32).sqrt())
}

#[derive(Clone, Debug)]
struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn new(b: &mut ParamBuilder, name: &str, dim: usize, heads: usize) -> Result<Self> {
        let norm1 = LayerNorm::new(b, &format!("{name}.norm1"), dim)?;
        // Q, K and V are initialised as three separate D×D maps: bound √(6/(D + D)).
        let qkv = dense(
            b,
            &format!("{name}.attn.qkv"),
            dim,
            3 * dim,
            (6.0 / (2 * dim) as f32).sqrt(),
        )?;
        let proj = xavier(b, &format!("{name}.attn.proj"), dim, dim)?;
        let norm2 = LayerNorm::new(b, &format!("{name}.norm2"), dim)?;
        let fc1 = xavier(b, &format!("{name}.mlp.fc1"), dim, 4 * dim)?;
        let fc2 = xavier(b, &format!("{name}.mlp.fc2"), 4 * dim, dim)?;
        Ok(Block {
            norm1,
            qkv,
            proj,
            norm2,
            fc1,
            fc2,
            heads,
        })
    }

    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        self.proj
            .forward(&attention_for_product(&self.qkv.forward(x)?, self.heads)?)
    }

    /// The block's attention probabilities `(n, heads, tokens, tokens)`: row i is how token i
    /// weighs every token, `softmax(q_i·Kᵀ/√head_dim)` (an inspection view; training never
    /// stores them).
    fn attention_probabilities(&self, x: &Tensor) -> Result<Tensor> {
        attention_probabilities(&self.qkv.forward(&self.norm1.forward(x)?)?, self.heads)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The residual stream stays in x's dtype (f32); under a bf16 autocast on CUDA the
        // branches' products come back bf16 and are widened as they are added, as PyTorch's
        // type promotion does.
        // The two LayerNorms', the attention's and GELU's results are read by a linear layer
        // alone: on the CPU under bf16 they are stored in bf16, as the products would round
        // them.
        let attn = self.attention(&self.norm1.forward_for_product(x)?)?;
        let x = (x + attn.to_dtype(x.dtype())?)?;
        let h = gelu_for_product(&self.fc1.forward(&self.norm2.forward_for_product(&x)?)?)?;
        let mlp = self.fc2.forward(&h)?;
        Ok((&x + mlp.to_dtype(x.dtype())?)?)
    }
}

/// The ViT backbone.
#[derive(Clone, Debug)]
pub struct Vit {
    cfg: VitConfig,
    patch_weight: Var,
    patch_bias: Var,
    cls_token: Var,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl Vit {
    /// Builds the network under `name`. With `frozen_patch_projection` the patch weights are
    /// registered as [`ParamKind::Frozen`]: no optimiser (so no weight decay) and no EMA touches
    /// them.
    pub fn new(b: &mut ParamBuilder, name: &str, cfg: &VitConfig) -> Result<Self> {
        if cfg.heads == 0 || !cfg.dim.is_multiple_of(cfg.heads) {
            return Err(Error::config(
                "model.vit",
                format!("width {} is not divisible by {} heads", cfg.dim, cfg.heads),
            ));
        }
        if cfg.patch == 0 || !cfg.image_size.is_multiple_of(cfg.patch) {
            return Err(Error::config(
                "model.patch",
                format!(
                    "patch {} must divide the image side {}",
                    cfg.patch, cfg.image_size
                ),
            ));
        }
        let g = cfg.image_size / cfg.patch;
        let fan_in = 3 * cfg.patch * cfg.patch;
        let kind = if cfg.frozen_patch_projection {
            ParamKind::Frozen
        } else {
            ParamKind::Weight
        };
        // The patch projection is initialised as a linear map of fan-in 3·p·p.
        let patch_weight = b.var(
            &format!("{name}.patch_embed.proj.weight"),
            &[cfg.dim, 3, cfg.patch, cfg.patch],
            Init::Uniform {
                bound: (6.0 / (fan_in + cfg.dim) as f32).sqrt(),
            },
            kind,
        )?;
        let patch_bias = b.var(
            &format!("{name}.patch_embed.proj.bias"),
            &[cfg.dim],
            Init::Const(0.0),
            if cfg.frozen_patch_projection {
                ParamKind::Frozen
            } else {
                ParamKind::Bias
            },
        )?;
        let cls_token = b.var(
            &format!("{name}.cls_token"),
            &[1, 1, cfg.dim],
            Init::Normal { std: 1e-6 },
            ParamKind::Weight,
        )?;
        let pos = sincos_position_embedding(g, g, cfg.dim)?;
        let pos_embed = Tensor::from_vec(pos, (1, 1 + g * g, cfg.dim), b.device())?;
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(b, &format!("{name}.blocks.{i}"), cfg.dim, cfg.heads))
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(b, &format!("{name}.norm"), cfg.dim)?;
        Ok(Vit {
            cfg: *cfg,
            patch_weight,
            patch_bias,
            cls_token,
            pos_embed,
            blocks,
            norm,
        })
    }

    /// Width of the output ([CLS]) vector.
    pub fn out_dim(&self) -> usize {
        self.cfg.dim
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// The fixed position embedding `(1, 1 + L, dim)`.
    pub fn position_embedding(&self) -> &Tensor {
        &self.pos_embed
    }

    /// Patch tokens `(n, L, dim)`: kernel = stride = patch, so the convolution is a matrix
    /// product over non-overlapping patches in row-major order.
    fn embed_patches(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let p = self.cfg.patch;
        if c != 3 || h != self.cfg.image_size || w != self.cfg.image_size {
            return Err(Error::Shape(format!(
                "ViT built for (n, 3, {s}, {s}) images got {:?}",
                x.dims(),
                s = self.cfg.image_size
            )));
        }
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape((n, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n * gh * gw, c * p * p))?;
        // Frozen: detached, so no gradient is even computed for it (the paper's stop-gradient).
        let (w, b) = if self.cfg.frozen_patch_projection {
            (
                self.patch_weight.as_tensor().detach(),
                self.patch_bias.as_tensor().detach(),
            )
        } else {
            (
                self.patch_weight.as_tensor().clone(),
                self.patch_bias.as_tensor().clone(),
            )
        };
        let wt = w.reshape((self.cfg.dim, c * p * p))?;
        // f32 tokens: the residual stream starts here (the product is bf16 under a bf16
        // autocast on CUDA).
        Ok(crate::kernels::linear_bias(&patches, &wt, &b)?
            .to_dtype(candle_core::DType::F32)?
            .reshape((n, gh * gw, self.cfg.dim))?)
    }

    /// The [CLS] token after the final LayerNorm, `(n, dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Contiguous: candle's CUDA matmul rejects the strided [CLS] rows the head would get.
        Ok(self
            .forward_tokens(x)?
            .narrow(1, 0, 1)?
            .squeeze(1)?
            .contiguous()?)
    }

    /// The patch tokens after the final LayerNorm as a feature map `(n, dim, g, g)`, for dense
    /// probes and similarity maps.
    pub fn feature_map(&self, x: &Tensor) -> Result<Tensor> {
        let t = self.forward_tokens(x)?;
        let (n, l, d) = t.dims3()?;
        let g = self.cfg.image_size / self.cfg.patch;
        Ok(t.narrow(1, 1, l - 1)?
            .reshape((n, g, g, d))?
            .permute((0, 3, 1, 2))?
            .contiguous()?)
    }

    /// Every token after the final LayerNorm, `(n, 1 + L, dim)`, [CLS] first.
    pub fn forward_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.tokens_in(x)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        self.norm.forward(&h)
    }

    /// The embedded tokens with [CLS] first and the position embedding added: the first
    /// block's input, `(n, 1 + L, dim)`.
    fn tokens_in(&self, x: &Tensor) -> Result<Tensor> {
        let tokens = self.embed_patches(x)?;
        let n = tokens.dim(0)?;
        let cls = self
            .cls_token
            .as_tensor()
            .broadcast_as((n, 1, self.cfg.dim))?;
        Ok(Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos_embed)?)
    }

    /// The last block's attention from [CLS] to the patches, per head, `(n, heads, g, g)` on
    /// the `g × g` patch grid: the [CLS] row of the block's attention probabilities without
    /// its weight on [CLS] itself, renormalised to sum to 1 over the patches (the view DINO
    /// and MoCo v3 users draw).
    pub fn cls_attention(&self, x: &Tensor) -> Result<Tensor> {
        let Some((last, rest)) = self.blocks.split_last() else {
            return Err(Error::Invalid(
                "a ViT without blocks has no attention".into(),
            ));
        };
        let mut h = self.tokens_in(x)?;
        for b in rest {
            h = b.forward(&h)?;
        }
        let p = last.attention_probabilities(&h)?;
        let (n, heads, t, _) = p.dims4()?;
        let to_patches = p.narrow(2, 0, 1)?.narrow(3, 1, t - 1)?.squeeze(2)?;
        let sums = to_patches.sum_keepdim(2)?;
        let g = self.cfg.image_size / self.cfg.patch;
        Ok(to_patches.broadcast_div(&sums)?.reshape((n, heads, g, g))?)
    }
}
