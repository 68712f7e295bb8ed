//! sslab's CUDA convolutions (cuDNN, `cudnn` feature) against its CPU kernels and against
//! candle's convolution, values and both gradients, for every convolution shape of the CIFAR
//! ResNet-18 and the ImageNet ResNet-50.

use super::{gpu, rel_err};
use candle_core::{DType, Device, Tensor, Var};
use sslab::kernels::bench::{ConvShape, RESNET18_CIFAR_CONVS, RESNET50_IMAGENET_CONVS};
use sslab::kernels::{cached_conv_algorithms, conv2d, conv2d_channels_last, set_conv_tf32};
use std::sync::Mutex;

/// The TF32 switch is process-wide: the tests that set it take turns.
static TF32: Mutex<()> = Mutex::new(());

/// Output, input gradient and weight gradient of `Σ conv(x, w) · r`, through sslab's conv2d
/// or (`candle`) candle's.
fn passes(x: &Tensor, w: &Tensor, r: &Tensor, s: ConvShape, candle: bool) -> [Tensor; 3] {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = if candle {
        xv.conv2d(&wv, s.padding(), s.stride, 1, 1).unwrap()
    } else {
        conv2d(&xv, &wv, s.stride, s.padding()).unwrap()
    };
    let loss = (&y * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let dx = g.get(&xv).unwrap().clone();
    let dw = g.get(&wv).unwrap().clone();
    [y, dx, dw]
}

/// Every shape of `shapes` at `batch`: sslab on CUDA against the CPU kernels (within `tol_cpu`)
/// and against candle on CUDA (within `tol_candle`).
fn check(dev: &Device, shapes: &[ConvShape], batch: usize, tol_cpu: f32, tol_candle: f32) {
    for &s in shapes {
        let x = Tensor::randn(0f32, 1.0, (batch, s.inp, s.size, s.size), &Device::Cpu).unwrap();
        let fan_in = (s.inp * s.kernel * s.kernel) as f32;
        let w = (Tensor::randn(0f32, 1.0, (s.out, s.inp, s.kernel, s.kernel), &Device::Cpu)
            .unwrap()
            / fan_in.sqrt() as f64)
            .unwrap();
        let ho = s.out_size();
        let r = Tensor::randn(0f32, 1.0, (batch, s.out, ho, ho), &Device::Cpu).unwrap();
        let cpu = passes(&x, &w, &r, s, false);
        let (xg, wg, rg) = (
            x.to_device(dev).unwrap(),
            w.to_device(dev).unwrap(),
            r.to_device(dev).unwrap(),
        );
        let cuda = passes(&xg, &wg, &rg, s, false);
        let candle = passes(&xg, &wg, &rg, s, true);
        for (i, pass) in ["forward", "input gradient", "weight gradient"]
            .iter()
            .enumerate()
        {
            assert_eq!(cuda[i].dims(), cpu[i].dims(), "{s} {pass}: shape");
            let e = rel_err(&cuda[i], &cpu[i]);
            assert!(
                e < tol_cpu,
                "{s} {pass}: CUDA vs CPU relative error {e:.2e} ≥ {tol_cpu:.0e}"
            );
            let e = rel_err(&cuda[i], &candle[i]);
            assert!(
                e < tol_candle,
                "{s} {pass}: sslab vs candle on CUDA {e:.2e} ≥ {tol_candle:.0e}"
            );
        }
    }
}

// candle's own cuDNN forward leaves cuDNN's default math (TF32 on Ampere and newer), so the
// comparison with candle is at TF32's tolerance in both modes. TF32 keeps 10 mantissa bits:
// products are off by ~1e-3 relatively, and sums of a few thousand of them stay within 1e-2
// of the largest output.
const STRICT: f32 = 2e-4;
const TF32_TOL: f32 = 1e-2;

#[test]
fn resnet18_convolutions_match_cpu_and_candle() {
    let Some(dev) = gpu(true) else { return };
    let _turn = TF32.lock().unwrap_or_else(|e| e.into_inner());
    set_conv_tf32(false);
    check(&dev, &RESNET18_CIFAR_CONVS, 8, STRICT, TF32_TOL);
    set_conv_tf32(true);
    check(&dev, &RESNET18_CIFAR_CONVS, 8, TF32_TOL, TF32_TOL);
}

#[test]
fn resnet50_convolutions_match_cpu_and_candle() {
    let Some(dev) = gpu(true) else { return };
    let _turn = TF32.lock().unwrap_or_else(|e| e.into_inner());
    set_conv_tf32(false);
    check(&dev, &RESNET50_IMAGENET_CONVS, 2, STRICT, TF32_TOL);
    set_conv_tf32(true);
    check(&dev, &RESNET50_IMAGENET_CONVS, 2, TF32_TOL, TF32_TOL);
}

/// bf16 activations and weights (f32 accumulation) stay within bf16's 8 bits of the f32 result.
#[test]
fn bf16_convolutions_follow_f32() {
    let Some(dev) = gpu(true) else { return };
    let _turn = TF32.lock().unwrap_or_else(|e| e.into_inner());
    set_conv_tf32(false);
    for s in [
        RESNET18_CIFAR_CONVS[0],
        RESNET18_CIFAR_CONVS[2],
        RESNET50_IMAGENET_CONVS[4],
    ] {
        let x = Tensor::randn(0f32, 1.0, (4, s.inp, s.size, s.size), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (s.out, s.inp, s.kernel, s.kernel), &dev).unwrap();
        let y32 = conv2d(&x, &w, s.stride, s.padding()).unwrap();
        let (xb, wb) = (
            x.to_dtype(DType::BF16).unwrap(),
            w.to_dtype(DType::BF16).unwrap(),
        );
        let yb = conv2d(&xb, &wb, s.stride, s.padding()).unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
        let e = rel_err(&yb, &y32);
        assert!(e < 3e-2, "{s} bf16 vs f32: {e:.2e}");
    }
}

/// A second call of a shape reuses the algorithm chosen by the first and gives the same result.
#[test]
fn repeated_calls_agree() {
    let Some(dev) = gpu(true) else { return };
    let s = RESNET18_CIFAR_CONVS[5];
    let x = Tensor::randn(0f32, 1.0, (16, s.inp, s.size, s.size), &dev).unwrap();
    let w = Tensor::randn(0f32, 0.1, (s.out, s.inp, s.kernel, s.kernel), &dev).unwrap();
    let _turn = TF32.lock().unwrap_or_else(|e| e.into_inner());
    let a = conv2d(&x, &w, s.stride, s.padding()).unwrap();
    let cached = cached_conv_algorithms();
    assert!(cached > 0);
    let b = conv2d(&x, &w, s.stride, s.padding()).unwrap();
    assert_eq!(rel_err(&a, &b), 0.0);
    assert_eq!(
        cached_conv_algorithms(),
        cached,
        "the second call searched again"
    );
}

/// A training step of a ResNet-18 under bf16 autocast on CUDA (cuDNN and cuBLAS in bf16) gives
/// the f32 step's loss within bf16 rounding, and every weight its f32 gradient.
#[test]
fn a_bf16_resnet_step_follows_f32() {
    use sslab::kernels::{autocast, Precision};
    use sslab::models::{Depth, Stem};
    let Some(dev) = gpu(true) else { return };
    let (net, store) = super::common::resnet(Depth::R18, Stem::Cifar, 16, 3, &dev);
    let x = Tensor::randn(0f32, 1.0, (32, 3, 32, 32), &dev).unwrap();
    let _turn = TF32.lock().unwrap_or_else(|e| e.into_inner());
    set_conv_tf32(false);
    let step = |p: Precision| {
        let _g = autocast(p);
        let l = net
            .forward_t(&x, true)
            .unwrap()
            .pooled
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = l.backward().unwrap();
        for q in store.trainable() {
            let g = grads
                .get(q.var.as_tensor())
                .expect("every weight gets a gradient");
            assert_eq!(g.dtype(), DType::F32, "{}", q.name);
        }
        l.to_scalar::<f32>().unwrap()
    };
    let (l32, l16) = (step(Precision::F32), step(Precision::Bf16));
    assert!(
        (l16 - l32).abs() / l32.abs() < 3e-2,
        "bf16 loss {l16} vs f32 {l32}"
    );
}

/// Output and both gradients of `Σ conv_channels_last(x, w)·r` (x and r NHWC) on the GPU.
fn passes_nhwc(x: &Tensor, w: &Tensor, r: &Tensor, s: ConvShape) -> [Tensor; 3] {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = conv2d_channels_last(&xv, &wv, s.stride, s.padding()).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let (dx, dw) = (g.get(&xv).unwrap().clone(), g.get(&wv).unwrap().clone());
    [y, dx, dw]
}

/// cuDNN's NHWC convolutions (channels-last) against its NCHW ones, for every ResNet-18 and
/// ResNet-50 shape: the same numbers in strict f32 (up to summation order), the weight gradient
/// in the parameter's own (out, in, k, k) layout.
#[test]
fn channels_last_convolutions_match_nchw() {
    let Some(dev) = gpu(true) else { return };
    let _turn = TF32.lock().unwrap_or_else(|e| e.into_inner());
    set_conv_tf32(false);
    for (shapes, batch) in [
        (&RESNET18_CIFAR_CONVS[..], 8),
        (&RESNET50_IMAGENET_CONVS[..], 2),
    ] {
        for &s in shapes {
            let x = Tensor::randn(0f32, 1.0, (batch, s.inp, s.size, s.size), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.1, (s.out, s.inp, s.kernel, s.kernel), &dev).unwrap();
            let ho = s.out_size();
            let r = Tensor::randn(0f32, 1.0, (batch, s.out, ho, ho), &dev).unwrap();
            let nchw = passes(&x, &w, &r, s, false);
            let to_nhwc = |t: &Tensor| t.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let nhwc = passes_nhwc(&to_nhwc(&x), &w, &to_nhwc(&r), s);
            let back = |t: &Tensor| t.permute((0, 3, 1, 2)).unwrap();
            let got = [back(&nhwc[0]), back(&nhwc[1]), nhwc[2].clone()];
            for (i, pass) in ["forward", "input gradient", "weight gradient"]
                .iter()
                .enumerate()
            {
                assert_eq!(got[i].dims(), nchw[i].dims(), "{s} {pass}: shape");
                let e = rel_err(&got[i], &nchw[i]);
                assert!(e < STRICT, "{s} {pass}: NHWC vs NCHW {e:.2e}");
            }
        }
    }
    set_conv_tf32(true);
}

/// A ResNet-50 training step channels-last on the GPU against the same step in NCHW, in f32
/// and in bf16 (bf16 activations): the same loss and gradients within the precision's rounding.
#[test]
fn a_channels_last_resnet_step_follows_nchw() {
    use sslab::kernels::{autocast, channels_last_here, Precision};
    use sslab::models::{Depth, Stem};
    let Some(dev) = gpu(true) else { return };
    let (net, store) = super::common::resnet(Depth::R50, Stem::Imagenet, 16, 4, &dev);
    let x = Tensor::randn(0f32, 1.0, (8, 3, 64, 64), &dev).unwrap();
    let _turn = TF32.lock().unwrap_or_else(|e| e.into_inner());
    set_conv_tf32(false);
    let step = |p: Precision, cl: bool| {
        let _g = autocast(p);
        let _cl = channels_last_here(cl);
        let out = net.forward_t(&x, true).unwrap();
        let l = out.pooled.sqr().unwrap().mean_all().unwrap();
        let grads = l.backward().unwrap();
        let mut flat = Vec::new();
        for q in store.trainable() {
            let g = grads
                .get(q.var.as_tensor())
                .expect("every weight gets a gradient");
            assert_eq!(g.dtype(), DType::F32, "{}", q.name);
            let g = g.to_device(&Device::Cpu).unwrap();
            flat.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        (l.to_scalar::<f32>().unwrap(), flat)
    };
    for (p, tol, min_cos) in [(Precision::F32, 1e-4, 0.9999), (Precision::Bf16, 3e-2, 0.9)] {
        let (l_nchw, g_nchw) = step(p, false);
        let (l_nhwc, g_nhwc) = step(p, true);
        let cos = super::common::cosine(&g_nhwc, &g_nchw);
        eprintln!("{p:?}: loss NHWC {l_nhwc} NCHW {l_nchw}, gradient cosine {cos:.5}");
        assert!((l_nhwc - l_nchw).abs() <= tol * l_nchw.abs(), "{p:?}: loss");
        assert!(cos > min_cos, "{p:?}: gradient cosine {cos}");
    }
    set_conv_tf32(true);
}
