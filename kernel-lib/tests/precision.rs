//! Mixed precision (`precision = "bf16"`, `kernels::autocast`): convolutions and matrix
//! products take bf16 operands and give f32 results within bf16's rounding of the f32 ones,
//! gradients reach the f32 weights, and the setting is scoped. On the CPU the operands are
//! rounded to bf16 and multiplied in f32 (candle's CPU matmul has no bf16, and a CPU run
//! refuses bf16); on a GPU the same casts feed cuDNN and cuBLAS in bf16.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::rel_err;
use sslab::kernels::{autocast, autocast_precision, batched_matmul, conv2d, Precision};
use sslab::models::{Depth, ParamBuilder, ResNet, ResNetConfig, Stem};
use sslab::train::{Run, RunConfig};

#[test]
fn autocast_is_scoped_and_nests() {
    assert_eq!(autocast_precision(), Precision::F32);
    {
        let _a = autocast(Precision::Bf16);
        {
            let _b = autocast(Precision::F32);
            assert_eq!(autocast_precision(), Precision::F32);
        }
        assert_eq!(autocast_precision(), Precision::Bf16);
    }
    assert_eq!(autocast_precision(), Precision::F32);
}

#[test]
fn bf16_conv_and_matmul_follow_f32_and_train_f32_weights() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 8, 10, 10), &dev).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.2, (16, 8, 3, 3), &dev).unwrap()).unwrap();
    let a = Tensor::randn(0f32, 1.0, (3, 5, 7), &dev).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7, 4), &dev).unwrap()).unwrap();
    let f32_conv = conv2d(&x, &w, 1, 1).unwrap();
    let f32_mm = batched_matmul(&a, &b, false, false, true).unwrap();
    let _bf16 = autocast(Precision::Bf16);
    let conv = conv2d(&x, &w, 1, 1).unwrap();
    let mm = batched_matmul(&a, &b, false, false, true).unwrap();
    // f32 out, bf16 inside: 8 bits of mantissa, errors of a few 1e-3 of the largest value.
    assert_eq!((conv.dtype(), mm.dtype()), (DType::F32, DType::F32));
    let (ec, em) = (rel_err(&conv, &f32_conv), rel_err(&mm, &f32_mm));
    assert!(ec > 0.0 && ec < 2e-2, "conv bf16 vs f32: {ec:.2e}");
    assert!(em > 0.0 && em < 2e-2, "matmul bf16 vs f32: {em:.2e}");
    let loss = (conv.sum_all().unwrap() + mm.sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    for v in [&w, &b] {
        let g = grads.get(v).expect("a gradient reaches the f32 weight");
        assert_eq!(g.dtype(), DType::F32);
        assert_eq!(g.dims(), v.dims());
    }
}

#[test]
fn a_resnet_step_in_bf16_gives_the_f32_loss_and_every_gradient() {
    let dev = Device::Cpu;
    let mut pb = ParamBuilder::new(3, &dev);
    let cfg = ResNetConfig {
        depth: Depth::R18,
        stem: Stem::Cifar,
        width: 4,
        zero_init_residual: false,
    };
    let net = ResNet::new(&mut pb, "r", &cfg).unwrap();
    let store = pb.finish();
    let x = Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &dev).unwrap();
    let loss = |p: Precision| {
        let _g = autocast(p);
        let out = net.forward_t(&x, true).unwrap();
        let l = out.pooled.sqr().unwrap().mean_all().unwrap();
        let grads = l.backward().unwrap();
        let missing = store
            .trainable()
            .filter(|q| grads.get(q.var.as_tensor()).is_none())
            .count();
        (l.to_scalar::<f32>().unwrap(), missing)
    };
    let (l32, m32) = loss(Precision::F32);
    let (l16, m16) = loss(Precision::Bf16);
    assert_eq!(
        (m32, m16),
        (0, 0),
        "every weight gets a gradient in both precisions"
    );
    assert!(
        (l16 - l32).abs() / l32.abs() < 3e-2,
        "bf16 loss {l16} vs f32 {l32}"
    );
}

#[test]
fn a_cpu_run_refuses_bf16_and_a_running_one_keeps_its_precision() {
    let mut cfg = RunConfig::preset("barlow-twins/tiny").unwrap();
    cfg.device = "cpu".into();
    cfg.precision = Precision::Bf16;
    let e = Run::new(cfg.clone())
        .err()
        .expect("bf16 on the CPU is refused")
        .to_string();
    assert!(e.contains("precision") && e.contains("CUDA"), "{e}");
    cfg.precision = Precision::F32;
    cfg.data.shapes.train = 64;
    cfg.data.shapes.test = 16;
    cfg.train.batch_size = 16;
    let mut run = Run::new(cfg).unwrap();
    let e = run.set("precision", "\"bf16\"").unwrap_err().to_string();
    assert!(e.contains("precision") && e.contains("fixed"), "{e}");
}
