//! Device selection from the config string.

use crate::error::{Error, Result};
use candle_core::Device;

/// `auto`: CUDA 0 when built with `cuda` and a GPU is present, else the CPU; `cpu`; `cuda` or
/// `cuda:N`: that GPU, or an error saying why not.
pub fn select_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s.starts_with("cuda") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    Error::config("device", format!("'{s}': N in cuda:N must be a number"))
                })?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::config(
                    "device",
                    "CUDA requested but this build has no CUDA support (build with --features cuda)",
                ));
            }
            Device::new_cuda(ordinal)
                .map_err(|e| Error::config("device", format!("cannot open {s}: {e}")))
        }
        other => Err(Error::config(
            "device",
            format!("'{other}' is not auto, cpu, cuda or cuda:N"),
        )),
    }
}

/// A short human name of a device.
pub(crate) fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}
