"""Inference backends, one small class per runtime, all with the contract of :class:`.base.Backend`.

=================  ==================================================  =======
name               source                                              outputs
=================  ==================================================  =======
torch              our checkpoint / a model (PyTorch eager)            raw
torchscript        ``export --format torchscript`` file                raw
onnxruntime        ``export --format onnx [--int8]`` file              raw
onnxruntime-nms    ``export --format onnx --nms-in-graph`` file        nms
openvino           ``export --format openvino [--int8]`` .xml + .bin   raw
tflite             ``export --format tflite`` file (LiteRT)            raw
tflite-nms         ``export --format tflite --nms-in-graph`` file      nms
tensorrt           an ONNX file with ``engine="tensorrt"`` (CUDA)      raw/nms
=================  ==================================================  =======

:func:`file_kind` tells the kind of a weights file (content for checkpoints / TorchScript,
the :data:`EXPORTED` table of suffixes for the other formats); :func:`open_exported` opens
an exported file with the backend the table names (what ``Detector(path)`` does). A new
format is one row of :data:`EXPORTED` and a module with an ``opener(path, threads)``.
"""

from __future__ import annotations

import importlib
import os
import zipfile

import torch

from ...errors import ConfigError, WeightsError
from .base import Backend
from .torch_eager import TorchBackend

__all__ = ["EXPORTED", "Backend", "TorchBackend", "file_kind", "is_exported", "open_exported"]

# kind -> (file suffix, "module:opener" in this package, devices it runs on). The opener
# takes (path, threads) and returns a Backend. TorchScript is told by content (a zip with code/).
EXPORTED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "onnx": (".onnx", "onnxruntime:open_onnx", ("cpu",)),
    "openvino": (".xml", "openvino:open_openvino", ("cpu",)),
    "tflite": (".tflite", "tflite:open_tflite", ("cpu",)),
}
# engines that run a format on another runtime than its default: (kind, engine) -> opener
ENGINES: dict[tuple[str, str], str] = {("onnx", "tensorrt"): "tensorrt:open_tensorrt"}


def file_kind(path: str | os.PathLike) -> str:
    """ "checkpoint" (torch.save), "torchscript" (torch.jit.save) or a kind of :data:`EXPORTED`.

    TorchScript and checkpoint files are both zip archives; only TorchScript holds ``code/``.
    TFLite files are flatbuffers with the identifier ``TFL3`` at bytes 4..8 (checked first: one
    with metadata also reads as a zip). The other formats are told by their suffix (an ONNX file
    also by its first byte 0x08, field 1, ir_version). Anything else counts as a checkpoint (its
    reader reports what is wrong).
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
    suffix = os.path.splitext(path)[1].lower()
    for kind, (kind_suffix, _, _) in EXPORTED.items():
        if suffix == kind_suffix:
            return kind
    with open(path, "rb") as f:
        return "onnx" if f.read(1) == b"\x08" else "checkpoint"


def is_exported(path: str | os.PathLike) -> bool:
    """True for a file from ``efficientdet export`` (as opposed to a checkpoint)."""
    return file_kind(path) != "checkpoint"


def _opener(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def open_exported(
    path: str | os.PathLike,
    device: torch.device,
    half: bool = False,
    threads: int | None = None,
    engine: str | None = None,
) -> Backend:
    """The backend for an exported file (TorchScript: any device; the others: the devices in
    :data:`EXPORTED`; ``engine`` (None: the format's own runtime) picks another runtime from
    :data:`ENGINES`, e.g. "tensorrt" for ONNX on CUDA).
    Exported files run in float32: ``half`` is refused with one line."""
    path = os.fspath(path)
    kind = file_kind(path)
    if half:
        raise ConfigError(
            f"{path}: an exported file runs in float32; fix: drop --precision (it applies to PyTorch weights)"
        )
    if kind == "checkpoint":
        raise ValueError(f"{path}: a checkpoint, not an exported file")  # callers check: our bug
    if engine is not None:
        if (kind, engine) not in ENGINES:
            choices = [e for k, e in ENGINES if k == kind]
            raise ConfigError(
                f"{path}: engine {engine!r} cannot run a {kind} file; fix: "
                + (f"use engine {' or '.join(choices)} or none" if choices else "drop the engine")
            )
        return _opener(ENGINES[kind, engine])(path, threads)
    if kind == "torchscript":
        from .torchscript import TorchScriptBackend

        return TorchScriptBackend(path, device)
    _, target, devices = EXPORTED[kind]
    if device.type not in devices:
        raise ConfigError(
            f"{path}: {kind} files run on {'/'.join(devices).upper()} here; fix: use --device cpu"
            + (" (or engine tensorrt on CUDA)" if (kind, "tensorrt") in ENGINES else "")
        )
    return _opener(target)(path, threads)
