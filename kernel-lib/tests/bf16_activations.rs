//! bf16 activations, as a bf16 autocast keeps them on CUDA (`kernels::precision`): a layer's
//! product returns bf16, the ops after it read and write bf16, LayerNorm and softmax return
//! f32, and a network's outputs are f32. These tests run that data flow on the CPU
//! (`bf16_activations_on_cpu`, where the ops without a CPU bf16 kernel compute through f32),
//! so that a GPU step's dtypes, casts and gradients are checked on every machine; the CUDA
//! kernels themselves are checked against these CPU paths on a GPU (`tests/cuda/bf16.rs`).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use sslab::kernels::{
    add_bias, add_relu, attention, autocast, batch_norm_affine_train, bf16_activations_on_cpu,
    conv2d, cpu_has_bf16, gelu, linear, normalize_rows, relu, softmax_last, Precision,
};
use sslab::models::{Depth, Stem};
use sslab::train::{Run, RunConfig};

fn input(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(common::splitmix(n, seed), shape, &Device::Cpu).unwrap()
}

#[test]
fn each_op_returns_the_dtype_autocast_gives_it() {
    let x = input(&[2, 4, 6, 6], 1);
    let w = input(&[8, 4, 3, 3], 2);
    let (gamma, beta) = (input(&[8], 3).abs().unwrap(), input(&[8], 4));
    let rows = input(&[12, 16], 5);
    let lw = input(&[24, 16], 6);
    let bias = input(&[24], 7);
    let _bf16 = autocast(Precision::Bf16);
    // Without the guard the CPU keeps f32 activations.
    assert_eq!(conv2d(&x, &w, 1, 1).unwrap().dtype(), DType::F32);
    assert_eq!(linear(&rows, &lw).unwrap().dtype(), DType::F32);
    let _on = bf16_activations_on_cpu(true);
    let y = conv2d(&x, &w, 1, 1).unwrap();
    assert_eq!(y.dtype(), DType::BF16, "conv2d");
    let (bn, mean, var) = batch_norm_affine_train(&y, &gamma, &beta, 1e-5, true, None).unwrap();
    assert_eq!(
        [bn.dtype(), mean.dtype(), var.dtype()],
        [DType::BF16, DType::F32, DType::F32],
        "BatchNorm: bf16 out, f32 statistics"
    );
    assert_eq!(relu(&y).unwrap().dtype(), DType::BF16, "relu");
    assert_eq!(add_relu(&bn, &y).unwrap().dtype(), DType::BF16, "add_relu");
    let h = linear(&rows, &lw).unwrap();
    assert_eq!(h.dtype(), DType::BF16, "linear");
    let h = add_bias(&h, &bias).unwrap();
    assert_eq!(h.dtype(), DType::BF16, "bias");
    assert_eq!(gelu(&h).unwrap().dtype(), DType::BF16, "gelu");
    // LayerNorm and softmax are autocast's f32 ops.
    assert_eq!(normalize_rows(&h, 1e-6, true).unwrap().dtype(), DType::F32);
    assert_eq!(softmax_last(&h, 1.0, true).unwrap().dtype(), DType::F32);
    let qkv = linear(&input(&[2 * 5, 16], 8), &input(&[48, 16], 9))
        .unwrap()
        .reshape((2, 5, 48))
        .unwrap();
    assert_eq!(attention(&qkv, 2, true).unwrap().dtype(), DType::BF16);
    // A bf16 and an f32 activation add in f32.
    let mixed = add_relu(&y, &y.to_dtype(DType::F32).unwrap()).unwrap();
    assert_eq!(mixed.dtype(), DType::F32);
}

