//! BatchNorm with PyTorch's conventions, written from tensor ops so every path has a gradient.
//!
//! Training mode normalises with the batch mean and the *biased* variance (eps 1e-5) and updates
//! the running statistics as `running = (1 − 0.1)·running + 0.1·batch`, where the running
//! variance takes the *unbiased* batch variance. Evaluation mode uses the running statistics.
//! `affine = false` gives the non-affine BN of Barlow Twins' loss normaliser and MoCo v3's last
//! projector layer.

use super::params::{Init, ParamBuilder, ParamKind};
use crate::dist::{self, World};
use crate::error::{Error, Result};
use crate::kernels::{batch_norm_affine_train, batch_norm_train, split_batch_norm_train_cpu};
use candle_core::{Tensor, Var};

/// Batch normalisation over the channel axis (dim 1) of `(n, c)` or `(n, c, h, w)` input.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub weight: Option<Var>,
    pub bias: Option<Var>,
    pub running_mean: Var,
    pub running_var: Var,
    pub eps: f64,
    pub momentum: f64,
    pub channels: usize,
}

impl BatchNorm {
    /// A BatchNorm over `c` channels; `gamma0` is the initial scale (0 for zero-init residuals).
    pub fn new(
        b: &mut ParamBuilder,
        name: &str,
        c: usize,
        affine: bool,
        gamma0: f32,
    ) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                Some(b.var(
                    &format!("{name}.weight"),
                    &[c],
                    Init::Const(gamma0),
                    ParamKind::Norm,
                )?),
                Some(b.var(
                    &format!("{name}.bias"),
                    &[c],
                    Init::Const(0.0),
                    ParamKind::Norm,
                )?),
            )
        } else {
            (None, None)
        };
        let running_mean = b.var(
            &format!("{name}.running_mean"),
            &[c],
            Init::Const(0.0),
            ParamKind::Buffer,
        )?;
        let running_var = b.var(
            &format!("{name}.running_var"),
            &[c],
            Init::Const(1.0),
            ParamKind::Buffer,
        )?;
        Ok(BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
            eps: 1e-5,
            momentum: 0.1,
            channels: c,
        })
    }

    /// Shape that broadcasts a per-channel vector against `x`.
    fn channel_shape(&self, x: &Tensor) -> Result<Vec<usize>> {
        let dims = x.dims();
        if dims.len() < 2 || dims[1] != self.channels {
            return Err(Error::Shape(format!(
                "BatchNorm over {} channels got input of shape {:?}",
                self.channels, dims
            )));
        }
        let mut s = vec![1; dims.len()];
        s[1] = self.channels;
        Ok(s)
    }

    /// Normalises `x`; in training mode also updates the running statistics. On the CPU the
    /// training path runs the fused kernel; elsewhere [`BatchNorm::forward_t_generic`].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_split_act(x, train, 1, false)
    }

    /// The device-independent path built from candle tensor ops (used off the CPU, and by the
    /// tests that check the fused kernel against it).
    pub fn forward_t_generic(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false, false, None)
    }

    /// Split BatchNorm (MoCo's single-device stand-in for per-GPU BN, docs/recipes.md §1.3): in
    /// training mode the batch is cut into `groups` consecutive groups, each normalised with its
    /// own statistics, and the running statistics move towards the average over groups (as the
    /// MoCo CIFAR demo's `SplitBatchNorm`). Evaluation mode, and `groups = 1`, are plain BN.
    pub fn forward_split(&self, x: &Tensor, train: bool, groups: usize) -> Result<Tensor> {
        self.forward_split_act(x, train, groups, false)
    }

    /// `relu(forward_split(x))`, with the ReLU inside the CPU kernel: the normalised tensor
    /// before the ReLU is then never stored, which saves one activation per BN-ReLU pair of a
    /// ResNet (candle keeps every intermediate of the graph until the backward pass).
    pub fn forward_split_relu(&self, x: &Tensor, train: bool, groups: usize) -> Result<Tensor> {
        self.forward_split_act(x, train, groups, true)
    }

    /// [`forward_split`](Self::forward_split) (then a ReLU when `relu`) of channels-last
    /// `(…, c)` activations: BatchNorm of the `(rows, c)` matrix of every position's channels,
    /// which is BatchNorm1d, in every mode (split groups are runs of whole images, since an
    /// image's positions are consecutive rows).
    pub fn forward_channels_last(
        &self,
        x: &Tensor,
        train: bool,
        groups: usize,
        relu: bool,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let c = *dims.last().unwrap_or(&0);
        if c != self.channels {
            return Err(Error::Shape(format!(
                "BatchNorm of {} channels got channels-last input {dims:?}",
                self.channels
            )));
        }
        let rows = x.elem_count() / c.max(1);
        let y = self.forward_split_act(&x.reshape((rows, c))?, train, groups, relu)?;
        Ok(y.reshape(dims)?)
    }

    fn forward_split_act(
        &self,
        x: &Tensor,
        train: bool,
        groups: usize,
        relu: bool,
    ) -> Result<Tensor> {
        if x.dtype() == candle_core::DType::BF16 && (!train || dist::current().is_some()) {
            // bf16 activations (a bf16 autocast on CUDA): evaluation with the f32 running
            // statistics and BatchNorm across ranks compute in f32; one process's training
            // BN reads and writes bf16 in its kernels.
            return crate::kernels::via_f32(x, |x| self.forward_split_act(x, train, groups, relu));
        }
        if train {
            if let Some(world) = dist::current() {
                return self.forward_ranks(x, groups, relu, &world);
            }
        }
        if !train || groups <= 1 {
            return self.forward_impl(x, train, true, relu, None);
        }
        self.forward_groups(x, groups, relu)
    }

    /// Training-mode split BN of this process's rows in `groups` groups.
    fn forward_groups(&self, x: &Tensor, groups: usize, relu: bool) -> Result<Tensor> {
        let cs = self.channel_shape(x)?;
        let dims = x.dims().to_vec();
        let n = dims[0];
        if !n.is_multiple_of(groups) {
            return Err(Error::Shape(format!(
                "split BatchNorm: batch of {n} does not divide into {groups} groups"
            )));
        }
        let m = n / groups;
        let inner: usize = dims[2..].iter().product();
        let count = m * inner;
        // Across ranks each holds some of the groups: the running statistics move towards the
        // average over every rank's groups, as in one process.
        let update = |mean: Tensor, var: Tensor| -> Result<()> {
            let mean = mean.reshape((groups, self.channels))?.mean(0)?;
            let var = var.reshape((groups, self.channels))?.mean(0)?;
            let (mean, var) = (dist::mean_over_ranks(&mean)?, dist::mean_over_ranks(&var)?);
            self.update_running(&mean, &var, count)
        };
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            // The CPU kernel reads each group where it lies (statistics per group and
            // channel, group-major, as the regrouped layout below orders them).
            let affine = match (&self.weight, &self.bias) {
                (Some(w), Some(b)) => Some((w.as_tensor(), b.as_tensor())),
                _ => None,
            };
            let fused_relu = relu && affine.is_some();
            let (y, mean, var) =
                split_batch_norm_train_cpu(x, affine, self.eps, fused_relu, groups)?;
            update(mean, var)?;
            return if affine.is_some() {
                Ok(y)
            } else {
                then_relu(self.affine(y, &cs)?, relu)
            };
        }
        // (n, c, inner) → (m, groups·c, inner): each (group, channel) pair becomes a channel.
        let grouped = x
            .reshape((groups, m, self.channels, inner))?
            .transpose(0, 1)?
            .reshape((m, groups * self.channels, inner))?;
        let ungroup = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((m, groups, self.channels, inner))?
                .transpose(0, 1)?
                .reshape(dims.as_slice())?)
        };
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            // γ and β repeated per group: grouped channel g·c + ch takes channel ch's, and the
            // backward of the repeat sums their gradients over the groups.
            let per_group = |v: &Var| Tensor::cat(&vec![v.as_tensor(); groups], 0);
            let (y, mean, var) = batch_norm_affine_train(
                &grouped,
                &per_group(w)?,
                &per_group(b)?,
                self.eps,
                relu,
                None,
            )?;
            update(mean, var)?;
            return ungroup(y);
        }
        let (xhat, mean, var) = batch_norm_train(&grouped, self.eps, true, None)?;
        update(mean, var)?;
        then_relu(self.affine(ungroup(xhat)?, &cs)?, relu)
    }

    /// Training mode across ranks (each holding its consecutive share of the global batch):
    /// one group is SyncBN, statistics over the global batch (or, without `train.sync_bn`,
    /// each rank's own rows); `groups` groups (a multiple of
    /// the world size) are split BN, each rank normalising its `groups / size` groups, which is
    /// MoCo's per-GPU BatchNorm when a rank holds one group.
    fn forward_ranks(
        &self,
        x: &Tensor,
        groups: usize,
        relu: bool,
        world: &World,
    ) -> Result<Tensor> {
        let size = world.size();
        if groups > 1 {
            if !groups.is_multiple_of(size) {
                return Err(Error::config(
                    "moco.bn_splits",
                    format!(
                        "{groups} BatchNorm groups do not divide among {size} ranks: use a \
                         multiple of the world size, or 1 for BatchNorm over the global batch"
                    ),
                ));
            }
            return self.forward_groups(x, groups / size, relu);
        }
        if !dist::sync_bn() {
            // Per-rank BatchNorm (`train.sync_bn = false`): this rank's rows, the running
            // statistics averaged over ranks.
            return self.forward_groups(x, 1, relu);
        }
        if !x.device().is_cpu() {
            return self.forward_synced_on_device(x, relu, world);
        }
        // The fused kernel with its sums all-reduced (the same arithmetic as in one process,
        // torch's SyncBN in its backward: the means of g and g·x̂ over the global batch, dγ
        // and dβ from this rank's rows).
        self.forward_impl(x, true, true, relu, Some(world))
    }

    /// SyncBN of a tensor on a GPU: the per-channel mean and biased variance over every
    /// rank's rows from tensor ops around two differentiable all-reduces
    /// ([`dist::global_moments`]), so autograd gives torch's SyncBN backward. The fused CUDA
    /// kernel keeps its statistics on the device and has no all-reduce between its passes.
    fn forward_synced_on_device(&self, x: &Tensor, relu: bool, world: &World) -> Result<Tensor> {
        let cs = self.channel_shape(x)?;
        let dims = x.dims().to_vec();
        let inner: usize = dims[2..].iter().product();
        let m = dist::global_moments(&x.reshape((dims[0], self.channels, inner))?)?;
        let inv_std =
            (m.var.clone() + self.eps)?
                .sqrt()?
                .recip()?
                .reshape((1, self.channels, 1))?;
        let xhat = m
            .centred
            .broadcast_mul(&inv_std)?
            .reshape(dims.as_slice())?;
        self.update_running(
            &m.mean.detach(),
            &m.var.detach(),
            self.count(x, Some(world)),
        )?;
        then_relu(self.affine(xhat, &cs)?, relu)
    }

    /// `ranks`: training-mode statistics over every rank's rows (SyncBN).
    fn forward_impl(
        &self,
        x: &Tensor,
        train: bool,
        fused: bool,
        relu: bool,
        ranks: Option<&World>,
    ) -> Result<Tensor> {
        if train {
            if let (true, Some(w), Some(b)) = (fused, &self.weight, &self.bias) {
                let (w, b) = (w.as_tensor(), b.as_tensor());
                let (y, mean, var) = batch_norm_affine_train(x, w, b, self.eps, relu, ranks)?;
                self.update_running(&mean, &var, self.count(x, ranks))?;
                return Ok(y);
            }
        }
        then_relu(self.forward_unfused(x, train, fused, ranks)?, relu)
    }

    /// Values per channel of a training batch `x`, over every rank's rows with `ranks`.
    fn count(&self, x: &Tensor, ranks: Option<&World>) -> usize {
        x.elem_count() / self.channels * ranks.map_or(1, |w| w.size())
    }

    fn forward_unfused(
        &self,
        x: &Tensor,
        train: bool,
        fused: bool,
        ranks: Option<&World>,
    ) -> Result<Tensor> {
        let cs = self.channel_shape(x)?;
        if train {
            let (xhat, mean, var) = batch_norm_train(x, self.eps, fused, ranks)?;
            self.update_running(&mean, &var, self.count(x, ranks))?;
            return self.affine(xhat, &cs);
        }
        let mean = self.running_mean.as_tensor().reshape(cs.as_slice())?;
        let var = self.running_var.as_tensor().reshape(cs.as_slice())?;
        let y = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + self.eps)?.sqrt()?)?;
        self.affine(y, &cs)
    }

    /// PyTorch's running-statistics update: the running variance takes the *unbiased* batch
    /// variance of `count` values per channel.
    fn update_running(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let m = self.momentum;
        let unbias = count as f64 / (count.max(2) - 1) as f64;
        self.running_mean
            .set(&((self.running_mean.as_tensor().detach() * (1.0 - m))? + (mean * m)?)?)?;
        self.running_var.set(
            &((self.running_var.as_tensor().detach() * (1.0 - m))? + (var * (unbias * m))?)?,
        )?;
        Ok(())
    }

    fn affine(&self, y: Tensor, cs: &[usize]) -> Result<Tensor> {
        let y = match &self.weight {
            Some(w) => y.broadcast_mul(&w.as_tensor().reshape(cs)?)?,
            None => y,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.as_tensor().reshape(cs)?)?,
            None => y,
        })
    }
}

