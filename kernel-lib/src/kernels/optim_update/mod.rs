//! The optimisers' update as a few passes that write each parameter and its buffers in place:
//! on the CPU parallel loops (here), on CUDA one kernel per pass (`cuda.rs`). The tensor-op form of the same rules (kept for other devices, and as the
//! reference the tests compare against) allocates a fresh copy of every parameter per op: LARS
//! over Barlow Twins' 20 M parameters was ten passes, several of them single-threaded.
//!
//! Norms are summed in f64 from per-chunk partial sums, so they do not depend on the thread
//! count.

#[cfg(feature = "cuda")]
mod cuda;

use super::storage::{slice, CResult};
use crate::error::Result;
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

/// Which update rule, with its own hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimKind {
    /// PyTorch SGD: `g += wd·p; buf = μ·buf + g; p -= lr·(nesterov ? g + μ·buf : buf)`.
    Sgd { momentum: f64, nesterov: bool },
    /// LARS as in the MoCo v3 and Barlow Twins code (docs/recipes.md §0.6): for adapted tensors
    /// `g += wd·p; g *= η‖p‖/‖g‖` (ratio 1 if a norm is 0), then `μ = m·μ + g; p -= lr·μ`.
    /// No epsilon, no clipping.
    ///
    /// With `clip_lr` it is the Lightning-Bolts LARS that solo-learn uses instead: ratio
    /// `η‖p‖/(‖g‖ + wd‖p‖ + 1e-8)` clipped to at most `1/lr` (`min(ratio/lr, 1)`), so a step is
    /// never larger than plain SGD's at the same rate.
    Lars {
        momentum: f64,
        eta: f64,
        clip_lr: bool,
    },
    /// PyTorch AdamW (decoupled decay `p -= lr·wd·p`, bias-corrected moments).
    AdamW { beta1: f64, beta2: f64, eps: f64 },
    /// LAMB (You et al. 2020): the AdamW direction `r = m̂/(√v̂+ε) + wd·p`, scaled by the trust
    /// ratio ‖p‖/‖r‖ for adapted tensors.
    Lamb { beta1: f64, beta2: f64, eps: f64 },
}

/// Settings of one parameter group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupSettings {
    /// Learning rate multiplier relative to the scheduled rate.
    pub lr_mult: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Whether LARS/LAMB apply the trust ratio to this group.
    pub adapt: bool,
}

/// Elements per parallel work unit.
const CHUNK: usize = 1 << 14;

/// Whether the in-place update applies: every tensor f32 and contiguous, all on the CPU or
/// (in a build with the `cuda` feature) all on CUDA.
pub(crate) fn applies(tensors: &[&Tensor]) -> bool {
    let f32_contiguous = |t: &&Tensor| t.dtype() == candle_core::DType::F32 && t.is_contiguous();
    let cuda_built = cfg!(feature = "cuda");
    tensors.iter().all(f32_contiguous)
        && (tensors.iter().all(|t| t.device().is_cpu())
            || (cuda_built && tensors.iter().all(|t| t.device().is_cuda())))
}

/// `f(dst_chunk, [src_chunks])` over aligned chunks of a tensor written in place and `N`
/// tensors of its length, in parallel.
fn chunked<const N: usize>(
    dst: &mut CpuStorage,
    dst_l: &Layout,
    srcs: [(&CpuStorage, &Layout); N],
    f: &(impl Fn(&mut [f32], [&[f32]; N]) + Sync),
) -> CResult<()> {
    let d = match (dst, dst_l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => &mut v[a..b],
        _ => candle_core::bail!("fused optimiser step: expected a contiguous f32 parameter"),
    };
    let mut s = [&[][..]; N];
    for (slot, (st, l)) in s.iter_mut().zip(srcs) {
        *slot = slice(st, l, "optimiser operand")?;
        if slot.len() != d.len() {
            candle_core::bail!(
                "fused optimiser step: {} vs {} elements",
                slot.len(),
                d.len()
            );
        }
    }
    d.par_chunks_mut(CHUNK).enumerate().for_each(|(i, dc)| {
        let lo = i * CHUNK;
        // The pass's loop at this CPU's vector width (the same bits at any width).
        let len = dc.len();
        let chunks = (dc, s.map(|x| &x[lo..lo + len]));
        super::simd::widest(chunks, |(dc, src)| f(dc, src));
    });
    Ok(())
}

