//! MoCo v1/v2 and DenseCL: the InfoNCE values of docs/recipes.md §8 items 1, 2, the queue FIFO (item
//! 5), the EMA (item 4), DenseCL's correspondence and loss identities (item 7), and the
//! momentum encoder really being a separate, EMA-moved copy.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use sslab::methods::{
    DenseCl, DenseClConfig, DenseClSpec, KeyQueue, Method, Moco, MocoSpec, MocoVersion,
    MomentumSchedule,
};
use sslab::models::{ema_update, Depth, Linear, ParamBuilder, ResNetConfig, Stem};
use sslab::objectives::{
    cross_entropy_first, dense_correspondence, dense_info_nce, densecl_loss, info_nce_queue,
    DenseClInputs,
};
use sslab::prelude::*;

use common::scalar;

/// `k` copies of the unit vector e_i in `dim` dimensions, as a `(dim, k)` queue.
fn queue_of(dim: usize, i: usize, k: usize) -> Tensor {
    let mut v = vec![0f32; dim * k];
    for j in 0..k {
        v[i * k + j] = 1.0;
    }
    Tensor::from_vec(v, (dim, k), &Device::Cpu).unwrap()
}

#[test]
fn uniform_logits_give_ln_of_the_column_count() {
    let dev = Device::Cpu;
    // q ⟂ k and q ⟂ every queued key: all logits 0.
    let q = Tensor::new(&[[3f32, 0.0]], &dev).unwrap();
    let k = Tensor::new(&[[0f32, 2.0]], &dev).unwrap();
    for kq in [8usize, 65536] {
        let out = info_nce_queue(&q, &k, &queue_of(2, 1, kq), 0.07).unwrap();
        let expect = ((kq + 1) as f64).ln();
        assert!((scalar(&out.loss) - expect).abs() < 1e-4, "K = {kq}");
    }
    assert!((65537f64.ln() - 11.0904).abs() < 1e-4);
}

#[test]
fn perfect_positive_with_orthogonal_negatives() {
    let dev = Device::Cpu;
    let q = Tensor::new(&[[1f32, 0.0], [5.0, 0.0]], &dev).unwrap();
    let queue = queue_of(2, 1, 65536);
    for (tau, expect) in [(0.07, 0.040135), (0.2, 6.0926)] {
        let out = info_nce_queue(&q, &q, &queue, tau).unwrap();
        let formula = (1.0 + 65536.0 * (-1.0 / tau).exp()).ln();
        assert!((formula - expect).abs() < 1e-4);
        assert!((scalar(&out.loss) - expect).abs() < 2e-4, "τ = {tau}");
    }
}

