//! The Barlow Twins loss pinned to independently computed values (docs/recipes.md §8 item 3) and its
//! gradient checked against central finite differences in f64.

mod common;

use candle_core::{DType, Device, Tensor};
use sslab::objectives::barlow_twins_loss;

const LAMBDA: f64 = 0.0051;

fn cols(a: &[f64], b: &[f64]) -> Tensor {
    let data: Vec<f64> = a.iter().zip(b).flat_map(|(x, y)| [*x, *y]).collect();
    Tensor::from_vec(data, (a.len(), 2), &Device::Cpu).unwrap()
}

use common::scalar;

const A: [f64; 4] = [1.0, -1.0, 1.0, -1.0];
const B: [f64; 4] = [1.0, 1.0, -1.0, -1.0];

#[test]
fn identical_views_give_identity_and_zero_loss() {
    let z = cols(&A, &B);
    let out = barlow_twins_loss(&z, &z, LAMBDA).unwrap();
    // With eps = 1e-5 and unit variance, C_ii = 1/(1+1e-5): L = 2·(1e-5)² ≈ 2e-10.
    assert!(scalar(&out.loss) < 1e-9, "{}", scalar(&out.loss));
    let c = out.c.to_vec2::<f64>().unwrap();
    assert!((c[0][0] - 1.0).abs() < 1e-4 && (c[1][1] - 1.0).abs() < 1e-4);
    assert!(c[0][1].abs() < 1e-12 && c[1][0].abs() < 1e-12);
}

#[test]
fn negated_views_give_minus_identity_and_4d() {
    let za = cols(&A, &B);
    let zb = za.neg().unwrap();
    let out = barlow_twins_loss(&za, &zb, LAMBDA).unwrap();
    assert!(
        (scalar(&out.loss) - 8.0).abs() < 1e-3,
        "{}",
        scalar(&out.loss)
    );
    assert!((scalar(&out.on_diag) - 8.0).abs() < 1e-3);
}

#[test]
fn swapped_dims_give_2_plus_2_lambda() {
    let za = cols(&A, &B);
    let zb = cols(&B, &A);
    let out = barlow_twins_loss(&za, &zb, LAMBDA).unwrap();
    assert!(
        (scalar(&out.loss) - 2.0102).abs() < 1e-3,
        "{}",
        scalar(&out.loss)
    );
    assert!((scalar(&out.off_diag) - 2.0).abs() < 1e-3);
    let c = out.c.to_vec2::<f64>().unwrap();
    assert!((c[0][1] - 1.0).abs() < 1e-4 && c[0][0].abs() < 1e-12);
}

#[test]
fn invariant_to_positive_affine_maps_and_sign_flips_diagonal() {
    let dev = Device::Cpu;
    let za = Tensor::randn(0f64, 1.0, (16, 5), &dev).unwrap();
    let zb = Tensor::randn(0f64, 1.0, (16, 5), &dev).unwrap();
    let base = barlow_twins_loss(&za, &zb, LAMBDA).unwrap();
    let scale = Tensor::new(&[2.0f64, 0.5, 3.0, 1.5, 7.0], &dev).unwrap();
    let shift = Tensor::new(&[1.0f64, -4.0, 0.3, 2.0, 9.0], &dev).unwrap();
    let zb2 = zb
        .broadcast_mul(&scale)
        .unwrap()
        .broadcast_add(&shift)
        .unwrap();
    let moved = barlow_twins_loss(&za, &zb2, LAMBDA).unwrap();
    // Only eps breaks exact invariance; values are O(1) so 1e-3 relative is generous for eps 1e-5.
    let (l0, l1) = (scalar(&base.loss), scalar(&moved.loss));
    assert!((l0 - l1).abs() / l0 < 1e-3, "{l0} vs {l1}");
    let flipped = barlow_twins_loss(&za, &zb.neg().unwrap(), LAMBDA).unwrap();
    let d0 = base.c.to_vec2::<f64>().unwrap();
    let d1 = flipped.c.to_vec2::<f64>().unwrap();
    for i in 0..5 {
        assert!((d0[i][i] + d1[i][i]).abs() < 1e-9);
    }
}

#[test]
fn random_gaussian_views_match_expected_loss() {
    // E[L] ≈ D + λ·D(D−1)/B for independent Gaussian embeddings (docs/recipes.md §8.3).
    let (b, d) = (256usize, 64usize);
    let dev = Device::Cpu;
    let mut total = 0.0;
    let reps = 8;
    for _ in 0..reps {
        let za = Tensor::randn(0f64, 1.0, (b, d), &dev).unwrap();
        let zb = Tensor::randn(0f64, 1.0, (b, d), &dev).unwrap();
        total += scalar(&barlow_twins_loss(&za, &zb, LAMBDA).unwrap().loss);
    }
    let mean = total / reps as f64;
    let expected = d as f64 + LAMBDA * (d * (d - 1)) as f64 / b as f64;
    assert!(
        (mean - expected).abs() / expected < 0.05,
        "{mean} vs {expected}"
    );
}

#[test]
fn gradient_matches_central_finite_differences() {
    let dev = Device::Cpu;
    let za = Tensor::randn(0f64, 1.0, (6, 4), &dev).unwrap();
    let zb = Tensor::randn(0f64, 1.0, (6, 4), &dev).unwrap();
    let lambda = 0.3; // large, so the off-diagonal term matters in the check
    common::assert_gradient_matches_finite_differences(&za, |z| {
        barlow_twins_loss(z, &zb, lambda).unwrap().loss
    });
}

#[test]
fn rejects_bad_shapes() {
    let dev = Device::Cpu;
    let a = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
    let b = Tensor::zeros((4, 2), DType::F32, &dev).unwrap();
    assert!(barlow_twins_loss(&a, &b, LAMBDA).is_err());
    let one = Tensor::zeros((1, 3), DType::F32, &dev).unwrap();
    assert!(barlow_twins_loss(&one, &one, LAMBDA).is_err());
}
