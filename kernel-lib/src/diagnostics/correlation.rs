//! Cross-correlation snapshots (Barlow Twins' C, or the same matrix for any method's
//! embeddings): statistics and heatmaps that show C moving towards the identity.

use crate::error::{Error, Result};
use crate::objectives::barlow_twins_loss;
use crate::plot::{Figure, Panel};
use candle_core::{DType, Tensor};

/// How a large C is reduced to the drawn block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CorrelationView {
    /// The top-left `k × k` entries, exact values.
    TopLeft(usize),
    /// The whole matrix average-pooled to `k × k` (off-diagonal structure, diagonal blurred).
    Pooled(usize),
}

/// Summary statistics of one C.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CorrelationStats {
    /// Mean of `Cᵢᵢ` (→ 1).
    pub mean_diag: f64,
    /// Mean of `|Cᵢⱼ|`, `i ≠ j` (→ 0).
    pub mean_abs_off: f64,
    /// Share of off-diagonal entries with `|Cᵢⱼ| > 0.1`.
    pub frac_off_above_0_1: f64,
    /// `Σᵢ (1 − Cᵢᵢ)²`.
    pub on_diag_loss: f64,
    /// `Σ_{i≠j} Cᵢⱼ²` (not multiplied by λ).
    pub off_diag_loss: f64,
}

/// C at one step: its statistics and the block that is drawn.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CorrelationSnapshot {
    pub step: usize,
    /// D, the embedding width.
    pub dim: usize,
    pub stats: CorrelationStats,
    pub view: CorrelationView,
    /// The drawn block, row-major, `k × k`.
    pub block: Vec<f32>,
}

/// The normalised cross-correlation of two `(N, D)` embeddings, as in Barlow Twins.
pub fn cross_correlation(z_a: &Tensor, z_b: &Tensor) -> Result<Tensor> {
    Ok(barlow_twins_loss(z_a, z_b, 0.0)?.c)
}

/// Statistics of a `D × D` matrix C, computed on its device (one small transfer).
pub fn correlation_stats(c: &Tensor) -> Result<CorrelationStats> {
    let (d, d2) = c.dims2()?;
    if d != d2 || d < 2 {
        return Err(Error::Shape(format!(
            "a cross-correlation matrix is D × D with D ≥ 2, got {:?}",
            c.dims()
        )));
    }
    let c = c.to_dtype(DType::F32)?;
    let flat = c.flatten_all()?;
    let idx: Vec<u32> = (0..d as u32).map(|i| i * (d as u32 + 1)).collect();
    let diag = flat.index_select(&Tensor::new(idx, c.device())?, 0)?;
    let abs = flat.abs()?;
    let parts = Tensor::stack(
        &[
            diag.sum_all()?,
            abs.sum_all()?,
            diag.abs()?.sum_all()?,
            abs.gt(0.1)?.to_dtype(DType::F32)?.sum_all()?,
            diag.abs()?.gt(0.1)?.to_dtype(DType::F32)?.sum_all()?,
            diag.affine(-1.0, 1.0)?.sqr()?.sum_all()?,
            flat.sqr()?.sum_all()?,
            diag.sqr()?.sum_all()?,
        ],
        0,
    )?
    .to_vec1::<f32>()?;
    let p: Vec<f64> = parts.into_iter().map(f64::from).collect();
    let off_n = (d * d - d) as f64;
    Ok(CorrelationStats {
        mean_diag: p[0] / d as f64,
        mean_abs_off: (p[1] - p[2]) / off_n,
        frac_off_above_0_1: (p[3] - p[4]) / off_n,
        on_diag_loss: p[5],
        off_diag_loss: p[6] - p[7],
    })
}

impl CorrelationSnapshot {
    /// Statistics of C and its top-left `block × block` entries (all of C if smaller).
    pub fn top_left(step: usize, c: &Tensor, block: usize) -> Result<Self> {
        let stats = correlation_stats(c)?;
        let d = c.dim(0)?;
        let k = block.clamp(1, d);
        let values = c.narrow(0, 0, k)?.narrow(1, 0, k)?.to_dtype(DType::F32)?;
        Ok(CorrelationSnapshot {
            step,
            dim: d,
            stats,
            view: CorrelationView::TopLeft(k),
            block: values.flatten_all()?.to_vec1()?,
        })
    }

    /// Statistics of C and C average-pooled to `block × block` (D must be a multiple).
    pub fn pooled(step: usize, c: &Tensor, block: usize) -> Result<Self> {
        let stats = correlation_stats(c)?;
        let d = c.dim(0)?;
        if block == 0 || d % block != 0 {
            return Err(Error::Shape(format!(
                "cannot pool a {d} × {d} matrix to {block} × {block}: {block} must divide {d}"
            )));
        }
        let f = d / block;
        let pooled = c
            .to_dtype(DType::F32)?
            .reshape((1, 1, d, d))?
            .avg_pool2d(f)?
            .flatten_all()?;
        Ok(CorrelationSnapshot {
            step,
            dim: d,
            stats,
            view: CorrelationView::Pooled(block),
            block: pooled.to_vec1()?,
        })
    }

    fn side(&self) -> usize {
        match self.view {
            CorrelationView::TopLeft(k) | CorrelationView::Pooled(k) => k,
        }
    }

    fn panel(&self) -> Panel {
        let k = self.side();
        let what = match self.view {
            CorrelationView::TopLeft(_) => format!("top-left {k}x{k} of {}", self.dim),
            CorrelationView::Pooled(_) => format!("{0}x{0} pooled to {k}x{k}", self.dim),
        };
        Panel::Heatmap {
            title: format!(
                "C at step {} ({what}); diag {:.2}, |off| {:.3}",
                self.step, self.stats.mean_diag, self.stats.mean_abs_off
            ),
            rows: k,
            cols: k,
            values: self.block.clone(),
            range: (-1.0, 1.0),
        }
    }

    /// The heatmap, colours fixed to [−1, 1].
    pub fn figure(&self) -> Result<Figure> {
        Figure::from_panels(&[self.panel()], 1, (560, 500))
    }
}

/// Snapshots side by side, oldest first: C moving towards the identity over training.
pub fn correlation_strip(snapshots: &[CorrelationSnapshot]) -> Result<Figure> {
    if snapshots.is_empty() {
        return Err(Error::Invalid(
            "no cross-correlation snapshots yet: train a few steps first".into(),
        ));
    }
    // At most six panels: evenly spaced, always including the first and the last.
    let n = snapshots.len();
    let picks: Vec<usize> = if n <= 6 {
        (0..n).collect()
    } else {
        (0..6).map(|i| i * (n - 1) / 5).collect()
    };
    let panels: Vec<Panel> = picks.iter().map(|&i| snapshots[i].panel()).collect();
    Figure::from_panels(&panels, panels.len().min(3), (460, 420))
}

/// `C 512x512: mean diagonal 0.912, mean |off-diagonal| 0.0213, 1.4% of |off| > 0.1`.
impl std::fmt::Display for CorrelationSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = &self.stats;
        write!(
            f,
            "C {}x{}: mean diagonal {:.3}, mean |off-diagonal| {:.4}, {:.1}% of |off| > 0.1",
            self.dim,
            self.dim,
            st.mean_diag,
            st.mean_abs_off,
            100.0 * st.frac_off_above_0_1
        )
    }
}
