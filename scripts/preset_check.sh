#!/usr/bin/env bash
# A preset on a small set, end to end: --stage all on 2 ranks, then the final model evaluated
# on val with and without the dense CRF; prints one line (docs/divergence.md's table).
#
#   scripts/preset_check.sh OUT PRESET records DIR            # existing records (e.g. diverging_40)
#   scripts/preset_check.sh OUT PRESET synth N SEED STYLE     # a data_tools.synth set of N training images
set -euo pipefail
[[ $# -ge 4 ]] || { sed -n 2,6p "$0" >&2; exit 2; }
D=$1 CONFIG=$2 KIND=$3; shift 3
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2 HOROVOD_CYCLE_TIME="${HOROVOD_CYCLE_TIME:-1}"
PY=.venv/bin/python
mkdir -p "$D"
if [[ $KIND == records ]]; then REC=$1; else
  N=$1 SEED=$2 STYLE=$3
  [[ -d $D/voc ]] || "$PY" -m data_tools.synth --out "$D/voc" --num-train "$N" --num-val 30 --seed "$SEED" --style "$STYLE" >/dev/null
  for s in train val; do
    [[ -f $D/records/$s.manifest.json ]] || "$PY" -m data_tools.build --root "$D/voc" \
      --split-list "$D/voc/ImageSets/Segmentation/$s.txt" --split "$s" --out "$D/records" --quiet >/dev/null
  done
  REC=$D/records
fi
status=0
launch/local.sh -n 2 --stage all --config "$CONFIG" --data "$REC" --workdir "$D/run" >"$D/train.log" 2>&1 || status=$?
if ((status == 0)); then
  launch/local.sh -n 2 --evaluate --workdir "$D/run" --data "$REC" -- --split val --out "$D/eval_crf" >"$D/eval.log" 2>&1
  launch/local.sh -n 2 --evaluate --workdir "$D/run" --data "$REC" -- --split val --no-crf --out "$D/eval_nocrf" >>"$D/eval.log" 2>&1
fi
"$PY" - "$D" "$status" <<'PY'
import json, os, sys
d, status = sys.argv[1], int(sys.argv[2])
events = []
for stage in ("attention", "segmentation", "segmentation_adapted"):
    path = f"{d}/run/{stage}/done.json"
    if os.path.exists(path):
        events += [f"{stage} step {e['step']}" for e in json.load(open(path)).get("recoveries", [])]
def miou(p):
    return f"{json.load(open(p))['miou']:.3f}" if os.path.exists(p) else "-"
print(f"{os.path.basename(d)}: exit {status}, roll-backs {len(events)}{' (' + ', '.join(events) + ')' if events else ''}, "
      f"final mIoU with CRF {miou(d + '/eval_crf/results.json')}, without {miou(d + '/eval_nocrf/results.json')}")
PY
