"""Inference backends, one small class per runtime, all with the contract of :class:`.base.Backend`.

=================  ==========================================  =======
name               source                                      outputs
=================  ==========================================  =======
torch              our checkpoint / a model (PyTorch eager)    raw
torchscript        ``export --format torchscript`` file        raw
onnxruntime        ``export --format onnx`` file               raw
onnxruntime-nms    ``export --format onnx --nms`` file         nms
tflite             ``export --format tflite`` file (LiteRT)    raw
tflite-nms         ``export --format tflite --nms`` file       nms
=================  ==========================================  =======

:func:`file_kind` tells the kind of a weights file from its content; :func:`open_exported`
opens an exported file with the matching backend (what ``Detector(path)`` does).
"""

from __future__ import annotations

import os
import zipfile

import torch

from ...errors import ConfigError, WeightsError
from .base import Backend
from .torch_eager import TorchBackend

__all__ = ["Backend", "TorchBackend", "file_kind", "is_exported", "open_exported"]


def file_kind(path: str | os.PathLike) -> str:
    """ "checkpoint" (torch.save), "torchscript" (torch.jit.save), "onnx" or "tflite", from the file's content.

    TorchScript and checkpoint files are both zip archives; only TorchScript holds ``code/``.
    ONNX files are protobuf: a ``.onnx`` name, or a first byte 0x08 (field 1, ir_version).
    TFLite files are flatbuffers with the identifier ``TFL3`` at bytes 4..8 (checked first: one
    with metadata also reads as a zip). Anything else counts as a checkpoint (its reader reports
    what is wrong).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weights file; fix: check the path")
    with open(path, "rb") as f:
        if f.read(8)[4:8] == b"TFL3":
            return "tflite"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "checkpoint"
        return (
            "torchscript"
            if any("/code/" in n or n.startswith("code/") for n in names)
            else "checkpoint"
        )
    if path.lower().endswith(".onnx"):
        return "onnx"
    with open(path, "rb") as f:
        return "onnx" if f.read(1) == b"\x08" else "checkpoint"


def is_exported(path: str | os.PathLike) -> bool:
    """True for a TorchScript, ONNX or TFLite file (as opposed to a checkpoint)."""
    return file_kind(path) != "checkpoint"


def open_exported(
    path: str | os.PathLike, device: torch.device, half: bool = False, threads: int | None = None
) -> Backend:
    """The backend for an exported file (TorchScript: any device; ONNX: CPU). Exported files run in
    float32: ``half`` is refused with one line, as is a CUDA device for ONNX."""
    path = os.fspath(path)
    kind = file_kind(path)
    if half:
        raise ConfigError(
            f"{path}: an exported file runs in float32; fix: drop --precision (it applies to PyTorch weights)"
        )
    if kind == "torchscript":
        from .torchscript import TorchScriptBackend

        return TorchScriptBackend(path, device)
    if kind == "onnx":
        if device.type != "cpu":
            raise ConfigError(
                f"{path}: ONNX files run on CPU here (onnxruntime); fix: use --device cpu"
            )
        from .onnxruntime import open_onnx

        return open_onnx(path, threads)
    if kind == "tflite":
        if device.type != "cpu":
            raise ConfigError(
                f"{path}: TFLite files run on CPU here (LiteRT); fix: use --device cpu"
            )
        from .tflite import open_tflite

        return open_tflite(path, threads)
    raise ValueError(
        f"{path}: a checkpoint, not an exported file"
    )  # callers check file_kind first: our bug
