#!/usr/bin/env bash
# The acceptance check for the first GPU (issue 20), under 8 minutes on one H100/H200:
#
#     bash benchmarks/gpu_check.sh OUT_DIR            # OUT_DIR/gpu_check.json: every figure, tagged
#     bash benchmarks/gpu_check.sh OUT_DIR --quick    # small CPU steps (CPU-only machines, the test)
#
# benchmarks/gpu_check.py says what each step measures. Without CUDA the GPU steps are skipped, each
# with its reason, and the rest runs. Exit code 1 when a step failed.
set -euo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [--quick]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
"$python" -c "import torch" 2> /dev/null || { echo "gpu_check.sh: $python cannot import torch: activate the environment xdc is installed in (source .venv/bin/activate) or set PYTHON=.venv/bin/python" >&2; exit 2; }
exec "$python" "$here/benchmarks/gpu_check.py" "$out" "$@"
