//! Models: the CPU conv and BN kernels against candle's own ops (values and gradients), ResNet
//! shapes, and gradient flow to every trainable tensor.

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use common::{max_abs, max_abs_diff};
use sslab::methods::{
    BarlowTwins, BarlowTwinsConfig, BarlowTwinsSpec, DenseCl, DenseClConfig, DenseClSpec, Method,
    Moco, MocoSpec, MocoV3, MocoV3Config, MocoV3Spec, MocoVersion, MomentumSchedule,
};
use sslab::models::{
    BackboneConfig, BatchNorm, Conv2d, Depth, ParamBuilder, ResNet, ResNetConfig, Stem, VitConfig,
    VitSize,
};

/// A width-4 ResNet-18 (name prefix `r`) registered into `pb`.
fn tiny_resnet18(pb: &mut ParamBuilder, stem: Stem, zero_init_residual: bool) -> ResNet {
    let cfg = ResNetConfig {
        depth: Depth::R18,
        stem,
        width: 4,
        zero_init_residual,
    };
    ResNet::new(pb, "r", &cfg).unwrap()
}

/// Gradients of Σ a ⊙ r and of Σ b ⊙ r for one fixed random r: a non-trivial scalar through
/// two implementations of the same function, to compare what reaches their inputs.
fn grads_through(a: &Tensor, b: &Tensor) -> (GradStore, GradStore) {
    let r = Tensor::randn(0f32, 1.0, a.dims(), a.device()).unwrap();
    let g = |t: &Tensor| (t * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (g(a), g(b))
}

/// Convolution geometries of a ResNet and their edges, as (batch, in, out, size, kernel,
/// stride, pad): 3×3 with and without padding, stride 2 on odd and even sizes, 1×1 shortcuts,
/// the 7×7 stem.
const CONV_GEOMETRIES: [(usize, usize, usize, usize, usize, usize, usize); 6] = [
    (2, 3, 4, 8, 3, 1, 1),
    (3, 4, 6, 9, 3, 2, 1),
    (1, 5, 3, 7, 1, 1, 0),
    (2, 4, 8, 8, 1, 2, 0),
    (2, 3, 8, 16, 7, 2, 3),
    (1, 2, 2, 5, 3, 1, 0),
];

/// `ours` (a convolution of `x` by `w` with the case's stride and padding) against candle's
/// conv2d: values, and the gradients of Σ y ⊙ r for a fixed random r with respect to both.
fn assert_conv_matches_candle(
    case: (usize, usize, usize, usize, usize, usize, usize),
    x: &Var,
    w: &Var,
    ours: Tensor,
) {
    let (.., stride, pad) = case;
    let theirs = x
        .as_tensor()
        .conv2d(w.as_tensor(), pad, stride, 1, 1)
        .unwrap();
    assert_eq!(ours.dims(), theirs.dims(), "{case:?}");
    let tol = 1e-4 * (1.0 + max_abs(&theirs));
    assert!(max_abs_diff(&ours, &theirs) < tol, "forward {case:?}");
    let (g1, g2) = grads_through(&ours, &theirs);
    for t in [x.as_tensor(), w.as_tensor()] {
        let (a, b) = (g1.get(t).unwrap(), g2.get(t).unwrap());
        let tol = 1e-4 * (1.0 + max_abs(b));
        assert!(
            max_abs_diff(a, b) < tol,
            "gradient {case:?}: {}",
            max_abs_diff(a, b)
        );
    }
}

#[test]
fn conv_kernel_matches_candle_values_and_gradients() {
    let dev = Device::Cpu;
    let cases = CONV_GEOMETRIES.into_iter().chain([
        (4, 8, 8, 4, 3, 1, 1),
        // The Winograd path (3×3, stride 1, padding 1, ≥ 16 input channels): sizes that are and
        // are not multiples of its 4×4 output tile, a 1×1 image, groups of one image and more.
        (2, 16, 8, 8, 3, 1, 1),
        (3, 32, 16, 7, 3, 1, 1),
        (1, 16, 24, 5, 3, 1, 1),
        (5, 64, 32, 4, 3, 1, 1),
        (2, 16, 16, 1, 3, 1, 1),
        (9, 24, 20, 13, 3, 1, 1),
        // Its stride-2 tile (2×2 outputs from a 5×5 patch): even and odd sides, a partial last
        // tile, a 1×1 image, one image and groups of several.
        (2, 16, 32, 8, 3, 2, 1),
        (3, 32, 16, 7, 3, 2, 1),
        (1, 16, 24, 5, 3, 2, 1),
        (9, 24, 16, 13, 3, 2, 1),
        (40, 16, 16, 4, 3, 2, 1),
        (2, 16, 16, 1, 3, 2, 1),
        // Its weight gradient, taken from 16×16 outputs on: groups of two images and one, and
        // an odd side with a partial last tile.
        (3, 16, 16, 32, 3, 2, 1),
        (1, 16, 24, 33, 3, 2, 1),
        // The im2col path's image groups (several images per GEMM when an image has few
        // output pixels): uneven last groups, pointwise and strided 1×1, a 1×1 output.
        (7, 8, 12, 6, 3, 2, 1),
        (5, 8, 6, 3, 1, 1, 0),
        (6, 4, 8, 6, 1, 2, 0),
        (5, 3, 4, 2, 3, 2, 1),
        // The narrow weight-gradient product (≤ 32 taps per output channel, as the stem's 27):
        // a last block of 2 of its 4 rows, and pixel counts that leave a tail past 8 lanes.
        (2, 3, 10, 9, 3, 1, 1),
        (3, 2, 7, 5, 3, 2, 1),
    ]);
    for case in cases {
        let (n, c, o, s, k, stride, pad) = case;
        let mut pb = ParamBuilder::new(1, &dev);
        let conv = Conv2d::new(&mut pb, "c", c, o, k, stride, pad).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, s, s), &dev).unwrap()).unwrap();
        let ours = conv.forward(x.as_tensor()).unwrap();
        assert_conv_matches_candle(case, &x, &conv.weight, ours);
    }
}

