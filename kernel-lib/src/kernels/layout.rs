//! Channels-last (NHWC) activations for the ResNets on CUDA: cuDNN's tensor-core convolutions
//! read and write NHWC, and given NCHW tensors they transpose around each call. PyTorch's GPU
//! users get the same with `model.to(memory_format=torch.channels_last)`. With the setting on, a
//! ResNet converts its input once at the stem and keeps every activation `(n, h, w, c)` until
//! its outputs, which are NCHW again (`models::resnet`): convolutions take cuDNN's NHWC
//! descriptors ([`conv2d_channels_last`](crate::kernels::conv2d_channels_last)), BatchNorm
//! normalises the `(n·h·w, c)` rows (BatchNorm1d's kernels), and the element-wise ops do not
//! care.
//!
//! Process-wide for CUDA tensors, as `cuda.tf32` is: the run built last sets it
//! (`cuda.channels_last`). The CPU keeps NCHW, its kernels' layout. A test can choose the layout
//! of its own thread on any device with [`channels_last_here`]: the NHWC data flow then runs on
//! the CPU too (convolutions through NCHW), and a GPU test compares both layouts without
//! touching the process-wide setting other tests see.

use candle_core::Device;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

static ON_CUDA: AtomicBool = AtomicBool::new(false);

thread_local! {
    static HERE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Makes the ResNets keep channels-last activations on CUDA (`true`) or NCHW (`false`, the
/// default), for every run in this process (`cuda.channels_last` sets it when a run is built).
pub fn set_channels_last(on: bool) {
    ON_CUDA.store(on, Ordering::Relaxed);
}

/// Whether the ResNets keep channels-last activations on CUDA.
pub fn channels_last() -> bool {
    ON_CUDA.load(Ordering::Relaxed)
}

/// Whether a ResNet on `device` runs channels-last: this thread's [`channels_last_here`] if
/// one is held, else the process-wide setting on CUDA and NCHW elsewhere.
pub(crate) fn channels_last_on(device: &Device) -> bool {
    if let Some(on) = HERE.with(|c| c.get()) {
        return on;
    }
    device.is_cuda() && channels_last()
}

/// Restores this thread's previous layout choice when dropped (see [`channels_last_here`]).
#[doc(hidden)]
#[must_use = "the thread returns to the process-wide layout when the guard is dropped"]
pub struct ChannelsLastHere(Option<bool>);

impl Drop for ChannelsLastHere {
    fn drop(&mut self) {
        HERE.with(|c| c.set(self.0));
    }
}

/// Runs ResNets on this thread channels-last (`true`) or NCHW, on any device, until the guard
/// drops. For tests: the NHWC data flow (the stem's conversion, BatchNorm on rows, pooling,
/// the outputs back in NCHW) runs on the CPU and is checked against NCHW without a GPU, and a
/// GPU test compares the layouts without changing what concurrent tests see.
#[doc(hidden)]
pub fn channels_last_here(on: bool) -> ChannelsLastHere {
    ChannelsLastHere(HERE.with(|c| c.replace(Some(on))))
}
