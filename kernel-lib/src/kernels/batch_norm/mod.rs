//! Training-mode batch normalisation: the normalised activations in two passes and the gradient
//! in two more, instead of ~10 generic ops each with its own backward; optionally with the
//! affine part and a ReLU inside the same kernel.

#[cfg(feature = "cuda")]
mod cuda;

use super::collective::World;
use super::storage::{on_cpu_f32, slice, written, CResult};
use crate::error::{Error, Result};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Batch statistics of the last forward pass of a [`BatchNormOp`].
#[derive(Clone, Debug, Default)]
pub(crate) struct BnStats {
    pub mean: Vec<f32>,
    /// Biased variance.
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// How a BatchNorm kernel's `(n, c, inner)` batch is cut: into `groups` consecutive groups of
/// `n / groups` images, each with its own statistics (split BatchNorm; 1 for plain BN).
/// Statistic `s = g·c + ch` is channel `ch` over the images of group `g`.
#[derive(Clone, Copy, Debug)]
struct Split {
    groups: usize,
    /// Images per group.
    per: usize,
}

impl Split {
    fn of(n: usize, groups: usize) -> CResult<Self> {
        if groups == 0 || !n.is_multiple_of(groups) {
            candle_core::bail!("split BatchNorm: a batch of {n} does not split into {groups}");
        }
        Ok(Split {
            groups,
            per: n / groups,
        })
    }

    /// The statistic of row `i` of the `(n·c)` rows of `inner` values.
    fn stat(&self, i: usize, c: usize) -> usize {
        (i / c / self.per) * c + i % c
    }

