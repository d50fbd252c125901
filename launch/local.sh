#!/usr/bin/env bash
# Single node, N processes: horovodrun -np N (Gloo by default; --mpi to use Open MPI).
source "$(dirname "$0")/common.sh"
usage() {
  cat <<USAGE
Usage: launch/local.sh -n N --stage S --config C --data DIR --workdir DIR [options] [-- ARGS]

Runs the job as N Horovod processes on this machine (one per GPU, or per core on a CPU).
  -n, --np N       processes (default: number of GPUs, else 1)
  --mpi            use Open MPI as the controller instead of Gloo
$COMMON_HELP
Example:
  launch/local.sh -n 8 --stage attention --config voc_paper --data records/voc12 --workdir runs/voc
USAGE
}
NP="" CONTROLLER=--gloo
while (($#)); do
  common_arg "$@"; if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case "$1" in
    -n|--np) [[ $# -ge 2 ]] || die "$1 needs a value"; NP=$2; shift 2 ;;
    --mpi) CONTROLLER=--mpi; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
if [[ -z "$NP" ]]; then
  NP=$(nvidia-smi -L 2>/dev/null | wc -l || true); [[ "$NP" -gt 0 ]] 2>/dev/null || NP=1
fi
[[ "$NP" =~ ^[1-9][0-9]*$ ]] || die "-n $NP: expected a positive integer"
job_command
run_or_print "${HOROVODRUN[@]}" "$CONTROLLER" -np "$NP" -H "localhost:$NP" "${JOB[@]}"
