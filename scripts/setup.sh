#!/usr/bin/env bash
# Idempotent set-up: Debian packages, .venv in the checkout, TensorFlow, then Horovod
# compiled against that TensorFlow (TensorFlow + MPI + Gloo; NCCL with GPU=1).
# Horovod 0.28.1 is built from its source package with the small patches in
# scripts/horovod-patches/ (TensorFlow 2.21 support; see docs/setup.md). The wheel is built
# once and cached outside the checkout, keyed by Horovod, TensorFlow, Python, the patch
# set and the variant (cpu, or nccl<version>-cuda<version>), so later set-ups take seconds.
#
# Settings (environment):
#   GPU=1                       build with NCCL (needs NVIDIA's CUDA 12.x toolkit: nvcc)
#   CUDA_HOME                   the CUDA toolkit (else nvcc on the PATH, else /usr/local/cuda)
#   NCCL_HOME                   a system NCCL (include/ + lib/); else /usr's, else the
#                               nvidia-nccl-cu12 wheel TensorFlow pins
#   HOROVOD_BUILD_CUDA_CC_LIST  GPU architectures to compile (default Volta..Hopper)
#   DCSP_VENV                   the environment to set up (default: .venv in the checkout)
#   DCSP_TF_PACKAGE             GPU=1 only: TensorFlow's requirement name (default tensorflow[and-cuda])
#   DCSP_ALLOW_CUDA_MAJOR       accept this CUDA major instead of TensorFlow's (build check only)
set -euo pipefail

GPU="${GPU:-0}"
HOROVOD_VERSION=0.28.1
UV_VERSION=0.13.9
TF_CUDA_MAJOR=12            # tensorflow==2.21.0 is built against CUDA 12.9
DEFAULT_CC_LIST=70,75,80,86,89,90   # Volta, Turing, Ampere (A100, A10/30x0), Ada, Hopper
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${DCSP_VENV:-$ROOT/.venv}"
CACHE="${DCSP_CACHE:-$HOME/.cache/dcsp_dist}"
PATCHES="$ROOT/scripts/horovod-patches"
PY="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- fast path: nothing changed since the last successful set-up -------------------
stamp_key="$(cat "$ROOT/requirements.txt" "$0" "$PATCHES"/*.patch | sha256sum | cut -c1-16)-gpu$GPU"
stamp="$VENV/.setup-$stamp_key"
if [[ -f "$stamp" ]] && "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("horovod") is None)' 2>/dev/null; then
  log "up to date ($VENV)"
  exit 0
fi

# --- GPU preflight: a CUDA toolkit of TensorFlow's major version, before any download ---
# shellcheck source=scripts/cuda_toolkit.sh
source "$ROOT/scripts/cuda_toolkit.sh"
if [[ "$GPU" == 1 ]]; then
  get_toolkit="install NVIDIA's CUDA $TF_CUDA_MAJOR.x toolkit (https://developer.nvidia.com/cuda-downloads; nvcc is needed) and set CUDA_HOME, or run the set-up inside an NVIDIA CUDA $TF_CUDA_MAJOR.9 devel or TensorFlow container (see Dockerfile)"
  CUDA_DIR="$(find_cuda_home)" || die "GPU=1: no CUDA toolkit found (looked at \$CUDA_HOME, \$CUDA_PATH, nvcc on the PATH, ${DCSP_CUDA_DEFAULT:-/usr/local/cuda}). TensorFlow 2.21 needs CUDA $TF_CUDA_MAJOR.x: $get_toolkit"
  CUDA_VERSION="$(cuda_version "$CUDA_DIR")" || die "GPU=1: $CUDA_DIR/bin/nvcc --version does not print a CUDA release"
  cuda_major="${CUDA_VERSION%%.*}"
  if [[ "$cuda_major" != "$TF_CUDA_MAJOR" ]]; then
    [[ "${DCSP_ALLOW_CUDA_MAJOR:-}" == "$cuda_major" ]] || die "GPU=1: the CUDA toolkit at $CUDA_DIR is $CUDA_VERSION, but TensorFlow 2.21 needs CUDA $TF_CUDA_MAJOR.x: $get_toolkit"
    log "WARNING: building with CUDA $CUDA_VERSION although TensorFlow 2.21 uses CUDA $TF_CUDA_MAJOR.x (DCSP_ALLOW_CUDA_MAJOR=$cuda_major: build check only)"
  fi
  log "CUDA toolkit: $CUDA_DIR (CUDA $CUDA_VERSION)"
  # A system NCCL wins; otherwise the nvidia-nccl-cu12 wheel that TensorFlow pins (found
  # after the requirements are installed), so that one process never loads two NCCLs.
  NCCL_INC="" NCCL_LIBDIR="" NCCL_LINK=""
  for base in "${NCCL_HOME:-}" /usr /usr/local; do
    [[ -n "$base" && -f "$base/include/nccl.h" ]] || continue
    for lib in "$base/lib" "$base/lib64" "$base/lib/$(uname -m)-linux-gnu"; do
      if compgen -G "$lib/libnccl.so*" >/dev/null || [[ -f "$lib/libnccl_static.a" ]]; then
        NCCL_INC="$base/include" NCCL_LIBDIR="$lib"; break 2
      fi
    done
  done
  [[ -n "$NCCL_INC" ]] && log "NCCL: system ($NCCL_INC, $NCCL_LIBDIR)"
  [[ -z "${NCCL_HOME:-}" || -n "$NCCL_INC" ]] || die "NCCL_HOME=$NCCL_HOME has no include/nccl.h with lib/libnccl.so*"
  [[ "${DCSP_PREFLIGHT_ONLY:-0}" == 1 ]] && { log "preflight passed"; exit 0; }