/// An empty batch convolves to an empty output, with an empty input gradient and a zero
/// kernel gradient, on every CPU path (Winograd at stride 1 and 2, im2col, 1×1), instead of
/// panicking where the kernels split the batch into groups of images.
#[test]
fn an_empty_batch_convolves_to_nothing() {
    let dev = Device::Cpu;
    for (c, side, k, stride) in [(64, 8, 3, 1), (64, 8, 3, 2), (3, 8, 3, 1), (64, 8, 1, 1)] {
        let x = Var::from_tensor(&Tensor::zeros((0, c, side, side), DType::F32, &dev).unwrap())
            .unwrap();
        let w = Var::from_tensor(&Tensor::ones((16, c, k, k), DType::F32, &dev).unwrap()).unwrap();
        let y = sslab::kernels::conv2d(x.as_tensor(), w.as_tensor(), stride, k / 2).unwrap();
        let out = (side + 2 * (k / 2) - k) / stride + 1;
        assert_eq!(y.dims(), &[0, 16, out, out], "c {c} k {k} s {stride}");
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(x.as_tensor()).unwrap().dims(), &[0, c, side, side]);
        let dw = g.get(w.as_tensor()).unwrap();
        assert_eq!(max_abs(dw), 0.0, "c {c} k {k} s {stride}");
    }
}

/// A convolution of an input that needs no gradient (the images fed to a network's stem)
/// computes the kernel's gradient alone, the same as when the input is tracked.
#[test]
fn conv_of_an_untracked_input_gives_the_kernel_gradient_only() {
    let dev = Device::Cpu;
    let mut pb = ParamBuilder::new(1, &dev);
    let conv = Conv2d::new(&mut pb, "c", 3, 16, 3, 1, 1).unwrap();
    let images = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &dev).unwrap();
    let tracked = Var::from_tensor(&images).unwrap();
    let (plain, traced) = grads_through(
        &conv.forward(&images).unwrap(),
        &conv.forward(tracked.as_tensor()).unwrap(),
    );
    assert!(plain.get(&images).is_none());
    assert!(traced.get(tracked.as_tensor()).is_some());
    let w = conv.weight.as_tensor();
    let (a, b) = (plain.get(w).unwrap(), traced.get(w).unwrap());
    assert_eq!(max_abs_diff(a, b), 0.0);
}

/// The off-CPU convolution (explicit im2col + matrix product) against candle's conv2d: values
/// and both gradients, on every geometry a ResNet uses (7×7 stem, stride 2, 1×1 shortcuts).
#[test]
fn unfolded_conv_matches_candle_values_and_gradients() {
    let dev = Device::Cpu;
    let cases = CONV_GEOMETRIES
        .into_iter()
        .chain([(2, 4, 6, 8, 3, 2, 1), (2, 3, 5, 15, 7, 2, 3)]);
    for case in cases {
        let (n, c, o, s, k, stride, pad) = case;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, s, s), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (o, c, k, k), &dev).unwrap()).unwrap();
        let ours =
            sslab::models::conv2d_unfolded(x.as_tensor(), w.as_tensor(), stride, pad).unwrap();
        assert_conv_matches_candle(case, &x, &w, ours);
    }
    // A kernel that does not fit is an error, not a panic.
    let x = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &dev).unwrap();
    let w = Tensor::zeros((4, 3, 5, 5), candle_core::DType::F32, &dev).unwrap();
    assert!(sslab::models::conv2d_unfolded(&x, &w, 1, 0).is_err());
}

/// Split BatchNorm (the CPU kernel reading each group of the batch in place) against each group
/// normalised on its own by candle's tensor ops (`forward_t_generic` of a fresh BN per group),
/// the groups put back together: values, the gradients of x, γ and β, and the running
/// statistics (the average of the groups' with momentum 1); with and without the affine part
/// and the ReLU.
#[test]
fn split_batchnorm_normalises_each_group_with_its_own_statistics() {
    let dev = Device::Cpu;
    for (groups, affine, relu) in [(2, true, false), (4, true, true), (3, false, false)] {
        let (n, c) = (12usize, 5usize);
        let mut pb = ParamBuilder::new(7, &dev);
        let mut bn = BatchNorm::new(&mut pb, "bn", c, affine, 1.0).unwrap();
        bn.momentum = 1.0;
        if affine {
            let gamma = Tensor::new(&[0.5f32, 1.2, -0.7, 1.5, 0.3], &dev).unwrap();
            let beta = Tensor::new(&[0.2f32, -0.3, 0.1, 0.0, -0.5], &dev).unwrap();
            bn.weight.as_ref().unwrap().set(&gamma).unwrap();
            bn.bias.as_ref().unwrap().set(&beta).unwrap();
        }
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (n, c, 3, 4), &dev).unwrap()).unwrap();
        let got = if relu {
            bn.forward_split_relu(x.as_tensor(), true, groups).unwrap()
        } else {
            bn.forward_split(x.as_tensor(), true, groups).unwrap()
        };
        let (got_mean, got_var) = (
            bn.running_mean.as_tensor().clone(),
            bn.running_var.as_tensor().clone(),
        );
        // The reference: one BN per group, with this BN's γ and β, through candle's ops.
        let per = n / groups;
        let mut outs = Vec::new();
        let (mut means, mut vars) = (Vec::new(), Vec::new());
        for g in 0..groups {
            let xg = x.as_tensor().narrow(0, g * per, per).unwrap();
            let mut pb = ParamBuilder::new(7, &dev);
            let mut one = BatchNorm::new(&mut pb, "bn", c, false, 1.0).unwrap();
            one.momentum = 1.0;
            let mut y = one.forward_t_generic(&xg, true).unwrap();
            if affine {
                let cs = (1, c, 1, 1);
                let w = bn.weight.as_ref().unwrap().as_tensor().reshape(cs).unwrap();
                let b = bn.bias.as_ref().unwrap().as_tensor().reshape(cs).unwrap();
                y = y.broadcast_mul(&w).unwrap().broadcast_add(&b).unwrap();
            }
            outs.push(if relu { y.relu().unwrap() } else { y });
            means.push(one.running_mean.as_tensor().clone());
            vars.push(one.running_var.as_tensor().clone());
        }
        let want = Tensor::cat(&outs, 0).unwrap();
        let avg = |v: &[Tensor]| Tensor::stack(v, 0).unwrap().mean(0).unwrap();
        let case = format!("groups {groups} affine {affine} relu {relu}");
        assert!(max_abs_diff(&got, &want) < 1e-5, "{case}: values");
        assert!(
            max_abs_diff(&got_mean, &avg(&means)) < 1e-5,
            "{case}: running mean"
        );
        assert!(
            max_abs_diff(&got_var, &avg(&vars)) < 1e-4,
            "{case}: running var"
        );
        let (g1, g2) = grads_through(&got, &want);
        let mut params = vec![x.as_tensor()];
        if affine {
            params.push(bn.weight.as_ref().unwrap().as_tensor());
            params.push(bn.bias.as_ref().unwrap().as_tensor());
        }
        for t in params {
            let (a, b) = (g1.get(t).unwrap(), g2.get(t).unwrap());
            assert!(
                max_abs_diff(a, b) < 1e-4,
                "{case}: gradient off by {}",
                max_abs_diff(a, b)
            );
        }
    }
}

