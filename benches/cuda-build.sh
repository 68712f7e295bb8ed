#!/usr/bin/env bash
# Builds sslab with the `cuda,cudnn,nccl` features on a machine without a GPU (CI's build check, and
# the first half of benches/gpu-prepare.sh): the CUDA 13.0 toolkit from PyPI wheels
# (benches/cuda-toolkit.sh, kept in $CUDA_CACHE, default ~/.cache/sslab-cuda), then the release
# binary and the CUDA test binaries, compiled and linked. The binaries need the NVIDIA driver to
# start, so nothing is run here; the last lines of stdout are the test binaries' paths.
#
# Env: CUDA_TARGET  cargo's target folder (default target/cuda; CI keeps one in the cache).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CUDA_TARGET:-target/cuda}
exports=$(benches/cuda-toolkit.sh)
eval "$exports"
# One cargo invocation for the binary and the GPU tests (kernel-lib/tests/cuda/, one binary so
# one file travels to the GPU): built together, their dependencies are resolved with one set of
# features and candle's CUDA kernels are compiled once.
cargo build --release -p sslab-repl -p sslab --features sslab/cuda,sslab/cudnn,sslab/nccl \
  --bin sslab --test cuda --target-dir "$TARGET" --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
ok = False
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-message" and m["message"].get("level") == "error":
        sys.stderr.write(m["message"].get("rendered", "") + "\n")
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["test"] and m.get("executable"):
        print(m["executable"])
    if m.get("reason") == "build-finished":
        ok = m.get("success", False)
sys.exit(0 if ok else 1)'
