#!/usr/bin/env bash
# Every benchmark, one after the other (they need the machine to themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD"
PY=.venv/bin/python
echo "== input pipeline";  "$PY" benchmarks/data_bench.py
echo "== model";           "$PY" benchmarks/model_bench.py
echo "== ASPP head";       "$PY" benchmarks/aspp_bench.py
echo "== weak scaling";    "$PY" benchmarks/scaling_bench.py
echo "== shard checks";    "$PY" benchmarks/verify_bench.py
echo "== integrity checks and a preemption checkpoint (ResNet-101)"; "$PY" benchmarks/integrity_bench.py
echo "== the recovery copy of the state (ResNet-101)"; "$PY" benchmarks/recovery_bench.py
ckpt="${CHECKPOINT:-demo_run/run}"
if [[ -d "$ckpt" ]]; then
  echo "== evaluation";    "$PY" benchmarks/eval_bench.py --checkpoint "$ckpt"
  records="$(dirname "$ckpt")/records"
  echo "== CRF labels";    "$PY" benchmarks/crf_bench.py --checkpoint "$ckpt" --data "$records"
else
  echo "== evaluation: skipped, run make demo first (or CHECKPOINT=run_dir)"
  echo "== CRF labels";    "$PY" benchmarks/crf_bench.py
fi
