# Sourced by the benchmark scripts: sets TORCH_PYTHON to a Python with PyTorch. An existing
# TORCH_PYTHON is kept; otherwise benches/.venv is created on first use with the PyPI wheel
# (~5 GB with its CUDA libraries; it runs on the CPU too). Extra packages the caller names are
# installed into it when one of them is missing: `torch_python torchvision lightly`.
torch_python() {
  if [ -z "${TORCH_PYTHON:-}" ]; then
    if [ ! -x benches/.venv/bin/python ]; then
      python3 -m venv benches/.venv
      benches/.venv/bin/pip install -q torch
    fi
    TORCH_PYTHON=benches/.venv/bin/python
  fi
  if [ $# -gt 0 ]; then
    local imports
    imports=$(printf '%s,' "$@" | sed 's/,$//; s/safetensors/safetensors.torch/')
    "$TORCH_PYTHON" -c "import $imports" 2>/dev/null \
      || "$TORCH_PYTHON" -m pip install -q --disable-pip-version-check "$@"
  fi
}