/// An in-place pass with one source.
struct Pass1<F>(F);

impl<F: Fn(&mut [f32], [&[f32]; 1]) + Sync> InplaceOp2 for Pass1<F> {
    fn name(&self) -> &'static str {
        "sslab-optimizer-pass"
    }

    fn cpu_fwd(&self, d: &mut CpuStorage, dl: &Layout, a: &CpuStorage, al: &Layout) -> CResult<()> {
        chunked(d, dl, [(a, al)], &self.0)
    }
}

/// An in-place pass with two sources.
struct Pass2<F>(F);

impl<F: Fn(&mut [f32], [&[f32]; 2]) + Sync> InplaceOp3 for Pass2<F> {
    fn name(&self) -> &'static str {
        "sslab-optimizer-pass"
    }

    fn cpu_fwd(
        &self,
        d: &mut CpuStorage,
        dl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> CResult<()> {
        chunked(d, dl, [(a, al), (b, bl)], &self.0)
    }
}

/// `f` over a tensor written in place and one source.
fn pass1(dst: &Tensor, a: &Tensor, f: impl Fn(&mut [f32], [&[f32]; 1]) + Sync) -> Result<()> {
    Ok(dst.inplace_op2(a, &Pass1(f))?)
}

/// `f` over a tensor written in place and two sources.
fn pass2(
    dst: &Tensor,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(&mut [f32], [&[f32]; 2]) + Sync,
) -> Result<()> {
    Ok(dst.inplace_op3(a, b, &Pass2(f))?)
}

/// `K` sums of `f([chunks])` over aligned chunks of `N` equally long tensors, in f64.
fn sums<const N: usize, const K: usize>(
    ts: [&Tensor; N],
    f: impl Fn([&[f32]; N]) -> [f64; K] + Sync,
) -> Result<[f64; K]> {
    Ok(reduce_chunks(ts, f, [0.0; K], |mut acc, p| {
        acc.iter_mut().zip(p).for_each(|(a, v)| *a += v);
        acc
    })?)
}

/// `f([chunks])` over aligned chunks of `N` equally long CPU tensors in parallel, the chunks'
/// results combined in chunk order from `start` (so the result does not depend on the thread
/// count).
fn reduce_chunks<const N: usize, T: Send>(
    ts: [&Tensor; N],
    f: impl Fn([&[f32]; N]) -> T + Sync,
    start: T,
    combine: impl Fn(T, T) -> T,
) -> CResult<T> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut s = [&[][..]; N];
    for (slot, (st, l)) in s.iter_mut().zip(&guards) {
        *slot = match &**st {
            Storage::Cpu(c) => slice(c, l, "optimiser operand")?,
            _ => candle_core::bail!("fused optimiser step: expected CPU tensors"),
        };
    }
    let len = s.first().map_or(0, |x| x.len());
    if s.iter().any(|x| x.len() != len) {
        candle_core::bail!("fused optimiser step: operands of different lengths");
    }
    let parts: Vec<T> = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map(|i| {
            let (lo, hi) = (i * CHUNK, len.min((i + 1) * CHUNK));
            f(s.map(|x| &x[lo..hi]))
        })
        .collect();
    Ok(parts.into_iter().fold(start, combine))
}

/// The larger of `a` and `b`, NaN if either is (`f32::max` drops a NaN).
pub(crate) fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

