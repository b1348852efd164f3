#!/usr/bin/env bash
# Set up benchmarks/official/.venv: TensorFlow 2.15 (CPU) next to the CPU torch wheel and this
# package, for the side-by-side check against the official google/automl EfficientDet
# (benchmarks/bench_official.py) and for the TF tests of load_weights(source="automl")
# (tests/test_weights_automl.py).  Separate from .venv because TF 2.15 needs numpy < 2.
#
#   bash benchmarks/official/setup_official.sh           # create or complete the venv (idempotent)
#   bash benchmarks/official/setup_official.sh --force   # delete and rebuild it
#
# The automl source itself is not installed: bench_official.py takes the path of a
# google/automl checkout (git clone https://github.com/google/automl).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TF_VERSION=2.15.1
STAMP="$VENV/.installed-tf$TF_VERSION-torch$TORCH_VERSION"

log() { echo "[setup_official] $*"; }
die() { echo "[setup_official] ERROR: $*" >&2; exit 1; }

if [[ "${1:-}" == "--force" ]]; then
    log "removing $VENV"
    rm -rf "$VENV"
fi
if [[ -f "$STAMP" ]]; then
    log "up to date: $VENV"
    exit 0
fi
"$PYTHON" -c 'import sys; assert (3, 9) <= sys.version_info[:2] <= (3, 11), sys.version' \
    || die "$PYTHON must be Python 3.9-3.11 (TensorFlow 2.15 has no wheels for newer); set PYTHON=..."
[[ -x "$VENV/bin/python" ]] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PY="$VENV/bin/python"

pip_q() {
    local out
    if ! out="$("$PY" -m pip --disable-pip-version-check install -q "$@" 2>&1)"; then
        echo "$out" | grep -v 'is ignored' >&2
        die "pip install $* failed"
    fi
}

log "1/3 torch==$TORCH_VERSION (CPU), tensorflow-cpu==$TF_VERSION, numpy<2"
# torch pinned as in the Makefile (resolves to the CPU wheel where one is provided)
pip_q "torch==$TORCH_VERSION" "tensorflow-cpu==$TF_VERSION" "numpy<2"
log "2/3 this package (editable) and pytest; not the [automl] extra, which would add a second TF"
pip_q -e "$ROOT" "tensorflow-cpu==$TF_VERSION" "numpy<2" "pytest>=7.4" six
log "3/3 import check"
"$PY" - <<'PYEOF' || die "the official venv does not work (see above)"
import numpy, tensorflow as tf, torch, efficientdet
print(f"[setup_official] OK: tensorflow {tf.__version__}, torch {torch.__version__}, numpy {numpy.__version__}")
PYEOF
touch "$STAMP"
log "done: $VENV"
