//! What the CUDA convolutions decide before they call cuDNN, kept free of CUDA types so that
//! every rule is compiled and tested on machines without a GPU: which implementation a tensor
//! takes, the descriptor dimensions, the key an algorithm is cached under, the math mode, and
//! which of cuDNN's measured algorithms is used.

// Without the `cudnn` feature only the unit tests use most of this; they are what keeps it
// honest on GPU-less machines.
#![cfg_attr(not(feature = "cudnn"), allow(dead_code))]

use super::ConvGeom;
use candle_core::DType;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether f32 convolutions on CUDA may use TF32 tensor cores (PyTorch's default,
/// `torch.backends.cudnn.allow_tf32 = True`). Process-wide, as PyTorch's flag is: the setting
/// `cuda.tf32` of the run that starts last wins.
static TF32: AtomicBool = AtomicBool::new(true);

/// Allows (`true`, the default) or forbids TF32 in f32 convolutions on CUDA. Strict fp32
/// (`false`) is for comparisons against the CPU; TF32 rounds the operands to 10 bits of
/// mantissa and is what PyTorch users train with.
///
/// ```
/// sslab::kernels::set_conv_tf32(false);
/// assert!(!sslab::kernels::conv_tf32());
/// sslab::kernels::set_conv_tf32(true);
/// ```
pub fn set_conv_tf32(allow: bool) {
    TF32.store(allow, Ordering::Relaxed);
}

/// The current TF32 setting of CUDA convolutions (see [`set_conv_tf32`]).
pub fn conv_tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// Which implementation a convolution takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConvRoute {
    /// sslab's CPU kernels (im2col + GEMM, Winograd) with their explicit backward.
    CpuKernel,
    /// cuDNN through sslab's op: forward, input and weight gradient with cached algorithms.
    Cudnn,
    /// candle's `conv2d` and its autograd (every other device or dtype).
    Candle,
}

/// The route for a tensor on `device` of `dtype`, given whether this build has cuDNN.
pub(crate) fn route(device: &candle_core::Device, dtype: DType, cudnn_built: bool) -> ConvRoute {
    match device {
        candle_core::Device::Cpu if dtype == DType::F32 => ConvRoute::CpuKernel,
        candle_core::Device::Cuda(_) if cudnn_built && cudnn_dtype(dtype).is_some() => {
            ConvRoute::Cudnn
        }
        _ => ConvRoute::Candle,
    }
}

/// The three passes of a convolution, each its own cuDNN call with its own algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pass {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx` from `dy` and `w` (cuDNN's backward data).
    InputGrad,
    /// `dw` from `x` and `dy` (cuDNN's backward filter).
    WeightGrad,
}

/// Element types the cuDNN route takes, with the type cuDNN accumulates in: f32 for all three,
/// as PyTorch sets it (half and bfloat16 data, float compute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ConvDType {
    F32,
    F16,
    BF16,
}

pub(crate) fn cudnn_dtype(dtype: DType) -> Option<ConvDType> {
    match dtype {
        DType::F32 => Some(ConvDType::F32),
        DType::F16 => Some(ConvDType::F16),
        DType::BF16 => Some(ConvDType::BF16),
        _ => None,
    }
}

/// How cuDNN may compute, chosen as PyTorch does before its algorithm search: f32 without TF32
/// is restricted to FMA (no tensor cores), f32 with TF32 is cuDNN's default (TF32 tensor cores
/// on Ampere and newer), half types use tensor cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MathMode {
    Default,
    TensorOp,
    /// Tensor cores with f32 data converted down (cuDNN may report it from its search).
    TensorOpConversion,
    Fma,
}

pub(crate) fn math_mode(dtype: ConvDType, tf32: bool) -> MathMode {
    match (dtype, tf32) {
        (ConvDType::F32, true) => MathMode::Default,
        (ConvDType::F32, false) => MathMode::Fma,
        _ => MathMode::TensorOp,
    }
}