/// `(Σ x², max |x|)` of a contiguous f32 CPU tensor in one parallel pass (the sum in f64), or
/// `None` for any other tensor. A NaN anywhere makes both NaN. The gradient-spike tracker's
/// per-layer statistics: as tensor ops they were four passes and two copies per parameter,
/// 2-3% of a ResNet training step.
pub(crate) fn square_sum_and_max_abs(t: &Tensor) -> Result<Option<(f64, f32)>> {
    if !(t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous()) {
        return Ok(None);
    }
    let stats = reduce_chunks(
        [t],
        |[x]| {
            x.iter().fold((0f64, 0f32), |(sq, m), &v| {
                (sq + (v as f64) * (v as f64), nan_max(v.abs(), m))
            })
        },
        (0f64, 0f32),
        |(s1, m1), (s2, m2)| (s1 + s2, nan_max(m1, m2)),
    )?;
    Ok(Some(stats))
}

/// Adam's coefficients in f32 for step `t`: the moment decays `b1`, `b2`, their complements
/// `c1 = 1 − β1`, `c2 = 1 − β2` and the bias corrections `bc1 = 1 − β1ᵗ`, `bc2 = 1 − β2ᵗ`, each
/// computed in f64 first (in f32, 1 − 0.999 is 1.3e-5 off). Shared by the CPU and CUDA arms.
pub(super) struct AdamCoefficients {
    pub b1: f32,
    pub c1: f32,
    pub b2: f32,
    pub c2: f32,
    pub bc1: f32,
    pub bc2: f32,
}

impl AdamCoefficients {
    pub(super) fn new(beta1: f64, beta2: f64, t: i32) -> Self {
        AdamCoefficients {
            b1: beta1 as f32,
            c1: (1.0 - beta1) as f32,
            b2: beta2 as f32,
            c2: (1.0 - beta2) as f32,
            bc1: (1.0 - beta1.powi(t)) as f32,
            bc2: (1.0 - beta2.powi(t)) as f32,
        }
    }
}

/// LARS/LAMB's trust ratio `scale·num/den`, or 1 unless both norms are positive.
fn trust(num: f64, den: f64, scale: f64) -> f64 {
    if num > 0.0 && den > 0.0 {
        scale * num / den
    } else {
        1.0
    }
}

