"""TensorRT engine: an ONNX export run by ONNX Runtime's TensorRT execution provider on CUDA.

``Detector("model.onnx", engine="tensorrt")`` / ``efficientdet bench --engine tensorrt``. Needs
an NVIDIA GPU, ``onnxruntime-gpu`` built with TensorRT and the TensorRT libraries (``pip
install onnxruntime-gpu tensorrt``); without them it is one line naming the fix. Providers:
TensorRT first (float32; its engine cache in ``$EFFICIENTDET_TRT_CACHE`` or a folder next to
the file, so the minutes-long engine build happens once), CUDA for any op TensorRT does not
take. Inputs and outputs cross the host (numpy), like the CPU backends. Raw-output and
NMS-inside files both work (the ONNX backends' classes, another session). Written for, and
run by, ``tests/test_cuda.py`` on a GPU machine; this repository's CI has no GPU.
"""

from __future__ import annotations

import os

import torch

from ...errors import ConfigError
from ..metadata import META_KEY, parse_metadata
from .base import require
from .onnxruntime import HOW_TO_EXPORT, OnnxNMSBackend, OnnxRawBackend, _OnnxBackend, open_session

PROVIDER = "TensorrtExecutionProvider"


def trt_providers(path: str) -> list:
    """The provider list for a TensorRT session of ``path``, or one-line ConfigError when this
    machine cannot run one (no TensorRT provider in onnxruntime, or no CUDA device)."""
    ort = require("onnxruntime", f"{path}: engine tensorrt", "export")
    available = ort.get_available_providers()
    if PROVIDER not in available:
        raise ConfigError(
            f"{path}: engine tensorrt: TensorRT is not available in this onnxruntime "
            f"(providers: {', '.join(available)}); fix: on an NVIDIA GPU machine pip install "
            "onnxruntime-gpu tensorrt, or use the CPU runtimes (engine onnxruntime / openvino)"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{path}: engine tensorrt needs a CUDA GPU and none is visible; fix: run on an "
            "NVIDIA GPU machine, or use the CPU runtimes (engine onnxruntime / openvino)"
        )
    cache = os.environ.get("EFFICIENTDET_TRT_CACHE") or os.path.join(
        os.path.dirname(os.path.abspath(path)), ".trt_cache"
    )
    options = {
        "device_id": torch.cuda.current_device(),
        "trt_fp16_enable": False,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
    }
    return [(PROVIDER, options), ("CUDAExecutionProvider", {"device_id": options["device_id"]})]


def open_tensorrt(path: str | os.PathLike, threads: int | None = None) -> _OnnxBackend:
    """The ONNX backend of ``path`` on a TensorRT session (name ``tensorrt``)."""
    path = os.fspath(path)
    session = open_session(path, threads, providers=trt_providers(path))
    meta = parse_metadata(
        path, session.get_modelmeta().custom_metadata_map.get(META_KEY), HOW_TO_EXPORT
    )
    backend = (OnnxNMSBackend if meta["outputs"] == "nms" else OnnxRawBackend)(path, session, meta)
    backend.name = "tensorrt" if meta["outputs"] == "raw" else "tensorrt-nms"
    return backend
