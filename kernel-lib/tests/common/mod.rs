//! Helpers shared by the integration tests (each test file compiles this module on its own, so
//! not every file uses every helper).
#![allow(dead_code)]

use candle_core::{DType, Tensor, Var};
use sslab::prelude::*;

/// The largest absolute entry of `a` (f32).
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The largest absolute difference between `a` and `b` (f32, same shape).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// A scalar tensor as f64.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Asserts that autograd's gradient of the scalar `f` at `x0` (an f64 tensor) equals central
/// finite differences, entry by entry, within `1e-6·(1 + |fd|)`.
pub fn assert_gradient_matches_finite_differences(x0: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
    let v = Var::from_tensor(x0).unwrap();
    let grads = f(v.as_tensor()).backward().unwrap();
    let g = grads
        .get(v.as_tensor())
        .expect("no gradient reached the input")
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let h = 1e-6;
    for i in 0..base.len() {
        let at = |d: f64| {
            let mut x = base.clone();
            x[i] += d;
            scalar(&f(&Tensor::from_vec(x, x0.dims(), x0.device()).unwrap()))
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "entry {i}: autograd {} vs finite difference {fd}",
            g[i]
        );
    }
}

/// Shrinks a preset to a run of seconds on the CPU: 16-px shapes (64 train, 20 test images),
/// width-4 ResNet, batch 16, 6 steps, k = 5 for the kNN.
pub fn shrink(mut c: RunConfig) -> RunConfig {
    c.device = "cpu".into();
    c.data.shapes.train = 64;
    c.data.shapes.test = 20;
    c.data.shapes.size = 16;
    c.augment.size = 16;
    c.model.width = 4;
    c.train.batch_size = 16;
    c.train.steps = 6;
    c.optim.warmup_epochs = 0.0;
    c.eval.knn_k = 5;
    c
}

/// [`shrink`] for any method: small queue, heads and ViT too, and monitors out of the way.
pub fn shrink_any(preset: &str) -> RunConfig {
    let mut c = shrink(RunConfig::preset(preset).unwrap());
    c.moco.queue_size = 32;
    c.moco_v3.hidden = 32;
    c.moco_v3.dim = 16;
    c.model.vit_depth = 1;
    c.model.patch = 8;
    c.simclr.projector = vec![16, 8];
    c.byol.projector = vec![16, 8];
    c.byol.predictor_hidden = 16;
    c.simsiam.projector = vec![16, 16, 8];
    c.simsiam.predictor_hidden = 4;
    c.vicreg.expander = vec![16, 16, 16];
    c.diagnostics.every = 100;
    c
}

/// A fixed pseudo-random sequence in [-1, 1) (splitmix64): the same numbers on every run and
/// device.
pub fn splitmix(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut z = (i + seed * 1_000_003).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `max |a - b| / max |b|`, on the host, in f32.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let host = |t: &Tensor| {
        t.to_device(&candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let (a, b) = (host(a), host(b));
    let diff = (a - &b).unwrap().abs().unwrap().max_all().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-12)
}

/// `t` rounded to bf16 and widened to `dtype`: the operands a bf16 product multiplies, or
/// (widened to f32) the values a bf16 activation holds.
pub fn bf16_rounded(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(dtype).unwrap()
}

/// The cosine of the angle between `a` and `b` (f64 sums): how far one gradient points from
/// another.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot =
        |x: &[f32], y: &[f32]| -> f64 { x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum() };
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt()).max(1e-300)
}

/// One setting of every update rule: SGD plain and Nesterov, LARS in both variants, AdamW,
/// LAMB.
pub fn every_optimizer() -> [sslab::optim::OptimKind; 6] {
    use sslab::optim::OptimKind;
    [
        OptimKind::Sgd {
            momentum: 0.9,
            nesterov: false,
        },
        OptimKind::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        OptimKind::Lars {
            momentum: 0.9,
            eta: 0.02,
            clip_lr: false,
        },
        OptimKind::Lars {
            momentum: 0.9,
            eta: 0.02,
            clip_lr: true,
        },
        OptimKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        OptimKind::Lamb {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
        },
    ]
}

/// A ResNet without zero-initialised residual branches, its weights drawn from `seed` on
/// `dev`, and its parameters.
pub fn resnet(
    depth: sslab::models::Depth,
    stem: sslab::models::Stem,
    width: usize,
    seed: u64,
    dev: &candle_core::Device,
) -> (sslab::models::ResNet, sslab::models::ParamStore) {
    let mut pb = sslab::models::ParamBuilder::new(seed, dev);
    let cfg = sslab::models::ResNetConfig {
        depth,
        stem,
        width,
        zero_init_residual: false,
    };
    let net = sslab::models::ResNet::new(&mut pb, "r", &cfg).unwrap();
    (net, pb.finish())
}

/// The loss of one training forward of `run`'s method on views `a` and `b`, and every
/// trainable weight's gradient, in order, as one f32 vector on the host; each gradient must
/// exist, be f32 (the master weights' dtype) and be finite. `what` names the run in failures.
pub fn step_gradients(run: &mut Run, a: &Tensor, b: &Tensor, what: &str) -> (f32, Vec<f32>) {
    let out = run.method_mut().forward_train(a, b).unwrap();
    let grads = out.loss.backward().unwrap();
    let mut flat = Vec::new();
    for q in run.method().params().trainable() {
        let g = grads
            .get(q.var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: {} has no gradient", q.name));
        assert_eq!(g.dtype(), DType::F32, "{what}: {}", q.name);
        let g = g.to_device(&candle_core::Device::Cpu).unwrap();
        flat.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    assert!(flat.iter().all(|v| v.is_finite()), "{what}: gradient");
    (out.loss.to_scalar::<f32>().unwrap(), flat)
}
