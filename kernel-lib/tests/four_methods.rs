//! SimCLR, BYOL, SimSiam and VICReg: each loss pinned to a value computed here independently
//! (plain f64 loops over the formulas of docs/recipes.md §7, no candle), its gradient against
//! f64 central differences, the stop-gradients, VICReg's terms on known matrices, and the
//! methods' gradient flow (every trainable tensor gets a gradient; BYOL's target none).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_gradient_matches_finite_differences, scalar, splitmix};
use sslab::methods::{
    Byol, ByolConfig, Method, MomentumSchedule, Simclr, SimclrConfig, Simsiam, SimsiamConfig,
    Vicreg, VicregConfig,
};
use sslab::models::{Depth, ResNetConfig, Stem};
use sslab::objectives::{
    byol_loss, nt_xent, nt_xent_at, simsiam_loss, vicreg_loss, vicreg_loss_gathered, VicregWeights,
};

type Rows = Vec<Vec<f64>>;

/// `n × c` deterministic values in [−3, 3].
fn rows(n: usize, c: usize, seed: u64) -> Rows {
    let v = splitmix(n * c, seed);
    v.chunks(c)
        .map(|r| r.iter().map(|&x| 3.0 * x as f64).collect())
        .collect()
}

fn tensor(r: &Rows) -> Tensor {
    let (n, c) = (r.len(), r[0].len());
    Tensor::from_vec(r.concat(), (n, c), &Device::Cpu).unwrap()
}

fn unit(r: &[f64]) -> Vec<f64> {
    let norm = r.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    r.iter().map(|x| x / norm).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// NT-Xent as the official code defines it, by loops: for each view, the mean over its rows of
/// `−log(e^{s(i, i')/τ} / Σ_{j} e^{s(i, j')/τ} + Σ_{j≠i} e^{s(i, j)/τ})`.
fn nt_xent_ref(za: &Rows, zb: &Rows, tau: f64) -> f64 {
    let (a, b): (Rows, Rows) = (
        za.iter().map(|r| unit(r)).collect(),
        zb.iter().map(|r| unit(r)).collect(),
    );
    let n = a.len();
    let side = |x: &Rows, y: &Rows| {
        (0..n)
            .map(|i| {
                let mut denom = 0.0;
                for j in 0..n {
                    denom += (dot(&x[i], &y[j]) / tau).exp();
                    if j != i {
                        denom += (dot(&x[i], &x[j]) / tau).exp();
                    }
                }
                -(dot(&x[i], &y[i]) / tau - denom.ln())
            })
            .sum::<f64>()
            / n as f64
    };
    side(&a, &b) + side(&b, &a)
}

/// Mean over rows of `cos(pᵢ, zᵢ)`.
fn mean_cos(p: &Rows, z: &Rows) -> f64 {
    p.iter()
        .zip(z)
        .map(|(p, z)| dot(&unit(p), &unit(z)))
        .sum::<f64>()
        / p.len() as f64
}

/// VICReg's three unweighted terms, by loops over the formulas.
fn vicreg_ref(za: &Rows, zb: &Rows) -> (f64, f64, f64) {
    let (n, d) = (za.len(), za[0].len());
    let inv = za
        .iter()
        .zip(zb)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)))
        .sum::<f64>()
        / (n * d) as f64;
    let view = |z: &Rows| {
        let mean: Vec<f64> = (0..d)
            .map(|k| z.iter().map(|r| r[k]).sum::<f64>() / n as f64)
            .collect();
        let cov = |i: usize, j: usize| {
            z.iter()
                .map(|r| (r[i] - mean[i]) * (r[j] - mean[j]))
                .sum::<f64>()
                / (n - 1) as f64
        };
        let hinge = (0..d)
            .map(|k| (1.0 - (cov(k, k) + 1e-4).sqrt()).max(0.0))
            .sum::<f64>()
            / d as f64;
        let mut off = 0.0;
        for i in 0..d {
            for j in 0..d {
                if i != j {
                    off += cov(i, j).powi(2);
                }
            }
        }
        (hinge, off / d as f64)
    };
    let ((ha, ca), (hb, cb)) = (view(za), view(zb));
    (inv, 0.5 * ha + 0.5 * hb, ca + cb)
}

