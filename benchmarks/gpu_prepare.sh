#!/usr/bin/env bash
# Run HERE (a machine with a network), before benchmarks/gpu_suite.sh runs on the GPU machine,
# which has no network: download the peer effdet and the few packages its Python lacks as
# wheels for CPython 3.12 / x86-64 into .whl/ (gitignored, about 0.8 MB; carried with the run).
#
#   bash benchmarks/gpu_prepare.sh        # then: device run "bash benchmarks/gpu_suite.sh", carry [".whl"]
#
# The GPU image already has torch (CUDA), torchvision, timm, numpy, pillow, pyyaml, tqdm,
# matplotlib, onnx, onnxruntime and pytest (/work/.library/device/KINDS.md). effdet 0.4.1 needs
# omegaconf (-> antlr4-python3-runtime 4.9.*, published as a source archive only: built into a
# wheel here) and pycocotools, which our evaluator needs too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
DEST=.whl
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d "$DEST" effdet==0.4.1 omegaconf==2.3.0 pycocotools==2.0.11
"$PY" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
ls -l "$DEST"
du -sh "$DEST"
