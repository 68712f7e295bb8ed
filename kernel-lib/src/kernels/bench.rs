//! Convolution micro-benchmarks: the ResNet-18 (CIFAR) and ResNet-50 (ImageNet) shapes timed
//! through sslab's kernels (CPU, or cuDNN on CUDA) and through candle's own ops, so `sslab bench
//! conv` can set both beside PyTorch's (`benches/torch/workloads.py conv`). And the CPU's
//! matrix products in f32 and bf16 on a ViT's shapes (`sslab bench gemm`).

use super::conv::{conv2d_dw, conv2d_dx, Conv2dOp};
use crate::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;

/// One convolution of a network: `count` layers of this shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvShape {
    pub inp: usize,
    pub out: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Input height and width.
    pub size: usize,
    pub count: usize,
}

impl ConvShape {
    const fn new(
        inp: usize,
        out: usize,
        kernel: usize,
        stride: usize,
        size: usize,
        count: usize,
    ) -> Self {
        ConvShape {
            inp,
            out,
            kernel,
            stride,
            size,
            count,
        }
    }

    /// Padding as in ResNet: `kernel / 2`.
    pub fn padding(&self) -> usize {
        self.kernel / 2
    }

    /// Output height and width.
    pub fn out_size(&self) -> usize {
        (self.size + 2 * self.padding() - self.kernel) / self.stride + 1
    }

    /// Multiply-adds of one pass over `batch` images (forward, dX and dW cost the same).
    pub fn macs(&self, batch: usize) -> f64 {
        (batch * self.out * self.out_size().pow(2) * self.inp * self.kernel * self.kernel) as f64
    }
}

impl std::fmt::Display for ConvShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}k{}s{}@{}",
            self.inp, self.out, self.kernel, self.stride, self.size
        )
    }
}

/// The convolutions of a CIFAR ResNet-18 at width 64 (3×3 stem, no max-pool), the same list as
/// `benches/torch/workloads.py`.
pub const RESNET18_CIFAR_CONVS: [ConvShape; 11] = [
    ConvShape::new(3, 64, 3, 1, 32, 1),
    ConvShape::new(64, 64, 3, 1, 32, 4),
    ConvShape::new(64, 128, 3, 2, 32, 1),
    ConvShape::new(128, 128, 3, 1, 16, 3),
    ConvShape::new(64, 128, 1, 2, 32, 1),
    ConvShape::new(128, 256, 3, 2, 16, 1),
    ConvShape::new(256, 256, 3, 1, 8, 3),
    ConvShape::new(128, 256, 1, 2, 16, 1),
    ConvShape::new(256, 512, 3, 2, 8, 1),
    ConvShape::new(512, 512, 3, 1, 4, 3),
    ConvShape::new(256, 512, 1, 2, 8, 1),
];

/// The convolutions of torchvision's ResNet-50 at 224 px (7×7 stem, stride on the 3×3 conv of
/// each stage's first block, 1×1 downsample), the same list as `benches/torch/workloads.py`.
pub const RESNET50_IMAGENET_CONVS: [ConvShape; 23] = [
    ConvShape::new(3, 64, 7, 2, 224, 1),
    // layer1, 56 px
    ConvShape::new(64, 64, 1, 1, 56, 1),
    ConvShape::new(256, 64, 1, 1, 56, 2),
    ConvShape::new(64, 64, 3, 1, 56, 3),
    ConvShape::new(64, 256, 1, 1, 56, 4),
    // layer2, 56 → 28 px
    ConvShape::new(256, 128, 1, 1, 56, 1),
    ConvShape::new(128, 128, 3, 2, 56, 1),
    ConvShape::new(256, 512, 1, 2, 56, 1),
    ConvShape::new(512, 128, 1, 1, 28, 3),
    ConvShape::new(128, 128, 3, 1, 28, 3),
    ConvShape::new(128, 512, 1, 1, 28, 4),
    // layer3, 28 → 14 px
    ConvShape::new(512, 256, 1, 1, 28, 1),
    ConvShape::new(256, 256, 3, 2, 28, 1),
    ConvShape::new(512, 1024, 1, 2, 28, 1),
    ConvShape::new(1024, 256, 1, 1, 14, 5),
    ConvShape::new(256, 256, 3, 1, 14, 5),
    ConvShape::new(256, 1024, 1, 1, 14, 6),
    // layer4, 14 → 7 px
    ConvShape::new(1024, 512, 1, 1, 14, 1),
    ConvShape::new(512, 512, 3, 2, 14, 1),
    ConvShape::new(1024, 2048, 1, 2, 14, 1),
    ConvShape::new(2048, 512, 1, 1, 7, 2),
    ConvShape::new(512, 512, 3, 1, 7, 2),
    ConvShape::new(512, 2048, 1, 1, 7, 3),
];

