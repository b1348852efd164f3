#!/usr/bin/env bash
# Issue #16's GPU suite: CUDA tests, training and inference throughput against effdet, gradient
# checkpointing memory, the torchrun path; JSON + log under $OUT (see benchmarks/gpu_suite.py).
#
# On the GPU machine (no network; prepare here first with `bash benchmarks/gpu_prepare.sh`):
#     device run: command "bash benchmarks/gpu_suite.sh", carry [".whl"], timeout_s 600
# Here, without a GPU, every stage on the CPU with tiny sizes (about 10 minutes on 2 busy cores):
#     PYTHON=.venv/bin/python bash benchmarks/gpu_suite.sh --dry-run --out runs/gpu_suite_dry
#
# Options after the script name go to gpu_suite.py (--budget-s, --stages, --steps, --repeats).
# Output folder: --out, else $OUT (set on the GPU machine), else runs/gpu_suite.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
SITE="${TMPDIR:-/tmp}/efficientdet-gpu-site"
if [[ " $* " != *" --dry-run "* ]] && compgen -G ".whl/*.whl" > /dev/null \
        && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    # the carried wheels (effdet and what its Python lacks, built for CPython 3.12), installed
    # beside, not into, that Python; elsewhere the peer comes from benchmarks/peer/.venv
    if ! log="$("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl 2>&1)"; then
        echo "error: .whl: the carried wheels did not install ($(echo "$log" | grep -m1 -i error)); fix: rebuild them with benchmarks/gpu_prepare.sh" >&2
        exit 2
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
args=("$@")
if [[ " ${args[*]} " != *" --out "* ]]; then
    args+=(--out "${OUT:-runs/gpu_suite}")
fi
exec "$PY" benchmarks/gpu_suite.py "${args[@]}"