    /// Where statistic `s` of `(n, c, inner)` data starts: its channel's plane in the first
    /// image of its group.
    fn first_of(&self, s: usize, (c, inner): (usize, usize)) -> usize {
        let (g, ch) = (s / c, s % c);
        (g * self.per * c + ch) * inner
    }
}

/// Lanes of the reductions below. The sums were one f64 chain per channel: float addition does
/// not reassociate, so the compiler kept them serial, one value per add latency (6% of a bf16
/// Barlow Twins step on the CPU, `perf`). Sixteen independent f64 partial sums per statistic,
/// carried across its rows, vectorise and keep the f64 chain's accuracy.
const LANES: usize = 16;

/// The running sums of one statistic: lane-wide f64 partial sums of two quantities, carried
/// across the statistic's rows, and the values that did not fill the lanes.
#[derive(Clone, Copy, Default)]
struct LaneSums {
    a: [f64; LANES],
    b: [f64; LANES],
    tail: (f64, f64),
}

impl LaneSums {
    /// Both sums: the tails (added row by row), then the lanes.
    fn total(&self) -> (f64, f64) {
        (
            self.tail.0 + self.a.iter().sum::<f64>(),
            self.tail.1 + self.b.iter().sum::<f64>(),
        )
    }
}

/// Adds one image's planes of consecutive statistics into their sums: plane `j` (`inner`
/// values at `first + j·inner` of `x` and `y`) into `sums[j]`, the quantities `f(params[j],
/// x, y)`.
#[inline(always)]
fn lane_run<P: Copy>(
    (x, y): (&[f32], &[f32]),
    (first, inner): (usize, usize),
    params: &[P],
    sums: &mut [LaneSums],
    f: impl Fn(P, f32, f32) -> (f32, f32),
) {
    for (j, (st, &p)) in sums.iter_mut().zip(params).enumerate() {
        let o = first + j * inner;
        let (rx, ry) = (&x[o..o + inner], &y[o..o + inner]);
        let ((cx, tx), (cy, ty)) = (rx.as_chunks::<LANES>(), ry.as_chunks::<LANES>());
        if !cx.is_empty() {
            // One quantity per pass over the plane (the second reads it from L1): with both
            // in one loop LLVM left the sums scalar, one value per instruction with the
            // partial sums spilled to the stack (`perf annotate`).
            let (mut a, mut b) = (st.a, st.b);
            for (vx, vy) in cx.iter().zip(cy) {
                for i in 0..LANES {
                    a[i] += f(p, vx[i], vy[i]).0 as f64;
                }
            }
            for (vx, vy) in cx.iter().zip(cy) {
                for i in 0..LANES {
                    b[i] += f(p, vx[i], vy[i]).1 as f64;
                }
            }
            (st.a, st.b) = (a, b);
        }
        // What does not fill the lanes (all of a BatchNorm1d's one value per row).
        for (&vx, &vy) in tx.iter().zip(ty) {
            let (u, v) = f(p, vx, vy);
            st.tail.0 += u as f64;
            st.tail.1 += v as f64;
        }
    }
}

/// `Σ (x − k)` and `Σ (x − k)²` of each plane, `k` its statistic's shift. Inlined into
/// [`moments_wide`], which compiles it for the CPU's vector width.
#[inline(always)]
fn moments(x: &[f32], run: (usize, usize), k: &[f32], sums: &mut [LaneSums]) {
    lane_run((x, x), run, k, sums, |k, v, _| (v - k, (v - k) * (v - k)));
}

/// `Σ g` and `Σ g·(x − mean)·inv_std` of each plane: dβ and dγ of BatchNorm's backward
/// (inlined into [`grad_sums_wide`]), `k` each statistic's `((mean, inv_std), relu)`. With
/// `relu = Some((a, b))` the forward applied a ReLU to `(x − mean)·a + b`, and `g` counts
/// only where that is positive (see [`relu_passes`]).
#[inline(always)]
fn grad_sums(
    (g, x): (&[f32], &[f32]),
    (first, inner): (usize, usize),
    k: &[GradParams],
    sums: &mut [LaneSums],
) {
    // One plane at a time, the ReLU chosen outside its loops so that each body vectorises.
    for (j, (st, &(at, relu))) in sums.iter_mut().zip(k).enumerate() {
        let (plane, st) = ((first + j * inner, inner), std::slice::from_mut(st));
        match relu {
            Some(ab) => lane_run((g, x), plane, &[(at, ab)], st, |((mean, s), ab), gv, xv| {
                let gv = if relu_passes(xv, mean, ab) { gv } else { 0.0 };
                (gv, gv * ((xv - mean) * s))
            }),
            None => lane_run((g, x), plane, &[at], st, |(mean, s), gv, xv| {
                (gv, gv * ((xv - mean) * s))
            }),
        }
    }
}

/// A statistic's `((mean, inv_std), relu)` for [`grad_sums`].
type GradParams = ((f32, f32), Option<(f32, f32)>);

/// Every statistic's two sums over its rows, reading `(n, c, inner)` data in memory order:
/// each task takes a run of channels of one group and walks its images in turn, adding each
/// image's planes of those channels (one contiguous block) with `run(first, stats, sums)`.
/// Walked channel by channel, image after image (a stride of `c·inner` between planes),
/// the same sums read memory from DRAM at half the rate: 17 against 33 GB/s on two Zen 4
/// cores for 4 KB planes, and BatchNorm's reductions ran at that rate in a ResNet step.
/// Each statistic still adds its rows in image order, so the sums are the same bits.
fn stat_sums(
    split: Split,
    (c, inner): (usize, usize),
    run: impl Fn(usize, Range<usize>, &mut [LaneSums]) + Sync,
) -> Vec<(f64, f64)> {
    let threads = rayon::current_num_threads().max(1);
    let width = c.div_ceil(2 * threads).max(1);
    let tasks: Vec<(usize, usize)> = (0..split.groups)
        .flat_map(|g| (0..c).step_by(width).map(move |c0| (g, c0)))
        .collect();
    tasks
        .par_iter()
        .flat_map_iter(|&(g, c0)| {
            let c1 = (c0 + width).min(c);
            let mut sums = vec![LaneSums::default(); c1 - c0];
            for img in 0..split.per {
                let first = ((g * split.per + img) * c + c0) * inner;
                run(first, g * c + c0..g * c + c1, &mut sums);
            }
            sums.into_iter().map(|st| st.total())
        })
        .collect()
}

/// Whether the fused ReLU of [`affine_row`] let `x` through: its pre-activation
/// `(x − mean)·a + b`, computed as the forward computed it (same operations, same order, so
/// the same bits), is positive. The backward recomputes the mask from x, which it reads
/// anyway, instead of reading the output in a separate ReLU-gradient pass (three streams of
/// activations fewer per BatchNorm + ReLU).
#[inline(always)]
fn relu_passes(x: f32, mean: f32, (a, b): (f32, f32)) -> bool {
    pre_activation(x, mean, (a, b)) > 0.0
}

/// `(x − mean)·a + b`: the BatchNorm output before its fused ReLU.
#[inline(always)]
fn pre_activation(x: f32, mean: f32, (a, b): (f32, f32)) -> f32 {
    (x - mean) * a + b
}

wide!(moments_wide = moments(x: &[f32], run: (usize, usize), k: &[f32], sums: &mut [LaneSums]));
wide!(grad_sums_wide = grad_sums(gx: (&[f32], &[f32]), run: (usize, usize), k: &[GradParams], sums: &mut [LaneSums]));

/// Per-channel (per group and channel, under a [`Split`]) batch mean, biased variance and
/// `1/√(var + eps)` of `(n, c, inner)` data, accumulated in f64.
///
/// One pass: the sums of `x − k` and `(x − k)²` about one of the channel's own values `k` (its
/// first), so that the variance `Σ(x−k)²/m − (Σ(x−k)/m)²` subtracts numbers of the size of the
/// spread, not of the mean (the naive `E[x²] − E[x]²` loses a channel whose mean is large
/// against its spread). With `ranks` (SyncBN) `k` is rank 0's first value, which is one
/// process's first value of the global batch, and both sums are all-reduced: the same
/// arithmetic as one process up to the order of the additions.
fn channel_stats(
    x: &[f32],
    (c, inner): (usize, usize),
    split: Split,
    eps: f64,
    ranks: Option<&World>,
) -> CResult<BnStats> {
    let size = ranks.map_or(1, |w| w.size());
    let m = (split.per * inner * size) as f64;
    let stats = split.groups * c;
    let first = |s: usize| x.get(split.first_of(s, (c, inner))).copied();
    let lead = ranks.is_none_or(|w| w.rank() == 0);
    let mut k: Vec<f64> = (0..stats)
        .map(|s| match (lead, first(s)) {
            (true, Some(v)) if v.is_finite() => v as f64,
            _ => 0.0,
        })
        .collect();
    all_reduce_f64(ranks, &mut k)?;
    let shifts: Vec<f32> = k.iter().map(|&v| v as f32).collect();
    let mut sums: Vec<f64> = stat_sums(split, (c, inner), |first, stats, sums| {
        moments_wide(x, (first, inner), &shifts[stats], sums)
    })
    .into_iter()
    .flat_map(|(a, b)| [a, b])
    .collect();
    all_reduce_f64(ranks, &mut sums)?;
    let (means, vars): (Vec<f64>, Vec<f64>) = sums
        .chunks(2)
        .zip(&k)
        .map(|(d, &k)| {
            let shift = d[0] / m;
            (k + shift, (d[1] / m - shift * shift).max(0.0))
        })
        .unzip();
    Ok(BnStats {
        mean: means.iter().map(|&v| v as f32).collect(),
        var: vars.iter().map(|&v| v as f32).collect(),
        inv_std: vars
            .iter()
            .map(|&v| (1.0 / (v + eps).sqrt()) as f32)
            .collect(),
    })
}

/// The element-wise sum over `ranks` in place; nothing without ranks.
fn all_reduce_f64(ranks: Option<&World>, v: &mut [f64]) -> CResult<()> {
    match ranks {
        Some(w) => w
            .all_reduce_sum_f64(v)
            .map_err(|e| candle_core::Error::Msg(e.to_string())),
        None => Ok(()),
    }
}

/// `y = (x − mean)·inv_std·scale + shift` per channel (`scale`/`shift` `None`: 1 and 0), the
/// statistics of each row's group and channel; with `relu`, `max(y, 0)` in the same pass.
fn bn_apply(
    x: &[f32],
    (c, inner): (usize, usize),
    (st, split): (&BnStats, Split),
    (scale, shift): (Option<&[f32]>, Option<&[f32]>),
    relu: bool,
) -> Vec<f32> {
    written(x.len(), |y| {
        y.par_chunks_mut(inner)
            .zip(x.par_chunks(inner))
            .enumerate()
            .with_min_len(rows_per_task(inner))
            .for_each(|(i, (yr, xr))| {
                let (ch, s) = (i % c, split.stat(i, c));
                let (mean, a) = (st.mean[s], st.inv_std[s] * scale.map_or(1.0, |v| v[ch]));
                let b = shift.map_or(0.0, |s| s[ch]);
                affine_row_wide(yr, xr, (mean, a, b), relu);
            });
    })
}

/// Rows (or statistics) of `inner` values per parallel task: a plane of 16 values (a ResNet's
/// last stage at 32 px) or a LayerNorm row of 192 is too little work to schedule alone.
fn rows_per_task(inner: usize) -> usize {
    (4096 / inner.max(1)).max(1)
}

/// `y = (x − mean)·a + b`, then `max(y, 0)` with `relu`: one row of [`bn_apply`].
#[inline(always)]
fn affine_row(y: &mut [f32], x: &[f32], (mean, a, b): (f32, f32, f32), relu: bool) {
    let pairs = y.iter_mut().zip(x);
    if relu {
        pairs.for_each(|(o, &v)| *o = pre_activation(v, mean, (a, b)).max(0.0));
    } else {
        pairs.for_each(|(o, &v)| *o = pre_activation(v, mean, (a, b)));
    }
}

/// `dx = k·(g − mg − x̂·mgx)` with `x̂ = (x − mean)·inv_std`: one row of the input gradient;
/// `g` masked by the forward's ReLU with `relu` (as in [`grad_sums`]).
#[inline(always)]
fn grad_row(
    d: &mut [f32],
    g: &[f32],
    x: &[f32],
    (k, mg, mgx): (f32, f32, f32),
    (at, relu): ((f32, f32), Option<(f32, f32)>),
) {
    let (mean, inv_std) = at;
    let rows = d.iter_mut().zip(g).zip(x);
    match relu {
        Some(ab) => rows.for_each(|((o, &gv), &xv)| {
            let gv = if relu_passes(xv, mean, ab) { gv } else { 0.0 };
            *o = k * (gv - mg - (xv - mean) * inv_std * mgx);
        }),
        None => rows.for_each(|((o, &gv), &xv)| *o = k * (gv - mg - (xv - mean) * inv_std * mgx)),
    }
}

wide!(affine_row_wide = affine_row(y: &mut [f32], x: &[f32], k: (f32, f32, f32), relu: bool));
wide!(grad_row_wide = grad_row(d: &mut [f32], g: &[f32], x: &[f32], k: (f32, f32, f32), at: ((f32, f32), Option<(f32, f32)>)));

fn store_stats(slot: &Mutex<BnStats>, st: BnStats) {
    if let Ok(mut s) = slot.lock() {
        *s = st;
    }
}

fn saved_stats(slot: &Mutex<BnStats>) -> CResult<BnStats> {
    slot.lock()
        .map(|s| s.clone())
        .map_err(|_| candle_core::Error::Msg("batchnorm statistics lock poisoned".into()))
}

/// Training-mode normalisation `x̂ = (x − μ_c)/√(σ²_c + eps)` over all axes but 1.
pub(crate) struct BatchNormOp {
    pub eps: f64,
    pub stats: Arc<Mutex<BnStats>>,
    /// Statistics over every rank's rows (SyncBN).
    pub ranks: Option<World>,
    /// Consecutive groups of the batch with statistics of their own (split BN; 1: plain).
    pub groups: usize,
}

fn bn_dims(dims: &[usize]) -> (usize, usize, usize) {
    let n = dims[0];
    let c = dims[1];
    let inner: usize = dims[2..].iter().product();
    (n, c, inner)
}

impl CustomOp1 for BatchNormOp {
    fn name(&self) -> &'static str {
        "sslab-batchnorm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, "batchnorm input")?;
        let (n, c, inner) = bn_dims(l.dims());
        let split = Split::of(n, self.groups)?;
        let st = channel_stats(x, (c, inner), split, self.eps, self.ranks.as_ref())?;
        let y = bn_apply(x, (c, inner), (&st, split), (None, None), false);
        store_stats(&self.stats, st);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, xhat: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let st = saved_stats(&self.stats)?;
        let grad = BatchNormGrad {
            mean: None,
            inv_std: st.inv_std,
            gamma: None,
            relu_shift: None,
            sums: Arc::default(),
            ranks: self.ranks.clone(),
            groups: self.groups,
        };
        Ok(Some(xhat.apply_op2(&g.contiguous()?, grad)?))
    }
}

