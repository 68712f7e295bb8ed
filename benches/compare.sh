#!/usr/bin/env bash
# sslab vs PyTorch on this machine, workload by workload, both measured in this one run.
#
#   benches/compare.sh [--precision bf16] [workload ...]
#                                         (default: conv barlow-twins moco-v2 moco-v3-vit)
#
# --precision bf16: sslab's bf16 path (`sslab bench --precision bf16`: bf16 matrix products,
# f32 Winograd convolutions on the CPU) against PyTorch's CPU autocast bf16 (`--amp`), with
# PyTorch f32 eager run in the same rounds for a second ratio.
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
PRECISION=f32
if [ "${1:-}" = --precision ]; then
  PRECISION=${2:?--precision takes f32 or bf16}
  shift 2
fi
case $PRECISION in f32) AMP=() ;; bf16) AMP=(--amp) ;; *) echo "precision $PRECISION: f32 or bf16"; exit 2 ;; esac
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
    "$SSLAB" bench "$w" --steps "$STEPS" --precision "$PRECISION" | grep '^RESULT' >> "$out/sslab-$w"
    "$TORCH_PYTHON" benches/torch/workloads.py "$w" --steps "$STEPS" --threads "$THREADS" "${AMP[@]}" \
      | grep '^RESULT' >> "$out/torch-$w"
    if [ "$PRECISION" = bf16 ]; then
      "$TORCH_PYTHON" benches/torch/workloads.py "$w" --steps "$STEPS" --threads "$THREADS" \
        | grep '^RESULT' >> "$out/torch32-$w"
    fi
  done
done

echo "precision: $PRECISION (PyTorch: ${AMP[*]:-f32 eager}), $THREADS threads, $ROUNDS rounds of $STEPS steps"
"$TORCH_PYTHON" - "$out" "${WORKLOADS[@]}" <<'PY'
import collections, os, statistics, sys
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

bf16 = os.path.exists(f"{out}/torch32-{workloads[0]}")
if bf16:
    print("| workload | metric | sslab bf16 | PyTorch autocast bf16 | ratio (>1: sslab better) | PyTorch f32 | ratio to f32 |")
    print("|---|---|---|---|---|---|---|")
else:
    print("| workload | metric | sslab | PyTorch | ratio (>1: sslab better) |")
    print("|---|---|---|---|---|")
for w in workloads:
    s, t = parse(f"{out}/sslab-{w}"), parse(f"{out}/torch-{w}")
    t32 = parse(f"{out}/torch32-{w}") if bf16 else {}
    for key in s:
        for m in s[key]:
            if m == "step_s":
                continue
            a, b = s[key][m], t[key][m]
            # memory: lower is better, so the ratio is PyTorch/sslab like the throughputs
            ratio = lambda b: b / a if m.startswith("peak") else a / b
            row = f"| {w if key == w else key} | {m} | {a:.2f} | {b:.2f} | {ratio(b):.2f} |"
            if bf16:
                c = t32[key][m]
                row += f" {c:.2f} | {ratio(c):.2f} |"
            print(row)
PY
