//! Channels-last ResNets (`cuda.channels_last`, `kernels::set_channels_last`): the NHWC data
//! flow (conversion at the stem, convolutions on NHWC, BatchNorm of the `(n·h·w, c)` rows, the
//! max-pool on the NHWC axes, outputs back in NCHW) computes the NCHW network, values and
//! gradients, in training (plain and split BatchNorm) and evaluation, in f32 and with bf16
//! activations. Run here on the CPU (`channels_last_here`); the cuDNN NHWC convolutions
//! themselves are checked on a GPU (`tests/cuda/conv.rs`).

mod common;

use candle_core::{DType, Device, Tensor};
use sslab::kernels::{
    autocast, bf16_activations_on_cpu, channels_last_here, conv2d, conv2d_channels_last, Precision,
};
use sslab::models::{Depth, ResNet, Stem};
use sslab::train::{Run, RunConfig};

fn input(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(common::splitmix(n, seed), shape, &Device::Cpu).unwrap()
}

/// Pooled features, feature map and every weight's gradient of `Σ pooled·r + Σ map·q`.
fn outputs(
    net: &ResNet,
    store: &sslab::models::ParamStore,
    x: &Tensor,
    train: bool,
) -> Vec<Tensor> {
    let out = net.forward_t(x, train).unwrap();
    let r = input(out.pooled.dims(), 7);
    let q = input(out.feature_map.dims(), 8);
    let loss = ((&out.pooled * r).unwrap().sum_all().unwrap()
        + (&out.feature_map * q).unwrap().sum_all().unwrap())
    .unwrap();
    let mut all = vec![out.pooled.clone(), out.feature_map.clone()];
    if train {
        let g = loss.backward().unwrap();
        all.extend(store.trainable().map(|p| {
            g.get(p.var.as_tensor())
                .expect("every weight has a gradient")
                .clone()
        }));
    }
    all
}

#[test]
fn a_channels_last_resnet_computes_the_nchw_network() {
    let dev = Device::Cpu;
    for (depth, stem, size) in [
        (Depth::R18, Stem::Cifar, 16),
        (Depth::R50, Stem::Imagenet, 32),
    ] {
        let (mut net, store) = common::resnet(depth, stem, 8, 5, &dev);
        let x = input(&[4, 3, size, size], 3);
        for (splits, train) in [(1, true), (2, true), (1, false)] {
            net.set_bn_splits(splits);
            let nchw = outputs(&net, &store, &x, train);
            let nhwc = {
                let _cl = channels_last_here(true);
                outputs(&net, &store, &x, train)
            };
            assert_eq!(nchw.len(), nhwc.len());
            for (i, (a, e)) in nhwc.iter().zip(&nchw).enumerate() {
                assert_eq!(a.dims(), e.dims(), "{depth:?} #{i}: shape");
                // BatchNorm sums its rows in another order: f32 rounding, grown through the
                // network's depth in the gradients.
                let err = common::rel_err(a, e);
                assert!(
                    err < 2e-4,
                    "{depth:?} splits {splits} train {train} #{i}: NHWC vs NCHW {err:.2e}"
                );
            }
        }
    }
}

/// Channels-last and bf16 activations together, the GPU's bf16 setting: the same network
/// within bf16 rounding.
#[test]
fn channels_last_with_bf16_activations_follows_nchw() {
    let (net, _) = common::resnet(Depth::R18, Stem::Cifar, 8, 9, &Device::Cpu);
    let x = input(&[8, 3, 16, 16], 4);
    let pooled = |cl: bool| {
        let _bf16 = autocast(Precision::Bf16);
        let _on = bf16_activations_on_cpu(true);
        let _cl = channels_last_here(cl);
        let out = net.forward_t(&x, true).unwrap();
        assert_eq!(out.pooled.dtype(), DType::F32);
        out.pooled
    };
    let err = common::rel_err(&pooled(true), &pooled(false));
    assert!(err < 2e-2, "bf16 NHWC vs NCHW {err:.2e}");
}

#[test]
fn conv2d_channels_last_is_conv2d_transposed() {
    let x = input(&[2, 9, 7, 5], 1);
    let w = input(&[6, 5, 3, 3], 2);
    for (stride, pad) in [(1, 1), (2, 1), (2, 0)] {
        let y = conv2d_channels_last(&x, &w, stride, pad).unwrap();
        let nchw = conv2d(
            &x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap(),
            &w,
            stride,
            pad,
        )
        .unwrap();
        let back = y.permute((0, 3, 1, 2)).unwrap();
        assert_eq!(back.dims(), nchw.dims());
        assert_eq!(common::max_abs_diff(&back, &nchw), 0.0);
    }
    let e = conv2d_channels_last(&input(&[2, 9, 7], 1), &w, 1, 1).unwrap_err();
    assert!(e.to_string().contains("4-D"), "{e}");
}

/// The setting is a config key, process-wide like `cuda.tf32`, fixed once a run is built.
#[test]
fn channels_last_is_a_run_setting_fixed_for_the_run() {
    let mut cfg = common::shrink(RunConfig::preset("barlow-twins/tiny").unwrap());
    cfg.device = "cpu".into();
    cfg.set("cuda.channels_last", "true").unwrap();
    assert!(cfg.cuda.channels_last);
    let mut run = Run::new(cfg).unwrap();
    assert!(sslab::kernels::channels_last());
    let e = run
        .set("cuda.channels_last", "false")
        .unwrap_err()
        .to_string();
    assert!(e.contains("fixed"), "{e}");
    // Back to the default for the other tests of this process.
    sslab::kernels::set_channels_last(false);
}
