"""Configuration as data: one dataclass per concern and the table of named models.

Settings per model follow the official ``hparams_config.py`` (google/automl) and the paper;
the parameter counts they give are checked in ``tests/test_model_family.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from .errors import ConfigError

ACTIVATIONS = ("swish", "relu6", "relu")
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# The Lite models take (x - 127) / 128, as the official ones (hparams_config.lite_common_param) and
# the EfficientNet-Lite ImageNet weights; effdet uses (x - 127.5) / 127.5 (within 0.008 of it).
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
FUSIONS = ("fastattn", "softmax", "sum")


def _wh(ratio: float) -> tuple[float, float]:
    """Official conversion of a w/h ratio to (width, height) factors: (sqrt r, 1 / sqrt r)."""
    rx = math.sqrt(ratio)
    return (rx, 1.0 / rx)


# Named anchor aspect-ratio sets, (width, height) factors per anchor in cell order.
# "official-v1": the official code until September 2020, when the released COCO checkpoints
# (and effdet's ports of them) were trained; our default. "official-v2": the official code since
# (hparams aspect_ratios [1.0, 2.0, 0.5]); for training from scratch to match today's official code.
ASPECT_RATIO_SETS: dict[str, tuple[tuple[float, float], ...]] = {
    "official-v1": ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)),
    "official-v2": (_wh(1.0), _wh(2.0), _wh(0.5)),
}
DEFAULT_ASPECT_RATIOS = "official-v1"


def resolve_aspect_ratios(value) -> tuple[tuple[float, float], ...]:
    """(width, height) pairs from a set name (``ASPECT_RATIO_SETS``) or a sequence of pairs."""
    if isinstance(value, str):
        key = value.strip().lower().replace("_", "-")
        if key not in ASPECT_RATIO_SETS:
            raise ConfigError(
                f"aspect_ratios {value!r}: unknown set; fix: choose {' or '.join(ASPECT_RATIO_SETS)}, or give (width, height) pairs"
            )
        return ASPECT_RATIO_SETS[key]
    try:
        rows = [tuple(float(v) for v in r) for r in value]
    except (TypeError, ValueError):
        rows = []
    if not rows or any(len(r) != 2 or not min(r) > 0 for r in rows):
        raise ConfigError(
            f"aspect_ratios={value!r}: not (width, height) pairs > 0; fix: give such pairs or a set name ({', '.join(ASPECT_RATIO_SETS)})"
        )
    return tuple((r[0], r[1]) for r in rows)


@overload
def parse_image_size(value: None, option: str = ...) -> None: ...
@overload
def parse_image_size(value: str | int | Sequence[int], option: str = ...) -> tuple[int, int]: ...
@overload
def parse_image_size(value: Any, option: str = ...) -> tuple[int, int] | None: ...
def parse_image_size(value: Any, option: str = "image_size") -> tuple[int, int] | None:
    """(height, width) from 512, "512", "384x640" (H x W), (384, 640) or None (stays None)."""
    if value is None:
        return None
    parts: Sequence[str | int]
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
    else:
        parts = [value] if isinstance(value, int) else list(value)
    try:
        hw = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        hw = ()
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 1:
        raise ConfigError(f"{option} {value!r}: need S or HxW in pixels; fix: e.g. 512 or 384x640")
    return hw[0], hw[1]


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor grid: ``num_scales`` octave scales x ``aspect_ratios`` per cell, levels min..max.

    Anchor size at level l, scale i, ratio (rx, ry): ``anchor_scale * 2**l * 2**(i/num_scales)``
    times (rx, ry) for (width, height). ``aspect_ratios`` takes (width, height) pairs or a set
    name from ``ASPECT_RATIO_SETS`` ("official-v1", the default, or "official-v2"); it is stored
    as the exact pairs.
    """

    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ASPECT_RATIO_SETS[DEFAULT_ASPECT_RATIOS]
    anchor_scale: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "aspect_ratios", resolve_aspect_ratios(self.aspect_ratios))
        if not 1 <= self.min_level <= self.max_level:
            raise ConfigError(
                f"anchor levels {self.min_level}..{self.max_level}: need 1 <= min_level <= max_level"
            )
        if self.num_scales < 1:
            raise ConfigError(f"num_scales={self.num_scales}: need at least 1")
        if self.anchor_scale <= 0:
            raise ConfigError(f"anchor_scale={self.anchor_scale}: need a positive number")

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell (A)."""
        return self.num_scales * len(self.aspect_ratios)


@dataclass(frozen=True)
class ModelConfig:
    """Network shape. ``image_size`` is (height, width); any size works."""

    name: str
    backbone: str
    image_size: tuple[int, int]
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    fusion: str = "fastattn"
    act: str = "swish"
    num_classes: int = 90
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    backbone_drop_path: float = 0.2
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # PyTorch convention (TF's 0.99)
    class_prior: float = 0.01
    # Input normalisation in 0-255 pixel units: x_norm = (x - mean) / std, per RGB channel.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.num_classes < 1:
            raise ConfigError(f"num_classes={self.num_classes}: need at least 1 class")
        if min(self.image_size) < 1:
            raise ConfigError(f"image_size={self.image_size}: need positive sizes")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"act={self.act!r}: choose one of {', '.join(ACTIVATIONS)}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion={self.fusion!r}: choose one of {', '.join(FUSIONS)}")
        if self.anchors.min_level != 3:
            raise ConfigError(
                f"anchors.min_level={self.anchors.min_level}: the backbone taps P3..P5, so min_level must be 3"
            )
        if not 5 <= self.anchors.max_level <= 8:
            raise ConfigError(
                f"anchors.max_level={self.anchors.max_level}: supported levels end at P5..P8"
            )

    @property
    def min_level(self) -> int:
        return self.anchors.min_level

    @property
    def max_level(self) -> int:
        return self.anchors.max_level

    def replace(self, **changes) -> ModelConfig:
        """A copy with fields changed; anchor fields may be given directly (``anchor_scale=3.0``)."""
        anchor_fields = {f.name for f in dataclasses.fields(AnchorConfig)}
        anchor_changes = {k: changes.pop(k) for k in list(changes) if k in anchor_fields}
        if anchor_changes:
            changes["anchors"] = dataclasses.replace(
                changes.get("anchors", self.anchors), **anchor_changes
            )
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class LossConfig:
    """Focal classification loss and box regression loss (official defaults)."""

    alpha: float = 0.25
    gamma: float = 1.5
    label_smoothing: float = 0.0
    box_loss: str = "huber"  # "huber" on (ty, tx, th, tw) deltas, or "giou" on decoded boxes
    huber_delta: float = 0.1
    box_loss_weight: float = 50.0
    giou_loss_weight: float = 5.0
    assigner: str = "argmax"  # "argmax" (official) or "atss"
    match_threshold: float = 0.5
    unmatched_threshold: float = 0.5
    atss_topk: int = 9

    def __post_init__(self) -> None:
        if self.box_loss not in ("huber", "giou"):
            raise ConfigError(f"box_loss={self.box_loss!r}: choose huber or giou")
        if self.assigner not in ("argmax", "atss"):
            raise ConfigError(f"assigner={self.assigner!r}: choose argmax or atss")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing}: need 0 <= value < 1")
        checks = (  # (ok, field, need, official value); "not (x >= 0)" also refuses NaN
            (0 <= self.alpha <= 1, "alpha", "0 <= value <= 1", "--focal-alpha 0.25"),
            (0 <= self.gamma < math.inf, "gamma", "0 <= value", "--focal-gamma 1.5"),
            (0 < self.huber_delta < math.inf, "huber_delta", "0 < value", "--huber-delta 0.1"),
            (
                0 <= self.box_loss_weight < math.inf,
                "box_loss_weight",
                "0 <= value",
                "--box-loss-weight 50",
            ),
        )
        for ok, name, need, fix in checks:
            if not ok:
                raise ConfigError(
                    f"{name}={getattr(self, name)}: need {need}; fix: e.g. {fix} (official)"
                )


@dataclass(frozen=True)
class NMSConfig:
    """Post-processing: top-k candidates, class-aware NMS, detections kept per image."""

    max_candidates: int = 5000
    iou_threshold: float = 0.5
    score_threshold: float = 0.0
    max_detections: int = 100
    method: str = "hard"  # "hard" or "gaussian" (soft-NMS)
    soft_sigma: float = 0.5
    soft_score_threshold: float = 0.001

    def __post_init__(self) -> None:
        if self.method not in ("hard", "gaussian"):
            raise ConfigError(f"nms method={self.method!r}: choose hard or gaussian")
        if not 0 < self.iou_threshold <= 1:  # also refuses NaN
            raise ConfigError(
                f"iou_threshold={self.iou_threshold} (--iou): need 0 < value <= 1; fix: e.g. --iou 0.5"
            )
        if (
            not 0 <= self.score_threshold <= 1
        ):  # a score is a probability: above 1 nothing is ever kept
            raise ConfigError(
                f"score_threshold={self.score_threshold} (--conf): need 0 <= value <= 1; "
                "fix: e.g. --conf 0.25 (0 keeps every detection)"
            )
        if self.max_detections < 1 or self.max_candidates < 1:
            raise ConfigError(
                f"max_detections={self.max_detections} (--max-det), max_candidates={self.max_candidates}: "
                "need at least 1; fix: e.g. --max-det 100"
            )


# name: (backbone, native size, fpn channels, fpn repeats, head repeats, anchor scale, fusion, act, max level)
_MODEL_TABLE: dict[str, tuple] = {
    "efficientdet_d0": ("efficientnet_b0", 512, 64, 3, 3, 4.0, "fastattn", "swish", 7),
    "efficientdet_d1": ("efficientnet_b1", 640, 88, 4, 3, 4.0, "fastattn", "swish", 7),
    "efficientdet_d2": ("efficientnet_b2", 768, 112, 5, 3, 4.0, "fastattn", "swish", 7),
    "efficientdet_d3": ("efficientnet_b3", 896, 160, 6, 4, 4.0, "fastattn", "swish", 7),
    "efficientdet_d4": ("efficientnet_b4", 1024, 224, 7, 4, 4.0, "fastattn", "swish", 7),
    "efficientdet_d5": ("efficientnet_b5", 1280, 288, 7, 4, 4.0, "fastattn", "swish", 7),
    "efficientdet_d6": ("efficientnet_b6", 1280, 384, 8, 5, 4.0, "sum", "swish", 7),
    "efficientdet_d7": ("efficientnet_b6", 1536, 384, 8, 5, 5.0, "sum", "swish", 7),
    "efficientdet_d7x": ("efficientnet_b7", 1536, 384, 8, 5, 4.0, "sum", "swish", 8),
    "efficientdet_lite0": ("efficientnet_lite0", 320, 64, 3, 3, 3.0, "sum", "relu6", 7),
    "efficientdet_lite1": ("efficientnet_lite1", 384, 88, 4, 3, 3.0, "sum", "relu6", 7),
    "efficientdet_lite2": ("efficientnet_lite2", 448, 112, 5, 3, 3.0, "sum", "relu6", 7),
    "efficientdet_lite3": ("efficientnet_lite3", 512, 160, 6, 4, 4.0, "sum", "relu6", 7),
    "efficientdet_lite3x": ("efficientnet_lite3", 640, 200, 6, 4, 3.0, "sum", "relu6", 7),
    "efficientdet_lite4": ("efficientnet_lite4", 640, 224, 7, 4, 4.0, "sum", "relu6", 7),
}


def list_models() -> list[str]:
    """Names of the registered models, D-series then Lite."""
    return list(_MODEL_TABLE)


def resolve_model_name(name: str) -> str:
    """Accept ``efficientdet_d0``, ``d0``, ``tf_efficientdet_d0``; unknown names list the valid ones."""
    key = name.strip().lower().replace("-", "_")
    for candidate in (key, f"efficientdet_{key}", key.removeprefix("tf_")):
        if candidate in _MODEL_TABLE:
            return candidate
    close = difflib.get_close_matches(key, list(_MODEL_TABLE), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"unknown model {name!r}{hint}; fix: give one of {', '.join(_MODEL_TABLE)}")


def get_model_config(name: str, **overrides) -> ModelConfig:
    """The registered config for ``name``, with ``overrides`` (any ModelConfig or AnchorConfig field).

    >>> get_model_config("d0", num_classes=3, image_size=(384, 640)).image_size
    (384, 640)
    """
    name = resolve_model_name(name)
    backbone, size, ch, fpn_rep, head_rep, anchor_scale, fusion, act, max_level = _MODEL_TABLE[name]
    cfg = ModelConfig(
        name=name,
        backbone=backbone,
        image_size=size,
        fpn_channels=ch,
        fpn_repeats=fpn_rep,
        head_repeats=head_rep,
        fusion=fusion,
        act=act,
        anchors=AnchorConfig(max_level=max_level, anchor_scale=anchor_scale),
        backbone_drop_path=0.0 if name == "efficientdet_lite0" else 0.2,
        mean=LITE_MEAN if act == "relu6" else IMAGENET_MEAN,
        std=LITE_STD if act == "relu6" else IMAGENET_STD,
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return cfg.replace(**overrides) if overrides else cfg