fi

# --- Debian packages: OpenMPI and the two headers TF 2.21's XLA headers include ------
apt_pkgs=(libopenmpi-dev openmpi-bin libhighwayhash-dev libfarmhash-dev patch)
[[ "$GPU" == 1 ]] && apt_pkgs+=(patchelf)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  apt_log="$(mktemp)"
  { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"; } \
    >"$apt_log" 2>&1 || { tail -n 20 "$apt_log" >&2; die "apt-get install ${missing[*]} failed"; }
  rm -f "$apt_log"
fi

# --- virtual environment and pinned Python packages (TensorFlow first) ---------------
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV" || die "could not create a virtual environment with $PY"
fi
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
export PIP_NO_WARN_SCRIPT_LOCATION=1
# uv installs from its cache by linking, so a set-up in a fresh clone takes seconds.
"$VENV/bin/uv" --version >/dev/null 2>&1 || "${PIP[@]}" install "uv==$UV_VERSION" || die "pip install uv failed"
UV=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python")
reqs="$ROOT/requirements.txt"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
if [[ "$GPU" == 1 ]]; then
  reqs="$work/requirements-gpu.txt"
  # GPU: TensorFlow with CUDA, and onnxruntime's CUDA build for saliency networks (each rank
  # on its local GPU, data_tools/saliency/onnx_runner.py).
  sed -e "s/^tensorflow-cpu==/${DCSP_TF_PACKAGE:-tensorflow[and-cuda]}==/" \
      -e "s/^onnxruntime>=/onnxruntime-gpu>=/" "$ROOT/requirements.txt" > "$reqs"
fi
log "installing Python requirements"
"${UV[@]}" -r "$reqs" || die "installing requirements.txt failed"

TF_VERSION="$("$VENV/bin/python" - <<'PYEOF' 2>/dev/null
import importlib.metadata as m
for name in ("tensorflow-cpu", "tensorflow"):
    try:
        print(m.version(name)); break
    except m.PackageNotFoundError:
        pass
else:
    raise SystemExit(1)
PYEOF
)" || die "TensorFlow is not installed in $VENV"
PY_TAG="$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
PATCH_TAG="$(cat "$PATCHES"/*.patch | sha256sum | cut -c1-8)"
variant=cpu
if [[ "$GPU" == 1 ]]; then
  if [[ -z "$NCCL_INC" ]]; then
    # The nvidia-nccl-cu12 version TensorFlow's [and-cuda] extra pins (installed with it;
    # installed here when the environment has TensorFlow without the extra).
    nccl_req="$("$VENV/bin/python" -c '
