//! Collapse monitors: is the embedding still using its dimensions?
//!
//! - Per-dimension std of L2-normalised embeddings: ≈ 1/√d when spread over the sphere, → 0 when
//!   every input maps to the same point (complete collapse).
//! - Effective rank (RankMe, Garrido et al. 2023): `exp(entropy(σ / Σσ + ε))` of the
//!   singular values, with the paper's `ε = 1e-7`; drops towards 1 under dimensional collapse.
//! - Alignment and uniformity (Wang & Isola 2020): `E‖f(x) − f(x⁺)‖²` over positive pairs and
//!   `log E exp(−2‖f(x) − f(y)‖²)` over all pairs.

use crate::error::{Error, Result};
use candle_core::Tensor;
use ndarray::{Array2, Axis};

/// One measurement of the collapse monitors.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CollapseStats {
    /// Training step at which it was taken.
    pub step: usize,
    pub dim: usize,
    /// Mean over dimensions of the std of L2-normalised embeddings.
    pub embed_std: f64,
    /// `1/√d`, the value of a healthy (isotropic) embedding.
    pub ideal_std: f64,
    /// RankMe effective rank, in `[1, min(n, d)]`.
    pub effective_rank: f64,
    /// Lower is better aligned (0 when positives coincide).
    pub alignment: f64,
    /// Lower is more uniform (0 when everything collapsed to one point).
    pub uniformity: f64,
}

fn host(z: &Tensor) -> Result<Array2<f64>> {
    let (n, d) = z.dims2().map_err(|_| {
        Error::Shape(format!(
            "collapse monitors take n × d embeddings, got {:?}",
            z.dims()
        ))
    })?;
    let v = z
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Array2::from_shape_vec((n, d), v).map_err(|e| Error::Shape(e.to_string()))
}

fn normalize_rows(mut z: Array2<f64>) -> Array2<f64> {
    for mut row in z.rows_mut() {
        let n = row.dot(&row).sqrt().max(1e-12);
        row.mapv_inplace(|v| v / n);
    }
    z
}

/// All monitors for two views' embeddings `z1`, `z2` (`n × d`, rows paired).
pub fn collapse_stats(step: usize, z1: &Tensor, z2: &Tensor) -> Result<CollapseStats> {
    let a = host(z1)?;
    let b = host(z2)?;
    if a.dim() != b.dim() || a.nrows() < 2 {
        return Err(Error::Shape(format!(
            "collapse monitors need two n × d embeddings with n ≥ 2, got {:?} and {:?}",
            a.dim(),
            b.dim()
        )));
    }
    let d = a.ncols();
    let effective_rank = effective_rank(&a);
    let a = normalize_rows(a);
    let b = normalize_rows(b);
    let embed_std = a.std_axis(Axis(0), 0.0).mean().unwrap_or(0.0);
    let alignment = (&a - &b)
        .mapv(|v| v * v)
        .sum_axis(Axis(1))
        .mean()
        .unwrap_or(0.0);
    Ok(CollapseStats {
        step,
        dim: d,
        embed_std,
        ideal_std: 1.0 / (d as f64).sqrt(),
        effective_rank,
        alignment,
        uniformity: uniformity(&a),
    })
}

/// `log` of the mean over pairs `i < j` of `exp(−2‖zᵢ − zⱼ‖²)` for unit rows.
pub fn uniformity(z: &Array2<f64>) -> f64 {
    let g = z.dot(&z.t());
    let n = z.nrows();
    let mut terms = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            // ‖zᵢ − zⱼ‖² = 2 − 2 zᵢ·zⱼ for unit vectors.
            terms.push(-2.0 * (2.0 - 2.0 * g[[i, j]]));
        }
    }
    log_mean_exp(&terms)
}

fn log_mean_exp(x: &[f64]) -> f64 {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + (x.iter().map(|v| (v - m).exp()).sum::<f64>() / x.len() as f64).ln()
}

/// The `ε` RankMe adds to every normalised singular value (the paper's value, Garrido et al.
/// 2023, eq. 1–2: "a small constant ε = 1e-7").
pub const RANKME_EPSILON: f64 = 1e-7;

/// RankMe effective rank of `z` (`n × d`), exactly as the paper defines it:
/// `exp(−Σₖ pₖ log pₖ)` over all `min(n, d)` singular values, with `pₖ = σₖ / ‖σ‖₁ + ε` and
/// `ε = RANKME_EPSILON`. The `ε` makes every zero singular value count a little (`−ε log ε`
/// each), so a rank-3 matrix of width 512 scores slightly above 3; values compare with the
/// paper's and with the implementations that follow it.
///
/// ```
/// use sslab::diagnostics::effective_rank;
/// // Singular values 1, 1 and 0: p = (½ + ε, ½ + ε, ε).
/// let z = ndarray::array![[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]];
/// let (h, e) = (0.5f64 + 1e-7, 1e-7f64);
/// let want = (-2.0 * h * h.ln() - e * e.ln()).exp();
/// assert!((effective_rank(&z) - want).abs() < 1e-12);
/// ```
pub fn effective_rank(z: &Array2<f64>) -> f64 {
    let sv = singular_values(z);
    let total: f64 = sv.iter().sum();
    if total <= 0.0 {
        return 1.0;
    }
    let h: f64 = sv
        .iter()
        .map(|s| s / total + RANKME_EPSILON)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

/// Singular values of `z`, from the eigenvalues of the smaller Gram matrix.
pub fn singular_values(z: &Array2<f64>) -> Vec<f64> {
    let g = if z.nrows() <= z.ncols() {
        z.dot(&z.t())
    } else {
        z.t().dot(z)
    };
    symmetric_eigenvalues(g)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect()
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations (no LAPACK in the dependency
/// tree; the matrices here are at most a few hundred wide).
pub fn symmetric_eigenvalues(mut a: Array2<f64>) -> Vec<f64> {
    let n = a.nrows();
    let scale: f64 = a.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..50 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[[i, j]] * a[[i, j]])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-12 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[[p, q]];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[[k, p]];
                    let akq = a[[k, q]];
                    a[[k, p]] = c * akp - s * akq;
                    a[[k, q]] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[[p, k]];
                    let aqk = a[[q, k]];
                    a[[p, k]] = c * apk - s * aqk;
                    a[[q, k]] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[[i, i]]).collect()
}

/// `effective rank 41.3 of 512, std×√d 0.87, alignment 0.412, uniformity -2.910`.
impl std::fmt::Display for CollapseStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "effective rank {:.1} of {}, std×√d {:.2}, alignment {:.3}, uniformity {:.3}",
            self.effective_rank,
            self.dim,
            self.embed_std / self.ideal_std,
            self.alignment,
            self.uniformity
        )
    }
}
