#!/usr/bin/env bash
# A/B of later DCSP stages on the same data: re-run STAGE (and the stages after it, up to
# LAST) of an existing run in a new run directory whose earlier stages are links to the
# old run's, with extra settings; then evaluate the new run on val without CRF.
#
#   scripts/stage_ab.sh demo_run/run demo_run/records ab/seg600 segmentation segmentation \
#       -- --config synthetic_demo --set seed=0 --set segmentation_steps=600
#
# Prints the evaluation's per-class table; results in NEW/eval_val_nocrf/results.json.
# Used to find where the demo's adaptation round loses (docs/demo.md).
set -euo pipefail
[[ $# -ge 5 ]] || { sed -n 2,10p "$0" >&2; exit 2; }
OLD=$(cd "$1" && pwd) DATA=$2 NEW=$3 FIRST=$4 LAST=$5; shift 5
[[ "${1:-}" == "--" ]] && shift
cd "$(dirname "$0")/.."
read -ra SCHEDULE <<<"$(PYTHONPATH=. .venv/bin/python -m dcsp_dist.core.stages)"   # the stage table's names
index() { local i; for i in "${!SCHEDULE[@]}"; do [[ "${SCHEDULE[$i]}" == "$1" ]] && { echo "$i"; return; }; done
          echo "stage_ab.sh: unknown stage $1 (one of ${SCHEDULE[*]})" >&2; exit 2; }
first=$(index "$FIRST") last=$(index "$LAST")
((first <= last)) || { echo "stage_ab.sh: $FIRST comes after $LAST" >&2; exit 2; }
[[ ! -e "$NEW" ]] || { echo "stage_ab.sh: $NEW exists; give a new directory" >&2; exit 2; }
mkdir -p "$NEW"
for ((i = 0; i < first; i++)); do
  [[ -f "$OLD/${SCHEDULE[$i]}/done.json" ]] || { echo "stage_ab.sh: $OLD/${SCHEDULE[$i]} is not done" >&2; exit 2; }
  ln -s "$OLD/${SCHEDULE[$i]}" "$NEW/${SCHEDULE[$i]}"
done
export TF_CPP_MIN_LOG_LEVEL=2 HOROVOD_CYCLE_TIME="${HOROVOD_CYCLE_TIME:-1}"
LOCAL=(launch/local.sh -n "${NP:-2}")   # the one launch path
# --config is a launcher option; the rest of "$@" goes to the job.
CONFIG=synthetic_demo ARGS=()
while (($#)); do
  if [[ "$1" == --config ]]; then CONFIG=$2; shift 2; else ARGS+=("$1"); shift; fi
done
for ((i = first; i <= last; i++)); do
  "${LOCAL[@]}" --stage "${SCHEDULE[$i]}" --config "$CONFIG" --data "$DATA" --workdir "$NEW" -- "${ARGS[@]}"
done
stage=${SCHEDULE[$last]}
read -ra SEGMENTING <<<"$(PYTHONPATH=. .venv/bin/python -m dcsp_dist.core.stages --segmentation)"   # train on cues
[[ " ${SEGMENTING[*]} " == *" $stage "* ]] || exit 0
"${LOCAL[@]}" --evaluate --workdir "$NEW/$stage" --data "$DATA" -- --split val --no-crf --out "$NEW/eval_val_nocrf"
