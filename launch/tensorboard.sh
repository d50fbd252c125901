#!/usr/bin/env bash
# TensorBoard on a run directory, bound to localhost unless told otherwise.
set -euo pipefail
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
usage() {
  cat <<USAGE
Usage: launch/tensorboard.sh RUN_DIR [--port P] [--host H] [--dry-run]

Serves every stage's scalars and image strips (and eval results) under RUN_DIR.
  --port P   default 6006
  --host H   default 127.0.0.1 (only this machine; use an SSH tunnel: ssh -L 6006:localhost:6006 node)
USAGE
}
RUN="" PORT=6006 HOST=127.0.0.1 DRY_RUN=0
while (($#)); do
  case "$1" in
    --port) [[ $# -ge 2 ]] || { echo "tensorboard.sh: error: --port needs a value" >&2; exit 2; }; PORT=$2; shift 2 ;;
    --host) [[ $# -ge 2 ]] || { echo "tensorboard.sh: error: --host needs a value" >&2; exit 2; }; HOST=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "tensorboard.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) RUN=$1; shift ;;
  esac
done
[[ -n "$RUN" ]] || { echo "tensorboard.sh: error: give the run directory" >&2; exit 2; }
[[ -d "$RUN" || "$DRY_RUN" == 1 ]] || { echo "tensorboard.sh: error: $RUN: no such directory" >&2; exit 2; }
TB="$REPO_DIR/.venv/bin/tensorboard"; [[ -x "$TB" ]] || TB=tensorboard
cmd=("$TB" --logdir "$RUN" --host "$HOST" --port "$PORT")
printf '%q ' "${cmd[@]}" | sed 's/ $//'; printf '\n'
[[ "$DRY_RUN" == 1 ]] || exec "${cmd[@]}"
