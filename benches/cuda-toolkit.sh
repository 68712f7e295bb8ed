#!/usr/bin/env bash
# cuda-toolkit.sh — make this GPU-less machine able to build sslab with `--features cuda`
# (and `cudnn`), using only the Rust crate registry and PyPI (NVIDIA's CUDA 13.0 wheels).
#
# Usage, from the project root (the workspace whose Cargo.lock pins cudarc):
#     eval "$(benches/cuda-toolkit.sh)"      # prepares once, then prints exports
#     cargo build --release -p sslab-repl --features cuda          # or cuda,cudnn
# The binary runs on a machine with the NVIDIA driver (>= 580, CUDA 13.0) and CUDA-13
# runtime libraries (PyTorch's nvidia-* wheels): see run-on-gpu.sh beside this file.
#
# Env:
#   CUDA_CACHE=$HOME/.cache/sslab-cuda   where venv/ and cuda-root/ go (kept between builds)
#   CUDA_COMPUTE_CAP=90   90 = Hopper (H100/H200): code for sm_90a, runs ONLY on sm_90.
#                         80 -> sm_80 code, PTX JIT-able on Ampere and newer (incl. Hopper).
#   WITH_CUDNN=1          also install cuDNN 9 (needed to link feature "cudnn"); default 1
#   PYTHON=python3        interpreter used to create the venv
# Everything it prints on stdout is shell (export lines); progress goes to stderr.
set -euo pipefail
exec 3>&1 1>&2

WORK=${CUDA_CACHE:-$HOME/.cache/sslab-cuda}
PROJECT=$(pwd)
CAP=${CUDA_COMPUTE_CAP:-90}
WITH_CUDNN=${WITH_CUDNN:-1}
PY=${PYTHON:-python3}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
[ -e "$PROJECT/Cargo.toml" ] || { echo "run this from the project root (no Cargo.toml here)"; exit 2; }

# ---------------------------------------------------------------- 1. CUDA 13.0 from PyPI
# Pinned to CUDA 13.0 on purpose: driver 580 JITs PTX up to ISA 9.0 (= nvcc 13.0).
# nvcc >= 13.1 emits newer PTX that a 580 driver rejects (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
VENV=$WORK/venv
[ -x "$VENV/bin/pip" ] || "$PY" -m venv "$VENV"
PKGS=(
  nvidia-cuda-nvcc==13.0.88     # bin/nvcc, ptxas, fatbinary, nvlink, cudafe++
  nvidia-cuda-crt==13.0.88      # include/crt/* (host_config.h ...) needed by nvcc
  nvidia-nvvm==13.0.88          # nvvm/bin/cicc, libdevice
  nvidia-cuda-cccl==13.0.85     # include/cccl (cuda/std, nv/target ...)
  nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, cuda_fp16.h, cuda.h, libcudart.so.13
  nvidia-cuda-nvrtc==13.0.88    # libnvrtc.so.13 (cudarc passes -lnvrtc)
  nvidia-cublas==13.0.2.14      # libcublas.so.13, libcublasLt.so.13
  nvidia-curand==10.4.0.35      # libcurand.so.10 (CUDA 13.0)
)
[ "$WITH_CUDNN" = 1 ] && PKGS+=(nvidia-cudnn-cu13==9.21.1.3)  # libcudnn.so.9 (cudarc binds cuDNN 9.21)
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "${PKGS[@]}"
SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
NV=$SP/nvidia/cu13

# ---------------------------------------------------------------- 2. a CUDA_ROOT look-alike
# bin/ include/ nvvm/ -> the wheel's nvidia/cu13; lib64/ -> unversioned .so links (the
# wheels only ship libX.so.N) + lib64/stubs/libcuda.so (the driver API, made below).
R=$WORK/cuda-root
rm -rf "$R"; mkdir -p "$R/lib64/stubs"
for d in bin include nvvm; do ln -s "$NV/$d" "$R/$d"; done
for f in "$NV"/lib/lib*.so.*; do
  b=$(basename "$f"); ln -s "$f" "$R/lib64/$b"
  case $b in *builtins*|*.alt.*) ;; *) ln -sf "$b" "$R/lib64/${b%%.so.*}.so" ;; esac