import importlib.metadata as m
print(next(r.split(";")[0].replace(" ", "") for r in m.requires("tensorflow") or [] if r.startswith("nvidia-nccl-cu12")))
' 2>/dev/null)" || die "cannot read TensorFlow's nvidia-nccl-cu12 pin (is the GPU-capable tensorflow==$TF_VERSION installed?)"
    "${UV[@]}" "$nccl_req" || die "installing $nccl_req failed"
    nccl_dir="$("$VENV/bin/python" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])')" \
      || die "$nccl_req is installed but nvidia.nccl cannot be found"
    NCCL_INC="$nccl_dir/include"
    # The wheel ships libnccl.so.2 only; CMake looks for libnccl.so.
    NCCL_LIBDIR="$work/nccl-lib" NCCL_LINK=SHARED; mkdir -p "$NCCL_LIBDIR"
    ln -sf "$nccl_dir/lib/libnccl.so.2" "$NCCL_LIBDIR/libnccl.so"
    [[ -f "$NCCL_INC/nccl.h" && -f "$nccl_dir/lib/libnccl.so.2" ]] || die "$nccl_req has no include/nccl.h or lib/libnccl.so.2 in $nccl_dir"
    log "NCCL: $nccl_req ($nccl_dir)"
  fi
  NCCL_VERSION="$(awk '/#define NCCL_(MAJOR|MINOR|PATCH)[ \t]/ {v = v (v ? "." : "") $3} END {print v}' "$NCCL_INC/nccl.h")"
  variant="nccl$NCCL_VERSION-cuda$CUDA_VERSION"
fi
wheel_dir="$CACHE/wheels/horovod-$HOROVOD_VERSION-tf$TF_VERSION-$PY_TAG-p$PATCH_TAG-$variant"

# --- Horovod: patched source, built once into a cached wheel, then installed ----------
if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
  log "building Horovod $HOROVOD_VERSION ($variant) against TensorFlow $TF_VERSION (takes ~4 minutes once)"
  mkdir -p "$work/src" "$work/wheel"
  # Never pip's cache: it would hand back a wheel of the other variant (same sdist).
  "${PIP[@]}" download --no-cache-dir --no-deps --no-binary horovod -d "$work/src" "horovod==$HOROVOD_VERSION" \
    >"$work/download.log" 2>&1 || { cat "$work/download.log" >&2; die "downloading the horovod==$HOROVOD_VERSION source failed"; }
  tar -xzf "$work/src/horovod-$HOROVOD_VERSION.tar.gz" -C "$work/src"
  src="$work/src/horovod-$HOROVOD_VERSION"
  for p in "$PATCHES"/*.patch; do
    patch -d "$src" -p1 --forward --quiet < "$p" >"$work/patch.log" 2>&1 \
      || { cat "$work/patch.log" >&2; die "patch $(basename "$p") does not apply to horovod $HOROVOD_VERSION"; }
  done
  export CMAKE_POLICY_VERSION_MINIMUM=3.5   # gloo's CMakeLists predates CMake 4
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
  export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
  export MAKEFLAGS="-j$(nproc)"
  if [[ "$GPU" == 1 ]]; then
    export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$CUDA_DIR"
    export HOROVOD_NCCL_INCLUDE="$NCCL_INC" HOROVOD_NCCL_LIB="$NCCL_LIBDIR"
    [[ -z "$NCCL_LINK" ]] || export HOROVOD_NCCL_LINK="$NCCL_LINK"
    export HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-$DEFAULT_CC_LIST}"
    export PATH="$CUDA_DIR/bin:$PATH"
    log "GPU build: CUDA $CUDA_VERSION, NCCL $NCCL_VERSION, compute capabilities $HOROVOD_BUILD_CUDA_CC_LIST"
  fi
  if ! "${PIP[@]}" wheel --no-cache-dir --no-build-isolation --no-deps -w "$work/wheel" "$src" \
        >"$work/build.log" 2>&1; then
    mkdir -p "$CACHE"; cp "$work/build.log" "$CACHE/horovod-build-$variant.log"
    tail -n 40 "$work/build.log" >&2
    die "Horovod build failed (full log: $CACHE/horovod-build-$variant.log); see docs/setup.md, 'Troubleshooting the Horovod build'"
  fi
  if [[ "${NCCL_LINK:-}" == SHARED ]]; then
    # NCCL from the nvidia-nccl-cu12 wheel: nothing puts its lib/ on the loader's path
    # (TensorFlow does not load NCCL at import), so the extension would fail with
    # "libnccl.so.2: cannot open shared object file". Point its RUNPATH at the wheel's
    # directory relative to itself (site-packages/horovod/tensorflow/ ->
    # site-packages/nvidia/nccl/lib), and drop the build's temporary link directory.
    "$VENV/bin/python" -m wheel unpack -d "$work/unpacked" "$work"/wheel/horovod-*.whl >/dev/null
    for so in "$work"/unpacked/horovod-*/horovod/tensorflow/mpi_lib*.so; do
      rpath="$(patchelf --print-rpath "$so" | tr ':' '\n' | { grep -v "^$work" || true; } | paste -sd:)"
      patchelf --set-rpath "${rpath:+$rpath:}\$ORIGIN/../../nvidia/nccl/lib" "$so"
    done
    rm -f "$work"/wheel/horovod-*.whl
    "$VENV/bin/python" -m wheel pack -d "$work/wheel" "$work"/unpacked/horovod-* >/dev/null
  fi
  mkdir -p "$(dirname "$wheel_dir")"
  tmp="$wheel_dir.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  cp "$work"/wheel/horovod-*.whl "$tmp"/
  rm -rf "$wheel_dir"; mv "$tmp" "$wheel_dir"   # publish the cache entry atomically