/// Training-mode BatchNorm with its affine part, `y = x̂·γ + β`, in one pass; arguments
/// (x, γ, β). Its backward gives dx, dγ and dβ from one pass over (x, dy), where candle's
/// broadcast multiply and add would each reduce the full gradient over three axes.
pub(crate) struct BatchNormAffineOp {
    pub eps: f64,
    pub stats: Arc<Mutex<BnStats>>,
    /// Apply a ReLU to the output, in the same pass.
    pub relu: bool,
    /// Statistics over every rank's rows (SyncBN).
    pub ranks: Option<World>,
    /// Consecutive groups of the batch with statistics of their own (split BN; 1: plain).
    /// γ and β are per channel, shared by the groups.
    pub groups: usize,
}

impl CustomOp3 for BatchNormAffineOp {
    fn name(&self) -> &'static str {
        "sslab-batchnorm-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "batchnorm input")?;
        let gamma = slice(s2, l2, "batchnorm weight")?;
        let beta = slice(s3, l3, "batchnorm bias")?;
        let (n, c, inner) = bn_dims(l1.dims());
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "batchnorm: {c} channels, weight {} bias {}",
                gamma.len(),
                beta.len()
            );
        }
        let split = Split::of(n, self.groups)?;
        let st = channel_stats(x, (c, inner), split, self.eps, self.ranks.as_ref())?;
        let affine = (Some(gamma), Some(beta));
        let y = bn_apply(x, (c, inner), (&st, split), affine, self.relu);
        store_stats(&self.stats, st);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let st = saved_stats(&self.stats)?;
        let sums = Arc::new(Mutex::new(Vec::new()));
        let grad = BatchNormGrad {
            mean: Some(st.mean),
            inv_std: st.inv_std,
            gamma: Some(gamma.to_vec1::<f32>()?),
            // The ReLU's mask is recomputed from x inside the gradient's passes.
            relu_shift: if self.relu {
                Some(beta.to_vec1::<f32>()?)
            } else {
                None
            },
            sums: sums.clone(),
            ranks: self.ranks.clone(),
            groups: self.groups,
        };
        let dx = x.apply_op2(&g.contiguous()?, grad)?;
        // dγ = Σ g·x̂ and dβ = Σ g of each channel: each group's f64 sums rounded to f32,
        // then added over the groups in order in f32, the arithmetic of the regrouped layout
        // whose γ repeated per group summed its gradient that way (so split-BN training
        // takes the same numbers as before this kernel read the groups in place).
        let c = gamma.elem_count();
        let (mut dgamma, mut dbeta) = (vec![0f32; c], vec![0f32; c]);
        let sums = sums
            .lock()
            .map_err(|_| candle_core::Error::Msg("batchnorm gradient lock poisoned".into()))?;
        for (s, &(sg, sgx)) in sums.iter().enumerate() {
            dgamma[s % c] += sgx as f32;
            dbeta[s % c] += sg as f32;
        }
        Ok((
            Some(dx),
            Some(Tensor::from_vec(dgamma, c, gamma.device())?),
            Some(Tensor::from_vec(dbeta, c, gamma.device())?),
        ))
    }
}

