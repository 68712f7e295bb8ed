#!/usr/bin/env bash
# Run for run: the tiny recipes of Barlow Twins, MoCo v2 and MoCo v3 (ResNet) trained in sslab
# and in a lightly + torchvision pipeline (benches/parity/lightly_run.py) on the same images,
# kNN at init and every tenth of the run, SEEDS seeds each; then one figure per method and a
# table (benches/parity/plot_runs.py). Finished runs are kept and skipped on a re-run.
#
#   benches/parity/runs.sh [method ...]      (default: barlow-twins moco-v2 moco-v3)
#
# DATA   the images, as `sslab train --data` takes them (default shapes; e.g.
#        cifar10:../shared/data/cifar10 for a folder holding CIFAR-10 .bin files). They are
#        exported once to an image folder for the lightly side.
# OUT    holds the export, every run, the figures and table.md (default runs/parity for the
#        shapes, runs/parity-KIND for another DATA, e.g. runs/parity-cifar10).
# JOBS   2 (default): the sslab runs and the lightly runs go side by side, each with half the
#        cores (a lightly run starts when its sslab run has written its config.toml); 1: one
#        run at a time on all cores.
# TORCH_PYTHON as in one_step.sh (lightly and matplotlib are installed into it if missing).
# SSLAB  a prebuilt sslab binary to train with (default: build target/release/sslab). A copy
#        keeps an hour of runs on one build while the tree is rebuilt beside them.
#
# Wall time on 2 cores (Zen 4, JOBS=2): see docs/parity.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-shapes}
KIND=${DATA%%:*}
if [ "$KIND" = shapes ]; then OUT=${OUT:-runs/parity}; else OUT=${OUT:-runs/parity-$KIND}; fi
SEEDS=${SEEDS:-"0 1"}
JOBS=${JOBS:-2}
source benches/torch-python.sh
torch_python torchvision lightly matplotlib
if [ -z "${SSLAB:-}" ]; then
  cargo build --release -q -p sslab-repl
  SSLAB=target/release/sslab
fi
CORES=$(nproc)
THREADS=$((JOBS > 1 && CORES > 1 ? CORES / 2 : CORES))
export RAYON_NUM_THREADS=$THREADS THREADS

mkdir -p "$OUT"
IMAGES="$OUT/$KIND"
[ -d "$IMAGES/test" ] || "$SSLAB" data export --data "$DATA" --out "$IMAGES"
METHODS=("$@")
[ ${#METHODS[@]} -gt 0 ] || METHODS=(barlow-twins moco-v2 moco-v3)
for m in "${METHODS[@]}"; do
  case $m in barlow-twins | moco-v2 | moco-v3) ;; *) echo "unknown method $m"; exit 2 ;; esac
done

# The sslab arguments of a method and its kNN interval (a tenth of the preset's steps).
recipe() {
  case $1 in
    barlow-twins) args=(barlow-twins); every=25 ;;        # 250 steps
    moco-v2) args=(moco-v2); every=30 ;;                  # 300 steps
    moco-v3) args=(moco-v3 --preset resnet); every=48 ;;  # 480 steps
  esac
}

sslab_runs() {
  for m in "${METHODS[@]}"; do
    recipe "$m"
    for s in $SEEDS; do
      dir="$OUT/sslab-$m-seed$s"
      if [ ! -f "$dir/summary.json" ]; then
        rm -rf "$dir"
        "$SSLAB" train "${args[@]}" --data "$DATA" --set seed="$s" --knn-every "$every" \
          --no-figures --no-log --out "$dir" > "$dir.log" 2>&1 || { tail "$dir.log"; return 1; }
      fi
      echo "sslab   $m seed $s: $(grep -h 'kNN top-1 at end' "$dir.log" || true)"
    done
  done
}

lightly_runs() {
  for m in "${METHODS[@]}"; do
    recipe "$m"
    for s in $SEEDS; do
      dir="$OUT/sslab-$m-seed$s"
      json="$OUT/lightly-$m-seed$s.json"
      if [ ! -f "$json" ]; then
        # The recipe comes from the sslab run's config.toml, written when that run starts.
        while [ ! -f "$dir/config.toml" ]; do
          [ -z "${1:-}" ] || kill -0 "$1" 2>/dev/null || { echo "no sslab run for $m seed $s"; return 1; }
          sleep 5
        done
        "$TORCH_PYTHON" benches/parity/lightly_run.py "$dir/config.toml" "$IMAGES" "$json" \
          --knn-every "$every" > "$OUT/lightly-$m-seed$s.log" 2>&1 \
          || { tail "$OUT/lightly-$m-seed$s.log"; return 1; }
      fi
      echo "lightly $m seed $s: $(tail -1 "$OUT/lightly-$m-seed$s.log")"
    done
  done
}

if [ "$JOBS" -gt 1 ]; then
  sslab_runs &
  chain=$!
  lightly_runs "$chain"
  wait "$chain"
else
  sslab_runs
  lightly_runs
fi
"$TORCH_PYTHON" benches/parity/plot_runs.py "$OUT" "$DATA" "${METHODS[@]}"
