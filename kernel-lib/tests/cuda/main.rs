//! sslab's CUDA arms against its CPU kernels (and candle, for convolutions): one test binary so
//! that `benches/gpu-prepare.sh` carries one file to the GPU machine. Every test needs a GPU and
//! a CUDA build (`cudnn` for the convolutions); elsewhere it says why it skipped and passes.

mod activation;
mod affine;
mod batch_norm;
mod conv;
mod optim;

use candle_core::{DType, Device, Tensor};

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

/// `max |a - b| / max |b|`, on the host.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let diff = (a - &b).unwrap().abs().unwrap().max_all().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-12)
}
