#!/usr/bin/env bash
# Set up benchmarks/tflite/.venv: the TFLite converter (TensorFlow 2.21 CPU + onnx2tf), the LiteRT
# interpreter (ai-edge-litert) and MediaPipe (the real client test), layered over the project's
# .venv (torch, numpy 2, onnx, this package) through a .pth file, so torch is not installed twice.
# Separate from .venv because TensorFlow would turn on the TF 2.15 tests marked `tensorflow`
# (they live in benchmarks/official/.venv) and MediaPipe brings opencv-contrib-python, whose cv2
# would shadow .venv's opencv-python-headless.
#
#   bash benchmarks/tflite/setup_tflite.sh           # create or complete the venv (idempotent)
#   bash benchmarks/tflite/setup_tflite.sh --force   # delete and rebuild it
#
# Needs the project's .venv first (`make install`); BASE_VENV=... points elsewhere.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
BASE_VENV="${BASE_VENV:-$ROOT/.venv}"
REQS=(
    "tensorflow-cpu==2.21.0" "tf-keras==2.21.0" "onnx2tf==1.28.8" "onnx-graphsurgeon>=0.5"
    "sng4onnx>=1.0" "sne4onnx>=1.0" "ai-edge-litert==2.3.0" "mediapipe==1.2.3"
)
STAMP="$VENV/.installed-$(echo "${REQS[*]}" | md5sum | cut -c1-12)"

log() { echo "[setup_tflite] $*"; }
die() { echo "[setup_tflite] ERROR: $*" >&2; exit 1; }

if [[ "${1:-}" == "--force" ]]; then
    log "removing $VENV"
    rm -rf "$VENV"
fi
if [[ -f "$STAMP" ]]; then
    log "up to date: $VENV"
    exit 0
fi
[[ -x "$BASE_VENV/bin/python" ]] || die "no $BASE_VENV: run 'make install' first (or set BASE_VENV=...)"
BASE_SITE="$("$BASE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[[ -x "$VENV/bin/python" ]] || { log "creating $VENV over $BASE_VENV"; "$BASE_VENV/bin/python" -m venv "$VENV"; }
PY="$VENV/bin/python"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# the base venv's packages come after this venv's own (a .pth appends to sys.path)
echo "$BASE_SITE" > "$SITE/_efficientdet_base_venv.pth"

log "1/2 ${REQS[*]}"
out="$("$PY" -m pip --disable-pip-version-check install -q "${REQS[@]}" 2>&1)" \
    || { echo "$out" | grep -v 'is ignored' >&2; die "pip install failed"; }
log "2/2 import check"
"$PY" - <<'PYEOF' || die "the TFLite venv does not work (see above)"
import numpy, tensorflow as tf, torch, onnx2tf, ai_edge_litert, mediapipe, efficientdet
print(f"[setup_tflite] OK: tensorflow {tf.__version__}, torch {torch.__version__}, numpy {numpy.__version__}, mediapipe {mediapipe.__version__}")
PYEOF
touch "$STAMP"
log "done: $VENV"
