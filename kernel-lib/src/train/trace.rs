//! One training step laid bare: every tensor it reads and writes, for putting sslab next to
//! another framework's step on the same weights and the same batch (`benches/parity/`).

use super::run::Run;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::path::Path;

/// What one step read and wrote, by name:
///
/// - `views.a`, `views.b`: the two augmented views of the batch (N × 3 × S × S);
/// - `init.<name>`, `init_momentum.<name>`: every tensor of the model (and of the momentum
///   encoder where the method has one) before the step, buffers included;
/// - `queue_before.<queue>`, `queue_after.<queue>` (rows are keys) and `queue_ptr.<queue>`;
/// - `grad.<name>`: the gradient of every trainable tensor that received one;
/// - `after.<name>`, `after_momentum.<name>`: the same tensors after the optimizer step and the
///   momentum update;
/// - `loss`, `part.<name>` (the loss's parts), `lr` (the scheduled rate of ≥2-D tensors),
///   `lr_factor` (what multiplies every group's base rate at this step) and `lr_held_factor`
///   (the factor of tensors held off the schedule).
///
/// Every tensor is an f32 copy on the CPU.
#[derive(Debug)]
pub struct StepTrace {
    pub tensors: Vec<(String, Tensor)>,
}

impl StepTrace {
    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Writes every tensor into one safetensors file (PyTorch reads it with
    /// `safetensors.torch.load_file`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let map: std::collections::HashMap<String, Tensor> = self.tensors.iter().cloned().collect();
        candle_core::safetensors::save(&map, path).map_err(|e| Error::data(path, e.to_string()))
    }
}

fn snapshot(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?
        .to_device(&candle_core::Device::Cpu)?
        .copy()?)
}

/// Every tensor of the run's model (and momentum encoder) as `<prefix>.<name>` and
/// `<prefix>_momentum.<name>`, its queues as `queue_<queue_prefix>.<queue>`; the queues' write
/// positions as `queue_ptr.<queue>` before the step.
fn snapshot_model(
    out: &mut Vec<(String, Tensor)>,
    run: &Run,
    prefix: &str,
    queue_prefix: &str,
) -> Result<()> {
    let stores = [
        ("", Some(run.method.params())),
        ("_momentum", run.method.momentum_params()),
    ];
    for (suffix, s) in stores {
        for p in s.into_iter().flat_map(|s| &s.params) {
            out.push((
                format!("{prefix}{suffix}.{}", p.name),
                snapshot(p.var.as_tensor())?,
            ));
        }
    }
    for (name, q) in run.method.queues() {
        out.push((
            format!("queue_{queue_prefix}.{name}"),
            snapshot(q.keys_by_row())?,
        ));
        if queue_prefix == "before" {
            let ptr = Tensor::new(&[q.ptr() as f32], &candle_core::Device::Cpu)?;
            out.push((format!("queue_ptr.{name}"), ptr));
        }
    }
    Ok(())
}

impl Run {
    /// Takes the next step as [`Run::step`] does (same batch, same forward, backward, optimizer
    /// update and momentum update) and returns every tensor it read and wrote. The run moves on
    /// by one step, recorded in its history. Meant for tiny configs: it copies the whole model
    /// three times.
    ///
    /// ```no_run
    /// use sslab::prelude::*;
    /// let mut run = Run::new(RunConfig::preset("barlow-twins/tiny")?)?;
    /// let trace = run.traced_step()?;
    /// println!("loss {}", trace.get("loss").unwrap());
    /// trace.save("barlow-twins-step.safetensors")?;
    /// # Ok::<(), sslab::Error>(())
    /// ```
    pub fn traced_step(&mut self) -> Result<StepTrace> {
        let mut out = Vec::new();
        snapshot_model(&mut out, self, "init", "before")?;
        let s = self.record.steps.len();
        let _precision = crate::kernels::autocast(self.config.precision);
        let batch = self.loader.next_batch()?;
        let (n, size) = (batch.indices.len(), batch.size);
        let a = Tensor::from_vec(batch.a, (n, 3, size, size), &self.device)?;
        let b = Tensor::from_vec(batch.b, (n, 3, size, size), &self.device)?;
        out.push(("views.a".into(), snapshot(&a)?));
        out.push(("views.b".into(), snapshot(&b)?));
        let fwd = self.method.forward_train(&a, &b)?;
        let grads = fwd.loss.backward()?;
        out.push(("loss".into(), snapshot(&fwd.loss.reshape(1)?)?));
        for (k, t) in &fwd.parts {
            out.push((format!("part.{k}"), snapshot(&t.reshape(1)?)?));
        }
        for p in self.method.params().trainable() {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                out.push((format!("grad.{}", p.name), snapshot(g)?));
            }
        }
        let factor = self.schedule.factor(s);
        let cpu = candle_core::Device::Cpu;
        let scalar = |v: f64| Tensor::new(&[v], &cpu);
        out.push(("lr".into(), scalar(self.schedule.lr_at(s))?));
        out.push(("lr_factor".into(), scalar(factor)?));
        out.push((
            "lr_held_factor".into(),
            scalar(self.schedule.batch_factor())?,
        ));
        self.optimizer.set_held_factor(self.schedule.batch_factor());
        self.optimizer.step(&grads, factor)?;
        self.method.after_step(s + 1, self.schedule.total_steps())?;
        let loss = fwd.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        drop((fwd, grads));
        snapshot_model(&mut out, self, "after", "after")?;
        self.record.steps.push(super::record::StepReport {
            step: s + 1,
            loss,
            parts: Vec::new(),
            lr: self.schedule.lr_at(s),
            seconds: 0.0,
            images_per_sec: 0.0,
        });
        Ok(StepTrace { tensors: out })
    }
}
