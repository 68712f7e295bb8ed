//! Dense feature-similarity maps and correspondence accuracy against the crop geometry
//! (DenseCL's premise: a location's feature should find the same content in the other view).

use crate::augment::CropBox;
use crate::error::{Error, Result};
use crate::plot::{Figure, Link, Overlay, Panel, RgbImage, Tile};
use candle_core::{DType, Tensor};

/// The cosine similarity of one query location's feature against every location of a second
/// feature map.
#[derive(Clone, Debug, PartialEq)]
pub struct SimilarityMap {
    /// Grid cell `(row, col)` of the query in the first map.
    pub query: (usize, usize),
    pub rows: usize,
    pub cols: usize,
    /// Cosine similarities, row-major, in `[-1, 1]`.
    pub values: Vec<f32>,
    /// The best match `(row, col)` in the second map.
    pub argmax: (usize, usize),
}

fn check_map(f: &Tensor, what: &str) -> Result<(usize, usize, usize)> {
    f.dims3().map_err(|_| {
        Error::Shape(format!(
            "{what} must be one feature map (C, H, W), got {:?}",
            f.dims()
        ))
    })
}

/// Similarity of `fa`'s feature at grid cell `query` to every cell of `fb` (both `(C, H, W)`).
pub fn similarity_map(fa: &Tensor, fb: &Tensor, query: (usize, usize)) -> Result<SimilarityMap> {
    let (ca, ha, wa) = check_map(fa, "the first map")?;
    let (cb, hb, wb) = check_map(fb, "the second map")?;
    if ca != cb {
        return Err(Error::Shape(format!(
            "feature maps with {ca} and {cb} channels cannot be compared"
        )));
    }
    if query.0 >= ha || query.1 >= wa {
        return Err(Error::Shape(format!(
            "query cell {query:?} is outside the {ha}x{wa} grid"
        )));
    }
    let q = fa
        .to_dtype(DType::F32)?
        .narrow(1, query.0, 1)?
        .narrow(2, query.1, 1)?
        .reshape((1, ca))?;
    let b = fb.to_dtype(DType::F32)?.reshape((cb, hb * wb))?;
    let q = crate::objectives::l2_normalize(&q, 1)?;
    let b = crate::objectives::l2_normalize(&b, 0)?;
    let values = q.matmul(&b)?.flatten_all()?.to_vec1::<f32>()?;
    let best = values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    Ok(SimilarityMap {
        query,
        rows: hb,
        cols: wb,
        values,
        argmax: (best / wb, best % wb),
    })
}

/// Centre of grid cell `(r, c)` of an `h × w` grid laid over a view of `size` pixels, in view
/// pixel coordinates (pixel centres at integers).
fn cell_centre(r: usize, c: usize, (h, w): (usize, usize), size: (usize, usize)) -> (f32, f32) {
    (
        (c as f32 + 0.5) * size.0 as f32 / w as f32 - 0.5,
        (r as f32 + 0.5) * size.1 as f32 / h as f32 - 0.5,
    )
}

/// For every cell of view A's `grid_a`, the cell of view B's `grid_b` that shows the same source
/// point (through both crop boxes and flips), or `None` where it falls outside view B.
pub fn geometric_truth(
    crop_a: &CropBox,
    crop_b: &CropBox,
    grid_a: (usize, usize),
    grid_b: (usize, usize),
) -> Vec<Option<(usize, usize)>> {
    let (view_a, view_b) = ((crop_a.out_w, crop_a.out_h), (crop_b.out_w, crop_b.out_h));
    let mut out = Vec::with_capacity(grid_a.0 * grid_a.1);
    for r in 0..grid_a.0 {
        for c in 0..grid_a.1 {
            let (u, v) = cell_centre(r, c, grid_a, view_a);
            let (x, y) = crop_a.view_to_source(u, v);
            let (ub, vb) = crop_b.source_to_view(x, y);
            out.push(crop_b.contains_view(ub, vb).then(|| {
                let col = ((ub + 0.5) * grid_b.1 as f32 / view_b.0 as f32) as usize;
                let row = ((vb + 0.5) * grid_b.0 as f32 / view_b.1 as f32) as usize;
                (row.min(grid_b.0 - 1), col.min(grid_b.1 - 1))
            }));
        }
    }
    out
}

/// Correspondence accuracy over a batch, with the chance level of the same cells.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CorrespondenceAccuracy {
    /// Share of cells (with a true match inside view B) whose most similar cell of B lies
    /// within one cell of the truth.
    pub accuracy: f64,
    /// The same share for a uniformly random match.
    pub chance: f64,
    /// Cells scored.
    pub cells: usize,
}