/// BN with the ReLU inside its kernel against BN then candle's ReLU (plain and split BN), and the
/// residual add-ReLU kernel against candle's add and ReLU: values and every gradient.
#[test]
fn fused_relu_kernels_match_separate_ops() {
    let dev = Device::Cpu;
    for groups in [1usize, 2] {
        let mut pb = ParamBuilder::new(5, &dev);
        let bn = BatchNorm::new(&mut pb, "bn", 6, true, 1.0).unwrap();
        // Fixed affine parameters (one negative γ) so that about half the outputs are clipped
        // whatever the random input: random ones left the ReLU idle in 1 run out of 10.
        let affine = [
            [0.5f32, 1.0, -0.7, 1.5, 0.3, 0.8],
            [0.2, -0.3, 0.1, 0.0, -0.5, 0.4],
        ];
        for (p, v) in [&bn.weight, &bn.bias].into_iter().zip(affine) {
            p.as_ref()
                .unwrap()
                .set(&Tensor::new(&v, &dev).unwrap())
                .unwrap();
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 6, 3, 5), &dev).unwrap()).unwrap();
        let fused = bn.forward_split_relu(x.as_tensor(), true, groups).unwrap();
        let separate = bn
            .forward_split(x.as_tensor(), true, groups)
            .unwrap()
            .relu()
            .unwrap();
        assert!(max_abs_diff(&fused, &separate) < 1e-5, "groups {groups}");
        let zeros = fused
            .eq(0f32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        assert!(
            max_abs(&zeros.mean_all().unwrap()) > 0.1,
            "the ReLU must bite"
        );
        let (g1, g2) = grads_through(&fused, &separate);
        for t in [
            x.as_tensor(),
            bn.weight.as_ref().unwrap().as_tensor(),
            bn.bias.as_ref().unwrap().as_tensor(),
        ] {
            let (a, b) = (g1.get(t).unwrap(), g2.get(t).unwrap());
            assert!(
                max_abs_diff(a, b) < 1e-4,
                "groups {groups}: {}",
                max_abs_diff(a, b)
            );
        }
    }
    let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 5, 5), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 5, 5), &dev).unwrap()).unwrap();
    let ours = sslab::kernels::add_relu(a.as_tensor(), b.as_tensor()).unwrap();
    let theirs = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
    assert!(max_abs_diff(&ours, &theirs) < 1e-6);
    let (g1, g2) = grads_through(&ours, &theirs);
    for t in [a.as_tensor(), b.as_tensor()] {
        assert!(max_abs_diff(g1.get(t).unwrap(), g2.get(t).unwrap()) < 1e-6);
    }
}

#[test]
fn fused_batchnorm_matches_generic_values_gradients_and_running_stats() {
    let dev = Device::Cpu;
    for shape in [vec![8usize, 3, 5, 5], vec![16, 6], vec![2, 4, 3, 7]] {
        let c = shape[1];
        let build = || {
            let mut pb = ParamBuilder::new(3, &dev);
            let bn = BatchNorm::new(&mut pb, "bn", c, true, 1.0).unwrap();
            bn.weight
                .as_ref()
                .unwrap()
                .set(&Tensor::randn(1f32, 0.3, c, &dev).unwrap())
                .unwrap();
            bn.bias
                .as_ref()
                .unwrap()
                .set(&Tensor::randn(0f32, 0.3, c, &dev).unwrap())
                .unwrap();
            bn
        };
        let (fused, generic) = (build(), build());
        generic
            .weight
            .as_ref()
            .unwrap()
            .set(fused.weight.as_ref().unwrap().as_tensor())
            .unwrap();
        generic
            .bias
            .as_ref()
            .unwrap()
            .set(fused.bias.as_ref().unwrap().as_tensor())
            .unwrap();
        let xt = (Tensor::randn(0f32, 2.0, shape.as_slice(), &dev).unwrap() + 1.5).unwrap();
        let x = Var::from_tensor(&xt).unwrap();
        let y1 = fused.forward_t(x.as_tensor(), true).unwrap();
        let y2 = generic.forward_t_generic(x.as_tensor(), true).unwrap();
        assert!(max_abs_diff(&y1, &y2) < 1e-4, "{shape:?}");
        let (g1, g2) = grads_through(&y1, &y2);
        assert!(
            max_abs_diff(
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap()
            ) < 1e-4
        );
        for (a, b) in [
            (&fused.weight, &generic.weight),
            (&fused.bias, &generic.bias),
        ] {
            let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
            assert!(
                max_abs_diff(
                    g1.get(a.as_tensor()).unwrap(),
                    g2.get(b.as_tensor()).unwrap()
                ) < 1e-3
            );
        }
        assert!(
            max_abs_diff(
                fused.running_mean.as_tensor(),
                generic.running_mean.as_tensor()
            ) < 1e-5
        );
        assert!(
            max_abs_diff(
                fused.running_var.as_tensor(),
                generic.running_var.as_tensor()
            ) < 1e-4
        );
        // PyTorch convention: running_mean = 0.1·batch mean; running_var = 0.9 + 0.1·unbiased var.
        let rm = fused.running_mean.as_tensor().to_vec1::<f32>().unwrap();
        let dims: Vec<usize> = (0..shape.len()).filter(|&d| d != 1).collect();
        let bm = xt
            .mean_keepdim(dims.as_slice())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in rm.iter().zip(&bm) {
            assert!((a - 0.1 * b).abs() < 1e-5);
        }
    }
}

#[test]
fn batchnorm_eval_uses_running_statistics() {
    let dev = Device::Cpu;
    let mut pb = ParamBuilder::new(0, &dev);
    let bn = BatchNorm::new(&mut pb, "bn", 2, false, 1.0).unwrap();
    bn.running_mean
        .set(&Tensor::new(&[1f32, -1.0], &dev).unwrap())
        .unwrap();
    bn.running_var
        .set(&Tensor::new(&[4f32, 0.25], &dev).unwrap())
        .unwrap();
    let x = Tensor::new(&[[3f32, 0.0]], &dev).unwrap();
    let y = bn.forward_t(&x, false).unwrap().to_vec2::<f32>().unwrap();
    assert!(
        (y[0][0] - 1.0).abs() < 1e-4 && (y[0][1] - 2.0).abs() < 1e-3,
        "{y:?}"
    );
}

