# Sourced by scripts/setup.sh and scripts/check_gpu_build.sh: where the CUDA toolkit is.
# find_cuda_home prints the toolkit directory holding bin/nvcc: $CUDA_HOME, $CUDA_PATH,
# nvcc on the PATH, then $DCSP_CUDA_DEFAULT (default /usr/local/cuda); fails if none.
find_cuda_home() {
  local candidate nvcc
  for candidate in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
    [[ -n "$candidate" && -x "$candidate/bin/nvcc" ]] && { echo "$candidate"; return 0; }
  done
  if nvcc="$(command -v nvcc 2>/dev/null)"; then
    # nvcc names its own toolkit (also when the PATH holds a wrapper script).
    candidate="$(cd /tmp && "$nvcc" --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n 1)"
    [[ -n "$candidate" && -x "$candidate/nvcc" ]] && { dirname "$candidate"; return 0; }
    dirname "$(dirname "$(readlink -f "$nvcc")")"; return 0
  fi
  candidate="${DCSP_CUDA_DEFAULT:-/usr/local/cuda}"
  [[ -x "$candidate/bin/nvcc" ]] && { echo "$candidate"; return 0; }
  return 1
}

# cuda_version DIR prints the release nvcc reports ("12.9"), or fails.
cuda_version() {
  local v
  v="$("$1/bin/nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')"
  [[ -n "$v" ]] && echo "$v"
}