/// The shape list of a network by name: `resnet18` (CIFAR) or `resnet50` (ImageNet).
///
/// ```
/// use sslab::kernels::bench::network_convs;
/// let total = |n| network_convs(n).unwrap().iter().map(|s| s.count).sum::<usize>();
/// assert_eq!((total("resnet18"), total("resnet50")), (20, 53));
/// assert!(network_convs("vgg").is_none());
/// ```
pub fn network_convs(name: &str) -> Option<&'static [ConvShape]> {
    match name {
        "resnet18" => Some(&RESNET18_CIFAR_CONVS),
        "resnet50" => Some(&RESNET50_IMAGENET_CONVS),
        _ => None,
    }
}

/// Which implementation to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvImpl {
    /// sslab's convolution with its explicit backward, what training uses: im2col + GEMM and
    /// Winograd on the CPU, cuDNN with measured algorithms on CUDA.
    Sslab,
    /// sslab's CPU convolution under bf16 autocast: bf16-rounded operands, f32 sums
    /// (AVX512-BF16; plain loops over the rounded values elsewhere).
    SslabBf16,
    /// candle's `conv2d`, and the `conv_transpose2d` / transposed `conv2d` its autograd runs.
    Candle,
}

/// Median throughput of the three passes of one shape.
#[derive(Clone, Copy, Debug)]
pub struct ConvTiming {
    pub shape: ConvShape,
    pub fwd_gflops: f64,
    pub dx_gflops: f64,
    pub dw_gflops: f64,
}

fn median_seconds(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up: first-touch page faults and rayon start-up stay out of the timing
    dev.synchronize()?;
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        // CUDA kernels return before they finish.
        dev.synchronize()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    Ok(median(&mut ts))
}

/// The median of timings (the upper one of an even count), the figure every bench reports; 0
/// for none.
pub fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(0.0)
}

