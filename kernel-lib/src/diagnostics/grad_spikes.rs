//! Per-layer gradient magnitudes and spike detection (MoCo v3 §4.2, docs/recipes.md §2.8).
//!
//! The paper traces ViT training instability to sudden gradient spikes that appear first in the
//! patch projection and a few iterations later in the last layers. The tracker records, after
//! every backward and before the optimizer step, each layer's gradient L2 norm and max-abs value
//! (one small host transfer per step), and flags a value more than `factor` times the layer's
//! running median over the previous `window` steps.

use crate::error::{Error, Result};
use crate::models::ParamStore;
use crate::plot::{Figure, Panel, Series};
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use ndarray::Array1;
use ndarray_stats::{interpolate::Midpoint, Quantile1dExt};
use noisy_float::types::n64;

/// The layer a parameter belongs to, for grouping gradient statistics: a ResNet block
/// (`backbone.layer2.1`) or ViT block (`backbone.blocks.3`), the stem (`backbone.stem`), other
/// backbone parts (`backbone.patch_embed`, `backbone.norm`), or a whole head (`projector`).
/// A momentum copy's `momentum.` prefix is dropped.
pub fn layer_of(param: &str) -> String {
    let name = param.strip_prefix("momentum.").unwrap_or(param);
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["backbone", block, i, _, ..] if block.starts_with("layer") || *block == "blocks" => {
            format!("backbone.{block}.{i}")
        }
        ["backbone", "conv1" | "bn1", ..] => "backbone.stem".into(),
        ["backbone", "cls_token"] => "backbone.patch_embed".into(),
        ["backbone", part, ..] => format!("backbone.{part}"),
        [head, ..] => head.to_string(),
        [] => String::new(),
    }
}

/// Which layer each trainable tensor of a store feeds, in registration order.
#[derive(Clone, Debug)]
pub struct LayerGroups {
    names: Vec<String>,
    /// `(index into store.params, layer index)` for every trainable tensor.
    members: Vec<(usize, usize)>,
}

impl LayerGroups {
    /// Groups the trainable tensors of `store` by [`layer_of`]; frozen tensors (no gradient)
    /// are left out, so a frozen patch projection is not a layer here.
    pub fn new(store: &ParamStore) -> Self {
        let mut names: Vec<String> = Vec::new();
        let mut members = Vec::new();
        for (i, p) in store.params.iter().enumerate() {
            if !p.kind.trainable() {
                continue;
            }
            let layer = layer_of(&p.name);
            let li = match names.iter().position(|n| *n == layer) {
                Some(li) => li,
                None => {
                    names.push(layer);
                    names.len() - 1
                }
            };
            members.push((i, li));
        }
        LayerGroups { names, members }
    }

    /// Layer names, first layer first.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Per-layer gradient L2 norm and max-abs value, computed on the device and fetched in one
    /// transfer. A layer without any gradient reports 0.
    pub fn grad_stats(
        &self,
        store: &ParamStore,
        grads: &GradStore,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = self.names.len();
        if let Some(host) = self.grad_stats_on_host(store, grads)? {
            return Ok(host);
        }
        let mut sq: Vec<Option<Tensor>> = vec![None; n];
        let mut mx: Vec<Option<Tensor>> = vec![None; n];
        for &(pi, li) in &self.members {
            let Some(g) = grads.get(store.params[pi].var.as_tensor()) else {
                continue;
            };
            let g = g.flatten_all()?;
            let s = g.sqr()?.sum_all()?;
            let m = g.abs()?.max(0)?;
            sq[li] = Some(match sq[li].take() {
                Some(acc) => (acc + s)?,
                None => s,
            });
            mx[li] = Some(match mx[li].take() {
                Some(acc) => acc.maximum(&m)?,
                None => m,
            });
        }
        let Some(device) = store.params.first().map(|p| p.var.device().clone()) else {
            return Ok((vec![], vec![]));
        };
        let zero = Tensor::zeros((), candle_core::DType::F32, &device)?;
        let column = |v: Vec<Option<Tensor>>| -> Result<Tensor> {
            let v: Vec<Tensor> = v
                .into_iter()
                .map(|t| t.unwrap_or_else(|| zero.clone()))
                .collect();
            Ok(Tensor::stack(&v, 0)?)
        };
        let both = Tensor::stack(&[column(sq)?.sqrt()?, column(mx)?], 0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        Ok((both[0].clone(), both[1].clone()))
    }

    /// [`grad_stats`](Self::grad_stats) in one parallel pass per gradient, when every gradient
    /// is a contiguous f32 CPU tensor (`None` otherwise: the tensor ops above take the rest).
    fn grad_stats_on_host(
        &self,
        store: &ParamStore,
        grads: &GradStore,
    ) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let n = self.names.len();
        let (mut sq, mut mx) = (vec![0f64; n], vec![0f32; n]);
        for &(pi, li) in &self.members {
            let Some(g) = grads.get(store.params[pi].var.as_tensor()) else {
                continue;
            };
            let Some((s, m)) = crate::kernels::square_sum_and_max_abs(g)? else {
                return Ok(None);
            };
            sq[li] += s;
            mx[li] = crate::kernels::nan_max(m, mx[li]);
        }
        Ok(Some((sq.iter().map(|s| s.sqrt() as f32).collect(), mx)))
    }
}

