#!/usr/bin/env bash
# The four experiment families of issue 10 at CPU scale on the built-in shapes data.
#   experiments/run.sh [family ...]    (default: all four; results in experiments/results/)
# Each family is one `sslab sweep`; re-running skips finished cells. SSLAB overrides the binary;
# SEEDS=N gives families 2 and 4 more seeds, SEEDS1=N family 1 (default 2); EPOCHS=N the
# length of families 1 and 2 (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
SSLAB=${SSLAB:-target/release/sslab}
[ -n "${SSLAB_SKIP_BUILD:-}" ] || cargo build --release -q -p sslab-repl
R=experiments/results
FAMILIES=("$@")
[ ${#FAMILIES[@]} -gt 0 ] || FAMILIES=(batch-size projector-width vit-instability densecl-vs-moco)

for f in "${FAMILIES[@]}"; do
  case $f in
  batch-size)
    # 1. Barlow Twins vs MoCo v2 at batch 32 and 128, three epochs each (equal epochs: the
    #    step count follows the batch), two seeds (SEEDS1), kNN and linear probe.
    for m in barlow-twins moco-v2; do
      "$SSLAB" sweep "$m" --set train.epochs="${EPOCHS:-3}" --set train.steps=0 \
        --vary train.batch_size=32,128 --seeds "${SEEDS1:-2}" --linear-probe --out "$R/batch-size/$m"
    done ;;
  projector-width)
    # 2. Barlow Twins projector width 128 / 512 / 2048 (three layers), three epochs at batch
    #    128, one seed (the 512 cell is the batch-128 cell of family 1, which has two).
    "$SSLAB" sweep barlow-twins --set train.epochs="${EPOCHS:-3}" --set train.steps=0 \
      --vary "barlow_twins.projector=[128,128,128],[512,512,512],[2048,2048,2048]" \
      --seeds "${SEEDS:-1}" --linear-probe --out "$R/projector-width" ;;
  vit-instability)
    # 3. MoCo v3 ViT-tiny: base lr 2e-3 (the preset) and 2e-2 (10x), patch projection learnable
    #    vs frozen, 80 steps; gradient spikes counted and drawn per cell.
    "$SSLAB" sweep moco-v3 --preset vit-tiny --steps 80 \
      --vary optim.lr=2e-3,2e-2 --vary model.frozen_patch_projection=false,true \
      --linear-probe --cell-figures --out "$R/vit-instability" ;;
  densecl-vs-moco)
    # 4. DenseCL vs MoCo v2: the same preset, network, data and 100 steps; only the method
    #    (DenseCL adds the dense head and loss, λ 0.5). Dense probe mIoU and kNN, one seed.
    "$SSLAB" sweep densecl --steps 100 --vary 'method="densecl","moco-v2"' --seeds "${SEEDS:-1}" \
      --dense-probe --linear-probe --out "$R/densecl-vs-moco" ;;
  *) echo "unknown family $f" >&2; exit 2 ;;
  esac
done