/// A layer's bf16 output is the product of the bf16-rounded operands, rounded once: within one
/// bf16 unit in the last place (2⁻⁸ relative) of that value computed in f64.
#[test]
fn a_bf16_product_rounds_its_operands_and_its_result_once() {
    let x = input(&[9, 40], 11);
    let w = input(&[7, 40], 12);
    let y = {
        let _bf16 = autocast(Precision::Bf16);
        let _on = bf16_activations_on_cpu(true);
        linear(&x, &w).unwrap()
    };
    let f64_of = |t: &Tensor| common::bf16_rounded(t, DType::F64);
    let exact = f64_of(&x).matmul(&f64_of(&w).t().unwrap()).unwrap();
    let got = y.to_dtype(DType::F64).unwrap();
    let (e, g) = (
        exact.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        got.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
    );
    for (i, (e, g)) in e.iter().zip(&g).enumerate() {
        assert!(
            (e - g).abs() <= e.abs() * 2f64.powi(-8) + 1e-30,
            "element {i}: {g} vs {e}"
        );
    }
    // And the result is not the f32 product: it was rounded.
    let f32_of = |t: &Tensor| common::bf16_rounded(t, DType::F32);
    let f32_product = f32_of(&x).matmul(&f32_of(&w).t().unwrap()).unwrap();
    let same = (f32_product - y.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(same > 0.0, "the bf16 output holds f32 values");
}

/// A ResNet with bf16 activations returns f32 features, its gradients reach every f32 weight
/// in f32, and its loss stays within bf16's rounding of the all-f32 network's.
#[test]
fn a_resnet_with_bf16_activations_returns_f32_and_trains_f32_weights() {
    let (net, store) = common::resnet(Depth::R18, Stem::Cifar, 8, 3, &Device::Cpu);
    let x = input(&[8, 3, 16, 16], 21);
    let run = |bf16: bool| {
        let _g = autocast(if bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        });
        let _on = bf16_activations_on_cpu(bf16);
        // Evaluation mode too (BatchNorm with its f32 running statistics).
        let eval = net.forward_t(&x, false).unwrap();
        let out = net.forward_t(&x, true).unwrap();
        assert_eq!(
            [
                out.pooled.dtype(),
                out.feature_map.dtype(),
                eval.pooled.dtype()
            ],
            [DType::F32, DType::F32, DType::F32]
        );
        let l = out.pooled.sqr().unwrap().mean_all().unwrap();
        let grads = l.backward().unwrap();
        let flat: Vec<f32> = store
            .trainable()
            .flat_map(|q| {
                let g = grads
                    .get(q.var.as_tensor())
                    .expect("every weight has a gradient");
                assert_eq!(g.dtype(), DType::F32, "{}", q.name);
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect();
        (l.to_scalar::<f32>().unwrap(), flat)
    };
    let (l32, g32) = run(false);
    let (l16, g16) = run(true);
    assert!((l16 - l32).abs() / l32.abs() < 3e-2, "loss {l16} vs {l32}");
    // Rounding every activation (not only the products' operands) moves the gradient further:
    // cosine 0.94 here against 0.97 for operand rounding alone. A path that lost its gradient
    // or computed on other values falls far below.
    let cos = common::cosine(&g16, &g32);
    assert!(cos > 0.9, "gradient cosine {cos:.4}");
}

/// One training step of every method's tiny preset with bf16 activations: the loss is within
/// bf16's rounding of the f32 step's and every trainable weight gets a finite f32 gradient
/// pointing where the f32 one does. This is the data flow a bf16 step on a GPU runs.
#[test]
fn every_method_steps_with_bf16_activations() {
    if !cpu_has_bf16() {
        // The losses' own products take the CPU's bf16 kernel under autocast.
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let (a, b) = (input(&[16, 3, 32, 32], 31), input(&[16, 3, 32, 32], 32));
    for preset in [
        "barlow-twins/tiny",
        "moco-v2/tiny",
        "densecl/tiny",
        "moco-v3/vit-tiny",
        "simclr/tiny",
        "byol/tiny",
        "simsiam/tiny",
        "vicreg/tiny",
    ] {
        let mut cfg = RunConfig::preset(preset).unwrap();
        cfg.device = "cpu".into();
        let mut run = Run::new(cfg).unwrap();
        // (autocast, bf16 activations): f32; the CPU's bf16 (rounded operands, f32
        // activations); the GPU's bf16 flow.
        let mut step = |(bf16, stored): (bool, bool)| {
            let _g = autocast(if bf16 {
                Precision::Bf16
            } else {
                Precision::F32
            });
            let _on = bf16_activations_on_cpu(stored);
            common::step_gradients(&mut run, &a, &b, preset)
        };
        let (l32, g32) = step((false, false));
        let (_, g_operands) = step((true, false));
        let (l16, g16) = step((true, true));
        let cos = common::cosine(&g16, &g32);
        eprintln!(
            "{preset}: loss {l16:.5} vs f32 {l32:.5}, gradient cosine {cos:.4} (rounded \
             operands alone: {:.4})",
            common::cosine(&g_operands, &g32)
        );
        assert!(
            (l16 - l32).abs() <= 3e-2 * l32.abs().max(1e-3),
            "{preset}: loss {l16} vs {l32}"
        );
        // At initialisation bf16 gradients sit 0.93-1.00 from f32 (the ViT's as PyTorch's
        // autocast puts it, see tests/precision.rs); a lost gradient path falls far below.
        assert!(cos > 0.9, "{preset}: gradient cosine {cos:.4}");
    }
}

/// A bf16 activation and the f32 parameter it meets: the bias gradient is f32 and is the
/// column sums of the output gradient.
#[test]
fn a_bias_on_a_bf16_activation_gets_an_f32_gradient() {
    let _bf16 = autocast(Precision::Bf16);
    let _on = bf16_activations_on_cpu(true);
    let y = input(&[5, 6], 41).to_dtype(DType::BF16).unwrap();
    let b = Var::from_tensor(&input(&[6], 42)).unwrap();
    let out = add_bias(&y, b.as_tensor()).unwrap();
    let r = input(&[5, 6], 43).to_dtype(DType::BF16).unwrap();
    let g = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let db = g.get(b.as_tensor()).unwrap();
    assert_eq!(db.dtype(), DType::F32);
    let expected = r.to_dtype(DType::F32).unwrap().sum(0).unwrap();
    assert!(common::rel_err(db, &expected) < 1e-2);
}