/// One update of parameter `p` with gradient `g` and buffers `state`, in place; `t` is the
/// 1-based step count (Adam's bias correction).
pub(crate) fn step(
    kind: OptimKind,
    gs: GroupSettings,
    lr: f64,
    t: i32,
    p: &Tensor,
    g: &Tensor,
    state: &[Tensor],
) -> Result<()> {
    #[cfg(feature = "cuda")]
    if p.device().is_cuda() {
        return cuda::step(kind, gs, lr, t, p, g, state);
    }
    let wd = gs.weight_decay as f32;
    match kind {
        OptimKind::Sgd { momentum, nesterov } => {
            let (mu, lr) = (momentum as f32, lr as f32);
            pass2(&state[0], g, p, |b, [g, p]| {
                for ((b, &g), &p) in b.iter_mut().zip(g).zip(p) {
                    *b = mu * *b + (g + wd * p);
                }
            })?;
            pass2(p, &state[0], g, |p, [b, g]| {
                for ((p, &b), &g) in p.iter_mut().zip(b).zip(g) {
                    let d = if nesterov { g + wd * *p + mu * b } else { b };
                    *p -= lr * d;
                }
            })
        }
        OptimKind::Lars {
            momentum,
            eta,
            clip_lr,
        } => {
            // The gradient is scaled by q after the decay term is added (none if not adapted).
            let (q, wd) = if !gs.adapt {
                (1.0, 0.0)
            } else {
                let wd64 = gs.weight_decay;
                let [pp, gg, dd] = sums([p, g], |[p, g]| {
                    let mut acc = [0f64; 3];
                    for (&p, &g) in p.iter().zip(g) {
                        let (p, g) = (p as f64, g as f64);
                        let d = (g as f32 + wd * p as f32) as f64;
                        acc[0] += p * p;
                        acc[1] += g * g;
                        acc[2] += d * d;
                    }
                    acc
                })?;
                let pn = pp.sqrt();
                let q = if clip_lr {
                    let q = trust(pn, gg.sqrt() + wd64 * pn + 1e-8, eta);
                    if lr > 0.0 {
                        (q / lr).clamp(0.0, 1.0)
                    } else {
                        1.0
                    }
                } else {
                    trust(pn, dd.sqrt(), eta)
                };
                (q as f32, wd)
            };
            let (mu, lr) = (momentum as f32, lr as f32);
            pass2(&state[0], g, p, |b, [g, p]| {
                for ((b, &g), &p) in b.iter_mut().zip(g).zip(p) {
                    *b = mu * *b + (g + wd * p) * q;
                }
            })?;
            pass1(p, &state[0], |p, [b]| {
                for (p, &b) in p.iter_mut().zip(b) {
                    *p -= lr * b;
                }
            })
        }
        OptimKind::AdamW { beta1, beta2, eps } | OptimKind::Lamb { beta1, beta2, eps } => {
            let AdamCoefficients {
                b1,
                c1,
                b2,
                c2,
                bc1,
                bc2,
            } = AdamCoefficients::new(beta1, beta2, t);
            pass1(&state[0], g, |m, [g]| {
                for (m, &g) in m.iter_mut().zip(g) {
                    *m = b1 * *m + c1 * g;
                }
            })?;
            pass1(&state[1], g, |v, [g]| {
                for (v, &g) in v.iter_mut().zip(g) {
                    *v = b2 * *v + c2 * (g * g);
                }
            })?;
            let eps = eps as f32;
            let dir = move |m: f32, v: f32| (m / bc1) / ((v / bc2).sqrt() + eps);
            if matches!(kind, OptimKind::AdamW { .. }) {
                let (lr, keep) = (lr as f32, (1.0 - lr * gs.weight_decay) as f32);
                return pass2(p, &state[0], &state[1], |p, [m, v]| {
                    for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                        *p = *p * keep - lr * dir(m, v);
                    }
                });
            }
            let q = if gs.adapt {
                let [pp, rr] = sums([p, &state[0], &state[1]], |[p, m, v]| {
                    let mut acc = [0f64; 2];
                    for ((&p, &m), &v) in p.iter().zip(m).zip(v) {
                        let r = (dir(m, v) + wd * p) as f64;
                        acc[0] += (p as f64) * (p as f64);
                        acc[1] += r * r;
                    }
                    acc
                })?;
                trust(pp.sqrt(), rr.sqrt(), 1.0) as f32
            } else {
                1.0
            };
            let lr = lr as f32;
            pass2(p, &state[0], &state[1], |p, [m, v]| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p -= lr * q * (dir(m, v) + wd * *p);
                }
            })
        }
    }
}

/// `target ← m·target + (1 − m)·online`: one step of a momentum encoder's exponential moving
/// average. On the CPU and CUDA one in-place pass, elsewhere three tensor ops and a `set`.
pub fn ema(target: &Var, online: &Tensor, m: f64) -> Result<()> {
    let tt = target.as_tensor();
    #[cfg(feature = "cuda")]
    if tt.device().is_cuda() && applies(&[tt, online]) {
        return cuda::ema(tt, online, m);
    }
    if applies(&[tt, online]) {
        let (a, b) = (m as f32, (1.0 - m) as f32);
        return pass1(tt, online, |t, [o]| {
            for (t, &o) in t.iter_mut().zip(o) {
                *t = a * *t + b * o;
            }
        });
    }
    let next = ((tt.detach() * m)? + (online.detach() * (1.0 - m))?)?;
    Ok(target.set(&next)?)
}
