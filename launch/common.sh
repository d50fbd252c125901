# Shared by the launch scripts: the four things a user must give (stage, config, data,
# workdir), the job command they become, and --dry-run. Sourced, not run.
# shellcheck shell=bash
set -euo pipefail

CALLER_DIR="$PWD"   # relative --data/--workdir/--predict mean what they mean where the user stands
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$LAUNCH_DIR")"
ENTRY=train STAGE="" CONFIG="" DATA="" WORKDIR="" DRY_RUN=0
PYTHON="${PYTHON:-}"
EXTRA=()

# The stage names come from the stage table (dcsp_dist/core/stages.py), the only list of them.
STAGE_NAMES="$(PYTHONPATH="$REPO_DIR" "$( [[ -x "$REPO_DIR/.venv/bin/python" ]] && echo "$REPO_DIR/.venv/bin/python" || echo python3)" \
  -m dcsp_dist.core.stages)"

COMMON_HELP='Job (what every launcher needs):
  --stage S        '"${STAGE_NAMES// / | }"' | all
  --config C       preset: voc_paper | synthetic_demo | own_data | tiny_test
  --data DIR       TFRecords directory (data_tools.build)
  --workdir DIR    run directory
  --evaluate       run dcsp_dist.evaluate on --workdir instead of training (no --stage/--config)
  --predict DIR    run dcsp_dist.predict on --workdir, writing PASCAL-server PNGs to DIR
  --saliency       run data_tools.saliency over the ranks instead (no --stage/--config/--data/--workdir;
                   its flags after --, e.g. -- --images photos/ --out-dir sal/ --model isnet)
  --python PATH    interpreter on every node (default: the checkout'"'"'s .venv/bin/python)
  --dry-run        print the exact command and exit
  -- ARGS...       passed through to the job unchanged (e.g. --set attention_steps=100)'

die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 2; }

