//! sslab's CUDA bias add and LayerNorm scale-and-shift against its CPU kernels, values and the
//! gradients of input, scale and bias.

use super::{gpu, rel_err};
use candle_core::{Device, Tensor, Var};
use sslab::kernels::{add_bias, scale_shift_rows};

/// Output and the gradients of x, w and b of `Σ f(x, w, b)·r` on `dev`.
fn run(shift_only: bool, t: [&Tensor; 4], dev: &Device) -> Vec<Tensor> {
    let [x, w, b, r] = t.map(|t| t.to_device(dev).unwrap());
    let (xv, wv, bv) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let y = if shift_only {
        add_bias(&xv, &bv).unwrap()
    } else {
        scale_shift_rows(&xv, &wv, &bv, true).unwrap()
    };
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![y, g.get(&xv).unwrap().clone(), g.get(&bv).unwrap().clone()];
    if !shift_only {
        out.push(g.get(&wv).unwrap().clone());
    }
    out
}

#[test]
fn bias_and_scale_shift_match_the_cpu_kernels() {
    let Some(dev) = gpu(false) else { return };
    // A projector's rows, and ViT-S tokens (rows·d beyond one block row of the column sums).
    for (rows, d) in [(256, 2048), (64 * 197, 384), (3, 5)] {
        let x = Tensor::randn(0f32, 1.0, (rows, d), &Device::Cpu).unwrap();
        let w = Tensor::randn(1f32, 0.3, d, &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.3, d, &Device::Cpu).unwrap();
        let r = Tensor::randn(0f32, 1.0, (rows, d), &Device::Cpu).unwrap();
        for shift_only in [true, false] {
            let cpu = run(shift_only, [&x, &w, &b, &r], &Device::Cpu);
            let cuda = run(shift_only, [&x, &w, &b, &r], &dev);
            for (i, (a, e)) in cuda.iter().zip(&cpu).enumerate() {
                // Column sums over up to 12 608 rows in another order: f32 rounding.
                let err = rel_err(a, e);
                assert!(
                    err < 1e-4,
                    "({rows}, {d}) shift_only {shift_only} #{i}: {err:.2e}"
                );
            }
        }
    }
}