/// Memory layout of the activations (and of the kernel: OIHW with NCHW, OHWI with NHWC, which
/// cuDNN's NHWC tensor-core kernels read). Each has its own algorithm choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Format {
    Nchw,
    Nhwc,
}

/// What an algorithm choice depends on: it is measured once per key and kept for the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConvKey {
    /// The GPU (its ordinal): another model of card may prefer other algorithms.
    pub device: usize,
    pub pass: Pass,
    pub dtype: ConvDType,
    pub format: Format,
    pub tf32: bool,
    /// n, c, h, w of the input; o, k of the kernel; stride; padding.
    pub dims: [usize; 8],
}

impl ConvKey {
    pub(crate) fn new(
        device: usize,
        pass: Pass,
        g: &ConvGeom,
        dtype: ConvDType,
        tf32: bool,
    ) -> Self {
        ConvKey {
            device,
            pass,
            dtype,
            format: g.format,
            // TF32 only means something for f32 data: half types share one entry.
            tf32: tf32 && dtype == ConvDType::F32,
            dims: [g.n, g.c, g.h, g.w, g.o, g.k, g.stride, g.pad],
        }
    }
}

/// The 4-d dimensions cuDNN's descriptors take: input, filter and output, NCHW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Descriptors {
    pub x: [i32; 4],
    pub w: [i32; 4],
    pub y: [i32; 4],
    pub pad: [i32; 2],
    pub stride: [i32; 2],
}

/// The descriptor dimensions of `g`, or an error if one does not fit cuDNN's `int`.
pub(crate) fn descriptors(g: &ConvGeom) -> candle_core::Result<Descriptors> {
    let i = |v: usize| -> candle_core::Result<i32> {
        i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("conv2d: {v} exceeds cuDNN's int")))
    };
    // cuDNN indexes each tensor with 32-bit element offsets.
    let largest = (g.n * g.c * g.h * g.w).max(g.n * g.o * g.ho * g.wo);
    i(largest)?;
    Ok(Descriptors {
        x: [i(g.n)?, i(g.c)?, i(g.h)?, i(g.w)?],
        w: [i(g.o)?, i(g.c)?, i(g.k)?, i(g.k)?],
        y: [i(g.n)?, i(g.o)?, i(g.ho)?, i(g.wo)?],
        pad: [i(g.pad)?; 2],
        stride: [i(g.stride)?; 2],
    })
}

/// The shape of what each pass writes: y, dx or dw, in the geometry's layout.
pub(crate) fn output_dims(pass: Pass, g: &ConvGeom) -> [usize; 4] {
    match (pass, g.format) {
        (Pass::Forward, Format::Nchw) => [g.n, g.o, g.ho, g.wo],
        (Pass::InputGrad, Format::Nchw) => [g.n, g.c, g.h, g.w],
        (Pass::WeightGrad, Format::Nchw) => [g.o, g.c, g.k, g.k],
        (Pass::Forward, Format::Nhwc) => [g.n, g.ho, g.wo, g.o],
        (Pass::InputGrad, Format::Nhwc) => [g.n, g.h, g.w, g.c],
        (Pass::WeightGrad, Format::Nhwc) => [g.o, g.k, g.k, g.c],
    }
}

/// One algorithm as cuDNN's search measured it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Measured<A> {
    pub algo: A,
    /// Whether it ran (cuDNN lists the ones that failed or do not apply, too).
    pub ok: bool,
    pub millis: f32,
    /// Workspace bytes it needs.
    pub memory: usize,
    pub math: MathMode,
}

/// The fastest algorithm that ran and fits `workspace_limit` bytes. cuDNN sorts its results by
/// time, but the list is not trusted to be sorted: a stale order must not pick a slow one.
pub(crate) fn fastest<A: Copy>(
    found: &[Measured<A>],
    workspace_limit: usize,
) -> Option<Measured<A>> {
    found
        .iter()
        .filter(|m| m.ok && m.memory <= workspace_limit && m.millis.is_finite())
        .min_by(|a, b| a.millis.total_cmp(&b.millis))
        .copied()
}