# common_arg "$@": consume one job option; sets SHIFT to the number of words used (0: not ours).
common_arg() {
  SHIFT=2
  case "$1" in
    --stage) [[ $# -ge 2 ]] || die "--stage needs a value"; STAGE=$2 ;;
    --config) [[ $# -ge 2 ]] || die "--config needs a value"; CONFIG=$2 ;;
    --data) [[ $# -ge 2 ]] || die "--data needs a value"; DATA=$2 ;;
    --workdir) [[ $# -ge 2 ]] || die "--workdir needs a value"; WORKDIR=$2 ;;
    --python) [[ $# -ge 2 ]] || die "--python needs a value"; PYTHON=$2 ;;
    --predict) [[ $# -ge 2 ]] || die "--predict needs an output directory"; ENTRY=predict; PREDICT_OUT=$2 ;;
    --evaluate) ENTRY=evaluate; SHIFT=1 ;;
    --saliency) ENTRY=saliency; SHIFT=1 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    *) SHIFT=0 ;;
  esac
}

# positive_int NAME VALUE: die unless VALUE is a positive integer.
positive_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 $2: expected a positive integer"; }

# slots_from_hosts LIST: the total slots of "host:slots,host:slots" (dies naming a bad entry).
slots_from_hosts() {
  local total=0 entry parts
  [[ -n "$1" && "$1" != ,* && "$1" != *, ]] || die "-H '$1': expected host:slots[,host:slots...]"
  IFS=, read -ra parts <<<"$1"
  for entry in "${parts[@]}"; do
    [[ "$entry" =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || die "-H $1: '$entry' is not host:slots (e.g. node1:8)"
    [[ "${entry##*:}" =~ ^[1-9][0-9]*$ ]] || die "-H $1: '$entry' has no slots (need at least 1)"
    total=$((total + ${entry##*:}))
  done
  printf '%s' "$total"
}

# slots_from_hostfile FILE: the total slots of a "host slots=N" file (dies naming a bad line).
slots_from_hostfile() {
  local total=0 line n=0 host rest
  [[ -f "$1" ]] || die "--hostfile $1: no such file"
  while IFS= read -r line || [[ -n "$line" ]]; do
    n=$((n + 1)); line="${line%%#*}"; read -r host rest <<<"$line" || true
    [[ -n "${host:-}" ]] || continue
    [[ "$rest" =~ ^slots=([1-9][0-9]*)$ ]] || die "--hostfile $1, line $n: '$line' has no slots=N (e.g. node1 slots=8)"
    total=$((total + BASH_REMATCH[1]))
  done <"$1"
  ((total > 0)) || die "--hostfile $1: no hosts in it"
  printf '%s' "$total"
}

# from_caller PATH: PATH made absolute against the caller's directory (the launchers run the
# job from the checkout, so a relative path would otherwise resolve there).
from_caller() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$CALLER_DIR" "$1" ;; esac; }

# job_command: fills JOB with the python command line for this job.
job_command() {
  [[ -n "$PYTHON" ]] || { [[ -x "$REPO_DIR/.venv/bin/python" ]] && PYTHON="$REPO_DIR/.venv/bin/python" || PYTHON=python3; }
  # Horovod's launcher, ending with the ranks' status (75 when stopped resumably) and one line
  # instead of its traceback (launch/horovodrun.py)
  HOROVODRUN=("$PYTHON" "$LAUNCH_DIR/horovodrun.py")
  if [[ "$ENTRY" == saliency ]]; then   # each rank takes its share of the images (data_tools.saliency)
    ((${#EXTRA[@]})) || die "--saliency: give data_tools.saliency's flags after --, e.g. -- --images DIR --out-dir DIR"
    JOB=("$PYTHON" -m data_tools.saliency "${EXTRA[@]}")
    return
  fi
  [[ -n "$DATA" ]] || die "--data is required"
  [[ -n "$WORKDIR" ]] || die "--workdir is required"
  DATA="$(from_caller "$DATA")" WORKDIR="$(from_caller "$WORKDIR")"
  [[ -z "${PREDICT_OUT:-}" ]] || PREDICT_OUT="$(from_caller "$PREDICT_OUT")"
  case "$ENTRY" in
    train)
      [[ -n "$STAGE" ]] || die "--stage is required"
      [[ -n "$CONFIG" ]] || die "--config is required"
      [[ " $STAGE_NAMES all " == *" $STAGE "* ]] || die "--stage $STAGE: not one of $STAGE_NAMES all"
      JOB=("$PYTHON" -m dcsp_dist.train --stage "$STAGE" --config "$CONFIG" --data "$DATA" --workdir "$WORKDIR") ;;
    evaluate)
      JOB=("$PYTHON" -m dcsp_dist.evaluate --checkpoint "$WORKDIR" --data "$DATA") ;;
    predict)
      JOB=("$PYTHON" -m dcsp_dist.predict --checkpoint "$WORKDIR" --data "$DATA" --out "$PREDICT_OUT") ;;
  esac
  JOB+=("${EXTRA[@]+"${EXTRA[@]}"}")
}

# run_or_print CMD...: print the command shell-quoted; run it unless --dry-run. TensorFlow's
# start-up lines (launch/tf_startup_noise), which every process repeats and no setting of
# TensorFlow 2.21 silences, are dropped from stderr; DCSP_TF_LOGS=1 keeps them.
run_or_print() {
  printf '%q ' "$@" | sed 's/ $//'
  printf '\n'
  if [[ "$DRY_RUN" == 0 ]]; then
    cd "$REPO_DIR"
    export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
    [[ "${DCSP_TF_LOGS:-0}" == 1 ]] && exec "$@"
    exec "$@" 2> >(drop_tf_noise >&2)
  fi
}

# drop_tf_noise: a filter (stdin to stdout) without TensorFlow's start-up lines.
drop_tf_noise() { grep --line-buffered -v -E -f "$LAUNCH_DIR/tf_startup_noise" || true; }