#[test]
fn resnet_shapes_for_each_depth_and_stem() {
    let dev = Device::Cpu;
    for (depth, stem, size, out, grid) in [
        (Depth::R18, Stem::Cifar, 32, 64, 4),
        (Depth::R34, Stem::Cifar, 16, 64, 2),
        (Depth::R50, Stem::Imagenet, 64, 256, 2),
    ] {
        let mut pb = ParamBuilder::new(0, &dev);
        let net = ResNet::new(
            &mut pb,
            "r",
            &ResNetConfig {
                depth,
                stem,
                width: 8,
                zero_init_residual: true,
            },
        )
        .unwrap();
        assert_eq!(net.out_dim(), out);
        let x = Tensor::randn(0f32, 1.0, (2, 3, size, size), &dev).unwrap();
        let o = net.forward_t(&x, true).unwrap();
        assert_eq!(o.pooled.dims(), &[2, out]);
        assert_eq!(o.feature_map.dims(), &[2, out, grid, grid]);
        let names: Vec<&str> = pb.store.params.iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"r.layer1.0.conv1.weight"));
        assert!(names.contains(&"r.layer4.0.downsample.1.running_var"));
    }
    let mut pb = ParamBuilder::new(0, &dev);
    let net = tiny_resnet18(&mut pb, Stem::Cifar, true);
    assert!(net
        .forward_t(
            &Tensor::zeros((2, 1, 8, 8), candle_core::DType::F32, &dev).unwrap(),
            true
        )
        .is_err());
}

#[test]
fn zero_init_residual_zeroes_the_last_bn_of_each_block() {
    let dev = Device::Cpu;
    let mut pb = ParamBuilder::new(0, &dev);
    ResNet::new(
        &mut pb,
        "r",
        &ResNetConfig {
            depth: Depth::R50,
            stem: Stem::Imagenet,
            width: 4,
            zero_init_residual: true,
        },
    )
    .unwrap();
    let s = pb.finish();
    let g = |n: &str| {
        s.get(n)
            .unwrap()
            .var
            .as_tensor()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(g("r.layer2.1.bn3.weight"), 0.0);
    assert!(g("r.layer2.1.bn2.weight") > 0.0);
}

/// Every trainable tensor gets a non-zero gradient from one training forward; buffers and the
/// momentum encoder get none (they are updated by the forward pass and the EMA only).
fn assert_gradients_reach_every_trainable_tensor(m: &mut dyn Method) {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (8, 3, 16, 16), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (8, 3, 16, 16), &dev).unwrap();
    let out = m.forward_train(&a, &b).unwrap();
    let grads = out.loss.backward().unwrap();
    let mut missing = Vec::new();
    for p in m.params().trainable() {
        match grads.get(p.var.as_tensor()) {
            Some(g) if max_abs(g) > 0.0 => {}
            _ => missing.push(p.name.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "{}: no gradient for {missing:?}",
        m.name()
    );
    let frozen = m.params().params.iter().filter(|p| !p.kind.trainable());
    let momentum = m
        .momentum_params()
        .into_iter()
        .flat_map(|s| s.params.iter());
    for p in frozen.chain(momentum) {
        assert!(
            grads
                .get(p.var.as_tensor())
                .is_none_or(|g| max_abs(g) == 0.0),
            "{}: {} got a gradient",
            m.name(),
            p.name
        );
    }
}

#[test]
fn every_trainable_tensor_of_every_method_gets_a_gradient() {
    let dev = Device::Cpu;
    // zero_init_residual would zero the gradient of the residual branches' inner layers at
    // init; the check is about graph connectivity, so start from γ = 1.
    let backbone = ResNetConfig {
        depth: Depth::R18,
        stem: Stem::Cifar,
        width: 4,
        zero_init_residual: false,
    };
    let spec = BarlowTwinsSpec {
        backbone,
        config: BarlowTwinsConfig {
            projector: vec![16, 16, 16],
            lambda: 0.0051,
            scale_loss: 1.0,
        },
    };
    assert_gradients_reach_every_trainable_tensor(&mut BarlowTwins::new(&spec, 0, &dev).unwrap());
    for version in [MocoVersion::V1, MocoVersion::V2] {
        let mut spec = MocoSpec::paper(version, backbone);
        spec.config.queue_size = 64;
        spec.config.bn_splits = 2;
        assert_gradients_reach_every_trainable_tensor(&mut Moco::new(&spec, 0, &dev).unwrap());
    }
    let mut moco = MocoSpec::paper(MocoVersion::V2, backbone);
    moco.config.queue_size = 64;
    moco.config.bn_splits = 2;
    let spec = DenseClSpec {
        moco,
        config: DenseClConfig {
            lambda: 0.5,
            lambda_warmup_steps: 0,
        },
    };
    assert_gradients_reach_every_trainable_tensor(&mut DenseCl::new(&spec, 0, &dev).unwrap());
    for (backbone, frozen) in [
        (BackboneConfig::ResNet(backbone), false),
        (
            BackboneConfig::Vit(VitConfig::sized(VitSize::Tiny, 2, 4, 16)),
            false,
        ),
        (
            BackboneConfig::Vit(VitConfig::sized(VitSize::Tiny, 2, 4, 16)),
            true,
        ),
    ] {
        let backbone = match backbone {
            BackboneConfig::Vit(mut v) => {
                v.frozen_patch_projection = frozen;
                BackboneConfig::Vit(v)
            }
            other => other,
        };
        let spec = MocoV3Spec {
            backbone,
            config: MocoV3Config {
                hidden: 16,
                dim: 8,
                tau: 0.2,
                momentum: 0.99,
                momentum_schedule: MomentumSchedule::Cosine,
            },
        };
        assert_gradients_reach_every_trainable_tensor(&mut MocoV3::new(&spec, 0, &dev).unwrap());
    }
}

#[test]
fn same_seed_same_weights() {
    let dev = Device::Cpu;
    let cfg = ResNetConfig {
        depth: Depth::R18,
        stem: Stem::Cifar,
        width: 4,
        zero_init_residual: true,
    };
    let mut a = ParamBuilder::new(7, &dev);
    let mut b = ParamBuilder::new(7, &dev);
    ResNet::new(&mut a, "r", &cfg).unwrap();
    ResNet::new(&mut b, "r", &cfg).unwrap();
    for (x, y) in a.store.params.iter().zip(&b.store.params) {
        assert_eq!(
            max_abs_diff(x.var.as_tensor(), y.var.as_tensor()),
            0.0,
            "{}",
            x.name
        );
    }
}

#[test]
fn imagenet_stem_max_pool_matches_candle_and_has_a_gradient() {
    use sslab::models::max_pool_3x3_s2_p1;
    let dev = Device::Cpu;
    for size in [8usize, 7, 32, 5] {
        let x =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, size, size), &dev).unwrap()).unwrap();
        let ours = max_pool_3x3_s2_p1(x.as_tensor()).unwrap();
        // Reference: −∞-style padding by a very negative constant, then candle's forward pool.
        let padded = x
            .as_tensor()
            .pad_with_zeros(2, 1, 1)
            .unwrap()
            .pad_with_zeros(3, 1, 1)
            .unwrap();
        let mask = Tensor::ones((2, 3, size, size), candle_core::DType::F32, &dev)
            .unwrap()
            .pad_with_zeros(2, 1, 1)
            .unwrap()
            .pad_with_zeros(3, 1, 1)
            .unwrap();
        let padded = (padded + ((mask - 1.0).unwrap() * 1e9).unwrap()).unwrap();
        let theirs = padded.max_pool2d_with_stride(3, 2).unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "size {size}");
        assert!(max_abs_diff(&ours, &theirs) < 1e-6, "size {size}");
        let g = ours.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        // Each output routes its gradient to one input: the gradient sums to the output count.
        let total = gx.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(total as usize, ours.elem_count());
    }
    // And a whole ImageNet-stem network trains (candle's own pool has no backward here).
    let mut pb = ParamBuilder::new(0, &dev);
    let net = tiny_resnet18(&mut pb, Stem::Imagenet, false);
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
    let g = net
        .forward_t(&x, true)
        .unwrap()
        .pooled
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g
        .get(pb.store.get("r.conv1.weight").unwrap().var.as_tensor())
        .is_some());
}