else
  log "using cached Horovod wheel from $wheel_dir"
fi
"${UV[@]}" --no-deps --reinstall "$wheel_dir"/horovod-*.whl || die "installing the Horovod wheel failed"

# --- bytecode: uv installs .py files only, and under PYTHONDONTWRITEBYTECODE=1 (set on
# many CI machines and containers) Python never caches what it compiles, so every process
# would compile TensorFlow's 1,800 modules again: 7 s per import instead of 3 on 2 cores,
# paid by each rank of each launch. compileall writes what is missing (10 s once, 4 s after).
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null \
  || die "compiling the virtual environment's Python files failed"

# --- check: what Horovod was built with -------------------------------------------------
# `horovodrun --check-build` takes about a minute here, so it runs once per cached wheel
# (its output is kept beside the wheel); every install then re-checks the same facts
# through Horovod's own API, which needs only one import.
wanted=(TensorFlow MPI Gloo); [[ "$GPU" == 1 ]] && wanted+=(NCCL)
if [[ ! -f "$wheel_dir/check-build.txt" ]]; then
  check="$("$VENV/bin/horovodrun" --check-build 2>&1)" || die "horovodrun --check-build failed: $check"
  for want in "${wanted[@]}"; do
    grep -Eq "\[X\] $want\$" <<<"$check" || { echo "$check" >&2; die "Horovod was built without $want"; }
  done
  printf '%s\n' "$check" > "$wheel_dir/check-build.txt"
  log "horovodrun --check-build: ${wanted[*]} built"
fi
# TensorFlow's start-up lines go to a log, shown only when the check fails.
GPU="$GPU" "$VENV/bin/python" - <<'PYEOF' 2>"$work/import.log" || { grep -v '^[IW]0000' "$work/import.log" | tail -n 5 >&2; die "Horovod's TensorFlow extension does not load, or lacks what it was built for (see $wheel_dir/check-build.txt)"; }
import os
import sys
try:
    import horovod.tensorflow as hvd
except Exception as exc:  # the one line that says why the extension does not load
    sys.exit(f"[setup] import horovod.tensorflow failed: {str(exc).splitlines()[-1]}")
built = {"MPI": hvd.mpi_built(), "Gloo": hvd.gloo_built()}
if os.environ["GPU"] == "1":
    built.update(NCCL=hvd.nccl_built(), CUDA=hvd.cuda_built())
missing = [name for name, ok in built.items() if not ok]
if missing:
    sys.exit(f"[setup] Horovod lacks {', '.join(missing)}")
if os.environ["GPU"] == "1":
    print(f"[setup] hvd.nccl_built() = {built['NCCL']}, hvd.cuda_built() = {built['CUDA']}")
PYEOF
log "Horovod $HOROVOD_VERSION: ${wanted[*]} built"

rm -f "$VENV"/.setup-*
touch "$stamp"
log "done"
