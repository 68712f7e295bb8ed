//! The linear probe: it separates what is linearly separable, generalises no better than chance
//! on random labels, follows each protocol's schedule, and refuses bad input.

mod common;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use sslab::eval::{linear_probe_on_features, LinearProbeSettings, ProbeSchedule};
use sslab::methods::MethodKind;
use sslab::prelude::*;

/// `n` points per class around `classes` random centres in `d` dimensions, with noise `sd`.
fn clusters(classes: usize, n: usize, d: usize, sd: f32, seed: u64) -> (Tensor, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 100);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..classes * n {
        let c = i % classes;
        x.extend(
            centres[c]
                .iter()
                .map(|&v| v + sd * (rng.gen::<f32>() - 0.5)),
        );
        y.push(c);
    }
    (
        Tensor::from_vec(x, (classes * n, d), &Device::Cpu).unwrap(),
        y,
    )
}

fn settings() -> LinearProbeSettings {
    LinearProbeSettings::for_method(MethodKind::BarlowTwins, false).scaled_down(20)
}

#[test]
fn separable_clusters_are_classified() {
    let (xtr, ytr) = clusters(10, 50, 32, 0.5, 1);
    let (xte, yte) = clusters(10, 20, 32, 0.5, 1);
    let r = linear_probe_on_features((&xtr, &ytr), (&xte, &yte), 10, settings()).unwrap();
    assert!(r.top1 > 95.0, "top-1 {}", r.top1);
    assert_eq!(r.top5, 100.0);
    assert!(r.train_loss < 0.5, "loss {}", r.train_loss);
    assert_eq!((r.train, r.test), (500, 200));
}

#[test]
fn random_labels_are_memorised_not_generalised() {
    let (xtr, _) = clusters(1, 400, 64, 2.0, 2);
    let (xte, _) = clusters(1, 400, 64, 2.0, 3);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let ytr: Vec<usize> = (0..400).map(|_| rng.gen_range(0..4)).collect();
    let yte: Vec<usize> = (0..400).map(|_| rng.gen_range(0..4)).collect();
    let s = LinearProbeSettings {
        epochs: 100,
        ..settings()
    };
    let r = linear_probe_on_features((&xtr, &ytr), (&xte, &yte), 4, s).unwrap();
    assert!(r.train_top1 > 45.0, "train {}", r.train_top1);
    assert!((15.0..35.0).contains(&r.top1), "test {}", r.top1);
}

#[test]
fn schedules_follow_the_protocols() {
    let moco = LinearProbeSettings::for_method(MethodKind::MocoV2, false);
    assert_eq!(
        (moco.lr, moco.epochs, moco.schedule),
        (30.0, 100, ProbeSchedule::Steps)
    );
    assert_eq!(moco.lr_at(59), 30.0);
    assert!((moco.lr_at(60) - 3.0).abs() < 1e-12);
    assert!((moco.lr_at(80) - 0.3).abs() < 1e-12);
    let vit = LinearProbeSettings::for_method(MethodKind::MocoV3, true);
    assert_eq!((vit.lr, vit.epochs, vit.weight_decay), (3.0, 90, 0.0));
    assert_eq!(vit.lr_at(0), 3.0);
    assert!((vit.lr_at(45) - 1.5).abs() < 1e-12);
    assert_eq!(
        LinearProbeSettings::for_method(MethodKind::MocoV3, false).lr,
        0.1
    );
    let small = LinearProbeSettings::for_method(MethodKind::DenseCl, false).scaled_down(30);
    assert!(small.standardize);
    assert_eq!(
        (small.epochs, small.lr, small.schedule),
        (30, 0.1, ProbeSchedule::Steps)
    );
}

#[test]
fn bad_input_is_an_error() {
    let (x, y) = clusters(3, 4, 5, 0.1, 5);
    let e = linear_probe_on_features((&x, &y), (&x, &y), 2, settings()).unwrap_err();
    assert!(e.to_string().contains("label 2"), "{e}");
    let e = linear_probe_on_features((&x, &y[..5]), (&x, &y), 3, settings()).unwrap_err();
    assert!(e.to_string().contains("labels"), "{e}");
    let zero = LinearProbeSettings {
        epochs: 0,
        ..settings()
    };
    assert!(linear_probe_on_features((&x, &y), (&x, &y), 3, zero).is_err());
    let huge = LinearProbeSettings {
        lr: 1e30,
        standardize: false,
        ..settings()
    };
    let (xb, yb) = clusters(3, 20, 5, 0.1, 6);
    let xb = (xb * 1e20).unwrap();
    let e = linear_probe_on_features((&xb, &yb), (&xb, &yb), 3, huge).unwrap_err();
    assert!(e.to_string().contains("diverged"), "{e}");
}

#[test]
fn a_run_probes_its_backbone() {
    let mut run = Run::new(common::shrink(RunConfig::preset("moco-v2/tiny").unwrap())).unwrap();
    let r = run.linear_probe().unwrap();
    assert_eq!((r.train, r.test), (64, 20));
    assert!((0.0..=100.0).contains(&r.top1) && r.top5 >= r.top1);
    assert_eq!(r.settings.schedule, ProbeSchedule::Steps);
    run.step().unwrap();
    let s = run.train_to_end(sslab::train::Evaluations {
        at_init: false,
        linear_probe: true,
        dense_probe: false,
        knn_every: 0,
    });
    let s = s.unwrap();
    assert!(s.linear_top1.is_some() && s.knn_top1_at_init.is_none());
    assert_eq!(s.steps, run.total_steps());
}