#[test]
fn split_batchnorm_normalises_each_group_alone_and_averages_running_stats() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0.5f32, 2.0, (8, 3, 4, 4), &dev).unwrap();
    let mut pb = ParamBuilder::new(0, &dev);
    let split = BatchNorm::new(&mut pb, "split", 3, true, 1.0).unwrap();
    let y = split.forward_split(&x, true, 4).unwrap();
    let (mut means, mut vars) = (Vec::new(), Vec::new());
    for g in 0..4 {
        let mut pb = ParamBuilder::new(0, &dev);
        let alone = BatchNorm::new(&mut pb, "alone", 3, true, 1.0).unwrap();
        let xg = x.narrow(0, 2 * g, 2).unwrap();
        let yg = alone.forward_t_generic(&xg, true).unwrap();
        assert!(max_abs_diff(&yg, &y.narrow(0, 2 * g, 2).unwrap()) < 1e-5);
        means.push(alone.running_mean.as_tensor().clone());
        vars.push(alone.running_var.as_tensor().clone());
    }
    // Each single-group BN moved its running stats from (0, 1) by momentum 0.1; the split BN
    // moves by the average of the groups' moves.
    let avg = |ts: &[Tensor]| Tensor::stack(ts, 0).unwrap().mean(0).unwrap();
    assert!(max_abs_diff(&avg(&means), split.running_mean.as_tensor()) < 1e-6);
    assert!(max_abs_diff(&avg(&vars), split.running_var.as_tensor()) < 1e-6);
    // One group, or evaluation mode, is plain BN.
    let mut pb = ParamBuilder::new(0, &dev);
    let plain = BatchNorm::new(&mut pb, "plain", 3, true, 1.0).unwrap();
    let one = plain.forward_split(&x, true, 1).unwrap();
    let mut pb = ParamBuilder::new(0, &dev);
    let reference = BatchNorm::new(&mut pb, "ref", 3, true, 1.0).unwrap();
    assert!(max_abs_diff(&one, &reference.forward_t_generic(&x, true).unwrap()) < 1e-5);
    assert!(split
        .forward_split(&x.narrow(0, 0, 6).unwrap(), true, 4)
        .is_err());
}

#[test]
fn fused_layernorm_and_softmax_match_tensor_ops_in_values_and_gradients() {
    use sslab::kernels::{normalize_rows, softmax_last};
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0.3f32, 2.0, (3, 5, 7), &dev).unwrap()).unwrap();
    let w = Tensor::randn(0f32, 1.0, (3, 5, 7), &dev).unwrap();
    for f in [
        |x: &Tensor, fused| normalize_rows(x, 1e-6, fused).unwrap(),
        |x: &Tensor, fused| softmax_last(x, 1.0, fused).unwrap(),
        |x: &Tensor, fused| softmax_last(x, 0.37, fused).unwrap(),
    ] {
        let (yf, yg) = (f(x.as_tensor(), true), f(x.as_tensor(), false));
        assert!(max_abs_diff(&yf, &yg) < 1e-5);
        // A weighted sum makes every output's gradient distinct.
        let grad = |y: Tensor| {
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        assert!(max_abs_diff(&grad(yf), &grad(yg)) < 1e-4);
    }
}

#[test]
fn fused_scale_shift_matches_broadcast_ops_in_values_and_all_three_gradients() {
    use sslab::kernels::scale_shift_rows;
    let dev = Device::Cpu;
    // 200 rows: several row blocks, so the parallel column sums are exercised.
    let var = |shape: &[usize]| {
        Var::from_tensor(&Tensor::randn(0.2f32, 1.5, shape, &dev).unwrap()).unwrap()
    };
    let (x, w, b) = (var(&[4, 50, 7]), var(&[7]), var(&[7]));
    let y = |fused| scale_shift_rows(x.as_tensor(), w.as_tensor(), b.as_tensor(), fused).unwrap();
    let (yf, yg) = (y(true), y(false));
    assert!(max_abs_diff(&yf, &yg) < 1e-6);
    let (gf, gg) = grads_through(&yf, &yg);
    for t in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
        let d = max_abs_diff(gf.get(t).unwrap(), gg.get(t).unwrap());
        assert!(d < 1e-4, "gradient differs by {d}");
    }
    // A scale and shift that do not fit the rows are an error, not a panic.
    let bad = Tensor::ones(5, candle_core::DType::F32, &dev).unwrap();
    assert!(scale_shift_rows(x.as_tensor(), &bad, &bad, true).is_err());
}

