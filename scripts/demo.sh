#!/usr/bin/env bash
# The main job end to end on the built-in synthetic dataset, under horovodrun on this machine:
# synthetic VOC-layout data -> TFRecords -> DCSP schedule (--stage all) -> evaluation of the
# first and the final segmentation stage with CRF -> what each stage contributes.
# SEED drives every random draw (data, weights, augmentation, shuffling); the same SEED
# gives the same figures. Run twice, it reuses what it already built. SYNTH adds options of
# data_tools.synth (e.g. SYNTH="--num-train 40 --style other --object-scale 1.3") to try the
# recipe on data it was not tuned on.
set -euo pipefail
cd "$(dirname "$0")/.."
NP="${NP:-2}"
SEED="${SEED:-0}"
DIR="${DEMO_DIR:-demo_run}"
SYNTH="${SYNTH:-}"
PY=.venv/bin/python
LOCAL=(launch/local.sh -n "$NP")     # the one launch path: horovodrun --gloo on this machine
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The demo's tiny model takes ~0.5 s a step: Horovod's own 1 ms cycle suits it better than
# the 50 ms dcsp_dist uses on CPU-only ranks for full-size models (see docs/benchmarks.md).
export HOROVOD_CYCLE_TIME="${HOROVOD_CYCLE_TIME:-1}"
# TensorFlow's start-up lines, repeated by every process, that no setting silences.
quiet() { grep --line-buffered -v -E -f launch/tf_startup_noise || true; }   # as launch/common.sh's filter
start=$(date +%s)
# Phase marks (name, start/end, time) for demo_summary.py's table of where the time goes.
mark() { mkdir -p "$DIR"; printf '%s %s %s\n' "$1" "$2" "$(date +%s.%N)" >> "$DIR/phases.txt"; }

if [[ -f "$DIR/seed" && "$(cat "$DIR/seed")" != "$SEED" ]]; then
  echo "error: $DIR holds the demo of seed $(cat "$DIR/seed"), not $SEED; use DEMO_DIR=another_dir or make clean" >&2
  exit 2
fi
held=$(cat "$DIR/synth_options" 2>/dev/null || true)   # none: the default data
if [[ -f "$DIR/seed" && "$held" != "$SYNTH" ]]; then
  echo "error: $DIR holds data made with SYNTH=\"$held\", not \"$SYNTH\"; use DEMO_DIR=another_dir" >&2
  exit 2
fi
rm -f "$DIR/phases.txt"
mark data start
if [[ ! -f "$DIR/voc/ImageSets/Segmentation/val.txt" ]]; then
  echo "== synthetic dataset (seed $SEED${SYNTH:+, $SYNTH})"
  mkdir -p "$DIR"; echo "$SEED" > "$DIR/seed"; echo "$SYNTH" > "$DIR/synth_options"
  # shellcheck disable=SC2086  # SYNTH is a list of flags
  "$PY" -m data_tools.synth --out "$DIR/voc" --num-train 400 --num-val 60 --seed "$SEED" $SYNTH
fi
for split in train val; do
  if [[ ! -f "$DIR/records/$split.manifest.json" ]]; then
    echo "== TFRecords: $split"
    "$PY" -m data_tools.build --root "$DIR/voc" --split-list "$DIR/voc/ImageSets/Segmentation/$split.txt" \
      --split "$split" --out "$DIR/records" --num-shards 8 --quiet 2>&1 | quiet
  fi
done
mark data end

echo "== DCSP schedule on $NP ranks: attention -> cues -> segmentation -> adapt -> segmentation"
mark train start
"${LOCAL[@]}" --stage all --config synthetic_demo --data "$DIR/records" --workdir "$DIR/run" -- --set "seed=$SEED"
mark train end

echo "== evaluation with dense CRF on $NP ranks: first segmentation stage, then the final model (one launch)"
mark evaluate start
"${LOCAL[@]}" --evaluate --workdir "$DIR/run/segmentation" --data "$DIR/records" -- \
  --split val --out "$DIR/run/eval_val_segmentation" --checkpoint "$DIR/run"
mark evaluate end

"$PY" scripts/demo_summary.py "$DIR" "$SEED" "$(( $(date +%s) - start ))" 2>&1 | quiet
echo "demo finished in $(( $(date +%s) - start )) s; TensorBoard: launch/tensorboard.sh $DIR/run"