#[test]
fn nt_xent_matches_its_definition_and_finite_differences() {
    let (za, zb) = (rows(6, 5, 1), rows(6, 5, 2));
    for tau in [0.1, 0.5, 1.0] {
        let got = scalar(&nt_xent(&tensor(&za), &tensor(&zb), tau).unwrap());
        let want = nt_xent_ref(&za, &zb, tau);
        assert!(
            (got - want).abs() < 1e-9 * want.abs().max(1.0),
            "τ {tau}: {got} vs {want}"
        );
    }
    // Gradients with respect to both views (stacked into one input).
    let both = tensor(&[za.clone(), zb.clone()].concat());
    assert_gradient_matches_finite_differences(&both, |x| {
        nt_xent(
            &x.narrow(0, 0, 6).unwrap(),
            &x.narrow(0, 6, 6).unwrap(),
            0.3,
        )
        .unwrap()
    });
    // Shapes that do not fit, a batch of one and τ ≤ 0 are errors.
    let t = tensor(&za);
    assert!(nt_xent(&t, &t.narrow(1, 0, 4).unwrap(), 0.1).is_err());
    assert!(nt_xent(
        &t.narrow(0, 0, 1).unwrap(),
        &t.narrow(0, 0, 1).unwrap(),
        0.1
    )
    .is_err());
    assert!(nt_xent(&t, &t, 0.0).is_err());
}

/// The value and gradient of `per_rank` averaged over `ranks` equal parts of a batch of `n`
/// rows (each rank's rows and every rank's rows narrowed from one input, as the all-gather
/// hands them over; autograd then sums a row's gradient over every rank's loss, which is what
/// the all-gather's backward and the gradient average give across ranks), against `whole`.
fn assert_ranks_sum_to_whole(
    za: &Rows,
    zb: &Rows,
    ranks: usize,
    whole: impl Fn(&Tensor, &Tensor) -> Tensor,
    per_rank: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor, usize) -> Tensor,
) {
    let n = za.len();
    let share = n / ranks;
    let x = candle_core::Var::from_tensor(&tensor(&[za.clone(), zb.clone()].concat())).unwrap();
    let (a, b) = (x.narrow(0, 0, n).unwrap(), x.narrow(0, n, n).unwrap());
    let one = whole(&a, &b);
    let mut sum = None::<Tensor>;
    for r in 0..ranks {
        let l = per_rank(
            &a.narrow(0, r * share, share).unwrap(),
            &b.narrow(0, r * share, share).unwrap(),
            &a,
            &b,
            r * share,
        );
        sum = Some(match sum {
            None => l,
            Some(s) => (s + l).unwrap(),
        });
    }
    let mean = (sum.unwrap() / ranks as f64).unwrap();
    assert!(
        (scalar(&mean) - scalar(&one)).abs() < 1e-12 * scalar(&one).abs().max(1.0),
        "{ranks} ranks: {} against one process {}",
        scalar(&mean),
        scalar(&one)
    );
    let grad = |l: &Tensor| {
        l.backward()
            .unwrap()
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let (gm, go) = (grad(&mean), grad(&one));
    for (i, (p, q)) in gm.iter().zip(&go).enumerate() {
        assert!(
            (p - q).abs() < 1e-12,
            "{ranks} ranks: gradient entry {i} is {p}, one process {q}"
        );
    }
}

#[test]
fn the_per_rank_forms_of_nt_xent_and_vicreg_average_to_the_one_process_loss() {
    let (za, zb) = (rows(6, 5, 11), rows(6, 5, 12));
    for ranks in [2, 3] {
        assert_ranks_sum_to_whole(
            &za,
            &zb,
            ranks,
            |a, b| nt_xent(a, b, 0.3).unwrap(),
            |a, b, aa, ba, off| nt_xent_at(a, b, aa, ba, 0.3, off).unwrap(),
        );
        let w = VicregWeights {
            sim: 25.0,
            std: 25.0,
            cov: 1.0,
        };
        assert_ranks_sum_to_whole(
            &za,
            &zb,
            ranks,
            |a, b| vicreg_loss(a, b, w).unwrap().loss,
            |a, b, aa, ba, _| vicreg_loss_gathered(a, b, aa, ba, w).unwrap().loss,
        );
    }
    // A rank's rows must lie inside every rank's.
    let (t, u) = (tensor(&za), tensor(&zb));
    let (a, b) = (t.narrow(0, 0, 2).unwrap(), u.narrow(0, 0, 2).unwrap());
    assert!(nt_xent_at(&a, &b, &t, &u, 0.3, 5).is_err());
    assert!(nt_xent_at(&a, &b, &t, &u.narrow(0, 0, 4).unwrap(), 0.3, 0).is_err());
    let w = VicregWeights {
        sim: 1.0,
        std: 1.0,
        cov: 1.0,
    };
    assert!(vicreg_loss_gathered(&a, &b, &t.narrow(1, 0, 3).unwrap(), &u, w).is_err());
}

#[test]
fn byol_and_simsiam_losses_match_their_definitions_and_stop_the_target_gradient() {
    let (p1, p2, z1, z2) = (rows(5, 4, 3), rows(5, 4, 4), rows(5, 4, 5), rows(5, 4, 6));
    let t = |r: &Rows| tensor(r);
    let byol = scalar(&byol_loss(&t(&p1), &t(&p2), &t(&z1), &t(&z2)).unwrap());
    let want = (2.0 - 2.0 * mean_cos(&p1, &z2)) + (2.0 - 2.0 * mean_cos(&p2, &z1));
    assert!((byol - want).abs() < 1e-12, "byol {byol} vs {want}");
    let simsiam = scalar(&simsiam_loss(&t(&p1), &t(&p2), &t(&z1), &t(&z2)).unwrap());
    let want = -0.5 * mean_cos(&p1, &z2) - 0.5 * mean_cos(&p2, &z1);
    assert!(
        (simsiam - want).abs() < 1e-12,
        "simsiam {simsiam} vs {want}"
    );
    // Gradients of the predictions against finite differences, the targets fixed.
    let (tz1, tz2) = (t(&z1), t(&z2));
    let preds = t(&[p1.clone(), p2.clone()].concat());
    let split = |x: &Tensor| (x.narrow(0, 0, 5).unwrap(), x.narrow(0, 5, 5).unwrap());
    assert_gradient_matches_finite_differences(&preds, |x| {
        let (a, b) = split(x);
        byol_loss(&a, &b, &tz1, &tz2).unwrap()
    });
    assert_gradient_matches_finite_differences(&preds, |x| {
        let (a, b) = split(x);
        simsiam_loss(&a, &b, &tz1, &tz2).unwrap()
    });
    // The stop-gradient: targets that are variables receive nothing.
    for loss in [byol_loss, simsiam_loss] {
        let z = candle_core::Var::from_tensor(&t(&z1)).unwrap();
        let p = candle_core::Var::from_tensor(&t(&p1)).unwrap();
        let g = loss(p.as_tensor(), p.as_tensor(), z.as_tensor(), z.as_tensor())
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(p.as_tensor()).is_some());
        assert!(g.get(z.as_tensor()).is_none(), "a target got a gradient");
    }
    assert!(byol_loss(&t(&p1), &t(&p2), &t(&z1), &t(&rows(5, 3, 7))).is_err());
}