/// LayerNorm as one op on the CPU (`kernels::layer_norm`) against the same LayerNorm written
/// as candle's tensor ops: values within f32 rounding of an f64 LayerNorm, and the gradients
/// of the input, the scale and the shift. Rows of 7 (narrower than the kernel's lanes) and of
/// 37 (two lanes and a tail), enough rows for several parallel blocks, rows with a mean far
/// from their spread.
#[test]
fn layer_norm_in_one_op_matches_tensor_ops_in_values_and_all_three_gradients() {
    use sslab::kernels::layer_norm;
    let dev = Device::Cpu;
    let var = |shape: &[usize], mean: f32| {
        Var::from_tensor(&Tensor::randn(mean, 1.5, shape, &dev).unwrap()).unwrap()
    };
    for (shape, mean) in [
        (vec![4, 50, 7], 0.2f32),
        (vec![700, 37], 30.0),
        (vec![2, 37], -1.0),
    ] {
        let d = shape[shape.len() - 1];
        let (x, w, b) = (var(&shape, mean), var(&[d], 1.0), var(&[d], 0.0));
        let eps = 1e-6;
        let fused = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), eps).unwrap();
        // The reference: candle's tensor ops (with autograd's own backward), in f32 for the
        // gradients and in f64 for the values.
        let by_ops = |x: &Tensor, w: &Tensor, b: &Tensor| {
            let mean = x.mean_keepdim(candle_core::D::Minus1).unwrap();
            let xc = x.broadcast_sub(&mean).unwrap();
            let var = xc
                .sqr()
                .unwrap()
                .mean_keepdim(candle_core::D::Minus1)
                .unwrap();
            let xhat = xc
                .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
                .unwrap();
            xhat.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
        };
        let reference = by_ops(x.as_tensor(), w.as_tensor(), b.as_tensor());
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let want = by_ops(
            &f64s(x.as_tensor()),
            &f64s(w.as_tensor()),
            &f64s(b.as_tensor()),
        );
        let e = max_abs_diff(&fused, &want.to_dtype(DType::F32).unwrap());
        assert!(e < 2e-5, "{shape:?}: LayerNorm off f64 by {e}");
        let (gf, gr) = grads_through(&fused, &reference);
        for (name, t) in [
            ("x", x.as_tensor()),
            ("w", w.as_tensor()),
            ("b", b.as_tensor()),
        ] {
            let (f, r) = (gf.get(t).unwrap(), gr.get(t).unwrap());
            let scale = max_abs(r).max(1.0);
            let diff = max_abs_diff(f, r) / scale;
            assert!(
                diff < 1e-4,
                "{shape:?}: d{name} differs by {diff} (relative)"
            );
        }
    }
    // A strided scale (a column of a matrix) is read as its values.
    let x = Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap();
    let cols = Tensor::randn(0f32, 1.0, (5, 2), &dev).unwrap();
    let strided = cols.narrow(1, 1, 1).unwrap().squeeze(1).unwrap();
    let shift = Tensor::zeros(5, DType::F32, &dev).unwrap();
    let got = layer_norm(&x, &strided, &shift, 1e-6).unwrap();
    let want = layer_norm(&x, &strided.contiguous().unwrap(), &shift, 1e-6).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
    // A scale or shift that does not fit the rows is an error, not a panic.
    let (ok, bad) = (
        Tensor::ones(5, DType::F32, &dev).unwrap(),
        Tensor::ones(4, DType::F32, &dev).unwrap(),
    );
    assert!(layer_norm(&x, &bad, &ok, 1e-6).is_err());
    assert!(layer_norm(&x, &ok, &bad, 1e-6).is_err());
}

/// `kernels::linear` (the linear layers' product, one op reading the weight transposed in
/// place) against `x · wᵀ` in f64: values, and the gradients of x and w for a weighted sum of
/// the output (`dx = g·w`, `dw = gᵀ·x`), with few rows (one thread's product) and with enough
/// rows that the threads split them. The weight gradient must come back contiguous: that is
/// what the op is for.
#[test]
fn linear_matches_the_product_with_the_transposed_weight_in_values_and_gradients() {
    use sslab::kernels::linear;
    let dev = Device::Cpu;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (rows, inp, out) in [(5, 7, 3), (100, 33, 20), (257, 64, 48)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, inp), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (rows, out), &dev).unwrap();
        let (y, grads) = pool.install(|| {
            let y = linear(x.as_tensor(), w.as_tensor()).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads)
        });
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (x64, w64, g64) = (f64s(x.as_tensor()), f64s(w.as_tensor()), f64s(&g));
        let want_y = x64.matmul(&w64.t().unwrap()).unwrap();
        let want_dx = g64.matmul(&w64).unwrap();
        let want_dw = g64.t().unwrap().matmul(&x64).unwrap();
        let dw = grads.get(w.as_tensor()).unwrap();
        assert!(
            dw.is_contiguous(),
            "{rows}x{inp}x{out}: weight gradient is a view"
        );
        for (what, got, want) in [
            ("y", &y, &want_y),
            ("dx", grads.get(x.as_tensor()).unwrap(), &want_dx),
            ("dw", dw, &want_dw),
        ] {
            let err = max_abs_diff(
                &f64s(got).to_dtype(DType::F32).unwrap(),
                &want.to_dtype(DType::F32).unwrap(),
            );
            assert!(err < 1e-4, "{rows}x{inp}x{out} {what}: off by {err}");
        }
    }
}

#[test]
fn batched_matmul_matches_candle_in_values_and_gradients_for_every_transpose() {
    use sslab::kernels::batched_matmul;
    let dev = Device::Cpu;
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (batch, m, k, n) = (6, 5, 4, 3);
        let a_shape = if ta { (batch, k, m) } else { (batch, m, k) };
        let b_shape = if tb { (batch, n, k) } else { (batch, k, n) };
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, a_shape, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, b_shape, &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (batch, m, n), &dev).unwrap();
        let run = |fused| {
            let c = batched_matmul(a.as_tensor(), b.as_tensor(), ta, tb, fused).unwrap();
            let g = (&c * &w).unwrap().sum_all().unwrap().backward().unwrap();
            (
                c,
                g.get(a.as_tensor()).unwrap().clone(),
                g.get(b.as_tensor()).unwrap().clone(),
            )
        };
        let (cf, daf, dbf) = run(true);
        let (cg, dag, dbg) = run(false);
        assert_eq!(cf.dims(), [batch, m, n]);
        assert!(max_abs_diff(&cf, &cg) < 1e-5, "{ta} {tb}");
        assert!(max_abs_diff(&daf, &dag) < 1e-5, "{ta} {tb}");
        assert!(max_abs_diff(&dbf, &dbg) < 1e-5, "{ta} {tb}");
    }
    // Shapes that do not fit are errors.
    let a = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &dev).unwrap();
    assert!(batched_matmul(&a, &a, false, false, true).is_err());
    assert!(batched_matmul(&a, &a, false, true, true).is_ok());
}