/// One detected spike.
#[derive(Clone, Debug, PartialEq)]
pub struct Spike {
    pub step: usize,
    pub layer: String,
    /// Gradient L2 norm at that step.
    pub value: f32,
    /// `value / running median`.
    pub ratio: f32,
}

/// A spike of the first layer and how many steps later the last backbone layer spiked (within
/// one window; `None` if it did not).
#[derive(Clone, Debug, PartialEq)]
pub struct SpikeLead {
    pub step: usize,
    pub last_layer_lag: Option<usize>,
}

/// Gradient statistics per layer and step, and spike detection over them.
#[derive(Clone, Debug)]
pub struct GradSpikeTracker {
    layers: Vec<String>,
    factor: f32,
    window: usize,
    steps: Vec<usize>,
    /// `norms[layer][t]`.
    norms: Vec<Vec<f32>>,
    max_abs: Vec<Vec<f32>>,
}

impl GradSpikeTracker {
    /// A tracker over `layers` flagging values above `factor` × the running median of the
    /// previous `window` steps.
    pub fn new(layers: Vec<String>, factor: f64, window: usize) -> Result<Self> {
        if !(factor.is_finite() && factor > 1.0) {
            return Err(Error::config(
                "diagnostics.spike_factor",
                format!("must be > 1, got {factor}"),
            ));
        }
        if window < 3 {
            return Err(Error::config(
                "diagnostics.spike_window",
                format!("must be ≥ 3 steps, got {window}"),
            ));
        }
        let n = layers.len();
        Ok(GradSpikeTracker {
            layers,
            factor: factor as f32,
            window,
            steps: Vec::new(),
            norms: vec![Vec::new(); n],
            max_abs: vec![Vec::new(); n],
        })
    }

    /// Adds one step's per-layer values (same order as the layers).
    pub fn record(&mut self, step: usize, norms: &[f32], max_abs: &[f32]) -> Result<()> {
        if norms.len() != self.layers.len() || max_abs.len() != self.layers.len() {
            return Err(Error::Shape(format!(
                "gradient stats for {} layers, got {} norms and {} maxima",
                self.layers.len(),
                norms.len(),
                max_abs.len()
            )));
        }
        self.steps.push(step);
        for (l, (&n, &m)) in norms.iter().zip(max_abs).enumerate() {
            self.norms[l].push(n);
            self.max_abs[l].push(m);
        }
        Ok(())
    }

    /// Layer names, first layer first.
    pub fn layers(&self) -> &[String] {
        &self.layers
    }

    /// Steps recorded.
    pub fn steps(&self) -> &[usize] {
        &self.steps
    }

    /// Gradient L2 norms of layer `l`, one per recorded step.
    pub fn norms(&self, l: usize) -> &[f32] {
        self.norms.get(l).map_or(&[], |v| v.as_slice())
    }

    /// Max-abs gradient values of layer `l`.
    pub fn max_abs(&self, l: usize) -> &[f32] {
        self.max_abs.get(l).map_or(&[], |v| v.as_slice())
    }

    /// The first layer (the patch projection of a learnable ViT, the stem of a ResNet).
    pub fn first_layer(&self) -> Option<usize> {
        (!self.layers.is_empty()).then_some(0)
    }

    /// The last backbone block (ViT block or ResNet residual block), else the last backbone
    /// layer, else the last layer.
    pub fn last_layer(&self) -> Option<usize> {
        let block =
            |n: &String| n.starts_with("backbone.blocks.") || n.starts_with("backbone.layer");
        self.layers
            .iter()
            .rposition(block)
            .or_else(|| self.layers.iter().rposition(|n| n.starts_with("backbone.")))
            .or(self.layers.len().checked_sub(1))
    }

