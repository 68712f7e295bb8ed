#!/usr/bin/env bash
# One training step of each method in sslab and in PyTorch (the official code's formulas), on
# the same weights and the same two views; prints `PARITY <case> worst_rel=... tensors=...`.
#
#   benches/parity/one_step.sh [case ...]   (default: every case below)
#
# TORCH_PYTHON: a Python with torch (default: benches/.venv, made as benches/compare.sh makes
# it). torchvision and safetensors are installed into it when missing. The sslab side runs
# `sslab trace-step` on tiny configs (batch 16, 32 px, ResNet-18 at torchvision's width 64),
# the learning-rate warmup off so that the step moves the weights; docs/parity.md has the
# method-by-method notes and the last results.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/torch-python.sh
torch_python torchvision safetensors
cargo build --release -q -p sslab-repl
SSLAB=target/release/sslab

CASES=("$@")
[ ${#CASES[@]} -gt 0 ] || CASES=(barlow-twins moco-v2 densecl moco-v3-resnet moco-v3-vit)
# Small, and the same everywhere: 16 images of 32 px, no warmup, a 100-step schedule.
COMMON=(--set data.shapes.train=64 --set data.shapes.test=16 --set optim.warmup_epochs=0
        --set train.epochs=0 --set train.steps=100 --set diagnostics.grad_spikes=false)
# MoCo's ShuffleBN draws a random permutation: compared with it off (one BN group).
MOCO=(--set moco.bn_splits=1 --set moco.shuffle_bn=false --set train.batch_size=16
      --set moco.queue_size=64 --set model.width=64)
out=${PARITY_OUT:-$(mktemp -d)}
[ -n "${PARITY_OUT:-}" ] || trap 'rm -rf "$out"' EXIT
status=0
for c in "${CASES[@]}"; do
  case $c in
    # Residual branches live: with the preset's zero-initialised last BN of each block, their
    # convolutions get no gradient at the first step and the check would not reach them.
    barlow-twins) args=(barlow-twins --set train.batch_size=16 --set model.width=64
                        --set 'barlow_twins.projector=[256,256,256]'
                        --set model.zero_init_residual=false) ;;
    moco-v2) args=(moco-v2 "${MOCO[@]}") ;;
    # Seed 1: at seed 0 one ReLU input of the dense head is -5.6e-7, and float32 rounding puts
    # it above zero (flipping it in the float64 reference brings that gradient to 1.9e-6).
    densecl) args=(densecl "${MOCO[@]}" --set seed=1) ;;
    moco-v3-resnet) args=(moco-v3 --preset resnet --set train.batch_size=16 --set model.width=64
                          --set moco_v3.hidden=512) ;;
    moco-v3-vit) args=(moco-v3 --preset vit-tiny --set train.batch_size=16
                       --set moco_v3.hidden=512) ;;
    *) echo "unknown case $c"; exit 2 ;;
  esac
  # The check: every convolution as im2col + GEMM. Then the same step with the Winograd
  # kernels sslab trains with, reported beside it (their rounding, not a formula, differs).
  "$SSLAB" trace-step "${args[@]}" "${COMMON[@]}" --device cpu --no-winograd \
    --out "$out/$c.safetensors" >/dev/null
  "$TORCH_PYTHON" benches/parity/one_step.py "$c" "$out/$c.safetensors" || status=1
  "$SSLAB" trace-step "${args[@]}" "${COMMON[@]}" --device cpu --out "$out/$c-winograd.safetensors" >/dev/null
  "$TORCH_PYTHON" benches/parity/one_step.py "$c" "$out/$c-winograd.safetensors" WINOGRAD | grep '^WINOGRAD' || true
done
exit $status
