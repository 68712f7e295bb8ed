#!/usr/bin/env bash
# sslab vs PyTorch on this machine, workload by workload, both measured in this one run.
#
#   benches/compare.sh [workload ...]     (default: conv barlow-twins moco-v2 moco-v3-vit)
#
# PyTorch is a benchmark-only dependency: it goes into benches/.venv (created on first use; the
# PyPI wheel, ~5 GB with its CUDA libraries, runs on the CPU too). Set TORCH_PYTHON to use an
# existing interpreter that has torch instead. THREADS (default: the core count) is given to
# both frameworks; ROUNDS (default 3) alternates sslab and PyTorch runs and takes the median of
# the per-run medians, so a slow spell on the machine hits both.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-5}
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(conv barlow-twins moco-v2 moco-v3-vit)

source benches/torch-python.sh
torch_python
cargo build --release -q -p sslab-repl
SSLAB=target/release/sslab
export RAYON_NUM_THREADS=$THREADS

# Where the figures are measured: the CPU, its vector extensions and the kernels sslab takes.
"$SSLAB" bench conv --steps 1 --batch 1 --shape 3x64 | sed -n 1p  # sed reads to the end: no broken pipe
"$TORCH_PYTHON" -c 'import torch; print("PyTorch", torch.__version__, "| CPU capability:", torch.backends.cpu.get_cpu_capability())'

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for w in "${WORKLOADS[@]}"; do
  for r in $(seq "$ROUNDS"); do
    echo "== $w round $r/$ROUNDS" >&2
    "$SSLAB" bench "$w" --steps "$STEPS" | grep '^RESULT' >> "$out/sslab-$w"
    "$TORCH_PYTHON" benches/torch/workloads.py "$w" --steps "$STEPS" --threads "$THREADS" \
      | grep '^RESULT' >> "$out/torch-$w"
  done
done

"$TORCH_PYTHON" - "$out" "${WORKLOADS[@]}" <<'PY'
import collections, statistics, sys
out, workloads = sys.argv[1], sys.argv[2:]

def parse(path):
    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in open(path):
        f = line.split()
        kv = dict(x.split("=", 1) for x in f[2:])
        key = kv.pop("shape", f[1])
        kv.pop("count", None)
        for k, v in kv.items():
            rows[key][k].append(float(v))
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in rows.items()}

print(f"| workload | metric | sslab | PyTorch | ratio (>1: sslab better) |")
print(f"|---|---|---|---|---|")
for w in workloads:
    s, t = parse(f"{out}/sslab-{w}"), parse(f"{out}/torch-{w}")
    for key in s:
        for m in s[key]:
            if m == "step_s":
                continue
            a, b = s[key][m], t[key][m]
            # memory: lower is better, so the ratio is PyTorch/sslab like the throughputs
            r = b / a if m.startswith("peak") else a / b
            print(f"| {w if key == w else key} | {m} | {a:.2f} | {b:.2f} | {r:.2f} |")
PY
