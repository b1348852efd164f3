"""TorchScript backend: a file from ``efficientdet export --format torchscript`` (raw outputs)."""

from __future__ import annotations

import os
import warnings

import torch

from ...config import parse_image_size
from ...detection.anchors import AnchorGenerator
from ...detection.layout import flat_to_levels
from ...errors import WeightsError
from ..metadata import TORCHSCRIPT_EXTRA, parse_metadata
from .base import Backend


def load_torchscript(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[torch.jit.ScriptModule, str | None]:
    """(module on ``device``, the raw metadata JSON text or None) of a TorchScript file; one-line
    WeightsError when torch cannot load it."""
    extra = {TORCHSCRIPT_EXTRA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # torch.jit is deprecated in favour of torch.export
            module = torch.jit.load(os.fspath(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        first = (
            str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        )
        raise WeightsError(
            f"{path}: torch.jit cannot load this TorchScript file ({first}); fix: re-export it"
        ) from None
    return module.eval(), extra[TORCHSCRIPT_EXTRA] or None


class TorchScriptBackend(Backend):
    """The traced raw-output graph (float32, any batch, the exported image size) on ``device``."""

    name = "torchscript"
    outputs = "raw"

    def __init__(self, path: str | os.PathLike, device: torch.device):
        from ...factory import config_from_dict

        self.path = os.fspath(path)
        self.device = device
        self.module, raw_meta = load_torchscript(self.path, device)
        self.meta = parse_metadata(
            self.path, raw_meta, "efficientdet export --weights CKPT --format torchscript"
        )
        if (
            self.meta["outputs"] != "raw"
        ):  # only raw TorchScript files exist; say so rather than misread one
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

    def raw(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cls_flat, box_flat = self.module(batch)
        return flat_to_levels(
            cls_flat, box_flat, self.feature_sizes, self.config.anchors.num_anchors
        )
