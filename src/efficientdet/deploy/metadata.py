"""The metadata of an exported file: written by export, read back by every runtime backend.

One JSON object travels with the model: ONNX ``metadata_props["efficientdet"]`` (plus a few
flat keys for humans), TorchScript ``_extra_files["efficientdet.json"]``. It holds ``format``
/ ``version``, ``model_name``, ``config`` (the ModelConfig as a dict), ``num_classes``,
``class_names``, ``category_ids`` (or null), ``image_size`` [h, w] (fixed at export),
``mean`` / ``std`` (0-255 units), the ``letterbox`` convention, ``outputs`` ("raw" | "nms"),
the ``output_layout`` and ``nms`` (the settings baked into the graph, or null).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..config import NMSConfig
from ..errors import WeightsError

META_KEY = "efficientdet"  # ONNX metadata_props key
TORCHSCRIPT_EXTRA = "efficientdet.json"  # TorchScript _extra_files name
META_FORMAT = "efficientdet-export"
META_VERSION = 1
REQUIRED = ("config", "class_names", "image_size", "mean", "std", "outputs")

LETTERBOX = (
    "scale = min(H/h, W/w); resize to (round(h*scale), round(w*scale)) bilinear; place top-left; "
    "pad bottom/right with the mean colour (0 after normalisation); original boxes = input boxes / scale"
)
RAW_LAYOUT = "class_logits (N, A_all, K), box_deltas (N, A_all, 4) ty,tx,th,tw; anchor order level,row,col,anchor"
NMS_LAYOUT = "boxes (N, M, 4) xyxy original pixels, scores (N, M), classes (N, M) 0-based, num_detections (N,)"


def build_metadata(
    config,
    image_size_hw: tuple[int, int],
    class_names: Sequence[str],
    category_ids: Sequence[int] | None,
    outputs: str,
    nms: NMSConfig | None,
) -> dict:
    """The metadata dict of a file exported from a model with ``config`` (see the module docstring)."""
    from ..factory import config_to_dict

    return {
        "format": META_FORMAT,
        "version": META_VERSION,
        "model_name": config.name,
        "num_classes": config.num_classes,
        "class_names": list(class_names),
        "category_ids": list(category_ids) if category_ids is not None else None,
        "image_size": list(image_size_hw),
        "mean": list(config.mean),
        "std": list(config.std),
        "letterbox": LETTERBOX,
        "input_layout": "NCHW float32 RGB, (x - mean) / std in 0-255 units",
        "outputs": outputs,
        "output_layout": RAW_LAYOUT if outputs == "raw" else NMS_LAYOUT,
        "nms": None
        if nms is None
        else {
            "iou_threshold": nms.iou_threshold,
            "score_threshold": nms.score_threshold,
            "max_detections": nms.max_detections,
            "max_candidates": nms.max_candidates,
        },
        "config": config_to_dict(config),
    }


def onnx_props(meta: dict) -> dict[str, str]:
    """The ONNX ``metadata_props``: the JSON under :data:`META_KEY` and flat copies for humans."""
    return {
        META_KEY: json.dumps(meta),
        "model_name": meta["model_name"],
        "num_classes": str(meta["num_classes"]),
        "class_names": json.dumps(meta["class_names"]),
        "image_size": json.dumps(meta["image_size"]),
        "mean": json.dumps(meta["mean"]),
        "std": json.dumps(meta["std"]),
        "letterbox": meta["letterbox"],
        "outputs": meta["outputs"],
    }


def parse_metadata(path: str, raw: str | None, how_to_export: str) -> dict:
    """The checked metadata of ``path`` from its stored JSON text ``raw`` (None when absent).

    One-line :class:`WeightsError` when it is absent (a file we did not export), not JSON, of
    another format, newer than this library or incomplete.
    """
    if not raw:
        raise WeightsError(
            f"{path}: no efficientdet metadata; this file was not exported by efficientdet; "
            f"fix: export ours with: {how_to_export}"
        )
    try:
        meta = json.loads(raw)
    except ValueError:
        raise WeightsError(
            f"{path}: efficientdet metadata is not valid JSON; fix: re-export the file"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise WeightsError(
            f"{path}: metadata format {meta.get('format') if isinstance(meta, dict) else meta!r} "
            f"is not {META_FORMAT!r}; fix: re-export the file"
        )
    if int(meta.get("version", 0)) > META_VERSION:
        raise WeightsError(
            f"{path}: export version {meta['version']} is newer than this library; fix: upgrade efficientdet"
        )
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise WeightsError(
            f"{path}: efficientdet metadata lacks {', '.join(missing)}; fix: re-export the file"
        )
    if meta["outputs"] not in ("raw", "nms"):
        raise WeightsError(
            f"{path}: metadata outputs {meta['outputs']!r} is not raw or nms; fix: re-export the file"
        )
    return meta
