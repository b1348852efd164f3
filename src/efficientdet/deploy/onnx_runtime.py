"""Run an ONNX file from ``efficientdet export`` with ONNX Runtime, checking its metadata first.

The file's ``metadata_props`` hold ``efficientdet`` (a JSON object, see
:func:`efficientdet.deploy.export.export_metadata`); a file without it, or for another model
layout, is refused with one line.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..errors import ConfigError, WeightsError

META_KEY = "efficientdet"
META_FORMAT = "efficientdet-export"
META_VERSION = 1


def read_onnx_metadata(path: str) -> dict:
    """The ``efficientdet`` metadata of an ONNX file (one-line WeightsError when absent or wrong)."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such ONNX file; check the path")
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise WeightsError(f"{path}: onnxruntime cannot load this file ({first}); re-export it with efficientdet export") from None
    return _parse_meta(path, session)


def _parse_meta(path: str, session) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    raw = props.get(META_KEY)
    if raw is None:
        raise WeightsError(f"{path}: no efficientdet metadata; this ONNX file was not exported by efficientdet "
                           "(export ours with: efficientdet export --weights CKPT --format onnx)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise WeightsError(f"{path}: efficientdet metadata is not valid JSON; re-export the file") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise WeightsError(f"{path}: metadata format {meta.get('format') if isinstance(meta, dict) else meta!r} "
                           f"is not {META_FORMAT!r}; re-export the file")
    if int(meta.get("version", 0)) > META_VERSION:
        raise WeightsError(f"{path}: export version {meta['version']} is newer than this library; upgrade efficientdet")
    missing = [k for k in ("config", "class_names", "image_size", "mean", "std", "outputs") if k not in meta]
    if missing:
        raise WeightsError(f"{path}: efficientdet metadata lacks {', '.join(missing)}; re-export the file")
    return meta


class OnnxModel:
    """An exported model in an ONNX Runtime session (CPU, all graph optimisations).

    ``meta``: the export metadata. Raw files: :meth:`run_raw`; files with NMS inside:
    :meth:`run_nms`. ``threads``: intra-op threads (default: ONNX Runtime's choice).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise WeightsError(f"{self.path}: no such ONNX file; check the path")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        # no busy-waiting between runs: the post-processing in torch right after needs the cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
            raise WeightsError(f"{self.path}: onnxruntime cannot load this file ({first}); re-export it") from None
        self.meta = _parse_meta(self.path, self.session)
        self.has_nms = self.meta["outputs"] == "nms"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        expected = ["images", "scales", "original_sizes"] if self.has_nms else ["images"]
        if self.input_names != expected:
            raise WeightsError(f"{self.path}: inputs {self.input_names} do not match the metadata ({expected}); re-export the file")

    def check_options(self, detector) -> None:
        """Refuse Detector options that the exported graph cannot honour."""
        if not self.has_nms:
            return
        nms = self.meta["nms"]
        if abs(detector.iou - float(nms["iou_threshold"])) > 1e-9:
            raise ConfigError(f"{self.path}: NMS is inside this file at IoU {nms['iou_threshold']}; "
                              f"re-export with --iou {detector.iou} or export raw outputs (no --nms-in-graph)")
        if detector.conf < float(nms["score_threshold"]):
            raise ConfigError(f"{self.path}: exported with score threshold {nms['score_threshold']}; "
                              f"use --conf >= that or re-export with --conf {detector.conf}")
        if detector.max_det > int(nms["max_detections"]):
            raise ConfigError(f"{self.path}: exported with at most {nms['max_detections']} detections; "
                              f"use --max-det <= that or re-export with --max-det {detector.max_det}")

    def _batch_np(self, batch: torch.Tensor) -> np.ndarray:
        fixed = self.session.get_inputs()[0].shape[0]
        if isinstance(fixed, int) and fixed != batch.shape[0]:
            raise ConfigError(f"{self.path}: exported for batch {fixed}, got {batch.shape[0]} images; "
                              "re-export with --dynamic-batch or pass that many images")
        return np.ascontiguousarray(batch.detach().float().cpu().numpy())

    def run_raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) normalised -> class logits (N, A_all, K), box deltas (N, A_all, 4) float32."""
        if self.has_nms:
            raise ConfigError(f"{self.path}: this file has NMS inside; raw outputs need an export without --nms-in-graph")
        cls, box = self.session.run(None, {"images": self._batch_np(batch)})
        return torch.from_numpy(cls), torch.from_numpy(box)

    def run_nms(self, batch: torch.Tensor, scales: torch.Tensor, original_sizes: torch.Tensor) -> list[dict]:
        """Files with NMS inside: -> per image {"boxes" (D, 4) original xyxy, "scores" (D,), "labels" (D,)}."""
        boxes, scores, classes, num = self.session.run(None, {
            "images": self._batch_np(batch),
            "scales": np.ascontiguousarray(scales.float().cpu().numpy().reshape(-1)),
            "original_sizes": np.ascontiguousarray(original_sizes.float().cpu().numpy().reshape(-1, 2)),
        })
        out = []
        for i in range(boxes.shape[0]):
            d = int(num[i])
            out.append({"boxes": torch.from_numpy(boxes[i, :d].copy()), "scores": torch.from_numpy(scores[i, :d].copy()),
                        "labels": torch.from_numpy(classes[i, :d].astype(np.int64))})
        return out
