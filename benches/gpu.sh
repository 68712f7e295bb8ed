#!/usr/bin/env bash
# On the GPU machine (see benches/gpu-prepare.sh): sslab on CUDA vs PyTorch on the same card,
# workload by workload, then a CPU-vs-CUDA loss check. Writes $OUT/gpu.log and prints the
# RESULT lines and a table last.
set -uo pipefail
cd "$(dirname "$0")/.."
G=.gpu
LOG=${OUT:-/tmp}/gpu.log
run() { echo "\$ $*" | tee -a "$LOG"; timeout 150 "$@" 2>&1 | tee -a "$LOG" | grep -E '^RESULT|^step|error' ; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$LOG"
for w in barlow-twins moco-v2 moco-v3-vit; do
  for b in 64 256; do
    run $G/run-on-gpu.sh $G/sslab bench $w --device cuda --steps 10 --batch $b
    run python3 $G/torch/workloads.py $w --device cuda --steps 10 --batch $b
    run python3 $G/torch/workloads.py $w --device cuda --steps 10 --batch $b --amp --channels-last
  done
done
# The same seed on both devices: the first losses must agree to float tolerance.
for m in barlow-twins moco-v2 moco-v3; do
  for d in cpu cuda; do
    run $G/run-on-gpu.sh $G/sslab train $m --steps 3 --device $d --no-init-knn --no-figures \
      --set train.log_every=1 --out /tmp/check-$m-$d
  done
done
echo "== summary"; grep -E '^(RESULT|\$)' "$LOG" | grep -B1 RESULT
