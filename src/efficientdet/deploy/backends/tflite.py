"""LiteRT backend: a file from ``efficientdet export --format tflite`` (raw outputs), run by the
``ai-edge-litert`` Interpreter (no TensorFlow).

The file takes one (1, H, W, 3) NHWC image: float32 normalised, or uint8 pixels for a
``--uint8-input`` export (the normalised batch is turned back into pixels here, rounded);
int8-quantised inputs/outputs are (de)quantised with the tensor's own scale and zero point.
Batches of any size run one image at a time.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ...config import parse_image_size
from ...detection.anchors import AnchorGenerator
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


class TFLiteBackend(Backend):
    """Raw outputs of a TFLite file: the network in LiteRT; decoding and NMS in torch afterwards."""

    name = "tflite"
    outputs = "raw"
    fixed_batch = 1

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from ...factory import config_from_dict
        from ..export_tflite import read_tflite_metadata

        self.path = os.fspath(path)
        self.meta = parse_metadata(self.path, read_tflite_metadata(self.path), HOW_TO_EXPORT)
        if self.meta["outputs"] != "raw":
            raise WeightsError(
                f"{self.path}: outputs {self.meta['outputs']!r} are not raw; fix: re-export the file"
            )
        self.config = config_from_dict(self.meta["config"])
        self.image_size = parse_image_size(self.meta["image_size"])
        self.class_names, self.category_ids = (
            self.meta["class_names"],
            self.meta.get("category_ids"),
        )
        self.feature_sizes = AnchorGenerator(self.config.anchors).feature_sizes(self.image_size)
        self.interpreter = _interpreter(self.path, threads)
        (self.input,) = self.interpreter.get_input_details()
        want = (1, self.image_size[0], self.image_size[1], 3)
        if tuple(self.input["shape"]) != want:
            raise WeightsError(
                f"{self.path}: input shape {tuple(self.input['shape'])} is not {want} (metadata); "
                "fix: re-export the file"
            )
        num_anchors = sum(h * w for h, w in self.feature_sizes) * self.config.anchors.num_anchors
        k = self.config.num_classes
        by_shape = {tuple(o["shape"]): o for o in self.interpreter.get_output_details()}
        self.cls_out = by_shape.get((1, num_anchors, k))
        self.box_out = by_shape.get((1, num_anchors, 4))
        if (
            self.cls_out is None
            or self.box_out is None
            or (k == 4 and self.cls_out is self.box_out)
        ):
            outs = self.interpreter.get_output_details()
            if k == 4 and len(outs) == 2:  # same shapes: the graph returns (class, box) in order
                self.cls_out, self.box_out = outs
            else:
                raise WeightsError(
                    f"{self.path}: outputs {[tuple(o['shape']) for o in outs]} are not "
                    f"(1, {num_anchors}, {k}) and (1, {num_anchors}, 4); fix: re-export the file"
                )
        mean = np.asarray(self.config.mean, np.float32)
        std = np.asarray(self.config.std, np.float32)
        self._mean, self._std = mean.reshape(1, 1, 1, 3), std.reshape(1, 1, 1, 3)

    def _feed(self, image_nhwc: np.ndarray) -> np.ndarray:
        """One normalised (1, H, W, 3) float32 image -> the input tensor the file wants."""
        dtype = self.input["dtype"]
        if self.meta.get("tflite", {}).get("uint8_input"):
            image_nhwc = np.clip(np.rint(image_nhwc * self._std + self._mean), 0, 255)
        scale, zero = self.input.get("quantization", (0.0, 0))
        if (
            np.issubdtype(dtype, np.integer)
            and scale
            and not self.meta.get("tflite", {}).get("uint8_input")
        ):
            image_nhwc = np.rint(image_nhwc / scale + zero)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            image_nhwc = np.clip(image_nhwc, info.min, info.max)
        return image_nhwc.astype(dtype)

    def _get(self, detail: dict) -> np.ndarray:
        out = self.interpreter.get_tensor(detail["index"])
        scale, zero = detail.get("quantization", (0.0, 0))
        if np.issubdtype(out.dtype, np.integer) and scale:
            out = (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32, copy=False)

    def raw(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        images = (
            batch.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        )  # (N, 3, H, W) -> (N, H, W, 3)
        cls_parts, box_parts = [], []
        for i in range(images.shape[0]):
            self.interpreter.set_tensor(self.input["index"], self._feed(images[i : i + 1]))
            self.interpreter.invoke()
            cls_parts.append(self._get(self.cls_out).copy())
            box_parts.append(self._get(self.box_out).copy())
        return flat_to_levels(
            torch.from_numpy(np.concatenate(cls_parts)),
            torch.from_numpy(np.concatenate(box_parts)),
            self.feature_sizes,
            self.config.anchors.num_anchors,
        )
