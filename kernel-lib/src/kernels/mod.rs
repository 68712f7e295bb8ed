//! The ground floor: every hand-written op, one file per op, each with its CPU kernel, its
//! explicit backward and ONE `pub fn` that picks the kernel for the tensor's device and dtype
//! or falls back to candle's ops. Everything above this floor calls those functions; nothing
//! above it names a candle `CustomOp`.
//!
//! | file | op |
//! |---|---|
//! | `conv/` | 2-D convolution: im2col + GEMM, Winograd for 3×3 layers on the CPU, cuDNN with measured algorithms on CUDA ([`conv2d`], [`set_conv_tf32`]) |
//! | `batch_norm/` | training-mode BatchNorm, with the affine part and ReLU fused (CPU; CUDA kernels in `cuda/batch_norm.cu`) ([`batch_norm_train`], [`batch_norm_affine_train`]); LayerNorm's normalisation ([`normalize_rows`]) |
//! | `activation.rs` | ReLU, residual add + ReLU, exact GELU ([`relu`], [`add_relu`], [`gelu`]) |
//! | `affine.rs` | a linear layer's bias, LayerNorm's scale and shift ([`add_bias`], [`scale_shift_rows`]) |
//! | `layout.rs` | channels-last (NHWC) ResNet activations on CUDA ([`set_channels_last`]) |
//! | `precision.rs` | mixed precision as autocast: bf16 convolutions and matrix products, f32 elsewhere ([`autocast`], [`Precision`]) |
//! | `attention.rs` | multi-head self-attention from the fused qkv projection: no head-split copies, probabilities recomputed in the backward ([`attention`]) |
//! | `collective.rs` | sums and gathers across ranks with their backward ([`all_reduce`], [`all_gather`]; the [`Collective`] a world implements, `crate::dist` the rest) |
//! | `softmax.rs` | softmax over the last axis with a folded scale ([`softmax_last`]) |
//! | `matmul.rs` | GEMM wrappers, narrow weight-gradient products, batched products ([`batched_matmul`]), the linear layers' product ([`linear`]) |
//! | `matmul_bf16.rs` | the CPU's bf16 product: AVX512-BF16 micro-kernel, f32 sums ([`autocast_matmul`] under bf16) |
//! | `optim_update.rs` | optimizer updates and the momentum encoder's EMA, in place ([`ema`]; the optimizers' rules, [`OptimKind`]) |
//! | `simd.rs`, `par.rs`, `storage.rs`, `cuda.rs` | instruction-set choice at run time, thread helpers, storage access, loading sslab's CUDA kernels (`kernel-lib/cuda/*.cu`, compiled to PTX by `build.rs`) |
//! | `bench.rs` | convolution micro-benchmarks (`sslab bench conv`) |
//!
//! The CPU kernels take contiguous f32 tensors on the CPU; every other device or dtype goes
//! through candle's ops. The functions with a `fused` flag take candle's ops when it is off:
//! the tests compare both paths, values and gradients.

#[macro_use]
mod simd;
// Before the op files: its `cpu_refused!` macro writes the CPU arm of CUDA-only ops.
#[cfg(feature = "cuda")]
#[macro_use]
mod cuda;
mod activation;
mod affine;
mod attention;
mod batch_norm;
pub mod bench;
mod collective;
mod conv;
mod layer_norm;
mod layout;
mod matmul;
mod matmul_bf16;
pub(crate) mod optim_update;
mod par;
mod precision;
mod softmax;
mod storage;

pub use activation::{add_relu, gelu, gelu_for_product, relu};
pub use affine::{add_bias, scale_shift_rows};
pub use attention::{attention, attention_for_product, attention_probabilities};
pub(crate) use batch_norm::split_batch_norm_train_cpu;
pub use batch_norm::{batch_norm_affine_train, batch_norm_train, normalize_rows};
pub use collective::{all_gather, all_reduce, Collective, World};
pub use conv::plan::{conv_tf32, set_conv_tf32};
pub use conv::winograd::{set_winograd, winograd};
pub use conv::{cached_conv_algorithms, conv2d, conv2d_channels_last};
pub use layer_norm::{layer_norm, layer_norm_for_product};
pub(crate) use layout::channels_last_on;
pub use layout::{channels_last, set_channels_last};
#[doc(hidden)]
pub use layout::{channels_last_here, ChannelsLastHere};
pub use matmul::{autocast_matmul, batched_matmul, linear, linear_bias};
pub use optim_update::{ema, GroupSettings, OptimKind};
pub(crate) use optim_update::{nan_max, square_sum_and_max_abs};
pub(crate) use precision::via_f32;
pub use precision::{autocast, autocast_precision, cpu_has_bf16, Autocast, Precision};
#[doc(hidden)]
pub use precision::{bf16_activations_on_cpu, Bf16OnCpu};
pub use simd::cpu_report;
pub use softmax::softmax_last;
pub use storage::poison_outputs;
