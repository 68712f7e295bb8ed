//! sslab's CUDA optimizer updates and EMA against the CPU's in-place kernels: four steps of every
//! rule, both parameter groups (decay and trust ratio on the 2-D tensor, the 1-D one excluded
//! with its own rate), parameters and buffers.

use super::common;
use super::common::splitmix as rand;
use super::gpu;
use candle_core::{Device, Tensor, Var};
use sslab::kernels::ema;
use sslab::models::{Init, ParamBuilder, ParamKind};
use sslab::optim::{GroupSettings, OptimKind, Optimizer};

fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Parameters and buffers after four steps of `kind` on `dev`.
fn run(kind: OptimKind, dev: &Device) -> Vec<Vec<f32>> {
    let (n_w, n_b) = (300_000, 300);
    let mut pb = ParamBuilder::new(0, dev);
    let w = pb
        .var("w", &[600, n_w / 600], Init::Const(0.0), ParamKind::Weight)
        .unwrap();
    let b = pb
        .var("b", &[n_b], Init::Const(0.0), ParamKind::Bias)
        .unwrap();
    w.set(&Tensor::from_vec(rand(n_w, 1), w.dims(), dev).unwrap())
        .unwrap();
    b.set(&Tensor::from_vec(rand(n_b, 2), n_b, dev).unwrap())
        .unwrap();
    let store = pb.finish();
    let multi = GroupSettings {
        lr_mult: 1.0,
        weight_decay: 0.05,
        adapt: true,
    };
    let one = GroupSettings {
        lr_mult: 0.5,
        weight_decay: 0.0,
        adapt: false,
    };
    let mut opt = Optimizer::new(kind, &store, multi, one).unwrap();
    for step in 0..4u64 {
        let x = Tensor::from_vec(rand(n_w, 10 + step), w.dims(), dev).unwrap();
        let y = Tensor::from_vec(rand(n_b, 20 + step), n_b, dev).unwrap();
        let loss = ((w.as_tensor() * &x).unwrap().sum_all().unwrap()
            + (b.as_tensor() * &y).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = (loss * 0.3).unwrap().backward().unwrap();
        opt.step(&grads, 0.1).unwrap();
    }
    let mut out = vec![host(w.as_tensor()), host(b.as_tensor())];
    out.extend(opt.state().unwrap().buffers.iter().map(|(_, t)| host(t)));
    out
}

#[test]
fn optimizer_updates_match_the_cpu_kernels() {
    let Some(dev) = gpu(false) else { return };
    let kinds = common::every_optimizer();
    for kind in kinds {
        let (cpu, cuda) = (run(kind, &Device::Cpu), run(kind, &dev));
        assert_eq!(cpu.len(), cuda.len());
        for (i, (a, e)) in cuda.iter().zip(&cpu).enumerate() {
            let err = max_rel(a, e);
            assert!(err < 1e-5, "{kind:?} tensor {i}: CUDA vs CPU {err:.2e}");
        }
    }
}

#[test]
fn ema_matches_the_cpu_kernel() {
    let Some(dev) = gpu(false) else { return };
    let (t0, o) = (rand(100_000, 3), rand(100_000, 4));
    let after = |dev: &Device| {
        let target = Var::from_vec(t0.clone(), 100_000, dev).unwrap();
        let online = Tensor::from_vec(o.clone(), 100_000, dev).unwrap();
        ema(&target, &online, 0.99).unwrap();
        ema(&target, &online, 0.999).unwrap();
        host(target.as_tensor())
    };
    let err = max_rel(&after(&dev), &after(&Device::Cpu));
    assert!(err < 1e-6, "EMA CUDA vs CPU {err:.2e}");
}
