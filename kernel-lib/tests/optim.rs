//! Optimisers and schedules against hand-computed updates (docs/recipes.md §0.6, §8 items 4 and 6).

mod common;

use candle_core::{Device, Tensor, Var};
use sslab::models::{Init, ParamBuilder, ParamKind, ParamStore};
use sslab::optim::{cosine_momentum, GroupSettings, LrSchedule, OptimKind, Optimizer};

fn store(w: &[f32], b: &[f32]) -> (ParamStore, Var, Var) {
    let dev = Device::Cpu;
    let mut pb = ParamBuilder::new(0, &dev);
    let wv = pb
        .var("w", &[2, w.len() / 2], Init::Const(0.0), ParamKind::Weight)
        .unwrap();
    let bv = pb
        .var("b", &[b.len()], Init::Const(0.0), ParamKind::Bias)
        .unwrap();
    wv.set(&Tensor::from_vec(w.to_vec(), (2, w.len() / 2), &dev).unwrap())
        .unwrap();
    bv.set(&Tensor::from_vec(b.to_vec(), b.len(), &dev).unwrap())
        .unwrap();
    (pb.finish(), wv, bv)
}

/// Loss `c · (Σ w·x + Σ b·y)`: gradients are `c·x` and `c·y`.
fn grads(wv: &Var, bv: &Var, x: &[f32], y: &[f32], c: f64) -> candle_core::backprop::GradStore {
    let dev = Device::Cpu;
    let xt = Tensor::from_vec(x.to_vec(), wv.dims(), &dev).unwrap();
    let yt = Tensor::from_vec(y.to_vec(), bv.dims(), &dev).unwrap();
    let l = ((wv.as_tensor() * &xt).unwrap().sum_all().unwrap()
        + (bv.as_tensor() * &yt).unwrap().sum_all().unwrap())
    .unwrap();
    (l * c).unwrap().backward().unwrap()
}

