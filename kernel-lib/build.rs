//! With the `cuda` feature: compiles sslab's own CUDA kernels (`cuda/*.cu`) to PTX with nvcc at
//! build time, as candle's kernels are, so a kernel that does not compile fails the build (and
//! CI's CUDA build check) on machines without a GPU instead of at run time on one. The PTX is
//! embedded in the library and loaded once per device; the driver compiles it for the card.
//!
//! nvcc: `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on the PATH (`benches/cuda-toolkit.sh`
//! sets CUDA_HOME). Target: `compute_$CUDA_COMPUTE_CAP` (default 80: PTX that Ampere and every
//! newer card can run).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda");
    for v in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CUDA_HOME")
                .map(|h| PathBuf::from(h).join("bin/nvcc"))
                .filter(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut sources: Vec<PathBuf> = std::fs::read_dir("cuda")
        .expect("kernel-lib/cuda holds the CUDA kernels")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for src in sources {
        let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("kernel");
        let ptx = out.join(format!("{stem}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("--gpu-architecture=compute_{cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {} for {}: {e}", nvcc.display(), src.display()));
        assert!(status.success(), "nvcc failed on {}", src.display());
    }
}
