#!/usr/bin/env bash
# Set up benchmarks/tflite/.venv: the `tflite` extra (litert-torch, the converter; ai-edge-quantizer
# for fp16/int8; the LiteRT interpreter ai-edge-litert; mediapipe for the ObjectDetector metadata and
# the real-client test), layered over the project's .venv (torch, numpy 2, onnx, this package)
# through a .pth file, so torch is not installed twice (pip sees it and keeps it).
# Separate from .venv because mediapipe brings opencv-contrib-python, whose cv2 would shadow
# .venv's opencv-python-headless, and litert-torch brings jax, transformers and torchao.
#
#   bash benchmarks/tflite/setup_tflite.sh           # create or complete the venv (idempotent)
#   bash benchmarks/tflite/setup_tflite.sh --force   # delete and rebuild it
#
# Needs the project's .venv first (`make install`); BASE_VENV=... points elsewhere.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${TFLITE_VENV:-$HERE/.venv}"
BASE_VENV="${BASE_VENV:-$ROOT/.venv}"
# the versions of pyproject.toml's [tflite] extra, pinned (litert-torch 0.10 allows torch < 2.15)
REQS=("litert-torch==0.10.0" "ai-edge-litert==2.3.0" "ai-edge-quantizer==0.10.0" "mediapipe==1.2.3")
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
# the base venv's packages come after this venv's own; addsitedir (not a bare path line) also
# runs the base's own .pth files, among them the editable install of this package
echo "import site; site.addsitedir('$BASE_SITE')" > "$SITE/_efficientdet_base_venv.pth"

log "1/2 ${REQS[*]}"
out="$("$PY" -m pip --disable-pip-version-check install -q "${REQS[@]}" 2>&1)" \
    || { echo "$out" | grep -v 'is ignored' >&2; die "pip install failed"; }
log "2/2 import check"
"$PY" - <<'PYEOF' || die "the TFLite venv does not work (see above)"
import importlib.metadata as md, numpy, torch, litert_torch, ai_edge_litert, ai_edge_quantizer, mediapipe, efficientdet
print(f"[setup_tflite] OK: litert-torch {md.version('litert-torch')}, ai-edge-litert {md.version('ai-edge-litert')}, "
      f"mediapipe {md.version('mediapipe')}, torch {torch.__version__}, numpy {numpy.__version__}")
PYEOF
touch "$STAMP"
log "done: $VENV"
