//! The optimisers. On the CPU each update is a few in-place parallel passes (`kernels::optim_update`);
//! elsewhere it runs as tensor ops on the parameters' device, the LARS/LAMB trust ratios
//! included (no host round trip per tensor).

use crate::error::{Error, Result};
use crate::kernels::optim_update::{self as fused, GroupSettings, OptimKind};
use crate::models::ParamStore;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Saved optimiser state: the step count and per-parameter buffers by name.
#[derive(Clone, Debug)]
pub struct OptimizerState {
    pub step: usize,
    pub buffers: Vec<(String, Tensor)>,
}

struct Slot {
    name: String,
    var: Var,
    group: usize,
    /// Held off the schedule (see [`Optimizer::hold_lr`]).
    held: bool,
    state: Vec<Tensor>,
}

/// An optimiser over the trainable tensors of a [`ParamStore`].
pub struct Optimizer {
    kind: OptimKind,
    groups: [GroupSettings; 2],
    slots: Vec<Slot>,
    step: usize,
    fused: bool,
    /// The factor that replaces the scheduled one for held tensors.
    held_factor: f64,
}

/// `g + wd·p` (coupled L2 decay), skipping the op when `wd` is 0.
fn with_decay(g: Tensor, p: &Tensor, wd: f64) -> Result<Tensor> {
    Ok(if wd != 0.0 { (g + (p * wd)?)? } else { g })
}

fn norm(t: &Tensor) -> Result<Tensor> {
    Ok(t.sqr()?.sum_all()?.sqrt()?)
}

/// `num/den` where both are positive, else 1 (a scalar tensor).
fn trust_ratio(num: &Tensor, den: &Tensor, scale: f64) -> Result<Tensor> {
    let ok = (num.gt(0.0)? * den.gt(0.0)?)?;
    let ratio = ((num * scale)? / den)?;
    Ok(ok.where_cond(&ratio, &num.ones_like()?)?)
}

