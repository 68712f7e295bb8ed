#!/usr/bin/env bash
# Builds sslab with the `cuda,cudnn` features on a machine without a GPU (CI's build check, and
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
cargo build --release -q -p sslab-repl --features sslab/cuda,sslab/cudnn --target-dir "$TARGET" >&2
# The GPU tests: one binary (kernel-lib/tests/cuda/), so one file travels to the GPU.
args=()
args+=(--test cuda)
cargo test --release -q -p sslab --features cudnn --target-dir "$TARGET" "${args[@]}" --no-run \
  --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])'