done
if [ -e "$SP/nvidia/cudnn/lib/libcudnn.so.9" ]; then
  ln -s "$SP/nvidia/cudnn/lib/libcudnn.so.9" "$R/lib64/libcudnn.so.9"
  ln -s libcudnn.so.9 "$R/lib64/libcudnn.so"
fi
"$R/bin/nvcc" --version | tail -2

cargo fetch --manifest-path "$PROJECT/Cargo.toml"

# ---------------------------------------------------------------- 4. libcuda.so link stub
# candle-core turns on cudarc's "dynamic-linking": the binary is linked with -lcuda and
# gets NEEDED libcuda.so.1, which only the NVIDIA driver provides. No PyPI wheel ships the
# toolkit's stubs/libcuda.so, so make one: every cu* symbol cudarc's driver bindings
# declare, soname libcuda.so.1. It is never shipped; the driver's real library is used
# at run time.
# The project's `cuda` feature is usually opt-in, so cudarc is only in the resolve with all
# features on; a plain resolve is tried first.
find_cudarc() { cargo metadata --format-version 1 --manifest-path "$PROJECT/Cargo.toml" "$@" 2>/dev/null \
  | "$PY" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))' 2>/dev/null; }
CUDARC_TOML=$(find_cudarc) || CUDARC_TOML=$(find_cudarc --all-features) \
  || { echo "cudarc is not in the project's dependency graph, even with --all-features"; exit 2; }
CUDARC_SRC=$(dirname "$CUDARC_TOML")/src
# stub SONAME SYS_FILE REGEX RETURN: a shared library named SONAME (linked as lib64/stubs/
# <its name without the version>) with one function returning RETURN for every name that
# REGEX (one capture group) finds in cudarc's bindings SYS_FILE.
stub() {
  local soname=$1 sys=$2 re=$3 ret=$4 c=$WORK/${1%%.so*}_stub.c
  {
    echo "/* link-time stand-in for $soname; never run */"
    grep -oE "$re" "$sys" | sed -E "s/$re/\1/" | sort -u \
      | while read -r s; do echo "int $s(void) { return $ret; }"; done
  } > "$c"
  echo "${soname%%.so*} stub: $(grep -c '^int ' "$c") symbols from $sys"
  gcc -shared -fPIC -O0 -Wl,-soname,"$soname" -o "$R/lib64/stubs/${soname%%.so*}.so" "$c"
}
stub libcuda.so.1 "$CUDARC_SRC/driver/sys/mod.rs" '^\s+fn (cu[A-Za-z0-9_]+)\(' 999  # CUDA_ERROR_UNKNOWN
# The same for NCCL (feature `nccl`, CUDA ranks): cudarc links -lnccl, and the real
# libnccl.so.2 comes at run time from PyTorch's nvidia-nccl wheel (run-on-gpu.sh puts
# nvidia/*/lib on the library path) or NVIDIA's packages. A stub saves the 300 MB wheel here.
stub libnccl.so.2 "$CUDARC_SRC/nccl/sys/mod.rs" '^pub unsafe fn (nccl[A-Za-z0-9_]+)\(' 1  # ncclUnhandledCudaError


# ---------------------------------------------------------------- 5. the environment
# cudarc: reads CUDA_HOME/CUDA_PATH/CUDA_ROOT as link roots (lib64, lib64/stubs ...),
#         CUDARC_CUDA_VERSION (else runs `nvcc --version` from PATH).
# candle-kernels (cudaforge): nvcc from $NVCC, else PATH, else $CUDA_HOME/bin; the target
#         arch from CUDA_COMPUTE_CAP (else nvidia-smi, which fails here).
echo "toolkit ready in $R (compute capability $CAP)"
cat >&3 <<ENV_EOF
export CUDA_ROOT=$R CUDA_HOME=$R PATH=$R/bin:\$PATH
export CUDA_COMPUTE_CAP=$CAP CUDARC_CUDA_VERSION=13000
ENV_EOF