#[test]
fn vicreg_terms_match_their_definitions_and_finite_differences() {
    // Values within ±0.9: std below γ = 1, so the variance hinge is active.
    let small = |r: Rows| -> Rows {
        r.iter()
            .map(|v| v.iter().map(|x| 0.3 * x).collect())
            .collect()
    };
    let (za, zb) = (small(rows(7, 4, 8)), small(rows(7, 4, 9)));
    let w = VicregWeights {
        sim: 25.0,
        std: 25.0,
        cov: 1.0,
    };
    let out = vicreg_loss(&tensor(&za), &tensor(&zb), w).unwrap();
    let (inv, var, cov) = vicreg_ref(&za, &zb);
    for (got, want, name) in [
        (&out.invariance, inv, "invariance"),
        (&out.variance, var, "variance"),
        (&out.covariance, cov, "covariance"),
    ] {
        assert!(
            (scalar(got) - want).abs() < 1e-12,
            "{name}: {} vs {want}",
            scalar(got)
        );
    }
    assert!(var > 0.1, "the hinge should be active: {var}");
    let total = 25.0 * inv + 25.0 * var + cov;
    assert!((scalar(&out.loss) - total).abs() < 1e-10);
    let both = tensor(&[za, zb].concat());
    assert_gradient_matches_finite_differences(&both, |x| {
        vicreg_loss(&x.narrow(0, 0, 7).unwrap(), &x.narrow(0, 7, 7).unwrap(), w)
            .unwrap()
            .loss
    });
}

