#!/usr/bin/env bash
# The GPU check (issue 19): at most 8 minutes on one CUDA device (an H200 when lent).
#
#   tools/gpu_check.sh          # on the device: the CUDA tests, then tools/gpu_check.py
#   tools/gpu_check.sh --dry    # anywhere: syntax, the test collection and the Python parts on the CPU
#
# 1. the tests that skip without CUDA (tests/formats: CUDA against CPU for casts and integers, ~21 cases;
#    tests/test_feeding.py: batches on another device than the model), within 170 s;
# 2. tools/gpu_check.py: eager and compiled (Triton) kernels against the CPU bit for bit for every
#    kernel family (casts, integers, MX, NVFP4, ABFP, stochastic rounding), bandwidth as a fraction
#    of a device-to-device copy on 256M elements (e4m3, int8, mxfp4, nvfp4; target >= 0.8), and
#    resnet50 batch 64 bf16 overhead ratios, within 290 s.
# Prints everything; exits non-zero when a test or an agreement failed.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
TESTS="tests/formats/test_floating.py tests/formats/test_integer.py tests/test_feeding.py"
status=0
if [ "${1:-}" = "--dry" ]; then
  bash -n "$0" || exit 1
  "$PY" -m pytest -q -p no:cacheprovider --collect-only $TESTS -k "cuda or device" >/dev/null || status=1
  timeout 300 "$PY" tools/gpu_check.py --dry || status=1
  exit $status
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
  || exit 2
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
echo "== CUDA tests"
timeout 170 "$PY" -m pytest -q -p no:cacheprovider -rs $TESTS -k "cuda or device" || status=1
echo "== kernels, bandwidth, overhead"
timeout 290 "$PY" tools/gpu_check.py || status=1
exit $status
