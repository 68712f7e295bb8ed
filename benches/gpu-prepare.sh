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
# The CUDA tests, built here: the GPU machine has no Rust. They take no files from the tree.
tests=$(cargo test --release -p sslab --features cudnn --target-dir target/cuda --test cuda_conv \
  --no-run 2>&1 | tee /dev/stderr | grep -oE 'target/cuda/release/deps/[A-Za-z0-9_]+-[0-9a-f]+' | sort -u)
rm -rf .gpu && mkdir -p .gpu/torch .gpu/tests
# gzipped (58 → 15 MB): the device tool carries at most 64 MiB with the working tree.
gzip -6 -c target/cuda/release/sslab > .gpu/sslab.gz
for t in $tests; do gzip -6 -c "$t" > ".gpu/tests/$(basename "${t%-*}").gz"; done
cp ../shared/tools/run-on-gpu.sh benches/gpu.sh benches/gpu_report.py .gpu/
cp benches/torch/workloads.py .gpu/torch/
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benches/results' || echo -dirty)" > .gpu/commit
ls -la .gpu .gpu/tests
du -sh .gpu
