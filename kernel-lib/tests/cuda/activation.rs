//! sslab's CUDA activations (ReLU, residual add + ReLU, exact GELU), softmax and attention
//! against its CPU kernels, values and gradients.

use super::{gpu, rel_err};
use candle_core::{Device, Tensor, Var};
use sslab::kernels::{add_relu, gelu, relu};

/// An activation of one or two inputs.
type Activation<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Tensor;

/// Output and the gradients of both inputs of `Σ f(a, b)·r` on `dev`.
fn run(f: Activation, inputs: [&Tensor; 3], dev: &Device) -> [Tensor; 3] {
    let [a, b, r] = inputs.map(|t| t.to_device(dev).unwrap());
    let (av, bv) = (Var::from_tensor(&a).unwrap(), Var::from_tensor(&b).unwrap());
    let y = f(&av, &bv);
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = |v: &Var| {
        g.get(v)
            .map_or_else(|| v.zeros_like().unwrap(), |t| t.clone())
    };
    [y, grad(&av), grad(&bv)]
}

#[test]
fn activations_match_the_cpu_kernels() {
    let Some(dev) = gpu(false) else { return };
    let shape = (16, 64, 9, 9);
    let a = Tensor::randn(0f32, 2.0, shape, &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 2.0, shape, &Device::Cpu).unwrap();
    let r = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
    let cases: [(&str, Activation, f32); 3] = [
        ("relu", &|a, _| relu(a).unwrap(), 0.0),
        ("add_relu", &|a, b| add_relu(a, b).unwrap(), 1e-6),
        // The CPU's erf is a polynomial (a few ulps); CUDA's erff is its own.
        ("gelu", &|a, _| gelu(a).unwrap(), 1e-5),
    ];
    for (name, f, tol) in cases {
        let cpu = run(f, [&a, &b, &r], &Device::Cpu);
        let cuda = run(f, [&a, &b, &r], &dev);
        for (i, (x, e)) in cuda.iter().zip(&cpu).enumerate() {
            let err = rel_err(x, e);
            assert!(
                err <= tol,
                "{name} output/grad {i}: CUDA vs CPU {err:.2e} > {tol:.0e}"
            );
        }
    }
}

#[test]
fn softmax_matches_the_cpu_kernel() {
    let Some(dev) = gpu(false) else { return };
    // Attention rows of a ViT-tiny at 32 px (65 tokens) and ViT-S/16 at 224 px (197 tokens).
    for dims in [vec![4, 3, 65, 65], vec![2, 6, 197, 197], vec![7, 5]] {
        let x = Tensor::randn(0f32, 3.0, dims.as_slice(), &Device::Cpu).unwrap();
        let r = Tensor::randn(0f32, 1.0, dims.as_slice(), &Device::Cpu).unwrap();
        let f: Activation = &|a, _| sslab::kernels::softmax_last(a, 0.125, true).unwrap();
        let cpu = run(f, [&x, &x, &r], &Device::Cpu);
        let cuda = run(f, [&x, &x, &r], &dev);
        for (i, (a, e)) in cuda.iter().zip(&cpu).take(2).enumerate() {
            let err = rel_err(a, e);
            assert!(
                err < 1e-5,
                "softmax {dims:?} output/grad {i}: CUDA vs CPU {err:.2e}"
            );
        }
    }
}

#[test]
fn attention_matches_the_cpu_kernel() {
    let Some(dev) = gpu(false) else { return };
    // (batch, tokens, heads, head width): ViT-tiny at 32 px, ViT-S/16 at 224 px, odd sizes.
    for (b, t, h, w) in [(4, 65, 3, 64), (2, 197, 6, 64), (3, 7, 2, 5)] {
        let x = Tensor::randn(0f32, 1.5, (b, t, 3 * h * w), &Device::Cpu).unwrap();
        let r = Tensor::randn(0f32, 1.0, (b, t, h * w), &Device::Cpu).unwrap();
        let f: Activation = &|a, _| sslab::kernels::attention(a, h, true).unwrap();
        let cpu = run(f, [&x, &x, &r], &Device::Cpu);
        let cuda = run(f, [&x, &x, &r], &dev);
        // Under a bf16 autocast the products take TF32 tensor cores (10-bit mantissas).
        let tf32 = {
            let _bf16 = sslab::kernels::autocast(sslab::kernels::Precision::Bf16);
            run(f, [&x, &x, &r], &dev)
        };
        for (i, ((a, a32), e)) in cuda.iter().zip(&tf32).zip(&cpu).take(2).enumerate() {
            let err = rel_err(a, e);
            assert!(
                err < 1e-5,
                "attention {b}×{t}×{h}×{w} output/grad {i}: CUDA vs CPU {err:.2e}"
            );
            let err = rel_err(a32, e);
            assert!(
                err < 2e-2,
                "attention {b}×{t}×{h}×{w} output/grad {i}: TF32 vs CPU {err:.2e}"
            );
        }
    }
}