#[test]
fn cross_entropy_gradient_is_softmax_minus_onehot() {
    let dev = Device::Cpu;
    let v = Var::from_tensor(&Tensor::new(&[[0.5f64, -1.0, 2.0], [0.0, 0.0, 0.0]], &dev).unwrap())
        .unwrap();
    let loss = cross_entropy_first(v.as_tensor()).unwrap();
    let g = loss.backward().unwrap();
    let g = g.get(v.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    let rows = v.as_tensor().to_vec2::<f64>().unwrap();
    for (gr, r) in g.iter().zip(&rows) {
        let z: f64 = r.iter().map(|x| x.exp()).sum();
        for (j, (gj, x)) in gr.iter().zip(r).enumerate() {
            let expect = (x.exp() / z - if j == 0 { 1.0 } else { 0.0 }) / 2.0;
            assert!((gj - expect).abs() < 1e-12);
        }
        assert!(gr.iter().sum::<f64>().abs() < 1e-12);
    }
}

#[test]
fn info_nce_gradient_matches_central_finite_differences() {
    let dev = Device::Cpu;
    let q0 = Tensor::randn(0f64, 1.0, (3, 4), &dev).unwrap();
    let k = Tensor::randn(0f64, 1.0, (3, 4), &dev).unwrap();
    let queue = Tensor::randn(0f64, 1.0, (4, 5), &dev).unwrap();
    let queue = queue
        .broadcast_div(&queue.sqr().unwrap().sum_keepdim(0).unwrap().sqrt().unwrap())
        .unwrap();
    common::assert_gradient_matches_finite_differences(&q0, |q| {
        info_nce_queue(q, &k, &queue, 0.2).unwrap().loss
    });
}

#[test]
fn queue_is_fifo_and_rejects_lengths_that_do_not_divide() {
    let dev = Device::Cpu;
    let mut q = KeyQueue::new(2, 8, 0, &dev).unwrap();
    // Initial keys are unit vectors.
    let norms = q.keys_by_row().sqr().unwrap().sum(1).unwrap();
    for n in norms.to_vec1::<f32>().unwrap() {
        assert!((n - 1.0).abs() < 1e-5);
    }
    let batch = |v: f32| Tensor::full(v, (4, 2), &dev).unwrap();
    let col = |q: &KeyQueue, j: usize| q.keys().unwrap().to_vec2::<f32>().unwrap()[0][j];
    q.enqueue(&batch(1.0)).unwrap();
    assert_eq!(q.ptr(), 4);
    assert!((0..4).all(|j| col(&q, j) == 1.0));
    q.enqueue(&batch(2.0)).unwrap();
    assert_eq!(q.ptr(), 0);
    assert!((4..8).all(|j| col(&q, j) == 2.0));
    q.enqueue(&batch(3.0)).unwrap();
    assert_eq!(q.ptr(), 4);
    assert!((0..4).all(|j| col(&q, j) == 3.0));
    assert!((4..8).all(|j| col(&q, j) == 2.0), "B must be untouched");
    let mut six = KeyQueue::new(2, 6, 0, &dev).unwrap();
    let err = six.enqueue(&batch(1.0)).unwrap_err().to_string();
    assert!(err.contains("moco.queue_size"), "{err}");
    // The config refuses it before any training.
    let mut c = RunConfig::preset("moco-v2/tiny").unwrap();
    c.train.batch_size = 4;
    c.moco.bn_splits = 2;
    c.moco.queue_size = 6;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("moco.queue_size"), "{err}");
    c.moco.queue_size = 8;
    c.moco.symmetric = true;
    c.validate().unwrap();
    c.moco.queue_size = 12;
    assert!(c.validate().is_err(), "symmetric enqueues 2 × batch");
}

#[test]
fn ema_moves_towards_the_target_as_one_minus_m_to_the_n() {
    let dev = Device::Cpu;
    let build = |prefix: &str| {
        let mut b = ParamBuilder::new(0, &dev);
        let l = Linear::new(&mut b, &format!("{prefix}fc"), 3, 2, true).unwrap();
        (l, b.finish())
    };
    let (online, online_store) = build("");
    let (target, target_store) = build("momentum.");
    online
        .weight
        .set(&Tensor::ones((2, 3), DType::F32, &dev).unwrap())
        .unwrap();
    target
        .weight
        .set(&Tensor::zeros((2, 3), DType::F32, &dev).unwrap())
        .unwrap();
    let m = 0.9f64;
    for _ in 0..5 {
        ema_update(&target_store, &online_store, m).unwrap();
    }
    let w = target.weight.as_tensor().to_vec2::<f32>().unwrap();
    let expect = 1.0 - m.powi(5);
    assert!(w
        .iter()
        .flatten()
        .all(|&x| (x as f64 - expect).abs() < 1e-6));
    let before = target.weight.as_tensor().to_vec2::<f32>().unwrap();
    ema_update(&target_store, &online_store, 1.0).unwrap();
    assert_eq!(before, target.weight.as_tensor().to_vec2::<f32>().unwrap());
    // Stores that do not pair are refused.
    let mut b = ParamBuilder::new(0, &dev);
    Linear::new(&mut b, "other", 3, 2, true).unwrap();
    assert!(ema_update(&b.finish(), &online_store, 0.5).is_err());
}