/// `relu(y)` where the ReLU could not go inside the fused kernel, else `y`.
fn then_relu(y: Tensor, relu: bool) -> Result<Tensor> {
    if relu {
        return crate::kernels::relu(&y);
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::ThreadWorld;
    use candle_core::Device;

    fn bn(c: usize) -> BatchNorm {
        let v = |x: Vec<f32>| Var::from_vec(x, c, &Device::Cpu).unwrap();
        BatchNorm {
            weight: Some(v((0..c).map(|i| 0.5 + i as f32).collect())),
            bias: Some(v((0..c).map(|i| 0.1 * i as f32).collect())),
            running_mean: v(vec![0.0; c]),
            running_var: v(vec![1.0; c]),
            eps: 1e-5,
            momentum: 0.1,
            channels: c,
        }
    }

    /// The SyncBN of tensors on a GPU (tensor ops around differentiable all-reduces), run here
    /// on CPU tensors by two thread ranks, gives each rank its rows of one process's training
    /// BatchNorm over the whole batch: outputs, input gradients, and the running statistics;
    /// γ's and β's gradients, averaged over ranks as the run averages them, are one process's.
    #[test]
    fn device_sync_bn_on_two_ranks_is_one_process_batch_norm() {
        let (n, c, hw) = (6, 3, 4);
        let data: Vec<f32> = (0..n * c * hw)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3 + (i % c) as f32)
            .collect();
        let x = Tensor::from_vec(data, (n, c, 2, 2), &Device::Cpu).unwrap();
        let probe = Tensor::arange(0f32, (n * c * hw) as f32, &Device::Cpu)
            .unwrap()
            .reshape((n, c, 2, 2))
            .unwrap()
            .cos()
            .unwrap();
        let run = |bn: &BatchNorm, x: &Tensor, probe: &Tensor, ranks: Option<&World>| {
            let xv = Var::from_tensor(x).unwrap();
            let y = if let Some(w) = ranks {
                bn.forward_synced_on_device(xv.as_tensor(), true, w)
                    .unwrap()
            } else {
                bn.forward_impl(xv.as_tensor(), true, false, true, None)
                    .unwrap()
            };
            let g = (&y * probe).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = |t: &Tensor| g.get(t).unwrap().flatten_all().unwrap().to_vec1::<f32>();
            let w = bn.weight.as_ref().unwrap().as_tensor();
            let b = bn.bias.as_ref().unwrap().as_tensor();
            let stats = [&bn.running_mean, &bn.running_var]
                .map(|v| v.as_tensor().to_vec1::<f32>().unwrap());
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                y,
                grad(xv.as_tensor()).unwrap(),
                grad(w).unwrap(),
                grad(b).unwrap(),
                stats,
            )
        };
        let one = run(&bn(c), &x, &probe, None);
        let ranks = ThreadWorld::ranks(2, std::time::Duration::from_secs(30));
        let per_rank: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = ranks
                .into_iter()
                .map(|w| {
                    let (x, probe) = (&x, &probe);
                    s.spawn(move || {
                        let r = w.rank();
                        let _scope = dist::scope(Some(w.clone()));
                        let rows = |t: &Tensor| t.narrow(0, r * n / 2, n / 2).unwrap();
                        run(&bn(c), &rows(x), &rows(probe), Some(&w))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() < 1e-4 * (1.0 + q.abs()), "{what}: {p} vs {q}");
            }
        };
        let half = one.0.len() / 2;
        for (r, got) in per_rank.iter().enumerate() {
            close(&got.0, &one.0[r * half..(r + 1) * half], "output");
            close(&got.1, &one.1[r * half..(r + 1) * half], "input gradient");
            close(&got.4[0], &one.4[0], "running mean");
            close(&got.4[1], &one.4[1], "running variance");
        }
        // Each rank's γ and β gradients are sums over its own rows; the gradient average of a
        // run halves their total, so their sum over ranks is one process's.
        let total = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p + q).collect::<Vec<_>>();
        let (a, b) = (&per_rank[0], &per_rank[1]);
        close(&total(&a.2, &b.2), &one.2, "γ gradient");
        close(&total(&a.3, &b.3), &one.3, "β gradient");
    }
}