/// The BatchNorm input gradient `dx = γ·inv_std·(g − mean(g) − x̂·mean(g·x̂))` per channel;
/// arguments (x̂, g), or (x, g) with `mean` given (x̂ is then recomputed, not stored). The
/// per-channel sums Σg and Σg·x̂ (dβ and dγ) are left in `sums`.
///
/// With `ranks` (SyncBN) the two means are over every rank's rows, as `torch`'s SyncBN
/// all-reduces them, and `sums` keeps this rank's own sums: its dγ and dβ, which the
/// gradient average over ranks turns into the global batch's.
struct BatchNormGrad {
    mean: Option<Vec<f32>>,
    inv_std: Vec<f32>,
    gamma: Option<Vec<f32>>,
    /// β of a forward that ended in a ReLU (with `mean` and `gamma`): the incoming gradient
    /// then counts only where `(x − mean)·inv_std·γ + β > 0`.
    relu_shift: Option<Vec<f32>>,
    sums: Arc<Mutex<Vec<(f64, f64)>>>,
    ranks: Option<World>,
    /// As the forward op's: `mean`, `inv_std` and `sums` are per group and channel.
    groups: usize,
}

impl CustomOp2 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "sslab-batchnorm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let xin = slice(s1, l1, "batchnorm input")?;
        let g = slice(s2, l2, "batchnorm gradient")?;
        let (n, c, inner) = bn_dims(l1.dims());
        let split = Split::of(n, self.groups)?;
        let m = (split.per * inner * self.ranks.as_ref().map_or(1, |w| w.size())) as f64;
        // x̂ = (x − mean)·inv_std of statistic `s`, or the input itself when it already is x̂.
        let at = |s: usize| match &self.mean {
            Some(mean) => (mean[s], self.inv_std[s]),
            None => (0.0, 1.0),
        };
        // The scale and shift of the forward's fused ReLU, if any, for statistic s of channel
        // ch: `inv_std·γ` and β, as `bn_apply` formed them.
        let relu = |s: usize, ch: usize| {
            let (gamma, beta) = (self.gamma.as_ref()?, self.relu_shift.as_ref()?);
            Some((self.inv_std[s] * gamma[ch], beta[ch]))
        };
        let params: Vec<GradParams> = (0..split.groups * c)
            .map(|s| (at(s), relu(s, s % c)))
            .collect();
        let sums = stat_sums(split, (c, inner), |first, stats, sums| {
            grad_sums_wide((g, xin), (first, inner), &params[stats], sums)
        });
        let mut global: Vec<f64> = sums.iter().flat_map(|&(a, b)| [a, b]).collect();
        all_reduce_f64(self.ranks.as_ref(), &mut global)?;
        let means: Vec<(f32, f32)> = global
            .chunks(2)
            .map(|p| ((p[0] / m) as f32, (p[1] / m) as f32))
            .collect();
        let dx = written(xin.len(), |dx| {
            dx.par_chunks_mut(inner)
                .zip(g.par_chunks(inner).zip(xin.par_chunks(inner)))
                .enumerate()
                .with_min_len(rows_per_task(inner))
                .for_each(|(i, (d, (gr, xr)))| {
                    let (ch, s) = (i % c, split.stat(i, c));
                    let (mg, mgx) = means[s];
                    let k = self.inv_std[s] * self.gamma.as_ref().map_or(1.0, |gm| gm[ch]);
                    grad_row_wide(d, gr, xr, (k, mg, mgx), (at(s), relu(s, ch)));
                });
        });
        if let Ok(mut slot) = self.sums.lock() {
            *slot = sums;
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The batch mean and biased variance a kernel left in `stats`, as detached tensors.
fn stats_tensors(stats: &Mutex<BnStats>, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let st = stats
        .lock()
        .map_err(|_| Error::Invalid("batchnorm statistics lock poisoned".into()))?;
    let c = st.mean.len();
    Ok((
        Tensor::from_vec(st.mean.clone(), c, dev)?,
        Tensor::from_vec(st.var.clone(), c, dev)?,
    ))
}

fn check_count(x: &Tensor, channels: usize) -> Result<()> {
    if x.elem_count() / channels.max(1) < 2 {
        return Err(Error::Shape(format!(
            "BatchNorm in training mode needs more than one value per channel, got input {:?}",
            x.dims()
        )));
    }
    Ok(())
}

/// Normalises `(n, c, ...)` input over every axis but the channel axis (1) with its batch
/// statistics; returns x̂ and the detached per-channel mean and biased variance. `fused` takes
/// sslab's kernel where it applies (CPU, or CUDA in a `cuda` build; f32), otherwise candle's
/// tensor ops. With `ranks`, the statistics are over every rank's rows (SyncBN; the CPU
/// kernel only).
pub fn batch_norm_train(
    x: &Tensor,
    eps: f64,
    fused: bool,
    ranks: Option<&World>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = x.dims();
    check_count(x, dims.get(1).copied().unwrap_or(1))?;
    if x.dtype() == DType::BF16 {
        // bf16 activations (a bf16 autocast on CUDA): the CUDA kernels read and write bf16
        // with f32 statistics; anywhere else the normalisation runs in f32.
        #[cfg(feature = "cuda")]
        if fused && x.device().is_cuda() && ranks.is_none() {
            return cuda::normalize(x, eps);
        }
        let (xhat, mean, var) = batch_norm_train(&x.to_dtype(DType::F32)?, eps, fused, ranks)?;
        return Ok((xhat.to_dtype(DType::BF16)?, mean, var));
    }
    if ranks.is_some() && !on_cpu_f32(x) {
        return Err(Error::Invalid(
            "BatchNorm across ranks runs on f32 CPU tensors".into(),
        ));
    }
    #[cfg(feature = "cuda")]
    if fused && x.device().is_cuda() && x.dtype() == candle_core::DType::F32 {
        return cuda::normalize(x, eps);
    }
    if fused && on_cpu_f32(x) {
        return train_on_cpu(x, None, (eps, false), ranks, 1);
    }
    let reduce: Vec<usize> = (0..dims.len()).filter(|&i| i != 1).collect();
    let mean = x.mean_keepdim(reduce.as_slice())?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(reduce.as_slice())?;
    let xhat = centred.broadcast_div(&(var.clone() + eps)?.sqrt()?)?;
    Ok((
        xhat,
        mean.detach().flatten_all()?,
        var.detach().flatten_all()?,
    ))
}

/// Training-mode BatchNorm with scale `w` and shift `b` (one entry per channel of `x`), then
/// a ReLU when `relu` is set; returns y and the detached batch mean and biased variance. On
/// the CPU one kernel (x̂ and the pre-ReLU output are never stored), on CUDA (f32, or bf16
/// activations with f32 statistics and parameters) sslab's kernels (`cuda.rs`: statistics and
/// gradient sums stay on the device), elsewhere [`batch_norm_train`]'s tensor ops and candle's
/// broadcast ops. With `ranks`, the statistics are over every rank's rows (SyncBN; the CPU
/// kernel only).
pub fn batch_norm_affine_train(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    relu: bool,
    ranks: Option<&World>,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_count(x, w.elem_count())?;
    if x.dtype() == DType::BF16 {
        // As in `batch_norm_train`: bf16 in and out on CUDA, f32 arithmetic elsewhere.
        #[cfg(feature = "cuda")]
        if x.device().is_cuda()
            && ranks.is_none()
            && w.dtype() == DType::F32
            && b.dtype() == DType::F32
        {
            return cuda::affine_train(x, w, b, eps, relu);
        }
        let (y, mean, var) =
            batch_norm_affine_train(&x.to_dtype(DType::F32)?, w, b, eps, relu, ranks)?;
        return Ok((y.to_dtype(DType::BF16)?, mean, var));
    }
    if ranks.is_some() && !on_cpu_f32(x) {
        return Err(Error::Invalid(
            "BatchNorm across ranks runs on f32 CPU tensors".into(),
        ));
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda()
        && [x, w, b]
            .iter()
            .all(|t| t.dtype() == candle_core::DType::F32)
    {
        return cuda::affine_train(x, w, b, eps, relu);
    }
    if on_cpu_f32(x) {
        return train_on_cpu(x, Some((w, b)), (eps, relu), ranks, 1);
    }
    let (xhat, mean, var) = batch_norm_train(x, eps, false, None)?;
    let mut cs = vec![1; x.rank()];
    cs[1] = w.elem_count();
    let y = xhat
        .broadcast_mul(&w.reshape(cs.as_slice())?)?
        .broadcast_add(&b.reshape(cs.as_slice())?)?;
    Ok((if relu { y.relu()? } else { y }, mean, var))
}

/// Split BatchNorm on the CPU (f32 `(n, c, ...)` input): the batch cut into `groups`
/// consecutive groups, each normalised with its own statistics by the fused kernel, which
/// reads every group where it lies. Regrouping the batch as `(n/groups, groups·c, ...)` for
/// plain BN instead cost a transposed copy of the input and of the output each way (4-5% of a
/// MoCo v2 step with `bn_splits = 8`, `perf`). With `affine` (γ, β per channel, shared by the
/// groups) returns `relu?(x̂·γ + β)`, without it x̂; and the detached batch mean and biased
/// variance per group and channel, `(groups·c,)`, group-major.
pub(crate) fn split_batch_norm_train_cpu(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
    groups: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dims().get(1).copied().unwrap_or(1);
    check_count(x, c * groups)?;
    train_on_cpu(x, affine, (eps, relu), None, groups)
}

/// The CPU kernels' training-mode BatchNorm: `relu?(x̂·γ + β)` with `affine`, x̂ without it
/// (`relu` applies to the affine form only), statistics over `ranks` and per group of
/// `groups`; returns the output and the detached batch mean and biased variance.
fn train_on_cpu(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    (eps, relu): (f64, bool),
    ranks: Option<&World>,
    groups: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let stats = Arc::new(Mutex::new(BnStats::default()));
    let (ranks, x) = (ranks.cloned(), x.contiguous()?);
    let y = match affine {
        Some((w, b)) => x.apply_op3(
            w,
            b,
            BatchNormAffineOp {
                eps,
                stats: stats.clone(),
                relu,
                ranks,
                groups,
            },
        )?,
        None => x.apply_op1(BatchNormOp {
            eps,
            stats: stats.clone(),
            ranks,
            groups,
        })?,
    };
    let (mean, var) = stats_tensors(&stats, x.device())?;
    Ok((y, mean, var))
}

/// LayerNorm without the affine part: each row over the last axis to zero mean and unit
/// (biased) variance. `fused` takes the CPU kernel where it applies: normalising each row is
/// BatchNorm of a batch of one whose channels are the rows, so the BN kernel (parallel,
/// explicit backward) does it; otherwise tensor ops.
pub fn normalize_rows(x: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    if x.dtype() == DType::BF16 {
        // LayerNorm is one of autocast's f32 ops: bf16 input, f32 output.
        return normalize_rows(&x.to_dtype(DType::F32)?, eps, fused);
    }
    #[cfg(feature = "cuda")]
    if fused && x.device().is_cuda() && x.dtype() == candle_core::DType::F32 {
        let dims = x.dims().to_vec();
        let d = dims[dims.len() - 1];
        let rows = x.elem_count() / d.max(1);
        let (xhat, _, _) = cuda::normalize(&x.reshape((1, rows, d))?, eps)?;
        return Ok(xhat.reshape(dims)?);
    }
    if fused && on_cpu_f32(x) {
        let dims = x.dims().to_vec();
        let d = dims[dims.len() - 1];
        let rows = x.elem_count() / d.max(1);
        return Ok(x
            .contiguous()?
            .reshape((1, rows, d))?
            .apply_op1(BatchNormOp {
                eps,
                stats: Arc::new(Mutex::new(BnStats::default())),
                ranks: None,
                groups: 1,
            })?
            .reshape(dims)?);
    }
    let mean = x.mean_keepdim(candle_core::D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    Ok(xc.broadcast_div(&(var + eps)?.sqrt()?)?)
}
