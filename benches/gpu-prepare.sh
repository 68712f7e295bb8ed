#!/usr/bin/env bash
# Builds what benches/gpu.sh needs into .gpu/ (ignored), here on the CPU machine: the CUDA +
# cuDNN build of sslab and its CUDA tests (benches/cuda-build.sh), benches/run-on-gpu.sh, the
# report script and the PyTorch twins. Then, in a session lent a GPU, one `run` call with carry
# [".gpu"] and the command `bash .gpu/gpu.sh` (or `bash .gpu/gpu.sh tests conv`: sections).
set -euo pipefail
cd "$(dirname "$0")/.."
tests=$(benches/cuda-build.sh)
TARGET=${CUDA_TARGET:-target/cuda}
rm -rf .gpu && mkdir -p .gpu/torch .gpu/tests
# gzipped (58 → 15 MB): the device tool carries at most 64 MiB with the working tree.
gzip -6 -c "$TARGET/release/sslab" > .gpu/sslab.gz
for t in $tests; do gzip -6 -c "$t" > ".gpu/tests/$(basename "${t%-*}").gz"; done
cp benches/run-on-gpu.sh benches/gpu.sh benches/gpu_report.py .gpu/
cp benches/torch/workloads.py .gpu/torch/
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!benches/results' || echo -dirty)" > .gpu/commit
ls -la .gpu .gpu/tests
du -sh .gpu
