//! MoCo v3: the loss values of docs/recipes.md §8 items 1 and 2, its gradient against finite
//! differences, the momentum schedule (item 4), the sin-cos table (item 8), the frozen patch
//! projection, and the predictor's absence from the momentum encoder.

mod common;

use candle_core::{DType, Device, Tensor};
use sslab::methods::{Method, MocoV3, MocoV3Config, MocoV3Spec, MomentumSchedule};
use sslab::models::{sincos_position_embedding, BackboneConfig, VitConfig, VitSize};
use sslab::objectives::{moco_v3_ctr, moco_v3_loss};
use sslab::prelude::*;

use common::scalar;

#[test]
fn uniform_logits_give_two_tau_ln_b() {
    let dev = Device::Cpu;
    // Every q and k the same vector: every logit equal.
    let b = 4096;
    let q = Tensor::ones((b, 2), DType::F32, &dev).unwrap();
    let l = scalar(&moco_v3_loss(&q, &q, &q, &q, 0.2).unwrap());
    assert!((l - 6.6542).abs() < 1e-3, "{l}");
    let one = scalar(&moco_v3_ctr(&q, &q, 0.2).unwrap());
    assert!((one - 2.0 * 0.2 * (b as f64).ln()).abs() < 1e-3);
}

#[test]
fn perfect_positives_with_orthogonal_negatives() {
    let dev = Device::Cpu;
    for (b, tau) in [(64usize, 0.2f64), (16, 0.5)] {
        let eye = Tensor::eye(b, DType::F32, &dev).unwrap();
        let l = scalar(&moco_v3_ctr(&eye, &eye, tau).unwrap());
        let expect = 2.0 * tau * (1.0 + (b as f64 - 1.0) * (-1.0 / tau).exp()).ln();
        assert!((l - expect).abs() < 1e-5, "B {b}: {l} vs {expect}");
    }
    // The value docs/recipes.md gives for B = 4096, τ = 0.2.
    let v = 2.0 * 0.2 * (1.0 + 4095.0 * (-5f64).exp()).ln();
    assert!((v - 1.3412).abs() < 1e-4);
}

#[test]
fn loss_gradient_matches_central_finite_differences() {
    let dev = Device::Cpu;
    let q1 = Tensor::randn(0f64, 1.0, (4, 3), &dev).unwrap();
    let q2 = Tensor::randn(0f64, 1.0, (4, 3), &dev).unwrap();
    let k1 = Tensor::randn(0f64, 1.0, (4, 3), &dev).unwrap();
    let k2 = Tensor::randn(0f64, 1.0, (4, 3), &dev).unwrap();
    common::assert_gradient_matches_finite_differences(&q1, |q| {
        moco_v3_loss(q, &q2, &k1, &k2, 0.2).unwrap()
    });
}

#[test]
fn sincos_table_follows_moco_v3() {
    let pe = sincos_position_embedding(14, 14, 384).unwrap();
    assert_eq!(pe.len(), 197 * 384);
    assert!(
        pe[..384].iter().all(|&v| v == 0.0),
        "[CLS] row must be zero"
    );
    let token = |n: usize| &pe[(1 + n) * 384..(2 + n) * 384];
    let t0 = token(0);
    for (i, &v) in t0.iter().enumerate() {
        let expect = if (96..192).contains(&i) || i >= 288 {
            1.0
        } else {
            0.0
        };
        assert_eq!(v, expect, "token (0,0) entry {i}");
    }
    let t1 = token(1);
    assert_eq!(t1[..192], t0[..192]);
    assert!((t1[192] - 0.84147).abs() < 1e-5);
    assert!(sincos_position_embedding(2, 2, 6).is_err());
}

