//! The bf16 activations a bf16 autocast keeps on CUDA: each CUDA kernel that reads and writes
//! them (`_bf16` in `kernel-lib/cuda`) against the same op on the CPU, which computes the same
//! bf16 values in f32 and rounds its result once; and a training step with them against the
//! same step's data flow run on the CPU (`tests/bf16_activations.rs` checks that flow there).

use super::{common, gpu, rel_err};
use candle_core::{DType, Device, Tensor, Var};
use sslab::kernels::{
    add_bias, add_relu, autocast, batch_norm_affine_train, batch_norm_train,
    bf16_activations_on_cpu, conv2d, gelu, linear, relu, Precision,
};
use sslab::train::{Run, RunConfig};

/// A bf16 op of up to two bf16 activations and an f32 parameter vector.
type Op<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor;

/// The output and the gradients of both activations and of the parameter, of `Σ f(a, b, p)·r`
/// on `dev`, with a, b and r bf16 and p f32.
fn run(f: Op, [a, b, p, r]: [&Tensor; 4], dev: &Device) -> Vec<Tensor> {
    let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_device(dev).unwrap();
    let (av, bv) = (
        Var::from_tensor(&bf(a)).unwrap(),
        Var::from_tensor(&bf(b)).unwrap(),
    );
    let pv = Var::from_tensor(&p.to_device(dev).unwrap()).unwrap();
    let y = f(&av, &bv, &pv);
    assert_eq!(y.dtype(), DType::BF16, "the output stays a bf16 activation");
    let g = (&y * &bf(r))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = |v: &Var| {
        g.get(v)
            .map_or_else(|| v.zeros_like().unwrap(), |t| t.clone())
    };
    vec![y, grad(&av), grad(&bv), grad(&pv)]
}

#[test]
fn bf16_kernels_match_the_cpu_computed_in_f32() {
    let Some(dev) = gpu(false) else { return };
    let shape = (8, 32, 9, 9);
    let a = Tensor::randn(0.5f32, 2.0, shape, &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 2.0, shape, &Device::Cpu).unwrap();
    let r = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
    let gamma = Tensor::randn(1f32, 0.2, 32, &Device::Cpu).unwrap();
    let rows = |t: &Tensor| t.reshape((8 * 32 * 9, 9)).unwrap();
    let bias = Tensor::randn(0f32, 0.5, 9, &Device::Cpu).unwrap();
    let bn = |relu: bool| {
        move |x: &Tensor, _: &Tensor, p: &Tensor| {
            batch_norm_affine_train(x, p, &(p * 0.1).unwrap(), 1e-5, relu, None)
                .unwrap()
                .0
        }
    };
    let (bn_plain, bn_relu) = (bn(false), bn(true));
    let cases: [(&str, Op, &Tensor, bool); 8] = [
        ("relu", &|x, _, _| relu(x).unwrap(), &gamma, false),
        (
            "add_relu",
            &|x, y, _| add_relu(x, y).unwrap(),
            &gamma,
            false,
        ),
        ("gelu", &|x, _, _| gelu(x).unwrap(), &gamma, false),
        ("bias", &|x, _, p| add_bias(x, p).unwrap(), &bias, true),
        ("batchnorm", &bn_plain, &gamma, false),
        ("batchnorm+relu", &bn_relu, &gamma, false),
        // Rank 2: the column kernels, as a channels-last map or a projector reaches them.
        ("batchnorm rows", &bn_relu, &bias, true),
        (
            "batchnorm (no affine part)",
            &|x, _, _| batch_norm_train(x, 1e-5, true, None).unwrap().0,
            &gamma,
            false,
        ),
    ];
    for (name, f, p, as_rows) in cases {
        let t = |x: &Tensor| if as_rows { rows(x) } else { x.clone() };
        let inputs = [&t(&a), &t(&b), p, &t(&r)];
        let cpu = run(f, inputs, &Device::Cpu);
        let cuda = run(f, inputs, &dev);
        for (i, (x, e)) in cuda.iter().zip(&cpu).enumerate() {
            // Both round an f32 value to bf16 once: one unit in the last place (2⁻⁸) where
            // the two f32 values straddle a rounding boundary, and a ReLU mask may flip
            // where a value rounds across zero.
            let err = rel_err(x, e);
            assert!(err <= 1.6e-2, "{name} #{i}: CUDA vs CPU {err:.2e}");
        }
    }
}

/// Layers return bf16 on CUDA under a bf16 autocast and f32 outside one.
#[test]
fn cuda_layers_keep_bf16_activations_under_autocast() {
    let Some(dev) = gpu(true) else { return };
    let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
    let w = Tensor::randn(0f32, 0.3, (6, 4, 3, 3), &dev).unwrap();
    let m = Tensor::randn(0f32, 1.0, (5, 16), &dev).unwrap();
    let lw = Tensor::randn(0f32, 0.3, (7, 16), &dev).unwrap();
    assert_eq!(conv2d(&x, &w, 1, 1).unwrap().dtype(), DType::F32);
    let _bf16 = autocast(Precision::Bf16);
    assert_eq!(conv2d(&x, &w, 1, 1).unwrap().dtype(), DType::BF16);
    assert_eq!(linear(&m, &lw).unwrap().dtype(), DType::BF16);
}

/// One bf16 step of a ResNet method and of the ViT on the GPU against the same step on the
/// CPU with bf16 activations: the same loss within bf16's rounding, every weight a finite f32
/// gradient pointing where the CPU's does.
#[test]
fn a_bf16_step_on_cuda_follows_the_cpu_data_flow() {
    if gpu(true).is_none() {
        return;
    }
    let view = |seed: u64| {
        Tensor::from_vec(
            common::splitmix(16 * 3 * 32 * 32, seed),
            (16, 3, 32, 32),
            &Device::Cpu,
        )
        .unwrap()
    };
    let (a, b) = (view(1), view(2));
    for preset in ["barlow-twins/tiny", "moco-v3/vit-tiny"] {
        let step = |device: &str| {
            let mut cfg = RunConfig::preset(preset).unwrap();
            cfg.device = device.into();
            let mut run = Run::new(cfg).unwrap();
            let d = run.device().clone();
            let _bf16 = autocast(Precision::Bf16);
            let _on = bf16_activations_on_cpu(true);
            let (a, b) = (a.to_device(&d).unwrap(), b.to_device(&d).unwrap());
            common::step_gradients(&mut run, &a, &b, preset)
        };
        let (l_gpu, g_gpu) = step("cuda");
        let (l_cpu, g_cpu) = step("cpu");
        let cos = common::cosine(&g_gpu, &g_cpu);
        eprintln!("{preset}: loss {l_gpu:.5} on CUDA, {l_cpu:.5} on the CPU; cosine {cos:.4}");
        assert!(
            (l_gpu - l_cpu).abs() <= 3e-2 * l_cpu.abs().max(1e-3),
            "{preset}: loss {l_gpu} on CUDA vs {l_cpu}"
        );
        assert!(cos > 0.9, "{preset}: gradient cosine {cos:.4}");
    }
}
