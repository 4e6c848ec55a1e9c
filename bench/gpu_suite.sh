#!/usr/bin/env bash
# Every GPU claim in one run (see bench/gpu_suite.py): on the lent GPU machine,
#   bash bench/gpu_suite.sh --out "$OUT"          # writes $OUT/gpu_suite.json
# here, on the CPU, the same steps at tiny sizes:
#   bash bench/gpu_suite.sh --dry-run --out /tmp/gpu-dry
# The GPU image lacks a few packages; bench/gpu_wheels.sh downloads them into .whl/ here, and
# the device call carries .whl (they are installed into /tmp/site, never into the image).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_suite: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_suite.py "$@"