fn tiny_vit(frozen: bool) -> RunConfig {
    let mut c = common::shrink(RunConfig::preset("moco-v3/vit-tiny").unwrap());
    c.data.shapes.train = 32;
    c.data.shapes.test = 16;
    c.model.vit_depth = 1;
    c.model.frozen_patch_projection = frozen;
    c.moco_v3.hidden = 32;
    c.moco_v3.dim = 16;
    c.train.batch_size = 8;
    c
}

fn snapshot(run: &Run) -> Vec<(String, Vec<f32>)> {
    run.method()
        .params()
        .params
        .iter()
        .map(|p| (p.name.clone(), values(p.var.as_tensor())))
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn frozen_patch_projection_stays_bit_identical_while_everything_else_trains() {
    for frozen in [true, false] {
        let mut run = Run::new(tiny_vit(frozen)).unwrap();
        let before = snapshot(&run);
        run.train(3).unwrap();
        let after = snapshot(&run);
        for ((name, a), (_, b)) in before.iter().zip(&after) {
            let patch = name.contains("patch_embed");
            let changed = a != b;
            if patch {
                assert_eq!(changed, !frozen, "{name} (frozen = {frozen})");
            } else if !name.contains("running_") {
                assert!(changed, "{name} did not train (frozen = {frozen})");
            }
        }
        // The momentum encoder shares the frozen projection: both keep the initial values.
        if frozen {
            let key = run.method().momentum_params().unwrap();
            let w = key
                .get("momentum.backbone.patch_embed.proj.weight")
                .unwrap();
            let init = &before
                .iter()
                .find(|(n, _)| n == "backbone.patch_embed.proj.weight")
                .unwrap()
                .1;
            assert_eq!(&values(w.var.as_tensor()), init);
        }
    }
}

#[test]
fn predictor_is_not_in_the_momentum_encoder_which_follows_the_schedule() {
    let dev = Device::Cpu;
    let spec = MocoV3Spec {
        backbone: BackboneConfig::Vit(VitConfig::sized(VitSize::Tiny, 1, 4, 16)),
        config: MocoV3Config {
            hidden: 32,
            dim: 16,
            tau: 0.2,
            momentum: 0.99,
            momentum_schedule: MomentumSchedule::Cosine,
        },
    };
    let mut m = MocoV3::new(&spec, 0, &dev).unwrap();
    let key = m.momentum_params().unwrap();
    assert!(key.params.iter().all(|p| !p.name.contains("predictor")));
    assert!(m
        .params()
        .params
        .iter()
        .any(|p| p.name.contains("predictor")));
    // Every momentum tensor mirrors a query tensor of the same name.
    for p in &key.params {
        let q = p.name.strip_prefix("momentum.").unwrap();
        assert!(m.params().get(q).is_some(), "{q}");
    }
    m.after_step(0, 10).unwrap();
    assert!((m.momentum() - 0.99).abs() < 1e-12);
    m.after_step(5, 10).unwrap();
    assert!((m.momentum() - 0.995).abs() < 1e-12);
    m.after_step(10, 10).unwrap();
    assert_eq!(m.momentum(), 1.0);
}

#[test]
fn moco_v3_runs_on_resnet_and_vit_deterministically() {
    let mut resnet = common::shrink(RunConfig::preset("moco-v3/resnet").unwrap());
    resnet.moco_v3.hidden = 32;
    resnet.moco_v3.dim = 16;
    resnet.train.batch_size = 8;
    for c in [resnet, tiny_vit(false)] {
        let losses = |c: RunConfig| {
            let mut run = Run::new(c).unwrap();
            (0..2)
                .map(|_| run.step().unwrap().loss)
                .collect::<Vec<f32>>()
        };
        let a = losses(c.clone());
        assert!(a.iter().all(|l| l.is_finite()));
        assert_eq!(a, losses(c));
    }
    // A ViT is refused for the ResNet-only methods.
    let mut c = RunConfig::preset("moco-v2/tiny").unwrap();
    c.model.backbone = sslab::models::BackboneKind::Vit;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("model.backbone"));
}