/// Scores `fa`, `fb` (`(N, C, H, W)`, the two views' feature maps) against the crop geometry.
pub fn correspondence_accuracy(
    fa: &Tensor,
    fb: &Tensor,
    crops_a: &[CropBox],
    crops_b: &[CropBox],
) -> Result<CorrespondenceAccuracy> {
    let (n, c, ha, wa) = fa.dims4()?;
    let (n2, c2, hb, wb) = fb.dims4()?;
    if n != n2 || c != c2 || crops_a.len() != n || crops_b.len() != n {
        return Err(Error::Shape(format!(
            "correspondence needs two (N, C, H, W) maps of one N and C with N crop boxes each, \
             got {:?}, {:?}, {} and {} boxes",
            fa.dims(),
            fb.dims(),
            crops_a.len(),
            crops_b.len()
        )));
    }
    let a =
        crate::objectives::l2_normalize(&fa.to_dtype(DType::F32)?.reshape((n, c, ha * wa))?, 1)?;
    let b =
        crate::objectives::l2_normalize(&fb.to_dtype(DType::F32)?.reshape((n, c, hb * wb))?, 1)?;
    // (N, HaWa, HbWb) similarities; the best cell of B for every cell of A.
    let best = a
        .transpose(1, 2)?
        .contiguous()?
        .matmul(&b)?
        .argmax(2)?
        .to_vec2::<u32>()?;
    let (mut hits, mut chance, mut cells) = (0usize, 0.0f64, 0usize);
    for i in 0..n {
        let truth = geometric_truth(&crops_a[i], &crops_b[i], (ha, wa), (hb, wb));
        for (cell, t) in truth.iter().enumerate() {
            let Some((tr, tc)) = *t else { continue };
            let m = best[i][cell] as usize;
            let (mr, mc) = (m / wb, m % wb);
            cells += 1;
            if mr.abs_diff(tr) <= 1 && mc.abs_diff(tc) <= 1 {
                hits += 1;
            }
            let near_r = (tr.saturating_sub(1)..=(tr + 1).min(hb - 1)).count();
            let near_c = (tc.saturating_sub(1)..=(tc + 1).min(wb - 1)).count();
            chance += (near_r * near_c) as f64 / (hb * wb) as f64;
        }
    }
    let per = |x: f64| if cells == 0 { 0.0 } else { x / cells as f64 };
    Ok(CorrespondenceAccuracy {
        accuracy: per(hits as f64),
        chance: per(chance),
        cells,
    })
}

impl SimilarityMap {
    /// The two images side by side: the query point marked on the first, the similarity map
    /// (rescaled to [0, 1]) over the second, and a line to the best match.
    pub fn figure(
        &self,
        image_a: &RgbImage,
        image_b: &RgbImage,
        fa_grid: (usize, usize),
    ) -> Result<Figure> {
        let (lo, hi) = self
            .values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = (hi - lo).max(1e-6);
        let centre = |cell: (usize, usize), grid: (usize, usize), img: &RgbImage| {
            cell_centre(cell.0, cell.1, grid, (img.width, img.height))
        };
        let q = centre(self.query, fa_grid, image_a);
        let m = centre(self.argmax, (self.rows, self.cols), image_b);
        let tiles = vec![
            Tile {
                image: image_a.clone(),
                caption: format!("query cell {:?}", self.query),
                overlay: None,
                marker: Some(q),
            },
            Tile {
                image: image_b.clone(),
                caption: format!("cosine {:.2}..{:.2}, best {:?}", lo, hi, self.argmax),
                overlay: Some(Overlay {
                    rows: self.rows,
                    cols: self.cols,
                    values: self.values.iter().map(|v| (v - lo) / span).collect(),
                    alpha: 0.55,
                }),
                marker: None,
            },
        ];
        Figure::from_panels(
            &[Panel::Images {
                title: "dense feature similarity".into(),
                tiles,
                cols: 2,
                links: vec![Link {
                    from: (0, q.0, q.1),
                    to: (1, m.0, m.1),
                }],
            }],
            1,
            (720, 400),
        )
    }
}

/// `query cell (2, 3) → best match (2, 2) of 4x4`.
impl std::fmt::Display for SimilarityMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query cell {:?} → best match {:?} of {}x{}",
            self.query, self.argmax, self.rows, self.cols
        )
    }
}

/// `correspondence accuracy 0.412 (chance 0.085) over 2048 cells`.
impl std::fmt::Display for CorrespondenceAccuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "correspondence accuracy {:.3} (chance {:.3}) over {} cells",
            self.accuracy, self.chance, self.cells
        )
    }
}
