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

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import numpy as np
import torch

from ...config import ModelConfig
from ...errors import ConfigError, WeightsError


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
    meta: dict | None = None  # an exported file's metadata (None for the eager backend)
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

    def apply_metadata(self, meta: dict) -> tuple[list[tuple[int, int]], int]:
        """Set ``meta``, ``config``, ``image_size``, ``class_names`` and ``category_ids`` from an
        exported file's checked metadata (:func:`efficientdet.deploy.metadata.parse_metadata`);
        returns (feature sizes per level, anchors per location): how flat outputs split."""
        from ...config import parse_image_size
        from ...detection.anchors import AnchorGenerator
        from ...factory import config_from_dict

        self.meta = meta
        config = config_from_dict(meta["config"])
        image_size = parse_image_size(meta["image_size"])
        if image_size is None:
            raise WeightsError(f"{self.path}: metadata has no image size; fix: re-export the file")
        self.config, self.image_size = config, image_size
        self.class_names, self.category_ids = meta["class_names"], meta.get("category_ids")
        return (
            AnchorGenerator(config.anchors).feature_sizes(image_size),
            config.anchors.num_anchors,
        )


@contextlib.contextmanager
def _env_unless_set(name: str, value: str) -> Iterator[None]:
    """``name=value`` in the environment for the block, unless the user set ``name`` (kept)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextlib.contextmanager
def openvino_telemetry_off() -> Iterator[None]:
    """Keep OpenVINO's and NNCF's usage telemetry (Google Analytics, a client id in ~/intel)
    off while they import, convert or quantise: each (re)starts it then, and the one switch all
    of them honour is openvino_telemetry's CI check (``disable_in_ci``), so ``CI=true`` is set
    for that time; a CI the user set is kept (``CI=false`` opts in)."""
    with _env_unless_set("CI", "true"):
        yield


@contextlib.contextmanager
def onnxruntime_telemetry_off() -> Iterator[None]:
    """Keep ONNX Runtime's telemetry (1DS events to Microsoft, a device id and an event store
    written under ~/.cache/Microsoft/DeveloperTools/.onnxruntime) off: its documented switch,
    ``ORT_DISABLE_TELEMETRY=1``, is read once when the package first imports, so it is set for
    that time; a value the user set is kept. An onnxruntime imported before ours is not reached."""
    with _env_unless_set("ORT_DISABLE_TELEMETRY", "1"):
        yield


_TELEMETRY_OFF = {
    "openvino": openvino_telemetry_off,
    "nncf": openvino_telemetry_off,
    "onnxruntime": onnxruntime_telemetry_off,
}


def require(module: str, what: str, extra: str) -> ModuleType:
    """Import an optional runtime or converter, or one line naming the extra that installs it."""
    telemetry_off = _TELEMETRY_OFF.get(module.split(".")[0], contextlib.nullcontext)
    try:
        with telemetry_off():
            return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{what} needs the package {module}, which is not installed; "
            f"fix: pip install 'efficientdet[{extra}]'"
        ) from None


def run_fixed_batch(
    run: Callable[[list[np.ndarray]], list[np.ndarray]], feeds: list[np.ndarray], step: int | None
) -> list[np.ndarray]:
    """``run(feeds)`` for inputs with batch axis 0 on a file that takes exactly ``step`` images
    (None: any): in pieces of ``step``, the last one padded by repeating its first item (valid
    scales and sizes), whose outputs are dropped."""
    n = feeds[0].shape[0]
    if step is None or n == step:
        return run(feeds)
    pieces = []
    for start in range(0, n, step):
        count = min(step, n - start)
        part = [
            np.concatenate([f[start : start + count]] + [f[start : start + 1]] * (step - count))
            for f in feeds
        ]
        pieces.append([o[:count] for o in run(part)])
    return [np.concatenate(outs) for outs in zip(*pieces, strict=True)]
