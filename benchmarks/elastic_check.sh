#!/usr/bin/env bash
# Elastic restart, end to end, on one machine (CPU, gloo; about a minute or two on 2 cores):
#
#     bash benchmarks/elastic_check.sh OUT_DIR
#
# Runs benchmarks/elastic.py (needs only what `pip install xdc` installs; tests/test_multinode.py
# runs the same scenarios under pytest): 8 small generated clips; a reference run with 2 ranks
# under one torchrun agent; then the same run as a 2-node job (two agents on 127.0.0.1, c10d
# rendezvous, --max-restarts 1) whose second worker is SIGKILLed inside an epoch. torchrun
# relaunches the job, the relaunched `xdc pretrain --out RUN` continues from
# RUN/checkpoints/last.pt, and the final pseudo-labels are compared with the reference's. Prints
#     elastic: resumed after kill, labels equal: yes
# (or what differed) and exits non-zero when it did not resume or the labels differ.
set -euo pipefail
out=${1:?usage: elastic_check.sh OUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
"$python" -c "import torch" 2> /dev/null || { echo "elastic_check.sh: $python cannot import torch: activate the environment xdc is installed in (source .venv/bin/activate) or set PYTHON=.venv/bin/python" >&2; exit 2; }
exec "$python" "$here/benchmarks/elastic.py" "$out"