impl Optimizer {
    /// Builds an optimiser over `params`; `multi_dim` applies to ≥2-D tensors and `one_dim` to
    /// 1-D tensors (biases, norm γ/β).
    pub fn new(
        kind: OptimKind,
        params: &ParamStore,
        multi_dim: GroupSettings,
        one_dim: GroupSettings,
    ) -> Result<Self> {
        let slots = params
            .trainable()
            .map(|p| {
                let n_state = match kind {
                    OptimKind::Sgd { .. } | OptimKind::Lars { .. } => 1,
                    OptimKind::AdamW { .. } | OptimKind::Lamb { .. } => 2,
                };
                // One allocation per buffer: they are updated in place.
                let state = (0..n_state)
                    .map(|_| p.var.zeros_like())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Slot {
                    name: p.name.clone(),
                    var: p.var.clone(),
                    group: usize::from(p.var.rank() <= 1),
                    held: false,
                    state,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Optimizer {
            kind,
            groups: [multi_dim, one_dim],
            slots,
            step: 0,
            fused: true,
            held_factor: 1.0,
        })
    }

    /// Sets the learning-rate multipliers of the ≥2-D and 1-D groups (a new base lr mid-run).
    pub fn set_lr_mults(&mut self, multi_dim: f64, one_dim: f64) {
        self.groups[0].lr_mult = multi_dim;
        self.groups[1].lr_mult = one_dim;
    }

    /// Whether CPU updates take the fused in-place kernels (the default) or the tensor-op
    /// form that other devices run; the two agree to float rounding, and tests compare them.
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on;
    }

    /// Holds the tensors whose names `held` accepts off the learning-rate schedule: their
    /// rate is their group's base rate times [`Optimizer::set_held_factor`]'s factor (the
    /// batch scaling) at every step. SimSiam's predictor trains this way (`fix_pred_lr`).
    pub fn hold_lr(&mut self, held: impl Fn(&str) -> bool) {
        for slot in &mut self.slots {
            slot.held = held(&slot.name);
        }
    }

    /// The factor held tensors take instead of the scheduled one (1 until set).
    pub fn set_held_factor(&mut self, factor: f64) {
        self.held_factor = factor;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The update rule.
    pub fn kind(&self) -> OptimKind {
        self.kind
    }

    /// Applies one update with scheduled learning rate `lr` (each group multiplies it by its
    /// `lr_mult`). Tensors without a gradient are left alone, as PyTorch does.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let gs = self.groups[slot.group];
            let lr = if slot.held { self.held_factor } else { lr } * gs.lr_mult;
            let mut operands = vec![slot.var.as_tensor(), g];
            operands.extend(&slot.state);
            if self.fused && fused::applies(&operands) {
                fused::step(self.kind, gs, lr, t, slot.var.as_tensor(), g, &slot.state)?;
                continue;
            }
            let p = slot.var.as_tensor().detach();
            let g = g.detach();
            let new_p = match self.kind {
                OptimKind::Sgd { momentum, nesterov } => {
                    let g = with_decay(g, &p, gs.weight_decay)?;
                    let buf = ((&slot.state[0] * momentum)? + &g)?;
                    let d = if nesterov {
                        (g + (&buf * momentum)?)?
                    } else {
                        buf.clone()
                    };
                    slot.state[0] = buf;
                    (p - (d * lr)?)?
                }
                OptimKind::Lars {
                    momentum,
                    eta,
                    clip_lr,
                } => {
                    let g = if !gs.adapt {
                        g
                    } else if clip_lr {
                        let pn = norm(&p)?;
                        let den = ((norm(&g)? + (&pn * gs.weight_decay)?)? + 1e-8)?;
                        let q = trust_ratio(&pn, &den, eta)?;
                        let q = if lr > 0.0 {
                            (q / lr)?.clamp(0.0, 1.0)?
                        } else {
                            q.ones_like()?
                        };
                        with_decay(g, &p, gs.weight_decay)?.broadcast_mul(&q)?
                    } else {
                        let g = with_decay(g, &p, gs.weight_decay)?;
                        let q = trust_ratio(&norm(&p)?, &norm(&g)?, eta)?;
                        g.broadcast_mul(&q)?
                    };
                    let mu = ((&slot.state[0] * momentum)? + g)?;
                    slot.state[0] = mu.clone();
                    (p - (mu * lr)?)?
                }
                OptimKind::AdamW { beta1, beta2, eps } | OptimKind::Lamb { beta1, beta2, eps } => {
                    let m = ((&slot.state[0] * beta1)? + (&g * (1.0 - beta1))?)?;
                    let v = ((&slot.state[1] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                    let mhat = (&m / (1.0 - beta1.powi(t)))?;
                    let vhat = (&v / (1.0 - beta2.powi(t)))?;
                    slot.state[0] = m;
                    slot.state[1] = v;
                    let dir = (mhat / (vhat.sqrt()? + eps)?)?;
                    if matches!(self.kind, OptimKind::AdamW { .. }) {
                        let p = if gs.weight_decay != 0.0 {
                            (&p * (1.0 - lr * gs.weight_decay))?
                        } else {
                            p
                        };
                        (p - (dir * lr)?)?
                    } else {
                        let r = with_decay(dir, &p, gs.weight_decay)?;
                        let r = if gs.adapt {
                            let q = trust_ratio(&norm(&p)?, &norm(&r)?, 1.0)?;
                            r.broadcast_mul(&q)?
                        } else {
                            r
                        };
                        (p - (r * lr)?)?
                    }
                }
            };
            slot.var.set(&new_p)?;
        }
        Ok(())
    }

    /// The state for a checkpoint: copies, since the buffers are updated in place.
    pub fn state(&self) -> Result<OptimizerState> {
        let mut buffers = Vec::new();
        for s in &self.slots {
            for (i, t) in s.state.iter().enumerate() {
                buffers.push((format!("{}#{i}", s.name), t.copy()?));
            }
        }
        Ok(OptimizerState {
            step: self.step,
            buffers,
        })
    }

    /// Restores a state saved by [`Optimizer::state`] for the same parameters.
    pub fn load_state(&mut self, st: &OptimizerState) -> Result<()> {
        for s in &mut self.slots {
            for i in 0..s.state.len() {
                let key = format!("{}#{i}", s.name);
                let t = st
                    .buffers
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, t)| t)
                    .ok_or_else(|| Error::Invalid(format!("optimizer state lacks '{key}'")))?;
                if t.dims() != s.state[i].dims() {
                    return Err(Error::Shape(format!(
                        "optimizer state '{key}' has shape {:?}, parameter needs {:?}",
                        t.dims(),
                        s.state[i].dims()
                    )));
                }
                // A copy: the buffers are updated in place, `st` must stay as it was.
                s.state[i] = t.to_device(s.var.device())?.copy()?;
            }
        }
        self.step = st.step;
        Ok(())
    }
}
