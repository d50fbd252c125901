#!/usr/bin/env bash
# make check-gpu-build: the GPU set-up's build, link and load check, on any machine.
# Runs `scripts/setup.sh` with GPU=1 in a separate environment, with the GPU-capable
# tensorflow==2.21.0 wheel (no [and-cuda] extras: nothing GPU-side is needed to import it),
# then imports horovod.tensorflow, prints nccl_built()/cuda_built() and the check-build table.
# The CUDA toolkit is the one the set-up's preflight finds; where there is none, NVIDIA's
# CUDA 13 compiler wheels from PyPI (the CUDA 12 wheels ship no nvcc).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${DCSP_CACHE:-$HOME/.cache/dcsp_dist}"
CHECK="$CACHE/gpu-build-check"
VENV="$CHECK/venv"
PY="${PYTHON:-python3}"
log() { printf '[check-gpu-build] %s\n' "$*"; }
die() { printf '[check-gpu-build] ERROR: %s\n' "$*" >&2; exit 1; }
start=$(date +%s)
# shellcheck source=scripts/cuda_toolkit.sh
source "$ROOT/scripts/cuda_toolkit.sh"

if ! cuda_home="$(find_cuda_home)"; then
  toolkit="$CHECK/cuda13"
  if [[ ! -x "$toolkit/bin/python" ]]; then
    log "no CUDA toolkit on this machine: installing NVIDIA's CUDA 13 compiler wheels into $toolkit"
    "$PY" -m venv "$toolkit"
    "$toolkit/bin/python" -m pip -q --disable-pip-version-check install \
      nvidia-cuda-nvcc nvidia-cuda-crt nvidia-cuda-runtime nvidia-cuda-cccl || die "installing the CUDA 13 wheels failed"
  fi
  cuda_home="$("$toolkit/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
  [[ -e "$cuda_home/lib64" ]] || ln -s lib "$cuda_home/lib64"   # CMake's FindCUDAToolkit looks in lib64
fi
version="$(cuda_version "$cuda_home")" || die "$cuda_home/bin/nvcc does not report a CUDA release"
major="${version%%.*}"
if [[ "$major" != 12 ]]; then
  log "NOTE: the toolkit is CUDA $version ($cuda_home), not TensorFlow 2.21's CUDA 12: the set-up's major-version test is overridden for this check only"
  export DCSP_ALLOW_CUDA_MAJOR="$major"
  # CUDA 13 dropped Volta (sm_70); a shorter list also keeps the check quick.
  export HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-80,90}"
fi
log "NOTE: this proves that Horovod's NCCL build compiles, links and loads against TensorFlow 2.21; it does not prove CUDA 12 run-time behaviour on a GPU"

CUDA_HOME="$cuda_home" GPU=1 DCSP_VENV="$VENV" DCSP_TF_PACKAGE=tensorflow bash "$ROOT/scripts/setup.sh"

"$VENV/bin/python" - <<'PYEOF' 2>"$CHECK/import.log" || { tail -n 5 "$CHECK/import.log" >&2; die "horovod.tensorflow does not load, or lacks NCCL/CUDA (TensorFlow's output: $CHECK/import.log)"; }
import sys
import horovod.tensorflow as hvd
print(f"[check-gpu-build] hvd.nccl_built() = {hvd.nccl_built()}")
print(f"[check-gpu-build] hvd.cuda_built() = {hvd.cuda_built()}")
sys.exit(0 if hvd.nccl_built() and hvd.cuda_built() else 1)
PYEOF
table="$("$VENV/bin/horovodrun" --check-build 2>&1)" || die "horovodrun --check-build failed: $table"
printf '%s\n' "$table"
for want in TensorFlow NCCL; do
  grep -Eq "\[X\] $want\$" <<<"$table" || die "horovodrun --check-build does not list $want"
done
wheel="$(ls -1 "$CACHE"/wheels/horovod-*nccl*/horovod-*.whl 2>/dev/null | head -n 1)"
log "passed in $(( $(date +%s) - start )) s; environment $(du -sh "$VENV" | cut -f1), wheel $(du -h "$wheel" | cut -f1) ($wheel)"
