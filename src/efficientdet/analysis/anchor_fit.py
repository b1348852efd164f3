"""Anchor fitting: how well the anchor grid fits a dataset's boxes; a search for better settings.

The fit is the share of ground-truth boxes (letterboxed into the model input) whose best anchor
has IoU >= ``MATCH_IOU`` (0.5, the official matcher's positive threshold), overall and per COCO
size bucket; a box below it is only ever matched by the forced best-anchor rule, with a poor
regression target. :func:`search_anchor_settings` ranks image sizes, anchor scales and the
aspect-ratio sets of ``RATIO_SETS`` by that fit. Used by the dataset doctor
(:mod:`efficientdet.analysis.doctor`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

import numpy as np

from ..config import AnchorConfig, ModelConfig
from ..data.records import DetectionData, ImageRecord
from ..data.transforms import letterbox_scale
from ..detection.anchors import anchor_levels

MATCH_IOU = 0.5
# COCO's size buckets (area in pixels of the model input)
SIZE_BUCKETS = (
    ("small", 0.0, 32.0**2),
    ("medium", 32.0**2, 96.0**2),
    ("large", 96.0**2, float("inf")),
)
MAX_FIT_BOXES = 20_000  # boxes sampled for the anchor fit of a large dataset
# aspect-ratio sets the search may propose, as (rx, ry) per anchor in the official convention
# ((1.4, 0.7) is a 2:1 box): always three, so the head keeps its shape and pretrained weights fit
RATIO_SETS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)),  # official: 1:1, 2:1, 1:2
    ((1.0, 1.0), (1.4, 0.7), (2.0, 0.5)),  # wide objects: 1:1, 2:1, 4:1
    ((1.0, 1.0), (0.7, 1.4), (0.5, 2.0)),  # tall objects: 1:1, 1:2, 1:4
    ((1.0, 1.0), (2.0, 0.5), (0.5, 2.0)),  # elongated both ways: 1:1, 4:1, 1:4
)
ANCHOR_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0)


# ---- boxes in model-input pixels ---------------------------------------------------------------


def trained_mask(record: ImageRecord) -> np.ndarray:
    """(M,) bool: the record's boxes that training uses (not marked ``ignore``)."""
    assert record.ignore is not None  # ImageRecord.__post_init__ always sets it
    return ~record.ignore


