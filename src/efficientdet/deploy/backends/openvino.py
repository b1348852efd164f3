"""OpenVINO backend: an IR (``NAME.xml`` + ``NAME.bin``) from ``efficientdet export --format openvino``.

Runs on the OpenVINO CPU plugin in float32 precision (``INFERENCE_PRECISION_HINT f32``: on
CPUs with bf16 units the plugin would otherwise compute a float32 model in bf16); an int8
IR (NNCF) runs its quantised layers in int8. Raw outputs, post-processed in torch like the
ONNX raw backend. The .xml's metadata (rt_info ``efficientdet``) must be ours and name the
size and SHA-256 of its .bin: a missing or mismatched .bin is refused in one line.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ...detection.layout import flat_to_levels
from ...errors import WeightsError
from ..metadata import META_KEY, parse_metadata
from .base import Backend, require, run_fixed_batch

HOW_TO_EXPORT = "efficientdet export --weights CKPT --format openvino"


def read_metadata(core: Any, path: str) -> tuple[Any, dict]:
    """(ov.Model, checked metadata) of an IR; one-line WeightsError for a missing or foreign
    file, a missing .bin or a .bin from another export."""
    from ..export_openvino import bin_path, file_sha256

    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such OpenVINO file; fix: check the path")
    weights = bin_path(path)
    if not weights.is_file():
        raise WeightsError(
            f"{path}: its weights file {weights.name} is missing; "
            "fix: keep the .xml and .bin of one export together (or export again)"
        )
    try:
        model = core.read_model(path)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: OpenVINO cannot read this IR ({first}); fix: re-export it"
        ) from None
    raw = model.get_rt_info(META_KEY).astype(str) if model.has_rt_info(META_KEY) else None
    meta = parse_metadata(path, raw, HOW_TO_EXPORT)
    if meta["outputs"] != "raw":  # only raw OpenVINO files exist; say so rather than misread one
        raise WeightsError(f"{path}: outputs {meta['outputs']!r} are not raw; fix: re-export it")
    expected = meta.get("weights") or {}
    if weights.stat().st_size != expected.get("bytes") or file_sha256(weights) != expected.get(
        "sha256"
    ):
        raise WeightsError(
            f"{path}: {weights.name} is not the weights file this .xml was exported with "
            "(size or SHA-256 differs); fix: keep the .xml and .bin of one export together "
            "(or export again)"
        )
    return model, meta


class OpenVINOBackend(Backend):
    """The IR compiled for the CPU device: normalised batch -> per-level raw outputs (float32)."""

    name = "openvino"
    outputs = "raw"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        ov = require("openvino", f"{os.fspath(path)}: running an OpenVINO IR", "openvino")
        self.path = os.fspath(path)
        core = ov.Core()
        model, meta = read_metadata(core, self.path)
        self.feature_sizes, self.num_anchors = self.apply_metadata(meta)
        self.precision = str(meta.get("precision", "fp32"))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None

    def _infer(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feeds)  # outputs are views of the request's buffers: copy
        return [np.array(result[out]) for out in self.compiled.outputs]

    def raw(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        cls_flat, box_flat = run_fixed_batch(self._infer, [x], self.fixed_batch)
        return flat_to_levels(
            torch.from_numpy(cls_flat),
            torch.from_numpy(box_flat),
            self.feature_sizes,
            self.num_anchors,
        )


def open_openvino(path: str | os.PathLike, threads: int | None = None) -> OpenVINOBackend:
    """The backend for an IR exported by ``efficientdet export --format openvino``."""
    return OpenVINOBackend(path, threads)
