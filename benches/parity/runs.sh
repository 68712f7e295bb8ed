#!/usr/bin/env bash
# Run for run: the tiny recipes of Barlow Twins, MoCo v2 and MoCo v3 (ResNet) trained in sslab
# and in a lightly + torchvision pipeline (benches/parity/lightly_run.py) on the same images,
# kNN at init and every tenth of the run, SEEDS seeds each; then one figure per method and a
# table (benches/parity/plot_runs.py). Finished runs are kept and skipped on a re-run.
#
#   benches/parity/runs.sh [method ...]      (default: barlow-twins moco-v2 moco-v3)
#
# OUT (default runs/parity) holds the exported images, every run, the figures and table.md;
# TORCH_PYTHON as in one_step.sh (lightly and matplotlib are installed into it if missing).
# About 2 hours on 2 cores for everything at two seeds.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/parity}
SEEDS=${SEEDS:-"0 1"}
source benches/torch-python.sh
torch_python torchvision lightly matplotlib
cargo build --release -q -p sslab-repl
SSLAB=target/release/sslab
THREADS=${THREADS:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS THREADS

mkdir -p "$OUT"
[ -d "$OUT/shapes/test" ] || "$SSLAB" data export --out "$OUT/shapes"
METHODS=("$@")
[ ${#METHODS[@]} -gt 0 ] || METHODS=(barlow-twins moco-v2 moco-v3)
for m in "${METHODS[@]}"; do
  case $m in
    barlow-twins) args=(barlow-twins); every=25 ;;  # 250 steps
    moco-v2) args=(moco-v2); every=30 ;;            # 300 steps
    moco-v3) args=(moco-v3 --preset resnet); every=48 ;;  # 480 steps
    *) echo "unknown method $m"; exit 2 ;;
  esac
  for s in $SEEDS; do
    dir="$OUT/sslab-$m-seed$s"
    if [ ! -f "$dir/summary.json" ]; then
      "$SSLAB" train "${args[@]}" --set seed="$s" --knn-every "$every" --no-figures --no-log \
        --out "$dir" > "$dir.log" 2>&1 || { tail "$dir.log"; exit 1; }
    fi
    echo "sslab   $m seed $s: $(grep -h 'kNN top-1 at end' "$dir.log" || true)"
    json="$OUT/lightly-$m-seed$s.json"
    if [ ! -f "$json" ]; then
      "$TORCH_PYTHON" benches/parity/lightly_run.py "$dir/config.toml" "$OUT/shapes" "$json" \
        --knn-every "$every" > "$OUT/lightly-$m-seed$s.log" 2>&1 \
        || { tail "$OUT/lightly-$m-seed$s.log"; exit 1; }
    fi
    echo "lightly $m seed $s: $(tail -1 "$OUT/lightly-$m-seed$s.log")"
  done
done
"$TORCH_PYTHON" benches/parity/plot_runs.py "$OUT" "${METHODS[@]}"
