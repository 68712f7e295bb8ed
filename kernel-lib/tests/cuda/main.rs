//! sslab's CUDA arms against its CPU kernels (and candle, for convolutions): one test binary so
//! that `benches/gpu-prepare.sh` carries one file to the GPU machine. Every test needs a GPU and
//! a CUDA build (`cudnn` for the convolutions); elsewhere it says why it skipped and passes.

#[path = "../common/mod.rs"]
mod common;

mod activation;
mod affine;
mod batch_norm;
mod bf16;
mod conv;
mod optim;

use candle_core::Device;
pub use common::rel_err;

/// The GPU, or `None` after saying why the test skips (no CUDA build, no `cudnn` where
/// `cudnn` is needed, no device).
pub fn gpu(cudnn: bool) -> Option<Device> {
    if cudnn && !cfg!(feature = "cudnn") {
        eprintln!("skipping: sslab built without the `cudnn` feature");
        return None;
    }
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipping: no CUDA device ({e})");
            None
        }
    }
}
