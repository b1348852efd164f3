#!/usr/bin/env bash
# Set up benchmarks/peer/.venv: the peer implementation rwightman `effdet` 0.4.1 (+ timm
# 1.0.31, torchvision 0.28.0) on the CPU-only torch 2.13.0 wheel, for side-by-side
# benchmarks and reference checks.  See benchmarks/peer/README.md.
#
#   bash benchmarks/peer/setup_peer.sh           # create or complete the venv (idempotent)
#   bash benchmarks/peer/setup_peer.sh --force   # delete and rebuild it
#
# Never lets pip replace the CPU torch: torchvision, effdet and timm go in with --no-deps,
# the remaining dependencies under a constraints file pinning torch==2.13.0, and the torch
# build is checked (+cpu) after every step.  PyPI's torchvision 0.28.0 is the CUDA build:
# its compiled ops (torchvision/_C.so) link against libcudart.so.13, libc10_cuda.so and
# libtorch_cuda.so, which the CPU torch does not have.  This script compiles tiny stand-ins
# for those three libraries (tv_cuda_stubs/cuda_stubs.c, needs gcc) and preloads them at
# interpreter start in this venv only, so torchvision's real compiled CPU kernels (nms, ...)
# load and run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0   # the release built against torch 2.13.0 (0.29.x needs 2.14)
EFFDET_VERSION=0.4.1
TIMM_VERSION=1.0.31
# effdet: torch torchvision timm pycocotools omegaconf; timm: torch torchvision pyyaml
# huggingface_hub safetensors; torchvision: numpy pillow (torch itself already installed)
OTHER_DEPS=(numpy pillow pycocotools "omegaconf>=2.0" pyyaml huggingface_hub safetensors)

log() { echo "[setup_peer] $*"; }
die() { echo "[setup_peer] ERROR: $*" >&2; exit 1; }

if [[ "${1:-}" == "--force" ]]; then
    log "removing $VENV"
    rm -rf "$VENV"
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "$PYTHON must be Python 3.11 (the local torch wheel is cp311); set PYTHON=..."

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
FIND_LINKS=()
[[ -d /opt/wheels ]] && FIND_LINKS=(--find-links /opt/wheels)

# pip, quiet, without the harmless "Location ... is ignored" lines of this machine's config;
# a failing pip aborts the script.
pip_q() {
    local out
    if ! out="$("${PIP[@]}" install -q "$@" 2>&1)"; then
        echo "$out" | grep -v 'is ignored' >&2
        die "pip install $* failed"
    fi
    echo "$out" | grep -v 'is ignored' | grep -v '^$' || true
}

check_cpu_torch() {
    local v
    v="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
    [[ "$v" == "$TORCH_VERSION+cpu" ]] || die "torch in the peer venv is '$v', expected $TORCH_VERSION+cpu"
}

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$CONSTRAINTS"

log "1/5 torch==$TORCH_VERSION (local CPU wheel)"
pip_q "${FIND_LINKS[@]}" "torch==$TORCH_VERSION"
check_cpu_torch

log "2/5 torchvision==$TORCHVISION_VERSION, effdet==$EFFDET_VERSION, timm==$TIMM_VERSION (--no-deps)"
pip_q --no-deps "torchvision==$TORCHVISION_VERSION" "effdet==$EFFDET_VERSION" "timm==$TIMM_VERSION"
check_cpu_torch

log "3/5 other dependencies (constrained: torch==$TORCH_VERSION)"
pip_q -c "$CONSTRAINTS" "${FIND_LINKS[@]}" "${OTHER_DEPS[@]}"
check_cpu_torch
"${PIP[@]}" check || die "pip check failed"

log "4/5 CUDA-library stand-ins for torchvision/_C.so"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
STUBS="$SITE/peer_tv_cuda_stubs"
SRC="$HERE/tv_cuda_stubs"
command -v gcc >/dev/null || die "gcc is needed to build $SRC/cuda_stubs.c (apt-get install gcc)"
mkdir -p "$STUBS"
gcc -O2 -shared -fPIC -DSTUB_CUDART -Wl,-soname,libcudart.so.13 \
    -Wl,--version-script="$SRC/libcudart.map" -o "$STUBS/libcudart.so.13" "$SRC/cuda_stubs.c"
gcc -O2 -shared -fPIC -DSTUB_C10_CUDA -Wl,-soname,libc10_cuda.so \
    -o "$STUBS/libc10_cuda.so" "$SRC/cuda_stubs.c"
gcc -O2 -shared -fPIC -DSTUB_TORCH_CUDA -Wl,-soname,libtorch_cuda.so \
    -o "$STUBS/libtorch_cuda.so" "$SRC/cuda_stubs.c"
cp "$SRC/_peer_tv_stubs.py" "$SITE/_peer_tv_stubs.py"
echo "import _peer_tv_stubs" > "$SITE/zz_peer_tv_stubs.pth"

log "5/5 import checks"
"$PY" -W ignore - <<'EOF' || die "the peer venv does not work (see above)"
import torch, torchvision, timm, effdet
from importlib.metadata import version
from torchvision.ops import batched_nms, nms
b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.]])
s = torch.tensor([.9, .8, .7])
assert nms(b, s, 0.5).tolist() == [0, 2], "torchvision.ops.nms gives wrong result"
assert batched_nms(b, s, torch.tensor([0, 1, 1]), 0.5).tolist() == [0, 1, 2]
m = effdet.create_model("tf_efficientdet_d0", bench_task="predict", pretrained=False,
                        pretrained_backbone=False)
print(f"[setup_peer] OK: torch {torch.__version__}, torchvision {torchvision.__version__} "
      f"(compiled ops loaded, nms works), timm {timm.__version__}, effdet {version('effdet')}; "
      f"{type(m).__name__} built")
EOF
log "done: $VENV (check against our fixtures: $VENV/bin/python $HERE/check_peer.py)"