#[test]
fn vicreg_terms_vanish_on_known_matrices() {
    let w = VicregWeights {
        sim: 25.0,
        std: 25.0,
        cov: 1.0,
    };
    // The rows of a scaled 4×4 Hadamard matrix: every column has mean 0, the columns are
    // orthogonal (identity-proportional covariance) and each std is 3·√(4/3) ≥ γ = 1.
    let h: Rows = [
        [1., 1., 1., 1.],
        [1., -1., 1., -1.],
        [1., 1., -1., -1.],
        [1., -1., -1., 1.],
    ]
    .iter()
    .map(|r| r[1..].iter().map(|x| 3.0 * x).collect())
    .collect();
    let out = vicreg_loss(&tensor(&h), &tensor(&h), w).unwrap();
    assert_eq!(scalar(&out.invariance), 0.0);
    assert!(
        scalar(&out.covariance).abs() < 1e-24,
        "{}",
        scalar(&out.covariance)
    );
    assert_eq!(scalar(&out.variance), 0.0);
    // Shrunk below γ: std 0.3·√(4/3) = 0.346 on every dimension, hinge 0.654 per view.
    let small = (tensor(&h) * 0.1).unwrap();
    let out = vicreg_loss(&small, &small, w).unwrap();
    let want = 1.0 - (0.09 * 4.0 / 3.0 + 1e-4f64).sqrt();
    assert!((scalar(&out.variance) - want).abs() < 1e-12);
    assert!(scalar(&out.covariance).abs() < 1e-24);
    // Perfectly correlated dimensions: covariance term 2·(d² − d)·c²/d for each view.
    let same: Rows = h.iter().map(|r| vec![r[0]; 3]).collect();
    let out = vicreg_loss(&tensor(&same), &tensor(&same), w).unwrap();
    let c = 9.0 * 4.0 / 3.0;
    assert!((scalar(&out.covariance) - 2.0 * 6.0 * c * c / 3.0).abs() < 1e-9);
}

/// A ResNet-18 of width 4 with γ = 1 everywhere (zero-init residuals would zero the inner
/// layers' gradients at init; this test is about the graph).
fn small_backbone() -> ResNetConfig {
    ResNetConfig {
        depth: Depth::R18,
        stem: Stem::Cifar,
        width: 4,
        zero_init_residual: false,
    }
}

/// Every trainable tensor of `m` gets a non-zero gradient; its momentum copy (if any) none.
fn assert_gradient_flow(m: &mut dyn Method) {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (8, 3, 16, 16), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (8, 3, 16, 16), &dev).unwrap();
    let grads = m.forward_train(&a, &b).unwrap().loss.backward().unwrap();
    let nonzero = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            > 0.0
    };
    let missing: Vec<_> = m
        .params()
        .trainable()
        .filter(|p| !grads.get(p.var.as_tensor()).is_some_and(nonzero))
        .map(|p| p.name.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "{}: no gradient for {missing:?}",
        m.name()
    );
    for p in m
        .momentum_params()
        .into_iter()
        .flat_map(|s| s.params.iter())
    {
        assert!(
            grads.get(p.var.as_tensor()).is_none_or(|g| !nonzero(g)),
            "{}: target tensor {} got a gradient",
            m.name(),
            p.name
        );
    }
}

#[test]
fn every_trainable_tensor_gets_a_gradient_and_the_target_none() {
    let (dev, bb) = (Device::Cpu, small_backbone());
    let simclr = SimclrConfig {
        projector: vec![16, 8],
        tau: 0.2,
    };
    assert_gradient_flow(&mut Simclr::new(&bb, &simclr, 0, &dev).unwrap());
    let byol = ByolConfig {
        projector: vec![16, 8],
        predictor_hidden: 16,
        momentum: 0.99,
        momentum_schedule: MomentumSchedule::Cosine,
    };
    let mut m = Byol::new(&bb, &byol, 0, &dev).unwrap();
    assert_gradient_flow(&mut m);
    // The target starts equal to the online network and moves by the EMA after a step.
    m.after_step(1, 10).unwrap();
    assert!(m.momentum() > 0.99 && m.momentum() < 1.0);
    let simsiam = SimsiamConfig {
        projector: vec![16, 16, 8],
        predictor_hidden: 4,
        fix_predictor_lr: true,
    };
    let m = Simsiam::new(&bb, &simsiam, 0, &dev).unwrap();
    assert_eq!(m.unscheduled_prefix(), Some("predictor."));
    assert!(m
        .params()
        .params
        .iter()
        .any(|p| p.name.starts_with("predictor.")));
    assert_gradient_flow(&mut Simsiam::new(&bb, &simsiam, 0, &dev).unwrap());
    let vicreg = VicregConfig {
        expander: vec![16, 16, 16],
        ..VicregConfig::default()
    };
    assert_gradient_flow(&mut Vicreg::new(&bb, &vicreg, 0, &dev).unwrap());
}