fn vec_of(v: &Var) -> Vec<f32> {
    v.as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

fn lars(wd: f64) -> (GroupSettings, GroupSettings) {
    (
        GroupSettings {
            lr_mult: 1.0,
            weight_decay: wd,
            adapt: true,
        },
        GroupSettings {
            lr_mult: 1.0,
            weight_decay: 0.0,
            adapt: false,
        },
    )
}

#[test]
fn lars_first_update_norm_is_lr_eta_norm_p_and_scale_invariant() {
    let w0 = [0.5f32, -1.0, 2.0, 0.25];
    let b0 = [0.1f32, -0.2];
    let x = [0.3f32, 0.7, -1.1, 0.2];
    let y = [1.0f32, -2.0];
    // A large η keeps the update well above f32 rounding of the weights.
    let (lr, eta) = (0.5, 0.1);
    let mut deltas = Vec::new();
    for c in [1.0, 37.0] {
        let (ps, wv, bv) = store(&w0, &b0);
        let (m, o) = lars(0.0);
        let mut opt = Optimizer::new(
            OptimKind::Lars {
                momentum: 0.9,
                eta,
                clip_lr: false,
            },
            &ps,
            m,
            o,
        )
        .unwrap();
        opt.step(&grads(&wv, &bv, &x, &y, c), lr).unwrap();
        let dw: Vec<f32> = vec_of(&wv).iter().zip(&w0).map(|(a, b)| a - b).collect();
        let db: Vec<f32> = vec_of(&bv).iter().zip(&b0).map(|(a, b)| a - b).collect();
        // ≥2-D: ‖Δ‖ = lr·η·‖p‖ exactly, whatever the loss scale.
        let expected = lr * eta * norm(&w0);
        assert!(
            (norm(&dw) - expected).abs() < 1e-6 * expected.max(1e-9) + 1e-9,
            "{} vs {expected}",
            norm(&dw)
        );
        // 1-D (excluded): plain SGD-momentum step −lr·c·y.
        for (d, yy) in db.iter().zip(&y) {
            assert!((*d as f64 + lr * c * *yy as f64).abs() < 1e-4 * c, "{d}");
        }
        deltas.push((dw, db));
    }
    for (a, b) in deltas[0].0.iter().zip(&deltas[1].0) {
        assert!((a - b).abs() < 1e-7, "≥2-D update changed with loss scale");
    }
    for (a, b) in deltas[0].1.iter().zip(&deltas[1].1) {
        assert!(
            (b - 37.0 * a).abs() < 1e-4,
            "1-D update must scale with the loss"
        );
    }
}

#[test]
fn lars_two_steps_with_momentum_and_decay_by_hand() {
    let w0 = [1.0f32, 2.0, -2.0, 0.5];
    let b0 = [0.3f32, 0.4];
    let x = [0.2f32, -0.1, 0.4, 0.3];
    let y = [0.5f32, 0.5];
    let (lr, eta, wd, mom) = (0.1f64, 0.02f64, 0.01f64, 0.9f64);
    let (ps, wv, bv) = store(&w0, &b0);
    let (m, o) = lars(wd);
    let mut opt = Optimizer::new(
        OptimKind::Lars {
            momentum: mom,
            eta,
            clip_lr: false,
        },
        &ps,
        m,
        o,
    )
    .unwrap();
    // By hand, in f64.
    let mut p: Vec<f64> = w0.iter().map(|v| *v as f64).collect();
    let mut mu = [0f64; 4];
    let mut pb: Vec<f64> = b0.iter().map(|v| *v as f64).collect();
    let mut mub = [0f64; 2];
    for _ in 0..2 {
        opt.step(&grads(&wv, &bv, &x, &y, 1.0), lr).unwrap();
        let g: Vec<f64> = x.iter().zip(&p).map(|(g, p)| *g as f64 + wd * p).collect();
        let pn = p.iter().map(|v| v * v).sum::<f64>().sqrt();
        let gn = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let q = eta * pn / gn;
        for i in 0..4 {
            mu[i] = mom * mu[i] + g[i] * q;
            p[i] -= lr * mu[i];
        }
        for i in 0..2 {
            mub[i] = mom * mub[i] + y[i] as f64;
            pb[i] -= lr * mub[i];
        }
    }
    for (a, b) in vec_of(&wv).iter().zip(&p) {
        assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
    }
    for (a, b) in vec_of(&bv).iter().zip(&pb) {
        assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn lars_zero_gradient_keeps_ratio_one() {
    let (ps, wv, bv) = store(&[1.0, 1.0, 1.0, 1.0], &[0.0, 0.0]);
    let (m, o) = lars(0.0);
    let mut opt = Optimizer::new(
        OptimKind::Lars {
            momentum: 0.9,
            eta: 0.001,
            clip_lr: false,
        },
        &ps,
        m,
        o,
    )
    .unwrap();
    opt.step(&grads(&wv, &bv, &[0.0; 4], &[0.0; 2], 1.0), 1.0)
        .unwrap();
    assert!(vec_of(&wv)
        .iter()
        .all(|v| (*v - 1.0).abs() < 1e-7 && v.is_finite()));
}

#[test]
fn sgd_nesterov_and_weight_decay_match_pytorch_formula() {
    let (ps, wv, bv) = store(&[1.0, -1.0, 0.5, 2.0], &[0.0, 1.0]);
    let all = GroupSettings {
        lr_mult: 1.0,
        weight_decay: 0.1,
        adapt: false,
    };
    let mut opt = Optimizer::new(
        OptimKind::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        &ps,
        all,
        all,
    )
    .unwrap();
    let x = [0.5f32, 0.5, -0.5, 1.0];
    let mut p = [1.0f64, -1.0, 0.5, 2.0];
    let mut buf = [0f64; 4];
    for _ in 0..2 {
        opt.step(&grads(&wv, &bv, &x, &[0.0, 0.0], 1.0), 0.1)
            .unwrap();
        for i in 0..4 {
            let g = x[i] as f64 + 0.1 * p[i];
            buf[i] = 0.9 * buf[i] + g;
            p[i] -= 0.1 * (g + 0.9 * buf[i]);
        }
    }
    for (a, b) in vec_of(&wv).iter().zip(&p) {
        assert!((*a as f64 - b).abs() < 1e-6);
    }
}

#[test]
fn adamw_first_step_moves_each_weight_by_lr() {
    // Bias correction makes the first Adam step exactly lr·sign(g) (up to eps), plus decay.
    let (ps, wv, bv) = store(&[1.0, -1.0, 0.5, 2.0], &[0.0, 1.0]);
    let g = GroupSettings {
        lr_mult: 1.0,
        weight_decay: 0.05,
        adapt: false,
    };
    let mut opt = Optimizer::new(
        OptimKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-12,
        },
        &ps,
        g,
        g,
    )
    .unwrap();
    let x = [3.0f32, -0.01, 0.2, -7.0];
    opt.step(&grads(&wv, &bv, &x, &[0.0, 0.0], 1.0), 0.01)
        .unwrap();
    let w0 = [1.0f64, -1.0, 0.5, 2.0];
    for ((a, p), gx) in vec_of(&wv).iter().zip(&w0).zip(&x) {
        let expected = p * (1.0 - 0.01 * 0.05) - 0.01 * (*gx as f64).signum();
        assert!((*a as f64 - expected).abs() < 1e-6, "{a} vs {expected}");
    }
}

#[test]
fn lamb_adapted_update_norm_is_lr_times_norm_p() {
    let w0 = [1.0f32, -1.0, 0.5, 2.0];
    let (ps, wv, bv) = store(&w0, &[0.0, 1.0]);
    let (m, o) = lars(0.0);
    let mut opt = Optimizer::new(
        OptimKind::Lamb {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
        },
        &ps,
        m,
        o,
    )
    .unwrap();
    opt.step(
        &grads(&wv, &bv, &[3.0, -0.5, 0.2, -7.0], &[0.0, 0.0], 1.0),
        0.01,
    )
    .unwrap();
    let d: Vec<f32> = vec_of(&wv).iter().zip(&w0).map(|(a, b)| a - b).collect();
    assert!((norm(&d) - 0.01 * norm(&w0)).abs() < 1e-6);
}

#[test]
fn optimizer_state_round_trips_and_a_saved_state_is_a_snapshot() {
    let (ps, wv, bv) = store(&[1.0, -1.0, 0.5, 2.0], &[0.0, 1.0]);
    let (m, o) = lars(0.0);
    let kind = OptimKind::Lars {
        momentum: 0.9,
        eta: 0.001,
        clip_lr: false,
    };
    let mut opt = Optimizer::new(kind, &ps, m, o).unwrap();
    opt.step(&grads(&wv, &bv, &[1.0; 4], &[1.0; 2], 1.0), 0.1)
        .unwrap();
    let st = opt.state().unwrap();
    let mut other = Optimizer::new(kind, &ps, m, o).unwrap();
    other.load_state(&st).unwrap();
    assert_eq!(other.steps(), 1);
    for ((ka, ta), (kb, tb)) in st.buffers.iter().zip(other.state().unwrap().buffers.iter()) {
        assert_eq!(ka, kb);
        let d = (ta - tb)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
    // Buffers are updated in place: what `state()` returned must not move with later steps.
    let before: Vec<Vec<f32>> = st
        .buffers
        .iter()
        .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    opt.step(&grads(&wv, &bv, &[2.0; 4], &[3.0; 2], 1.0), 0.1)
        .unwrap();
    for ((_, t), b) in st.buffers.iter().zip(&before) {
        assert_eq!(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b);
    }
}

#[test]
fn warmup_cosine_schedule_values() {
    let s = LrSchedule::WarmupCosine {
        warmup: 10,
        total: 110,
        final_frac: 0.001,
    };
    assert_eq!(s.factor(0), 0.0);
    assert!((s.factor(5) - 0.5).abs() < 1e-12);
    assert!((s.factor(10) - 1.0).abs() < 1e-12);
    assert!((s.factor(60) - (0.5 + 0.001 * 0.5)).abs() < 1e-12);
    assert!((s.factor(110) - 0.001).abs() < 1e-12);
}

#[test]
fn cosine_momentum_schedule_values() {
    assert!((cosine_momentum(0.99, 0, 100) - 0.99).abs() < 1e-12);
    assert!((cosine_momentum(0.99, 50, 100) - 0.995).abs() < 1e-12);
    assert!((cosine_momentum(0.99, 100, 100) - 1.0).abs() < 1e-12);
}

#[test]
fn lars_clip_lr_variant_caps_the_step_at_sgd() {
    let w0 = [0.5f32, -1.0, 2.0, 0.25];
    let x = [0.3f32, 0.7, -1.1, 0.2];
    let wd = 0.01;
    let lr = 0.2;
    for (eta, clipped) in [(10.0, true), (1e-4, false)] {
        let (ps, wv, bv) = store(&w0, &[0.0, 0.0]);
        let (m, o) = lars(wd);
        let kind = OptimKind::Lars {
            momentum: 0.9,
            eta,
            clip_lr: true,
        };
        let mut opt = Optimizer::new(kind, &ps, m, o).unwrap();
        opt.step(&grads(&wv, &bv, &x, &[0.0, 0.0], 1.0), lr)
            .unwrap();
        let pn = norm(&w0);
        let gn = norm(&x);
        // Bolts/solo-learn formula: ratio = η‖p‖/(‖g‖ + wd‖p‖ + 1e-8), clipped to 1/lr.
        let ratio = (eta * pn / (gn + wd * pn + 1e-8) / lr).min(1.0);
        assert_eq!(ratio == 1.0, clipped);
        for ((a, p), g) in vec_of(&wv).iter().zip(&w0).zip(&x) {
            let expected = *p as f64 - lr * ratio * (*g as f64 + wd * *p as f64);
            assert!(
                (*a as f64 - expected).abs() < 1e-6,
                "η={eta}: {a} vs {expected}"
            );
        }
    }
}

#[test]
fn fused_cpu_updates_match_the_tensor_op_rules_for_every_optimizer() {
    // The in-place CPU kernels against the tensor-op form (what other devices run), over four
    // steps with changing gradients, for every rule and both groups (decay + trust ratio on
    // the 2-D tensor; the 1-D one excluded, with its own rate). 40 000 weights span several
    // parallel chunks, so the chunked norms are exercised.
    let kinds = common::every_optimizer();
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
    let rand = common::splitmix;
    for kind in kinds {
        let run = |fused: bool| {
            let (ps, wv, bv) = store(&rand(40_000, 1), &rand(300, 2));
            let mut opt = Optimizer::new(kind, &ps, multi, one).unwrap();
            opt.set_fused(fused);
            for step in 0..4u64 {
                let g = grads(
                    &wv,
                    &bv,
                    &rand(40_000, 10 + step),
                    &rand(300, 20 + step),
                    0.3,
                );
                opt.step(&g, 0.1).unwrap();
            }
            let buffers = opt.state().unwrap().buffers;
            (vec_of(&wv), vec_of(&bv), buffers)
        };
        let (wa, ba, sa) = run(true);
        let (wb, bb, sb) = run(false);
        // Norm-wise relative error of the updates: elementwise ratios blow up at weights that
        // pass near zero, where both carry the same f32 rounding of earlier steps.
        let rel = |a: &[f32], b: &[f32], base: &[f32]| {
            let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            let step: Vec<f32> = b.iter().zip(base).map(|(x, y)| x - y).collect();
            norm(&d) / norm(&step)
        };
        let (w0, b0) = (rand(40_000, 1), rand(300, 2));
        assert!(
            rel(&wa, &wb, &w0) < 1e-4,
            "{kind:?}: weights {}",
            rel(&wa, &wb, &w0)
        );
        assert!(
            rel(&ba, &bb, &b0) < 1e-4,
            "{kind:?}: biases {}",
            rel(&ba, &bb, &b0)
        );
        for ((ka, ta), (_, tb)) in sa.iter().zip(&sb) {
            let (a, b) = (
                ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                tb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let zero = vec![0f32; a.len()];
            assert!(rel(&a, &b, &zero) < 1e-5, "{kind:?}: buffer {ka}");
        }
    }
}