#[test]
fn fused_non_affine_batchnorm_matches_generic_gradients() {
    let dev = Device::Cpu;
    for shape in [vec![8usize, 3, 5, 5], vec![16, 6]] {
        let mut pb = ParamBuilder::new(3, &dev);
        let bn = BatchNorm::new(&mut pb, "bn", shape[1], false, 1.0).unwrap();
        let xt = (Tensor::randn(0f32, 2.0, shape.as_slice(), &dev).unwrap() - 0.7).unwrap();
        let x = Var::from_tensor(&xt).unwrap();
        let y1 = bn.forward_t(x.as_tensor(), true).unwrap();
        let y2 = bn.forward_t_generic(x.as_tensor(), true).unwrap();
        assert!(max_abs_diff(&y1, &y2) < 1e-4, "{shape:?}");
        let (g1, g2) = grads_through(&y1, &y2);
        let d = max_abs_diff(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-4, "{shape:?}: {d}");
    }
}

#[test]
fn split_batchnorm_gradients_match_a_per_group_reference() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (8, 3, 4, 4), &dev).unwrap()).unwrap();
    let gamma = Tensor::randn(1f32, 0.3, 3, &dev).unwrap();
    let beta = Tensor::randn(0f32, 0.3, 3, &dev).unwrap();
    let bn = |name: &str| {
        let mut pb = ParamBuilder::new(0, &dev);
        let b = BatchNorm::new(&mut pb, name, 3, true, 1.0).unwrap();
        b.weight.as_ref().unwrap().set(&gamma).unwrap();
        b.bias.as_ref().unwrap().set(&beta).unwrap();
        b
    };
    let (split, reference) = (bn("split"), bn("ref"));
    let y1 = split.forward_split(x.as_tensor(), true, 4).unwrap();
    let parts: Vec<Tensor> = (0..4)
        .map(|g| {
            reference
                .forward_t_generic(&x.as_tensor().narrow(0, 2 * g, 2).unwrap(), true)
                .unwrap()
        })
        .collect();
    let y2 = Tensor::cat(&parts, 0).unwrap();
    assert!(max_abs_diff(&y1, &y2) < 1e-5);
    let (g1, g2) = grads_through(&y1, &y2);
    let pairs = [
        (x.as_tensor(), x.as_tensor()),
        (
            split.weight.as_ref().unwrap().as_tensor(),
            reference.weight.as_ref().unwrap().as_tensor(),
        ),
        (
            split.bias.as_ref().unwrap().as_tensor(),
            reference.bias.as_ref().unwrap().as_tensor(),
        ),
    ];
    for (a, b) in pairs {
        let d = max_abs_diff(g1.get(a).unwrap(), g2.get(b).unwrap());
        assert!(d < 1e-4, "gradient differs by {d}");
    }
}

#[test]
fn relu_kernel_matches_candle_in_values_and_gradients() {
    let dev = Device::Cpu;
    // Big enough to span several parallel chunks, with a non-contiguous input.
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (40, 3, 30, 37), &dev).unwrap()).unwrap();
    let xt = x.as_tensor().transpose(2, 3).unwrap();
    let y1 = sslab::kernels::relu(&xt).unwrap();
    let y2 = xt.relu().unwrap();
    assert_eq!(max_abs_diff(&y1, &y2), 0.0);
    let (g1, g2) = grads_through(&y1, &y2);
    let d = max_abs_diff(
        g1.get(x.as_tensor()).unwrap(),
        g2.get(x.as_tensor()).unwrap(),
    );
    assert_eq!(d, 0.0);
}

#[test]
fn linear_bias_kernel_matches_broadcast_add_in_values_and_gradients() {
    let dev = Device::Cpu;
    let mut pb = ParamBuilder::new(1, &dev);
    let lin = sslab::models::Linear::new(&mut pb, "fc", 24, 40, true).unwrap();
    lin.bias
        .as_ref()
        .unwrap()
        .set(&Tensor::randn(0f32, 1.0, 40, &dev).unwrap())
        .unwrap();
    // Token-shaped input (3-D) spanning several row blocks.
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 37, 24), &dev).unwrap()).unwrap();
    let y1 = lin.forward(x.as_tensor()).unwrap();
    let w = lin.weight.as_tensor();
    let b = lin.bias.as_ref().unwrap().as_tensor();
    let y2 = x
        .as_tensor()
        .reshape((185, 24))
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap()
        .reshape((5, 37, 40))
        .unwrap();
    assert!(max_abs_diff(&y1, &y2) < 1e-5);
    let (g1, g2) = grads_through(&y1, &y2);
    for t in [x.as_tensor(), w, b] {
        let d = max_abs_diff(g1.get(t).unwrap(), g2.get(t).unwrap());
        assert!(d < 1e-4, "gradient differs by {d}");
    }
}