def input_boxes(
    data: DetectionData, image_size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """All ground-truth boxes letterboxed into the model input: ((M, 4) xyxy float64, (M,) labels)."""
    boxes, labels = [], []
    for record in data.records:
        if len(record.labels):
            scale = letterbox_scale(record.height, record.width, image_size_hw)
            boxes.append(record.boxes.astype(np.float64)[trained_mask(record)] * scale)
            labels.append(record.labels[trained_mask(record)])
    if not boxes:
        return np.zeros((0, 4)), np.zeros((0,), dtype=np.int64)
    return np.concatenate(boxes), np.concatenate(labels)


def size_bucket_names(boxes_xyxy: np.ndarray) -> np.ndarray:
    area = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    names = np.empty(len(area), dtype=object)
    for name, low, high in SIZE_BUCKETS:
        names[(area >= low) & (area < high)] = name
    return names


# ---- anchor fit ---------------------------------------------------------------------------------


def best_anchor_iou(
    boxes_xyxy: np.ndarray, anchor_cfg: AnchorConfig, image_size_hw: tuple[int, int]
) -> np.ndarray:
    """(M,) IoU of each box with its best anchor of the real grid at ``image_size_hw``.

    Exact and fast: for one anchor shape, the x-overlap with a box only falls as the anchor
    centre moves away from the box centre (same for y), so the best anchor of each shape is
    the one at the grid centre nearest the box centre. That is M x (levels x shapes) IoUs
    instead of M x all anchors.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0,))
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    best = np.zeros(len(boxes))
    # the grid by level as centres and shapes: memory O(H + W), not O(H * W) (a huge --image-size fits)
    for xs, ys, half in anchor_levels(anchor_cfg, image_size_hw):
        x, y = (
            xs[_nearest(xs, cx)][:, None],
            ys[_nearest(ys, cy)][:, None],
        )  # (M, 1): nearest centres
        near = np.stack(
            [x - half[:, 0], y - half[:, 1], x + half[:, 0], y + half[:, 1]], axis=2
        )  # (M, A, 4)
        iw = np.minimum(near[..., 2], boxes[:, None, 2]) - np.maximum(
            near[..., 0], boxes[:, None, 0]
        )
        ih = np.minimum(near[..., 3], boxes[:, None, 3]) - np.maximum(
            near[..., 1], boxes[:, None, 1]
        )
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        anchor_area = (near[..., 2] - near[..., 0]) * (near[..., 3] - near[..., 1])
        iou = inter / np.maximum(anchor_area + area[:, None] - inter, 1e-12)
        best = np.maximum(best, iou.max(axis=1))
    return best


def _nearest(centres: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest of ascending ``centres`` for each of ``values``."""
    idx = np.clip(np.searchsorted(centres, values), 1, max(len(centres) - 1, 1))
    if len(centres) == 1:
        return np.zeros(len(values), dtype=np.int64)
    left = centres[idx - 1]
    return np.where(np.abs(values - left) <= np.abs(centres[idx] - values), idx - 1, idx)


@dataclass
class AnchorFit:
    """Share of boxes whose best anchor has IoU >= 0.5, overall and per COCO size bucket."""

    image_size: tuple[int, int]
    anchor_scale: float
    aspect_ratios: tuple[tuple[float, float], ...]
    num_scales: int
    num_boxes: int
    fit: float
    by_size: dict[str, tuple[float, int]] = field(default_factory=dict)  # bucket -> (fit, boxes)
    median_best_iou: float = 0.0

    def train_options(self) -> str:
        """The settings as ``efficientdet train`` options."""
        ratios = " ".join(f"{rx:g},{ry:g}" for rx, ry in self.aspect_ratios)
        h, w = self.image_size
        size = f"{h}" if h == w else f"{h}x{w}"
        return f"--image-size {size} --anchor-scale {self.anchor_scale:g} --num-scales {self.num_scales} --aspect-ratios {ratios}"


def measure_anchor_fit(
    data: DetectionData,
    anchor_cfg: AnchorConfig,
    image_size_hw: tuple[int, int],
    max_boxes: int = MAX_FIT_BOXES,
    seed: int = 0,
) -> AnchorFit:
    """Anchor fit of ``data``'s boxes (letterboxed to ``image_size_hw``) for ``anchor_cfg``."""
    boxes, _ = input_boxes(data, image_size_hw)
    if len(boxes) > max_boxes:
        boxes = boxes[np.random.default_rng(seed).choice(len(boxes), max_boxes, replace=False)]
    best = best_anchor_iou(boxes, anchor_cfg, image_size_hw)
    positive = best >= MATCH_IOU
    buckets = size_bucket_names(boxes)
    by_size = {}
    for name, _, _ in SIZE_BUCKETS:
        mask = buckets == name
        if mask.any():
            by_size[name] = (float(positive[mask].mean()), int(mask.sum()))
    return AnchorFit(
        image_size=(int(image_size_hw[0]), int(image_size_hw[1])),
        anchor_scale=anchor_cfg.anchor_scale,
        aspect_ratios=anchor_cfg.aspect_ratios,
        num_scales=anchor_cfg.num_scales,
        num_boxes=len(boxes),
        fit=float(positive.mean()) if len(boxes) else 1.0,
        by_size=by_size,
        median_best_iou=float(np.median(best)) if len(best) else 0.0,
    )


def search_anchor_settings(
    data: DetectionData,
    model_cfg: ModelConfig,
    max_boxes: int = 5000,
    fixed_image_size: bool = False,
    progress: bool = True,
) -> list[AnchorFit]:
    """Candidate settings ranked by fit (best first); the model's own settings are included.

    Searches anchor scale (``ANCHOR_SCALES``), the aspect-ratio sets of ``RATIO_SETS`` and,
    unless ``fixed_image_size``, the image size (native, x1.25, x1.5, x2, rounded to 32).
    """
    from tqdm import tqdm

    base = model_cfg.anchors
    h0, w0 = model_cfg.image_size
    sizes = [(h0, w0)]
    if not fixed_image_size:
        for factor in (1.25, 1.5, 2.0):
            size = (round(h0 * factor / 32) * 32, round(w0 * factor / 32) * 32)
            if size not in sizes:
                sizes.append(size)
    ratio_sets = list(dict.fromkeys([tuple(base.aspect_ratios), *RATIO_SETS]))
    candidates = [
        (size, scale, ratios) for size in sizes for scale in ANCHOR_SCALES for ratios in ratio_sets
    ]
    results = []
    for size, scale, ratios in tqdm(
        candidates,
        desc="anchor search",
        unit="setting",
        disable=not progress,
        leave=False,
        file=sys.stderr,
    ):
        cfg = dataclasses.replace(base, anchor_scale=scale, aspect_ratios=ratios)
        results.append(measure_anchor_fit(data, cfg, size, max_boxes=max_boxes))
    # best fit first; among near-equal fits prefer the smaller (cheaper) image size
    results.sort(
        key=lambda f: (-round(f.fit, 3), f.image_size[0] * f.image_size[1], -f.median_best_iou)
    )
    return results


def fit_line(fit: AnchorFit) -> str:
    parts = ", ".join(f"{name} {share:.1%} of {n}" for name, (share, n) in fit.by_size.items())
    return (
        f"anchor fit: {fit.fit:.1%} of {fit.num_boxes} boxes have an anchor with IoU >= {MATCH_IOU} "
        f"(anchor scale {fit.anchor_scale:g}, {fit.image_size[0]}x{fit.image_size[1]}){'; ' + parts if parts else ''}"
    )
