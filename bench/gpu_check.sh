#!/usr/bin/env bash
# The one device check of issue 12, meant to finish in under 8 minutes on one H100:
#   1. the CUDA tests (pytest -m cuda: tests/test_cuda.py; skipped without a GPU),
#   2. bench/gpu_check.py: FLOPs per image (torch.utils.flop_counter), the throughput table of the project's own
#      DDIM path (images x steps / s and TFLOP/s at float32 b16, float32 b1024, bfloat16 b1024,
#      bfloat16 + channels_last + compile b1024), a 10^4-sample run with its wall time per stage, and base-model
#      training ms per step at batch 256 (data vs model, per-image patch loop vs batched sampler; about 30 s).
# Everything goes into one JSON ($OUT/gpu_check.json when $OUT is set, else ./gpu_check.json, or the argument).
#
# Without CUDA it runs with tiny sizes (SMALL=1 forces them on a GPU too), so it can be tried on any machine.
#
# The lent GPU machines lack some of the project's packages (diffusers, astropy, zarr, pydantic...). Download them
# here once as Python 3.12 wheels into a folder the device run carries (see bench/gpu_wheels.txt):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl -r bench/gpu_wheels.txt
# and run there with WHEELS=.whl (carry: [".whl"]):   WHEELS=.whl bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_JSON=${1:-${OUT:-.}/gpu_check.json}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)

if [ -n "${WHEELS:-}" ]; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$WHEELS"/*.whl || { echo "gpu_check: installing the wheels in $WHEELS failed" >&2; exit 1; }
    export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"
  else
    echo "gpu_check: WHEELS=$WHEELS holds no .whl files" >&2
    exit 1
  fi
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

SMALL_ARG=()
if [ "${SMALL:-0}" = "1" ]; then
  SMALL_ARG=(--small); echo "gpu_check: small sizes (SMALL=1)"
elif ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  SMALL_ARG=(--small); echo "gpu_check: small sizes (no CUDA)"
fi

start=$(date +%s)
echo "== CUDA tests"
timeout 240 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -o addopts="" \
  --junitxml="$WORK/cuda_tests.xml"
tests_rc=$?
echo "== figures"
timeout $((460 - ($(date +%s) - start))) "$PY" bench/gpu_check.py --out "$OUT_JSON" --cuda-tests "$WORK/cuda_tests.xml" \
  "${SMALL_ARG[@]}" ${SAMPLES:+--samples "$SAMPLES"}
figures_rc=$?
echo "gpu_check: CUDA tests rc=$tests_rc (5 = none collected/all skipped counts as 0 here), figures rc=$figures_rc," \
     "$(( $(date +%s) - start )) s; JSON in $OUT_JSON"
rm -rf "$WORK"
[ "$figures_rc" -eq 0 ] && { [ "$tests_rc" -eq 0 ] || [ "$tests_rc" -eq 5 ]; }
