#!/usr/bin/env bash
# Builds what benches/gpu.sh needs into .gpu/ (ignored), here on the CPU machine: the CUDA +
# cuDNN build of sslab, ../shared/tools/run-on-gpu.sh and the PyTorch twins. Then, in a session
# lent a GPU, one `run` call with carry [".gpu"] and the command `bash .gpu/gpu.sh`.
#
# ../shared/tools/cuda-toolkit.sh finds cudarc with a plain `cargo metadata` of the project
# it is run from, and sslab's `cuda` feature is off by default, so it is run from a throwaway
# crate that depends on sslab with `cuda` on (cudarc is then in its dependency graph).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/src"
echo 'fn main() {}' > "$SHIM/src/main.rs"
cat > "$SHIM/Cargo.toml" <<TOML
[package]
name = "cuda-shim"
version = "0.0.0"
edition = "2021"
[dependencies]
sslab = { path = "$ROOT/kernel-lib", features = ["cuda"] }
[workspace]
TOML
cp Cargo.lock "$SHIM/" 2>/dev/null || true
exports=$(cd "$SHIM" && "$ROOT/../shared/tools/cuda-toolkit.sh")
eval "$exports"
cargo build --release -p sslab-repl --features sslab/cuda,sslab/cudnn --target-dir target/cuda
mkdir -p .gpu/torch
# gzipped (58 → 15 MB): the device tool carries at most 64 MiB with the working tree.
gzip -6 -c target/cuda/release/sslab > .gpu/sslab.gz
cp ../shared/tools/run-on-gpu.sh benches/gpu.sh .gpu/
cp benches/torch/workloads.py .gpu/torch/
ls -la .gpu