/// The workspace the search may offer cuDNN: what the hungriest algorithm asks for, but at most
/// half of the free device memory and never more than [`MAX_SEARCH_WORKSPACE`]. PyTorch offers
/// as much as it can allocate; half of what is free leaves the training step its room.
pub(crate) fn search_workspace(asked: &[usize], free: usize) -> usize {
    let hungriest = asked.iter().copied().max().unwrap_or(0);
    hungriest.min(free / 2).min(MAX_SEARCH_WORKSPACE)
}

/// Upper bound of the search's workspace (2 GiB): FFT algorithms can ask for many gigabytes at
/// ImageNet sizes and rarely win on recent GPUs.
pub(crate) const MAX_SEARCH_WORKSPACE: usize = 2 << 30;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn geom(x: [usize; 4], w: [usize; 4], stride: usize, pad: usize) -> ConvGeom {
        ConvGeom::new(&x, &w, stride, pad).unwrap()
    }

    #[test]
    fn routes_by_device_dtype_and_build() {
        let cpu = Device::Cpu;
        assert_eq!(route(&cpu, DType::F32, false), ConvRoute::CpuKernel);
        assert_eq!(route(&cpu, DType::F32, true), ConvRoute::CpuKernel);
        // sslab's CPU kernels are f32 only.
        assert_eq!(route(&cpu, DType::BF16, true), ConvRoute::Candle);
        assert_eq!(route(&cpu, DType::F64, true), ConvRoute::Candle);
        assert_eq!(cudnn_dtype(DType::F64), None);
        assert_eq!(cudnn_dtype(DType::BF16), Some(ConvDType::BF16));
    }

    #[test]
    fn descriptor_geometry_of_resnet_layers() {
        // ImageNet stem: 224 → 112 with a 7×7 kernel, stride 2, pad 3.
        let d = descriptors(&geom([8, 3, 224, 224], [64, 3, 7, 7], 2, 3)).unwrap();
        assert_eq!(d.x, [8, 3, 224, 224]);
        assert_eq!(d.w, [64, 3, 7, 7]);
        assert_eq!(d.y, [8, 64, 112, 112]);
        assert_eq!((d.pad, d.stride), ([3, 3], [2, 2]));
        // 3×3 stride 2 on an odd size rounds down as PyTorch does: 7 → 4.
        let d = descriptors(&geom([2, 512, 7, 7], [512, 512, 3, 3], 2, 1)).unwrap();
        assert_eq!(d.y, [2, 512, 4, 4]);
        // 1×1 stride-2 downsample: 56 → 28.
        let g = geom([4, 256, 56, 56], [512, 256, 1, 1], 2, 0);
        assert_eq!(descriptors(&g).unwrap().y, [4, 512, 28, 28]);
        assert_eq!(output_dims(Pass::Forward, &g), [4, 512, 28, 28]);
        assert_eq!(output_dims(Pass::InputGrad, &g), [4, 256, 56, 56]);
        assert_eq!(output_dims(Pass::WeightGrad, &g), [512, 256, 1, 1]);
    }

    #[test]
    fn descriptors_refuse_tensors_beyond_int_offsets() {
        let g = geom([70_000, 64, 224, 224], [64, 64, 3, 3], 1, 1);
        let e = descriptors(&g).unwrap_err().to_string();
        assert!(e.contains("cuDNN's int"), "{e}");
    }

    #[test]
    fn cache_keys_separate_what_changes_the_choice() {
        let g = geom([256, 64, 32, 32], [64, 64, 3, 3], 1, 1);
        let k = |pass, dtype, tf32| ConvKey::new(0, pass, &g, dtype, tf32);
        let base = k(Pass::Forward, ConvDType::F32, true);
        assert_eq!(base, k(Pass::Forward, ConvDType::F32, true));
        assert_ne!(base, k(Pass::InputGrad, ConvDType::F32, true));
        assert_ne!(base, k(Pass::Forward, ConvDType::F32, false));
        assert_ne!(base, k(Pass::Forward, ConvDType::BF16, true));
        assert_ne!(
            base,
            ConvKey::new(1, Pass::Forward, &g, ConvDType::F32, true)
        );
        let other = geom([256, 64, 32, 32], [64, 64, 3, 3], 2, 1);
        assert_ne!(
            base,
            ConvKey::new(0, Pass::Forward, &other, ConvDType::F32, true)
        );
        // TF32 does not apply to half types: one entry for both settings.
        assert_eq!(
            k(Pass::Forward, ConvDType::BF16, true),
            k(Pass::Forward, ConvDType::BF16, false)
        );
    }

    /// A channels-last geometry: the same descriptor dims (cuDNN takes them NCHW-ordered with
    /// an NHWC format), outputs shaped NHWC and OHWI, and its own algorithm cache entry.
    #[test]
    fn channels_last_geometry_keeps_dims_and_gets_its_own_key() {
        let nchw = geom([4, 256, 56, 56], [512, 256, 3, 3], 2, 1);
        let nhwc = ConvGeom::nhwc(&[4, 56, 56, 256], &[512, 3, 3, 256], 2, 1).unwrap();
        assert_eq!(descriptors(&nhwc).unwrap(), descriptors(&nchw).unwrap());
        assert_eq!(output_dims(Pass::Forward, &nhwc), [4, 28, 28, 512]);
        assert_eq!(output_dims(Pass::InputGrad, &nhwc), [4, 56, 56, 256]);
        assert_eq!(output_dims(Pass::WeightGrad, &nhwc), [512, 3, 3, 256]);
        let key = |g| ConvKey::new(0, Pass::Forward, g, ConvDType::BF16, true);
        assert_ne!(key(&nchw), key(&nhwc));
        assert!(ConvGeom::nhwc(&[4, 56, 56, 256], &[512, 3, 3, 128], 1, 1).is_err());
    }

    #[test]
    fn math_modes_follow_pytorch() {
        assert_eq!(math_mode(ConvDType::F32, true), MathMode::Default);
        assert_eq!(math_mode(ConvDType::F32, false), MathMode::Fma);
        assert_eq!(math_mode(ConvDType::BF16, false), MathMode::TensorOp);
        assert_eq!(math_mode(ConvDType::F16, true), MathMode::TensorOp);
    }

    #[test]
    fn fastest_skips_failed_and_oversized_algorithms() {
        let m = |algo, ok, millis, memory| Measured {
            algo,
            ok,
            millis,
            memory,
            math: MathMode::Default,
        };
        let found = [
            m(5, false, 0.1, 0),      // failed
            m(4, true, 0.2, 1 << 31), // too much workspace
            m(1, true, 0.9, 0),
            m(2, true, 0.4, 1 << 20),
            m(3, true, f32::NAN, 0),
        ];
        assert_eq!(fastest(&found, 1 << 30).map(|m| m.algo), Some(2));
        assert_eq!(fastest(&found, 0).map(|m| m.algo), Some(1));
        assert_eq!(fastest(&found[..1], 1 << 30), None);
    }

    #[test]
    fn search_workspace_is_bounded() {
        assert_eq!(search_workspace(&[], 1 << 34), 0);
        assert_eq!(search_workspace(&[10, 300, 20], 1 << 34), 300);
        assert_eq!(search_workspace(&[1 << 30], 1 << 29), 1 << 28);
        assert_eq!(search_workspace(&[1 << 40], 1 << 40), MAX_SEARCH_WORKSPACE);
    }

    #[test]
    fn tf32_switch_round_trips() {
        let before = conv_tf32();
        set_conv_tf32(!before);
        assert_eq!(conv_tf32(), !before);
        set_conv_tf32(before);
    }
}
