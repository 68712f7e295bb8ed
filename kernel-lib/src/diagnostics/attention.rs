//! Where a ViT's [CLS] token looks: the last block's attention from [CLS] to the patches, one
//! map per head, drawn over the image (the view DINO and MoCo v3 readers draw).

use crate::error::{Error, Result};
use crate::plot::{Figure, Overlay, Panel, RgbImage, Tile};
use candle_core::{DType, Tensor};
use std::fmt;

/// One image's [CLS]-to-patch attention per head of the last block.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionMaps {
    /// Side of the patch grid.
    pub grid: usize,
    /// Per head, `grid²` weights in row-major order, summing to 1.
    pub heads: Vec<Vec<f32>>,
}

impl AttentionMaps {
    /// From one image's `(heads, g, g)` maps.
    pub fn from_tensor(maps: &Tensor) -> Result<Self> {
        let (heads, g, g2) = maps.dims3()?;
        if g != g2 || heads == 0 {
            return Err(Error::Shape(format!(
                "attention maps must be (heads, g, g), got {:?}",
                maps.dims()
            )));
        }
        let values = maps.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(AttentionMaps {
            grid: g,
            heads: values.chunks(g * g).map(<[f32]>::to_vec).collect(),
        })
    }

    /// How concentrated each head is: the share of its weight on its top 10% of patches.
    pub fn top_decile_mass(&self) -> Vec<f32> {
        let k = (self.grid * self.grid).div_ceil(10);
        self.heads
            .iter()
            .map(|h| {
                let mut v = h.clone();
                v.sort_by(|a, b| b.total_cmp(a));
                v[..k].iter().sum()
            })
            .collect()
    }

    /// The image, then one tile per head with its map (scaled to its own maximum) over it.
    pub fn figure(&self, image: &RgbImage, caption: &str) -> Result<Figure> {
        let mut tiles = vec![Tile {
            image: image.clone(),
            caption: caption.into(),
            overlay: None,
            marker: None,
        }];
        for (i, (h, mass)) in self.heads.iter().zip(self.top_decile_mass()).enumerate() {
            let top = h.iter().fold(f32::MIN_POSITIVE, |a, &b| a.max(b));
            tiles.push(Tile {
                image: image.clone(),
                caption: format!("head {i}: top 10% of patches hold {:.0}%", 100.0 * mass),
                overlay: Some(Overlay {
                    rows: self.grid,
                    cols: self.grid,
                    values: h.iter().map(|v| v / top).collect(),
                    alpha: 0.6,
                }),
                marker: None,
            });
        }
        let cols = tiles.len().min(4);
        Figure::from_panels(
            &[Panel::Images {
                title: "last block: attention from [CLS] to the patches, per head".into(),
                tiles,
                cols,
                links: vec![],
            }],
            1,
            (
                220 * cols as u32,
                240 * self.heads.len().div_ceil(4).max(1) as u32 + 40,
            ),
        )
    }
}

impl fmt::Display for AttentionMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} heads on a {g}x{g} patch grid; share of each head's attention on its top 10% of patches:",
            self.heads.len(),
            g = self.grid
        )?;
        for m in self.top_decile_mass() {
            write!(f, " {:.0}%", 100.0 * m)?;
        }
        Ok(())
    }
}
