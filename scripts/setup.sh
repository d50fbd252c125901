#!/usr/bin/env bash
# Idempotent set-up: Debian packages, .venv in the checkout, TensorFlow, then Horovod
# compiled against that TensorFlow (TensorFlow + MPI + Gloo; NCCL with GPU=1).
# The Horovod wheel is built once and cached outside the checkout, keyed by
# Horovod, TensorFlow and Python versions, so later set-ups take seconds.
set -euo pipefail

GPU="${GPU:-0}"
HOROVOD_VERSION=0.28.1
UV_VERSION=0.13.9
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv"
CACHE="${DCSP_CACHE:-$HOME/.cache/dcsp_dist}"
PY="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- fast path: nothing changed since the last successful set-up -------------------
stamp_key="$(cat "$ROOT/requirements.txt" "$0" | sha256sum | cut -c1-16)-gpu$GPU"
stamp="$VENV/.setup-$stamp_key"
if [[ -f "$stamp" ]] && "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("horovod") is None)' 2>/dev/null; then
  log "up to date ($VENV)"
  exit 0
fi

# --- Debian packages: OpenMPI and the two headers TF 2.21's XLA headers include ------
apt_pkgs=(libopenmpi-dev openmpi-bin libhighwayhash-dev libfarmhash-dev)
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
if [[ "$GPU" == 1 ]]; then
  reqs="$(mktemp)"; trap 'rm -f "$reqs"' EXIT
  sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' "$ROOT/requirements.txt" > "$reqs"
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
variant=cpu; [[ "$GPU" == 1 ]] && variant=nccl
wheel_dir="$CACHE/wheels/horovod-$HOROVOD_VERSION-tf$TF_VERSION-$PY_TAG-$variant"

# --- Horovod: build once into a cached wheel, then install it ------------------------
if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
  log "building Horovod $HOROVOD_VERSION against TensorFlow $TF_VERSION (takes ~5 minutes once)"
  build="$(mktemp -d)"
  # TF >= 2.19 moved xla_builder.h; Horovod 0.28.1 still includes the old path.
  shim="$build/include/tensorflow/compiler/xla/client"
  mkdir -p "$shim" "$build/wheel"
  echo '#include "xla/hlo/builder/xla_builder.h"' > "$shim/xla_builder.h"
  export CPLUS_INCLUDE_PATH="$build/include${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
  export CMAKE_POLICY_VERSION_MINIMUM=3.5   # gloo's CMakeLists predates CMake 4
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
  export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
  export MAKEFLAGS="-j$(nproc)"
  [[ "$GPU" == 1 ]] && export HOROVOD_GPU_OPERATIONS=NCCL
  if ! "${PIP[@]}" wheel --no-build-isolation --no-deps --no-binary horovod \
        -w "$build/wheel" "horovod==$HOROVOD_VERSION" >"$build/build.log" 2>&1; then
    tail -n 40 "$build/build.log" >&2
    die "Horovod build failed (full log: $build/build.log); see README 'Troubleshooting the Horovod build'"
  fi
  mkdir -p "$(dirname "$wheel_dir")"
  tmp="$wheel_dir.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  cp "$build"/wheel/horovod-*.whl "$tmp"/
  rm -rf "$wheel_dir"; mv "$tmp" "$wheel_dir"   # publish the cache entry atomically
  rm -rf "$build"
else
  log "using cached Horovod wheel from $wheel_dir"
fi
"${UV[@]}" --no-deps --reinstall "$wheel_dir"/horovod-*.whl || die "installing the Horovod wheel failed"

# --- check: Horovod must show TensorFlow, MPI and Gloo -------------------------------
# `horovodrun --check-build` takes about a minute here, so it runs once per cached wheel
# (its output is kept beside the wheel); every install then re-checks the same three facts
# through Horovod's own API, which needs only one import.
if [[ ! -f "$wheel_dir/check-build.txt" ]]; then
  check="$("$VENV/bin/horovodrun" --check-build 2>&1)" || die "horovodrun --check-build failed: $check"
  for want in TensorFlow MPI Gloo; do
    grep -Eq "\[X\] $want\$" <<<"$check" || { echo "$check" >&2; die "Horovod was built without $want"; }
  done
  printf '%s\n' "$check" > "$wheel_dir/check-build.txt"
  log "horovodrun --check-build: TensorFlow, MPI and Gloo built"
fi
"$VENV/bin/python" - <<'PYEOF' 2>/dev/null || die "Horovod's TensorFlow extension does not load, or lacks MPI/Gloo (see $wheel_dir/check-build.txt)"
import sys
import horovod.tensorflow as hvd
missing = [name for name, built in (("MPI", hvd.mpi_built()), ("Gloo", hvd.gloo_built())) if not built]
sys.exit(1 if missing else 0)
PYEOF
log "Horovod $HOROVOD_VERSION: TensorFlow, MPI and Gloo built"

rm -f "$VENV"/.setup-*
touch "$stamp"
log "done"