/// Times forward, input gradient and weight gradient of `shape` on random data on `dev`. The
/// warm-up call of each pass is where the CUDA arm measures its algorithms; it is not timed.
///
/// ```
/// use candle_core::Device;
/// use sslab::kernels::bench::{time_conv, ConvImpl, RESNET18_CIFAR_CONVS};
/// let t = time_conv(RESNET18_CIFAR_CONVS[9], 2, 1, ConvImpl::Sslab, &Device::Cpu)?;
/// assert!(t.fwd_gflops > 0.0);
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn time_conv(
    shape: ConvShape,
    batch: usize,
    reps: usize,
    imp: ConvImpl,
    dev: &Device,
) -> Result<ConvTiming> {
    if imp == ConvImpl::SslabBf16 && !dev.is_cpu() {
        return Err(crate::Error::Invalid(
            "ConvImpl::SslabBf16 is the CPU's bf16 path; a GPU's bf16 convolution is cuDNN's"
                .into(),
        ));
    }
    if imp == ConvImpl::Sslab && dev.is_cuda() && !cfg!(feature = "cudnn") {
        return Err(crate::Error::Invalid(
            "sslab's CUDA convolutions need the `cudnn` feature; time ConvImpl::Candle".into(),
        ));
    }
    if imp == ConvImpl::Sslab && !dev.is_cpu() && !dev.is_cuda() {
        return Err(crate::Error::Invalid(
            "sslab's convolutions run on the CPU and CUDA; time ConvImpl::Candle".into(),
        ));
    }
    let (s, p, k) = (shape.stride, shape.padding(), shape.kernel);
    let x = Tensor::randn(0f32, 1.0, (batch, shape.inp, shape.size, shape.size), dev)?;
    let w = Tensor::randn(0f32, 0.1, (shape.out, shape.inp, k, k), dev)?;
    let ho = shape.out_size();
    let dy = Tensor::randn(0f32, 1.0, (batch, shape.out, ho, ho), dev)?;
    let (fwd, dx, dw) = match imp {
        ConvImpl::Sslab | ConvImpl::SslabBf16 => {
            let bf16 = imp == ConvImpl::SslabBf16;
            (
                median_seconds(dev, reps, || {
                    x.apply_op2(&w, Conv2dOp::nchw(s, p, bf16))?;
                    Ok(())
                })?,
                median_seconds(dev, reps, || {
                    conv2d_dx(&dy, &w, x.dims(), s, p, bf16)?;
                    Ok(())
                })?,
                median_seconds(dev, reps, || {
                    conv2d_dw(&x, &dy, w.dims(), s, p, bf16)?;
                    Ok(())
                })?,
            )
        }
        ConvImpl::Candle => {
            // The same calls as candle 0.11's backprop for conv2d.
            let out_pad = shape.size - ((ho - 1) * s + k - 2 * p);
            (
                median_seconds(dev, reps, || {
                    x.conv2d(&w, p, s, 1, 1)?;
                    Ok(())
                })?,
                median_seconds(dev, reps, || {
                    dy.conv_transpose2d(&w, p, out_pad, s, 1)?;
                    Ok(())
                })?,
                median_seconds(dev, reps, || {
                    let g = x
                        .transpose(0, 1)?
                        .conv2d(&dy.transpose(0, 1)?, p, 1, s, 1)?
                        .transpose(0, 1)?;
                    let (_, _, gh, gw) = g.dims4()?;
                    let g = if gh > k || gw > k {
                        g.narrow(2, 0, k)?.narrow(3, 0, k)?
                    } else {
                        g
                    };
                    g.contiguous()?;
                    Ok(())
                })?,
            )
        }
    };
    let gflops = |t: f64| 2.0 * shape.macs(batch) / t / 1e9;
    Ok(ConvTiming {
        shape,
        fwd_gflops: gflops(fwd),
        dx_gflops: gflops(dx),
        dw_gflops: gflops(dw),
    })
}

/// The products of a ViT-tiny block (dim 192, MLP 768) over `rows` tokens: the forward's
/// qkv, output projection, MLP in and out (`rows × k · k × n`), then the weight gradients of
/// the first and last (`n × rows · rows × k`, the depth is the token count).
pub fn vit_tiny_gemms(rows: usize) -> Vec<(usize, usize, usize)> {
    vec![
        (rows, 576, 192),
        (rows, 192, 192),
        (rows, 768, 192),
        (rows, 192, 768),
        (576, 192, rows),
        (192, 768, rows),
    ]
}

/// Best-of-`rounds` single-thread GFLOP/s of `m×k · k×n` in f32 (the gemm crate) and in
/// bf16 (`matmul_bf16.rs`; `None` on a CPU without AVX512-BF16).
pub fn time_gemm((m, n, k): (usize, usize, usize), rounds: usize) -> (f64, Option<f64>) {
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
        .collect();
    let mut c = vec![0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    let best = |f: &mut dyn FnMut()| {
        (0..rounds.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let f32_s = best(&mut || super::matmul::matmul(m, n, k, &mut c, false, &a, (k, 1), &b, (n, 1)));
    let bf16_s = super::matmul_bf16::available().then(|| {
        best(&mut || {
            let (l, r) = ((&a[..], (k, 1)), (&b[..], (n, 1)));
            super::matmul_bf16::matmul_bf16((m, n, k), (&mut c, n), false, l, r, false)
        })
    });
    (flops / f32_s / 1e9, bf16_s.map(|s| flops / s / 1e9))
}