    /// Each value of layer `l` divided by the median of the previous `window` values (the
    /// first value is its own reference, so it reads 1).
    pub fn relative(&self, l: usize) -> Vec<f32> {
        let v = self.norms(l);
        (0..v.len())
            .map(|t| {
                let m = running_median(v, t, self.window).unwrap_or(v[t]);
                if m > 0.0 {
                    v[t] / m
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// Every value more than `factor` × its layer's running median, in step order. At least a
    /// third of a window of history is needed before a step can be flagged.
    pub fn spikes(&self) -> Vec<Spike> {
        let mut out = Vec::new();
        let min_history = (self.window / 3).max(3);
        for (l, v) in self.norms.iter().enumerate() {
            for t in min_history..v.len() {
                let Some(m) = running_median(v, t, self.window) else {
                    continue;
                };
                if m > 0.0 && v[t] > self.factor * m {
                    out.push(Spike {
                        step: self.steps[t],
                        layer: self.layers[l].clone(),
                        value: v[t],
                        ratio: v[t] / m,
                    });
                }
            }
        }
        out.sort_by_key(|s| s.step);
        out
    }

    /// For each first-layer spike, how many steps later the last backbone layer spiked (the
    /// paper's "first layer leads" observation).
    pub fn first_layer_leads(&self) -> Vec<SpikeLead> {
        let (Some(f), Some(l)) = (self.first_layer(), self.last_layer()) else {
            return vec![];
        };
        let spikes = self.spikes();
        let of = |layer: usize| -> Vec<usize> {
            spikes
                .iter()
                .filter(|s| s.layer == self.layers[layer])
                .map(|s| s.step)
                .collect()
        };
        let last = of(l);
        of(f)
            .into_iter()
            .map(|step| SpikeLead {
                step,
                last_layer_lag: last
                    .iter()
                    .find(|&&s| s >= step && s - step <= self.window)
                    .map(|s| s - step),
            })
            .collect()
    }

    /// The paper's figure: relative gradient magnitude of the first and last layers over the
    /// steps with spikes marked, and `under` (e.g. the loss or kNN curve) on the same x axis.
    pub fn figure(&self, under: Option<Series>) -> Result<Figure> {
        let (Some(f), Some(l)) = (self.first_layer(), self.last_layer()) else {
            return Err(Error::Invalid(
                "no gradient statistics recorded yet: train a few steps first".into(),
            ));
        };
        let steps: Vec<f64> = self.steps.iter().map(|&s| s as f64).collect();
        let series = |layer: usize| {
            Series::new(
                format!("{} (x{:.0} = spike)", self.layers[layer], self.factor),
                steps
                    .iter()
                    .copied()
                    .zip(self.relative(layer).into_iter().map(f64::from))
                    .collect(),
            )
        };
        let mut lines = vec![series(f)];
        if l != f {
            lines.push(series(l));
        }
        let rel: Vec<Vec<f32>> = [f, l].iter().map(|&x| self.relative(x)).collect();
        let markers = self
            .spikes()
            .into_iter()
            .filter_map(|s| {
                let which = [f, l].iter().position(|&x| self.layers[x] == s.layer)?;
                let t = self.steps.iter().position(|&st| st == s.step)?;
                Some((s.step as f64, rel[which][t] as f64))
            })
            .collect();
        let mut panels = vec![Panel::Curves {
            title: "gradient norm / running median (first and last layer)".into(),
            x_label: "step".into(),
            y_label: "relative gradient norm".into(),
            series: lines,
            markers,
        }];
        if let Some(s) = under {
            panels.push(Panel::Curves {
                title: s.name.clone(),
                x_label: "step".into(),
                y_label: s.name.clone(),
                series: vec![s],
                markers: vec![],
            });
        }
        Figure::from_panels(&panels, 1, (900, 300))
    }
}

/// Median of `v[t-window..t]` (the values before `t`), `None` without history.
fn running_median(v: &[f32], t: usize, window: usize) -> Option<f32> {
    let start = t.saturating_sub(window);
    if start >= t {
        return None;
    }
    let mut a: Array1<_> = v[start..t]
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| n64(x as f64))
        .collect();
    if a.is_empty() {
        return None;
    }
    a.quantile_mut(n64(0.5), &Midpoint)
        .ok()
        .map(|m| m.raw() as f32)
}

/// One line: how many spikes, over how many layers and steps, and how many began in the first
/// layer (MoCo v3's observation) and were followed by the last.
impl std::fmt::Display for GradSpikeTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let leads = self.first_layer_leads();
        let lagged = leads.iter().filter(|l| l.last_layer_lag.is_some()).count();
        write!(
            f,
            "{} spikes over {} layers in {} steps; {} in the first layer, {lagged} followed by the last layer",
            self.spikes().len(),
            self.layers().len(),
            self.steps().len(),
            leads.len()
        )
    }
}