fn tiny_backbone() -> ResNetConfig {
    ResNetConfig {
        depth: Depth::R18,
        stem: Stem::Cifar,
        width: 4,
        zero_init_residual: false,
    }
}

fn tiny_moco(version: MocoVersion) -> MocoSpec {
    let mut s = MocoSpec::paper(version, tiny_backbone());
    s.config.queue_size = 32;
    s.config.bn_splits = 2;
    s.config.momentum = 0.9;
    s
}

#[test]
fn keys_come_from_the_momentum_encoder_and_it_drifts_from_the_query_encoder() {
    let dev = Device::Cpu;
    let mut moco = Moco::new(&tiny_moco(MocoVersion::V2), 0, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (8, 3, 16, 16), &dev).unwrap();
    // At start the two encoders are equal, tensor by tensor.
    let key_store = moco.momentum_params().unwrap().clone();
    for (k, q) in key_store.params.iter().zip(&moco.params().params) {
        assert_eq!(k.name, format!("momentum.{}", q.name));
        let d = (k.var.as_tensor() - q.var.as_tensor()).unwrap();
        assert_eq!(scalar(&d.abs().unwrap().max_all().unwrap()), 0.0);
    }
    // One optimiser-like update of the query encoder, then the EMA: with m < 1 the key encoder
    // moves a fraction 1 − m of the way, so the two now differ.
    let out = moco.forward_train(&x, &x).unwrap();
    let grads = out.loss.backward().unwrap();
    for p in moco.params().trainable() {
        if let Some(g) = grads.get(p.var.as_tensor()) {
            p.var.set(&(p.var.as_tensor() - g).unwrap()).unwrap();
        }
    }
    moco.after_step(1, 10).unwrap();
    let mut moved = 0;
    for (k, q) in key_store.params.iter().zip(&moco.params().params) {
        if !q.kind.trainable() {
            continue;
        }
        let d = scalar(
            &(k.var.as_tensor() - q.var.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap(),
        );
        if d > 0.0 {
            moved += 1;
        }
    }
    assert!(
        moved > 0,
        "momentum encoder equals the query encoder after a step"
    );
    // The keys are computed by the momentum copy: overwrite its head's last layer with zero
    // weights and a constant bias, and every key becomes that bias (normalised), while the
    // queries do not.
    let names: Vec<_> = key_store
        .params
        .iter()
        .filter(|p| p.name.starts_with("momentum.head.1.linear"))
        .collect();
    assert_eq!(names.len(), 2);
    for p in names {
        let v: f32 = if p.name.ends_with("bias") { 1.0 } else { 0.0 };
        p.var
            .set(&Tensor::full(v, p.var.dims(), &dev).unwrap())
            .unwrap();
    }
    let keys = moco.keys(&x).unwrap().to_vec2::<f32>().unwrap();
    let unit = 1.0 / (128f32).sqrt();
    assert!(keys.iter().flatten().all(|&v| (v - unit).abs() < 1e-5));
    let queries = moco.queries(&x).unwrap().to_vec2::<f32>().unwrap();
    assert!(queries.iter().flatten().any(|&v| (v - unit).abs() > 1e-3));
}

#[test]
fn a_batch_never_contrasts_with_its_own_keys() {
    let dev = Device::Cpu;
    let mut moco = Moco::new(&tiny_moco(MocoVersion::V1), 0, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (8, 3, 16, 16), &dev).unwrap();
    let before = moco.queues()[0].1.keys_by_row().to_vec2::<f32>().unwrap();
    let keys = moco.keys(&x).unwrap().to_vec2::<f32>().unwrap();
    moco.forward_train(&x, &x).unwrap();
    // The forward leaves the queue alone...
    assert_eq!(
        before,
        moco.queues()[0].1.keys_by_row().to_vec2::<f32>().unwrap()
    );
    moco.after_step(1, 10).unwrap();
    // ...and the step's keys are enqueued after it, at the old pointer.
    let q = moco.queues()[0].1;
    assert_eq!(q.ptr(), 8);
    let after = q.keys_by_row().to_vec2::<f32>().unwrap();
    for (row, key) in after.iter().take(8).zip(&keys) {
        for (a, b) in row.iter().zip(key) {
            assert!((a - b).abs() < 1e-5);
        }
    }
    assert_eq!(after[8..], before[8..]);
}

#[test]
fn correspondence_recovers_a_permutation_and_dense_positives_reach_one_over_tau() {
    let dev = Device::Cpu;
    let (n, c, l) = (2usize, 6usize, 5usize);
    // Distinct unit vectors at every location of view 1.
    let q_b = Tensor::randn(0f32, 1.0, (n, c, l), &dev).unwrap();
    let perms: [[u32; 5]; 2] = [[3, 0, 4, 1, 2], [1, 2, 3, 4, 0]];
    // View 2 holds view-1 location s at position π(s).
    let permute = |t: &Tensor| {
        let mut parts = Vec::new();
        for (i, p) in perms.iter().enumerate() {
            let mut inv = [0u32; 5];
            for (s, &ps) in p.iter().enumerate() {
                inv[ps as usize] = s as u32;
            }
            let idx = Tensor::new(&inv, &dev).unwrap();
            parts.push(t.get(i).unwrap().index_select(&idx, 1).unwrap());
        }
        Tensor::stack(&parts, 0).unwrap()
    };
    let k_b = permute(&q_b);
    let j = dense_correspondence(&q_b, &k_b).unwrap();
    assert_eq!(
        j.to_vec2::<u32>().unwrap(),
        perms.iter().map(|p| p.to_vec()).collect::<Vec<_>>()
    );
    // Dense grids permuted the same way: every positive logit is 1/τ. A queue of zero vectors
    // makes every negative logit 0, so the loss is ln(1 + K·e^{−1/τ}).
    let q_grid = Tensor::randn(0f32, 1.0, (n, 4, l), &dev).unwrap();
    let k_grid = permute(&q_grid);
    let zeros = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
    let tau = 0.2;
    let loss = scalar(&dense_info_nce(&q_grid, &k_grid, &j, &zeros, tau).unwrap());
    let expect = (1.0 + 3.0 * (-1.0 / tau).exp()).ln();
    assert!((loss - expect).abs() < 1e-5, "{loss} vs {expect}");
}

#[test]
fn one_location_reduces_to_moco_and_lambda_zero_is_moco_v2() {
    let dev = Device::Cpu;
    let n = 4;
    let q = Tensor::randn(0f32, 1.0, (n, 8), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (n, 8), &dev).unwrap();
    let queue = Tensor::randn(0f32, 1.0, (8, 16), &dev).unwrap();
    let dense_queue = Tensor::randn(0f32, 1.0, (8, 16), &dev).unwrap();
    // S = 1: the single dense vector against queue 2 is a MoCo loss.
    let grid = |t: &Tensor| t.unsqueeze(2).unwrap();
    let corr = Tensor::zeros((n, 1), DType::U32, &dev).unwrap();
    let dense = dense_info_nce(&grid(&q), &grid(&k), &corr, &dense_queue, 0.2).unwrap();
    let moco = info_nce_queue(&q, &k, &dense_queue, 0.2).unwrap().loss;
    assert!((scalar(&dense) - scalar(&moco)).abs() < 1e-6);
    let inputs = DenseClInputs {
        q: &q,
        k: &k,
        queue: &queue,
        q_grid: &grid(&k),
        k_grid: &grid(&q),
        correspondence: &corr,
        dense_queue: &dense_queue,
    };
    let global = info_nce_queue(&q, &k, &queue, 0.2).unwrap().loss;
    let l0 = densecl_loss(inputs, 0.2, 0.0).unwrap();
    assert_eq!(scalar(&l0.loss), scalar(&global));
    let half = densecl_loss(inputs, 0.2, 0.5).unwrap();
    let mix = 0.5 * scalar(&half.global) + 0.5 * scalar(&half.dense);
    assert!((scalar(&half.loss) - mix).abs() < 1e-6);
    assert!(densecl_loss(inputs, 0.2, 1.5).is_err());
}

fn small(method: &str) -> RunConfig {
    let mut c = common::shrink(RunConfig::preset(method).unwrap());
    c.moco.queue_size = 32;
    c.moco.bn_splits = 4;
    c.moco.dim = 16;
    c
}

#[test]
fn densecl_with_lambda_zero_trains_exactly_as_moco_v2() {
    let losses = |c: RunConfig| {
        let mut run = Run::new(c).unwrap();
        (0..3)
            .map(|_| run.step().unwrap().loss)
            .collect::<Vec<f32>>()
    };
    let moco = losses(small("moco-v2"));
    let mut c = small("densecl");
    c.densecl.lambda = 0.0;
    assert_eq!(moco, losses(c));
    let dense = losses(small("densecl"));
    assert_ne!(moco, dense);
}

#[test]
fn moco_runs_are_deterministic_and_warn_when_the_queue_outgrows_the_data() {
    for method in ["moco-v1", "moco-v2", "densecl"] {
        let losses = |seed: u64| {
            let mut c = small(method);
            c.seed = seed;
            let mut run = Run::new(c).unwrap();
            assert!(run.warnings().is_empty(), "{:?}", run.warnings());
            (0..3)
                .map(|_| run.step().unwrap().loss)
                .collect::<Vec<f32>>()
        };
        let a = losses(1);
        assert!(a.iter().all(|l| l.is_finite()));
        assert_eq!(a, losses(1), "{method}");
        assert_ne!(a, losses(2), "{method}");
    }
    let mut c = small("moco-v2");
    c.moco.queue_size = 128;
    let run = Run::new(c).unwrap();
    assert_eq!(run.warnings().len(), 1);
    assert!(run.warnings()[0].contains("moco.queue_size"));
}

#[test]
fn densecl_lambda_warmup_starts_at_zero() {
    let dev = Device::Cpu;
    let spec = DenseClSpec {
        moco: tiny_moco(MocoVersion::V2),
        config: DenseClConfig {
            lambda: 0.5,
            lambda_warmup_steps: 2,
        },
    };
    let mut m = DenseCl::new(&spec, 0, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (8, 3, 16, 16), &dev).unwrap();
    for step in 1..=3 {
        let lambda = m.lambda_now();
        let out = m.forward_train(&x, &x).unwrap();
        let part = |name: &str| scalar(&out.parts.iter().find(|(k, _)| k == name).unwrap().1);
        let expect = (1.0 - lambda) * part("global") + lambda * part("dense");
        assert!((scalar(&out.loss) - expect).abs() < 1e-5);
        assert_eq!(lambda, if step <= 2 { 0.0 } else { 0.5 });
        m.after_step(step, 10).unwrap();
    }
    assert_eq!(m.last_correspondence().unwrap().dims(), &[8, 4]); // 16 px → a 2×2 grid
}

#[test]
fn momentum_is_fixed_or_follows_the_cosine_towards_one() {
    let dev = Device::Cpu;
    let mut spec = tiny_moco(MocoVersion::V2);
    spec.config.momentum = 0.99;
    let mut fixed = Moco::new(&spec, 0, &dev).unwrap();
    fixed.after_step(5, 10).unwrap();
    assert_eq!(fixed.momentum(), 0.99);
    spec.config.momentum_schedule = MomentumSchedule::Cosine;
    let mut cosine = Moco::new(&spec, 0, &dev).unwrap();
    cosine.after_step(5, 10).unwrap();
    assert!((cosine.momentum() - 0.995).abs() < 1e-12);
    cosine.after_step(10, 10).unwrap();
    assert_eq!(cosine.momentum(), 1.0);
}