#[test]
fn gelu_kernel_matches_candle_and_its_derivative_finite_differences() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (33, 1000), &dev).unwrap()).unwrap();
    let y1 = sslab::kernels::gelu(x.as_tensor()).unwrap();
    let y2 = x.as_tensor().gelu_erf().unwrap();
    let d = max_abs_diff(&y1, &y2);
    assert!(d < 2e-6, "value differs from candle's gelu_erf by {d}");
    let (g1, g2) = grads_through(&y1, &y2);
    let d = max_abs_diff(
        g1.get(x.as_tensor()).unwrap(),
        g2.get(x.as_tensor()).unwrap(),
    );
    assert!(d < 1e-5, "gradient differs from candle's by {d}");
    // And the derivative itself against central differences in f64 at a few points.
    for v in [-3.0f32, -0.7, 0.0, 0.4, 2.5] {
        let t = Var::from_tensor(&Tensor::new(&[v], &dev).unwrap()).unwrap();
        let g = sslab::kernels::gelu(t.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got = g.get(t.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        let gelu = |x: f64| 0.5 * x * (1.0 + erf_series(x / std::f64::consts::SQRT_2));
        let fd = (gelu(v as f64 + 1e-5) - gelu(v as f64 - 1e-5)) / 2e-5;
        assert!((got - fd).abs() < 1e-5, "x = {v}: {got} vs {fd}");
    }
}

#[test]
fn gelu_kernel_is_exact_to_float_precision_on_a_dense_grid() {
    // Against an f64 reference, value and derivative, over [-9, 9] (erf saturates past ±4,
    // exp(-x²/2) underflows past ±13): the polynomial erf and exp must not cost accuracy.
    let dev = Device::Cpu;
    let xs: Vec<f32> = (0..=36_000).map(|i| -9.0 + i as f32 * 5e-4).collect();
    let x = Var::from_tensor(&Tensor::new(xs.as_slice(), &dev).unwrap()).unwrap();
    let y = sslab::kernels::gelu(x.as_tensor()).unwrap();
    let dx = y.sum_all().unwrap().backward().unwrap();
    let dx = dx.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    let y = y.to_vec1::<f32>().unwrap();
    let (mut worst_y, mut worst_d) = (0f64, 0f64);
    for ((&v, &got), &dgot) in xs.iter().zip(&y).zip(&dx) {
        let v = v as f64;
        let cdf = 0.5 * (1.0 + erf_f64(v / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
        worst_y = worst_y.max((got as f64 - v * cdf).abs() / v.abs().max(1.0));
        worst_d = worst_d.max((dgot as f64 - (cdf + v * pdf)).abs());
    }
    assert!(worst_y < 1e-6, "GELU relative error {worst_y}");
    assert!(worst_d < 1e-6, "GELU derivative error {worst_d}");
}

/// erf in f64: the Taylor series below 3, the continued fraction of erfc above.
fn erf_f64(x: f64) -> f64 {
    if x.abs() <= 3.0 {
        return erf_series(x);
    }
    // erfc(z) = exp(-z²)/√π · 1/(z + 1/2/(z + 1/(z + 3/2/(z + ...)))), from the tail inwards.
    let z = x.abs();
    let mut f = z;
    for k in (1..60).rev() {
        f = z + (k as f64 / 2.0) / f;
    }
    let erfc = (-z * z).exp() / std::f64::consts::PI.sqrt() / f;
    (1.0 - erfc).copysign(x)
}

/// erf in f64 from its Taylor series (|x| ≤ 3 needs ~60 terms for 1e-12).
fn erf_series(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn attention_kernel_matches_an_f64_reference_in_values_and_gradients() {
    use sslab::kernels::attention;
    let dev = Device::Cpu;
    // (batch, tokens, heads, head width): a ViT-tiny at 32 px (65 tokens, 3 heads of 64),
    // odd sizes, one token, one head.
    for (b, t, h, w) in [(2, 65, 3, 64), (3, 7, 2, 5), (2, 1, 1, 3), (1, 9, 4, 1)] {
        let qkv =
            Var::from_tensor(&Tensor::randn(0f32, 1.5, (b, t, 3 * h * w), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (b, t, h * w), &dev).unwrap();
        let fused = attention(qkv.as_tensor(), h, true).unwrap();
        assert_eq!(fused.dims(), [b, t, h * w]);
        let g = (&fused * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d_fused = g.get(qkv.as_tensor()).unwrap().clone();
        // The same function in candle's f64 ops: head split by copies, no shared code.
        let x64 = Var::from_tensor(&qkv.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let reference = attention(x64.as_tensor(), h, false).unwrap();
        let r64 = r.to_dtype(DType::F64).unwrap();
        let g = (&reference * &r64)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d_ref = g.get(x64.as_tensor()).unwrap().clone();
        let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let scale = max_abs(&f32_of(&d_ref)).max(1.0);
        assert!(
            max_abs_diff(&fused, &f32_of(&reference)) < 1e-5,
            "values {b}×{t}×{h}×{w}"
        );
        let d = max_abs_diff(&d_fused, &f32_of(&d_ref));
        assert!(d < 1e-5 * scale, "gradient {b}×{t}×{h}×{w}: {d:e}");
    }
    // Columns that do not split into heads, and a 2-D input, are errors.
    let bad = Tensor::zeros((2, 3, 10), DType::F32, &dev).unwrap();
    assert!(attention(&bad, 2, true).is_err());
    assert!(attention(&bad, 0, true).is_err());
    assert!(attention(&bad.flatten_to(1).unwrap(), 1, true).is_err());
}

/// BatchNorm's one-pass statistics keep a channel whose mean is large against its spread: a
/// mean of 1000-3000 and a spread of 0.01 give the mean and variance computed in f64, and x̂ unit
/// variance. The squares are taken about one of the channel's own values in f32 lanes; about
/// zero, an f32 square of 1000 rounds by more than the whole variance (3·10⁻⁵).
#[test]
fn batchnorm_statistics_keep_a_small_spread_about_a_large_mean() {
    let (n, c, hw) = (8, 3, 49);
    let vals: Vec<f32> = common::splitmix(n * c * hw, 5)
        .iter()
        .enumerate()
        .map(|(i, v)| 1000.0 * ((i / hw) % c + 1) as f32 + 0.01 * v)
        .collect();
    let x = Tensor::from_vec(vals.clone(), (n, c, 7, 7), &Device::Cpu).unwrap();
    let (xhat, mean, var) = sslab::kernels::batch_norm_train(&x, 1e-12, true, None).unwrap();
    let (mean, var) = (
        mean.to_vec1::<f32>().unwrap(),
        var.to_vec1::<f32>().unwrap(),
    );
    for ch in 0..c {
        let xs: Vec<f64> = (0..n)
            .flat_map(|b| vals[(b * c + ch) * hw..][..hw].iter().map(|&v| v as f64))
            .collect();
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            ((mean[ch] as f64 - m) / m).abs() < 1e-7,
            "channel {ch}: mean"
        );
        assert!(
            ((var[ch] as f64 - v) / v).abs() < 1e-3,
            "channel {ch}: var {} vs {v}",
            var[ch]
        );
    }
    // x̂ has unit variance per channel.
    let xh = xhat
        .sqr()
        .unwrap()
        .mean((0, 2, 3))
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(xh.iter().all(|&s| (s - 1.0).abs() < 2e-3), "{xh:?}");
}
