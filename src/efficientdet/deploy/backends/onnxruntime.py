"""ONNX Runtime backends: a file from ``efficientdet export --format onnx``, raw outputs or NMS inside.

Runs on CPU (CPUExecutionProvider, all graph optimisations, no busy-waiting between runs so
the post-processing in torch right after has the cores). A file exported for a fixed batch
takes batches of any size: they are run in pieces of that size, the last one padded.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ...detection.layout import flat_to_levels
from ...errors import ConfigError, WeightsError
from ..metadata import META_KEY, parse_metadata
from .base import Backend, require, run_fixed_batch

HOW_TO_EXPORT = "efficientdet export --weights CKPT --format onnx"


def open_session(path: str, threads: int | None = None, providers: list | None = None):
    """An ONNX Runtime session for ``path``, on the CPU unless ``providers`` are given (one-line
    WeightsError when it cannot load)."""
    ort = require("onnxruntime", f"{path}: running an ONNX file", "export")
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such ONNX file; fix: check the path")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(path, opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        first = (
            str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        )
        raise WeightsError(
            f"{path}: onnxruntime cannot load this file ({first}); fix: re-export it"
        ) from None


class _OnnxBackend(Backend):
    """Shared by both ONNX kinds: the session, the metadata and batch fitting."""

    input_names: tuple[str, ...] = ()

    def __init__(self, path: str | os.PathLike, session, meta: dict):
        self.path, self.session = os.fspath(path), session
        self.feature_sizes, self.num_anchors = self.apply_metadata(meta)
        got = [i.name for i in session.get_inputs()]
        if got != list(self.input_names):
            raise WeightsError(
                f"{self.path}: inputs {got} do not match the metadata ({list(self.input_names)}); "
                "fix: re-export the file"
            )
        fixed = session.get_inputs()[0].shape[0]
        self.fixed_batch = fixed if isinstance(fixed, int) else None

    def _run(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        """Run the graph on inputs with batch axis 0; a fixed-batch file runs in padded pieces."""
        return run_fixed_batch(
            lambda part: self.session.run(None, dict(zip(self.input_names, part, strict=True))),
            feeds,
            self.fixed_batch,
        )

    @staticmethod
    def _np(x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(x.detach().float().cpu().numpy())


class OnnxRawBackend(_OnnxBackend):
    """Raw outputs: the network in ONNX Runtime; decoding and NMS happen in torch afterwards."""

    name = "onnxruntime"
    outputs = "raw"
    input_names = ("images",)

    def raw(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cls_flat, box_flat = self._run([self._np(batch)])
        return flat_to_levels(
            torch.from_numpy(cls_flat),
            torch.from_numpy(box_flat),
            self.feature_sizes,
            self.num_anchors,
        )


class OnnxNMSBackend(_OnnxBackend):
    """NMS inside the graph: final detections with the IoU / score threshold / count of ``nms``."""

    name = "onnxruntime-nms"
    outputs = "nms"
    nms: dict  # always set: the file's NMS settings
    input_names = ("images", "scales", "original_sizes")

    def __init__(self, path, session, meta):
        super().__init__(path, session, meta)
        self.nms = dict(meta["nms"] or {})
        if not {"iou_threshold", "score_threshold", "max_detections"} <= set(self.nms):
            raise WeightsError(
                f"{self.path}: metadata lacks the NMS settings; fix: re-export the file"
            )

    def check_options(self, conf: float, iou: float, max_det: int) -> None:
        nms = self.nms
        if abs(iou - float(nms["iou_threshold"])) > 1e-9:
            raise ConfigError(
                f"{self.path}: NMS is inside this file at IoU {nms['iou_threshold']}; "
                f"fix: re-export with --iou {iou} or export raw outputs (no --nms-in-graph)"
            )
        if conf < float(nms["score_threshold"]):
            raise ConfigError(
                f"{self.path}: exported with score threshold {nms['score_threshold']}; "
                f"fix: use --conf >= that or re-export with --conf {conf}"
            )
        if max_det > int(nms["max_detections"]):
            raise ConfigError(
                f"{self.path}: exported with at most {nms['max_detections']} detections; "
                f"fix: use --max-det <= that or re-export with --max-det {max_det}"
            )

    def detections(
        self, batch: torch.Tensor, scales: torch.Tensor, original_sizes: torch.Tensor
    ) -> list[dict]:
        boxes, scores, classes, num = self._run(
            [self._np(batch), self._np(scales.reshape(-1)), self._np(original_sizes.reshape(-1, 2))]
        )
        out = []
        for i in range(boxes.shape[0]):
            d = int(num[i])
            out.append(
                {
                    "boxes": torch.from_numpy(boxes[i, :d].copy()),
                    "scores": torch.from_numpy(scores[i, :d].copy()),
                    "labels": torch.from_numpy(classes[i, :d].astype(np.int64)),
                }
            )
        return out


def open_onnx(path: str | os.PathLike, threads: int | None = None) -> _OnnxBackend:
    """The backend for an exported ONNX file: :class:`OnnxRawBackend` or :class:`OnnxNMSBackend` by its metadata."""
    path = os.fspath(path)
    session = open_session(path, threads)
    meta = parse_metadata(
        path, session.get_modelmeta().custom_metadata_map.get(META_KEY), HOW_TO_EXPORT
    )
    return (OnnxNMSBackend if meta["outputs"] == "nms" else OnnxRawBackend)(path, session, meta)
