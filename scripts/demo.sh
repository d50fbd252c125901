#!/usr/bin/env bash
# The main job end to end on the built-in synthetic dataset, under horovodrun on this machine:
# synthetic VOC-layout data -> TFRecords -> DCSP schedule (--stage all) -> evaluation with CRF.
# Run twice, it reuses what it already built (data, records, finished stages).
set -euo pipefail
cd "$(dirname "$0")/.."
NP="${NP:-2}"
DIR="${DEMO_DIR:-demo_run}"
PY=.venv/bin/python
HVD=(.venv/bin/horovodrun --gloo -np "$NP" -H "localhost:$NP")
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The demo's tiny model takes ~0.5 s a step: Horovod's own 1 ms cycle suits it better than
# the 50 ms dcsp_dist uses on CPU-only ranks for full-size models (see README, Benchmarks).
export HOROVOD_CYCLE_TIME="${HOROVOD_CYCLE_TIME:-1}"
start=$(date +%s)

if [[ ! -f "$DIR/voc/ImageSets/Segmentation/val.txt" ]]; then
  echo "== synthetic dataset"
  "$PY" -m data_tools.synth --out "$DIR/voc" --num-train 400 --num-val 60 --seed 0
fi
for split in train val; do
  if [[ ! -f "$DIR/records/$split.manifest.json" ]]; then
    echo "== TFRecords: $split"
    "$PY" -m data_tools.build --root "$DIR/voc" --split-list "$DIR/voc/ImageSets/Segmentation/$split.txt" \
      --split "$split" --out "$DIR/records" --num-shards 8 --quiet
  fi
done

echo "== DCSP schedule on $NP ranks: attention -> cues -> segmentation -> adapt -> segmentation"
"${HVD[@]}" "$PY" -m dcsp_dist.train --stage all --config synthetic_demo \
  --data "$DIR/records" --workdir "$DIR/run"

echo "== evaluation with dense CRF on $NP ranks"
"${HVD[@]}" "$PY" -m dcsp_dist.evaluate --checkpoint "$DIR/run" --data "$DIR/records" --split val

"$PY" - "$DIR" <<'PYEOF'
import json, sys
d = sys.argv[1]
ev = json.load(open(f"{d}/run/eval_val/results.json"))
cues = json.load(open(f"{d}/run/cues/cues.json"))
adapt = json.load(open(f"{d}/run/adapt/cues.json"))
print("\n== summary")
print(f"initial cues   mIoU vs. train masks: {100 * cues['miou']:.1f}")
print(f"adapted cues   mIoU vs. train masks: {100 * adapt['miou']:.1f}")
print(f"trained model  mIoU on val (CRF):    {100 * ev['miou']:.1f}  ({ev['num_images']} images)")
PYEOF
echo "demo finished in $(( $(date +%s) - start )) s; TensorBoard: launch/tensorboard.sh $DIR/run"
