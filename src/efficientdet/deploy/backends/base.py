"""The contract every inference backend keeps (one small class per runtime).

A backend takes the normalised letterboxed batch (N, 3, H, W) that
:mod:`efficientdet.deploy.preprocess` builds and returns either

* ``outputs == "raw"``: :meth:`Backend.raw` -> (class logits per level (N, A*K, H_l, W_l),
  box deltas per level (N, A*4, H_l, W_l)) float32 on the backend's device: the layout the
  network returns and :func:`~efficientdet.detection.postprocess.postprocess` reads (flat
  file outputs are viewed in it without a copy, :func:`~efficientdet.detection.layout.flat_to_levels`);
* ``outputs == "nms"``: :meth:`Backend.detections` -> per image ``{"boxes" (D, 4) xyxy in
  original pixels, "scores" (D,), "labels" (D,) 0-based}``, decoded and NMS-ed inside the file
  with the settings in ``nms``.

Metadata (from the file, or from the model for the eager backend): ``config`` (ModelConfig:
anchors, mean/std, class count), ``image_size`` ((h, w) fixed by the file, None when any size
works), ``class_names`` / ``category_ids`` (None when the source has none), ``nms`` (dict of
the baked-in settings, None for raw outputs). Input wanted: ``device``, ``dtype``,
``channels_last``; ``fixed_batch`` (int when the file takes exactly that many images;
backends split and pad batches to fit, so callers may pass any N).
"""

from __future__ import annotations

import torch

from ...config import ModelConfig
from ...errors import ConfigError


class Backend:
    """Base class: the attributes of the contract and the shared input handling."""

    name = "backend"
    outputs = "raw"
    path: str | None = None
    config: ModelConfig  # set by every backend's __init__
    image_size: tuple[int, int] | None = None
    class_names: list[str] | None = None
    category_ids: list[int] | None = None
    nms: dict | None = None
    device = torch.device("cpu")
    dtype = torch.float32
    channels_last = False
    fixed_batch: int | None = None

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path or self.config.name}, outputs={self.outputs})"

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch on this backend's device, dtype and memory layout (no copy when it already is)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return batch.to(device=self.device, dtype=self.dtype).contiguous(memory_format=fmt)

    def raw(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalised batch (N, 3, H, W) -> per-level raw outputs (raw backends)."""
        raise ConfigError(
            f"{self.path}: this file has NMS inside; fix: for raw outputs export without --nms-in-graph"
        )

    def detections(
        self, batch: torch.Tensor, scales: torch.Tensor, original_sizes: torch.Tensor
    ) -> list[dict]:
        """Normalised batch, letterbox scales (N,), original (h, w) (N, 2) -> final detections (NMS backends)."""
        raise NotImplementedError(
            f"{self.name} returns raw outputs"
        )  # our bug: callers check ``outputs``

    def check_options(self, conf: float, iou: float, max_det: int) -> None:
        """Refuse post-processing options a file with NMS inside cannot honour (raw backends take any)."""
