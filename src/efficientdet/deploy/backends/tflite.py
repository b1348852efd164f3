"""LiteRT backends: a file from ``efficientdet export --format tflite``, raw outputs or NMS inside,
run by the ``ai-edge-litert`` Interpreter (no TensorFlow).

The file takes one (1, H, W, 3) NHWC image: float32 normalised, or uint8 pixels for a
``--uint8-input`` export (the normalised batch is turned back into pixels here, rounded);
int8-quantised inputs/outputs are (de)quantised with the tensor's own scale and zero point.
Batches of any size run one image at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from ...config import ModelConfig, parse_image_size
from ...detection.anchors import AnchorGenerator
from ...detection.boxes import clip_boxes
from ...detection.layout import flat_to_levels
from ...errors import ConfigError, WeightsError
from ..metadata import parse_metadata
from .base import Backend

HOW_TO_EXPORT = "efficientdet export --weights CKPT --format tflite"


def _interpreter(path: str, threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ConfigError(
            f"{path}: running TFLite files needs ai-edge-litert; fix: pip install 'efficientdet[tflite]'"
        ) from None
    try:
        interpreter = Interpreter(model_path=path, num_threads=threads or None)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: the LiteRT interpreter cannot load this file ({first}); fix: re-export it"
        ) from None
    return interpreter


def read_metadata(path: str) -> dict:
    """The checked efficientdet metadata of a .tflite file (one line naming the fix when absent)."""
    from ..export_tflite import read_tflite_metadata

    return parse_metadata(path, read_tflite_metadata(path), HOW_TO_EXPORT)


class TFLiteBackend(Backend):
    """Raw outputs of a TFLite file: the network in LiteRT; decoding and NMS in torch afterwards."""

    name = "tflite"
    outputs = "raw"
    fixed_batch = 1
    config: ModelConfig  # always set: read from the file
    image_size: tuple[int, int]

    def __init__(self, path: str | os.PathLike, meta: dict, threads: int | None = None):
        from ...factory import config_from_dict

        self.path, self.meta = os.fspath(path), meta
        self.config = config_from_dict(meta["config"])
        hw = parse_image_size(meta["image_size"])
        if hw is None:
            raise WeightsError(f"{self.path}: metadata has no image size; fix: re-export the file")
        self.image_size = hw
        self.class_names, self.category_ids = meta["class_names"], meta.get("category_ids")
        self.uint8_input = bool((meta.get("tflite") or {}).get("uint8_input"))
        self.feature_sizes = AnchorGenerator(self.config.anchors).feature_sizes(self.image_size)
        self.interpreter = _interpreter(self.path, threads)
        (self.input,) = self.interpreter.get_input_details()
        want = (1, self.image_size[0], self.image_size[1], 3)
        if tuple(self.input["shape"]) != want:
            raise WeightsError(
                f"{self.path}: input shape {tuple(self.input['shape'])} is not {want} (metadata); "
                "fix: re-export the file"
            )
        self._mean = np.asarray(self.config.mean, np.float32).reshape(1, 1, 1, 3)
        self._std = np.asarray(self.config.std, np.float32).reshape(1, 1, 1, 3)
        if self.outputs == "raw":
            self._find_raw_outputs()

    def _find_raw_outputs(self) -> None:
        """The class (1, A_all, K) and box (1, A_all, 4) outputs (by shape; in order when K == 4)."""
        outs = self.interpreter.get_output_details()
        num_anchors = sum(h * w for h, w in self.feature_sizes) * self.config.anchors.num_anchors
        k = self.config.num_classes
        shapes = [tuple(o["shape"]) for o in outs]
        if sorted(shapes) != sorted([(1, num_anchors, k), (1, num_anchors, 4)]):
            raise WeightsError(
                f"{self.path}: outputs {shapes} are not (1, {num_anchors}, {k}) and "
                f"(1, {num_anchors}, 4); fix: re-export the file"
            )
        if k == 4 or shapes[0] == (1, num_anchors, k):  # the graph returns (class, box)
            self.cls_out, self.box_out = outs
        else:
            self.box_out, self.cls_out = outs

    def _feed(self, image_nhwc: np.ndarray) -> np.ndarray:
        """One normalised (1, H, W, 3) float32 image -> the input tensor the file wants."""
        dtype = self.input["dtype"]
        if self.uint8_input:
            image_nhwc = np.rint(image_nhwc * self._std + self._mean)  # back to 0-255 pixels
        else:
            scale, zero = self.input.get("quantization", (0.0, 0))
            if np.issubdtype(dtype, np.integer) and scale:
                image_nhwc = np.rint(image_nhwc / scale + zero)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            image_nhwc = np.clip(image_nhwc, info.min, info.max)
        return image_nhwc.astype(dtype)

    def _get(self, detail: dict) -> np.ndarray:
        """An output as a float32 array of its own (``get_tensor`` returns a copy), dequantised
        in place when the file quantised it."""
        out = self.interpreter.get_tensor(detail["index"])
        scale, zero = detail.get("quantization", (0.0, 0))
        if np.issubdtype(out.dtype, np.integer) and scale:
            out = out.astype(np.float32)
            out -= zero
            out *= scale
        return out.astype(np.float32, copy=False)

    def _invoke(self, batch: torch.Tensor) -> Iterator[int]:
        """Run the file on each image of a normalised (N, 3, H, W) batch; yields its index after each run."""
        images = batch.detach().float().cpu().permute(0, 2, 3, 1).numpy()  # -> (N, H, W, 3)
        for i in range(images.shape[0]):
            self.interpreter.set_tensor(self.input["index"], self._feed(images[i : i + 1]))
            self.interpreter.invoke()
            yield i

    def raw(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cls_parts, box_parts = [], []
        for _ in self._invoke(batch):
            cls_parts.append(self._get(self.cls_out))
            box_parts.append(self._get(self.box_out))
        return flat_to_levels(
            torch.from_numpy(_stack(cls_parts)),
            torch.from_numpy(_stack(box_parts)),
            self.feature_sizes,
            self.config.anchors.num_anchors,
        )


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Per-image (1, ...) outputs -> (N, ...); one image's array as it is (no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class TFLiteNMSBackend(TFLiteBackend):
    """A file exported with ``--nms-in-graph``: TFLite_Detection_PostProcess inside (class-aware NMS with the
    IoU / score threshold / count of ``nms``); its boxes, normalised to the letterboxed input, are
    mapped back to original pixels here as the Detector does (``input / scale``, clipped)."""

    name = "tflite-nms"
    outputs = "nms"

    def __init__(self, path: str | os.PathLike, meta: dict, threads: int | None = None):
        super().__init__(path, meta, threads)
        self.nms = dict(meta.get("nms") or {})
        if not {"iou_threshold", "score_threshold", "max_detections"} <= set(self.nms):
            raise WeightsError(
                f"{self.path}: metadata lacks the NMS settings; fix: re-export the file"
            )
        outs = self.interpreter.get_output_details()
        if len(outs) != 4:
            raise WeightsError(
                f"{self.path}: {len(outs)} outputs, not the 4 of TFLite_Detection_PostProcess; "
                "fix: re-export the file"
            )
        self.box_out, self.class_out, self.score_out, self.count_out = outs

    def check_options(self, conf: float, iou: float, max_det: int) -> None:
        from .onnxruntime import OnnxNMSBackend

        OnnxNMSBackend.check_options(self, conf, iou, max_det)  # type: ignore[arg-type]  # same rules

    def detections(
        self, batch: torch.Tensor, scales: torch.Tensor, original_sizes: torch.Tensor
    ) -> list[dict]:
        h, w = self.image_size
        out = []
        for i in self._invoke(batch):
            d = int(self._get(self.count_out).reshape(-1)[0])
            # every array here is this call's own: _get's are copies of the interpreter's buffers
            yxyx = self._get(self.box_out)[0, :d] * np.array([h, w, h, w], np.float32)
            boxes = torch.from_numpy(yxyx[:, [1, 0, 3, 2]]) / float(scales[i])
            boxes = clip_boxes(boxes, (float(original_sizes[i][0]), float(original_sizes[i][1])))
            out.append(
                {
                    "boxes": boxes,
                    "scores": torch.from_numpy(self._get(self.score_out)[0, :d]),
                    "labels": torch.from_numpy(
                        np.rint(self._get(self.class_out)[0, :d]).astype(np.int64)
                    ),
                }
            )
        return out


def open_tflite(path: str | os.PathLike, threads: int | None = None) -> TFLiteBackend:
    """The backend for an exported .tflite file: raw outputs or NMS inside, by its metadata."""
    path = os.fspath(path)
    meta = read_metadata(path)
    return (TFLiteNMSBackend if meta["outputs"] == "nms" else TFLiteBackend)(path, meta, threads)
