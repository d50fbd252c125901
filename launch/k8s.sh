#!/usr/bin/env bash
# Kubernetes: render launch/k8s/mpijob.yaml (Kubeflow MPI operator) and kubectl apply it.
source "$(dirname "$0")/common.sh"
usage() {
  cat <<USAGE
Usage: launch/k8s.sh --image IMAGE [--workers W --gpus-per-worker G --pvc CLAIM --name NAME]
                     --stage S --config C --data DIR --workdir DIR [--dry-run] [-- ARGS]

--data and --workdir are paths inside the pods (the PVC is mounted at /data).
  --image IMAGE          container image holding the checkout at /workspace/dcsp_dist, set up with GPU=1
  --workers W            worker pods (default 2)
  --gpus-per-worker G    GPUs and ranks per worker (default 8)
  --pvc CLAIM            PersistentVolumeClaim with records and runs (default dcsp-data)
  --name NAME            MPIJob name (default dcsp-<stage>)
  --grace SECONDS        pods' termination grace period: time to checkpoint after SIGTERM (default 300)
$COMMON_HELP
--dry-run prints the manifest and the kubectl command instead of applying it.
USAGE
}
IMAGE="" WORKERS=2 GPUS=8 PVC=dcsp-data NAME="" GRACE=300
PYTHON="${PYTHON:-/workspace/dcsp_dist/.venv/bin/python}"
while (($#)); do
  common_arg "$@"; if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case "$1" in
    --image) [[ $# -ge 2 ]] || die "$1 needs a value"; IMAGE=$2; shift 2 ;;
    --workers) [[ $# -ge 2 ]] || die "$1 needs a value"; WORKERS=$2; shift 2 ;;
    --gpus-per-worker) [[ $# -ge 2 ]] || die "$1 needs a value"; GPUS=$2; shift 2 ;;
    --pvc) [[ $# -ge 2 ]] || die "$1 needs a value"; PVC=$2; shift 2 ;;
    --name) [[ $# -ge 2 ]] || die "$1 needs a value"; NAME=$2; shift 2 ;;
    --grace) [[ $# -ge 2 ]] || die "$1 needs a value"; GRACE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -n "$IMAGE" ]] || die "--image is required"
positive_int --grace "$GRACE"
[[ "$WORKERS" =~ ^[1-9][0-9]*$ && "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--workers and --gpus-per-worker must be positive integers"
job_command
NAME="${NAME:-dcsp-${STAGE:-$ENTRY}}"; NAME="${NAME//_/-}"
mpirun_args=(-np "$((WORKERS * GPUS))" --allow-run-as-root -bind-to none -map-by slot
             -mca pml ob1 -mca btl ^openib -x NCCL_DEBUG=INFO -x LD_LIBRARY_PATH -x PATH
             -x PYTHONPATH=/workspace/dcsp_dist "${JOB[@]}")
json_args=$("$(command -v python3)" -c 'import json,sys; print(", ".join(json.dumps(a) for a in sys.argv[1:]))' "${mpirun_args[@]}")
manifest=$(sed -e "s|@NAME@|$NAME|" -e "s|@IMAGE@|$IMAGE|g" -e "s|@WORKERS@|$WORKERS|" \
               -e "s|@GPUS_PER_WORKER@|$GPUS|g" -e "s|@PVC@|$PVC|" -e "s|@GRACE@|$GRACE|g" \
               -e "s|@RELAY_GRACE@|$((GRACE > 20 ? GRACE - 20 : GRACE))|" \
               -e "s|@MPIRUN_ARGS@|${json_args//|/\\|}|" "$LAUNCH_DIR/k8s/mpijob.yaml")
if [[ "$DRY_RUN" == 1 ]]; then
  printf '%s\n---\n# apply with:\nkubectl apply -f -\n' "$manifest"
  exit 0
fi
printf '%s\n' "$manifest" | kubectl apply -f -
