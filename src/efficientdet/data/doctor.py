"""Dataset doctor: find what makes detectors fail in silence, before training.

``check_dataset`` reads every split (decoding every image), then reports: the problems the
readers found (missing/corrupt/duplicate images, orphan annotations, invalid boxes and what
training does with each, unknown categories), category diagnostics (id 0 where 0 is not a
class, an off-by-one class count, declared classes without boxes, the class histogram), box
sizes per class in model-input pixels, and the anchor fit: the share of ground-truth boxes
whose best anchor has IoU >= 0.5, the official matcher's positive threshold. A box below that
is only ever matched by the forced best-anchor rule, with a poor regression target. When the
fit is low, a search over image size (only when the user did not fix it), anchor scale and a
menu of aspect-ratio sets proposes settings, printed as ``efficientdet train`` options, and
only when they raise the fit by at least ``MIN_GAIN``.

Boxes too small to train on (under ``AugmentConfig.min_box_size`` px at the model input, where
training drops them) are reported per box for every split; ``data check`` exits with status 2
when more than ``MAX_UNTRAINABLE`` of a split's boxes cannot train (dropped while reading, or
too small). Problems are read from the readers' structured records, never from message text.

``quick_summary`` is the cheap part (no decoding) that ``train`` prints before the first epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import AnchorConfig, ModelConfig, get_model_config, parse_image_size
from ..detection.anchors import anchor_levels
from ..errors import ConfigError, DataError
from .records import DetectionData
from .report import DataProblem, DataReport
from .transforms import AugmentConfig, letterbox_scale

MATCH_IOU = 0.5
GOOD_FIT = 0.9  # below this share of boxes with a positive anchor, search for better settings
# COCO's size buckets (area in pixels of the model input)
SIZE_BUCKETS = (
    ("small", 0.0, 32.0**2),
    ("medium", 32.0**2, 96.0**2),
    ("large", 96.0**2, float("inf")),
)
MAX_FIT_BOXES = 20_000  # boxes sampled for the anchor fit of a large dataset
MIN_GAIN = 0.02  # a suggestion must raise the anchor fit by at least this much (2 points)
MAX_UNTRAINABLE = 0.25  # data check fails when a larger share of a split's boxes cannot train
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


def input_boxes(
    data: DetectionData, image_size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """All ground-truth boxes letterboxed into the model input: ((M, 4) xyxy float64, (M,) labels)."""
    boxes, labels = [], []
    for record in data.records:
        if len(record.labels):
            scale = letterbox_scale(record.height, record.width, image_size_hw)
            boxes.append(record.boxes.astype(np.float64)[~record.ignore] * scale)
            labels.append(record.labels[~record.ignore])
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
        image_size=tuple(image_size_hw),
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
            size = (int(round(h0 * factor / 32)) * 32, int(round(w0 * factor / 32)) * 32)
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


# ---- boxes too small to train on ------------------------------------------------------------------


def small_box_problems(
    data: DetectionData,
    image_size_hw: tuple[int, int],
    min_size: float = AugmentConfig.min_box_size,
) -> list[DataProblem]:
    """One ``box_too_small`` problem per box (not ignored) whose width or height, letterboxed into
    ``image_size_hw``, is under ``min_size`` px: training drops such boxes (see DetectionDataset).
    Each names the annotation file, the image and the smallest box side that trains there."""
    found = DataReport()
    h, w = image_size_hw
    for record in data.records:
        if not len(record.labels):
            continue
        scale = letterbox_scale(record.height, record.width, image_size_hw)
        boxes = record.boxes.astype(np.float64)
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        for k in np.nonzero((side * scale < min_size) & ~record.ignore)[0]:
            bw, bh = boxes[k, 2] - boxes[k, 0], boxes[k, 3] - boxes[k, 1]
            xyxy = ", ".join(f"{v:.4g}" for v in boxes[k])
            found.add(
                "box_too_small",
                record.annotation_file or data.source,
                f"image {record.file_name}",
                f"box xyxy [{xyxy}] ({bw:.3g}x{bh:.3g} px) is {bw * scale:.2g}x{bh * scale:.2g} px at the {h}x{w} input; "
                f"boxes train from {min_size:g} px there = {min_size / scale:.3g} px in this image",
                value=f"{bw:.3g}x{bh:.3g}",
            )
    return found.problems


def untrainable_share(data: DetectionData, too_small: int) -> tuple[int, int]:
    """(boxes that cannot train, boxes listed): dropped while reading + ``too_small``."""
    listed = int(data.report.stats.get("boxes_listed", 0))
    used = sum(len(r.labels) for r in data.records)
    listed = max(listed, used)
    return (listed - used) + too_small, listed


def small_box_line(
    data: DetectionData, problems: list[DataProblem], image_size_hw, min_size: float
) -> str:
    """One line: how many boxes are too small, at which input, and an example with its file."""
    n = len(problems)
    total = sum(int((~r.ignore).sum()) for r in data.records)
    line = (
        f"boxes too small to train: {n} of {total} ({n / max(total, 1):.1%}) are under {min_size:g} px at the "
        f"{image_size_hw[0]}x{image_size_hw[1]} input and are dropped in training"
    )
    if n:
        line += f" (e.g. {problems[0].file}: {problems[0].item}: {problems[0].message}); fix: {problems[0].fix}"
    return line


# ---- categories and sizes -----------------------------------------------------------------------


def category_findings(data: DetectionData) -> list[str]:
    """Explanations for category problems: id 0, off-by-one class counts, classes without boxes.
    Reads the offending values from the problem records (``DataProblem.value``)."""
    findings = []
    unknown = data.report.of_kind("unknown_category")
    values = Counter(p.value for p in unknown)
    n = data.num_classes
    if data.format == "coco" and values.get("0") and 0 not in data.category_ids:
        findings.append(
            f"{values['0']} annotations use category_id 0, which is not a declared category "
            f"(declared: {sorted(data.category_ids)}); COCO ids are the 'categories' ids, usually from 1: "
            "were the ids exported 0-based? fix the ids or add the category"
        )
    if data.format == "yolo" and values.get(str(n)):
        findings.append(
            f"{values[str(n)]} labels use class {n} with only {n} names (0..{n - 1}): "
            "is a name missing from 'names' (an off-by-one class count)?"
        )
    if unknown and not findings:
        shown = sorted(values)[:10]
        findings.append(
            f"{len(unknown)} boxes have classes outside the declared ones ({', '.join(shown) or 'names'}); they are dropped"
        )
    histogram = class_histogram(data)
    empty = [name for name, count in histogram.items() if count == 0]
    if empty:
        findings.append(
            f"{len(empty)} declared classes have no boxes ({', '.join(empty[:10])}): "
            "the model cannot learn them and their AP will be 0; remove them or add data"
        )
    return findings


def class_histogram(data: DetectionData) -> dict[str, int]:
    counts = Counter(int(label) for r in data.records for label in r.labels[~r.ignore])
    return {name: counts.get(i, 0) for i, name in enumerate(data.class_names)}


def size_stats(data: DetectionData, image_size_hw: tuple[int, int]) -> dict[str, dict]:
    """Per class: box count and sqrt(area) quantiles (min, p10, median, p90, max) in input pixels."""
    boxes, labels = input_boxes(data, image_size_hw)
    side = np.sqrt(np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0))
    stats = {}
    for i, name in enumerate(data.class_names):
        s = side[labels == i]
        if len(s):
            q = np.quantile(s, [0.0, 0.1, 0.5, 0.9, 1.0])
            stats[name] = {
                "boxes": len(s),
                **{
                    k: round(float(v), 1) for k, v in zip(("min", "p10", "median", "p90", "max"), q)
                },
            }
    return stats


# ---- the whole check ------------------------------------------------------------------------------


@dataclass
class DoctorReport:
    splits: dict[str, DetectionData]
    model_cfg: ModelConfig
    findings: list[str]
    histogram: dict[str, int]
    sizes: dict[str, dict]
    fit: AnchorFit
    suggestion: AnchorFit | None
    fatal: list[str]
    untrainable: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # split -> (cannot train, listed)
    max_untrainable: float = MAX_UNTRAINABLE
    min_box_size: float = AugmentConfig.min_box_size
    fixed_image_size: bool = False

    def too_many_untrainable(self) -> list[str]:
        """One line per split whose share of boxes that cannot train is over ``max_untrainable``."""
        out = []
        h, w = self.model_cfg.image_size
        for split, (bad, listed) in self.untrainable.items():
            if listed and bad / listed > self.max_untrainable:
                small = self.splits[split].report.count("box_too_small")
                out.append(
                    f"{self.splits[split].source}: [{split}] {bad} of {listed} boxes ({bad / listed:.0%}) cannot train "
                    f"({small} under {self.min_box_size:g} px at the {h}x{w} input, {bad - small} dropped while reading), "
                    f"over the {self.max_untrainable:.0%} limit; fix: "
                    + ("train at a larger --image-size, " if small else "")
                    + "repair the reported boxes, or raise --max-untrainable"
                )
        return out

    def table(self) -> str:
        lines = []
        for split, data in self.splits.items():
            lines.append(data.report.summary(title=f"[{split}] {data.source}"))
        lines.append("")
        lines.append("classes (boxes in training split)")
        width = max([len(n) for n in self.histogram] + [5])
        for name, count in self.histogram.items():
            lines.append(f"  {name.ljust(width)}  {count:>7}")
        h, w = self.model_cfg.image_size
        lines.append("")
        lines.append(f"box size sqrt(w*h) in model-input pixels ({self.model_cfg.name} at {h}x{w})")
        lines.append(
            f"  {'class'.ljust(width)}  {'boxes':>7}  {'min':>7}  {'p10':>7}  {'median':>7}  {'p90':>7}  {'max':>7}"
        )
        for name, s in self.sizes.items():
            lines.append(
                f"  {name.ljust(width)}  {s['boxes']:>7}  "
                + "  ".join(f"{s[k]:>7}" for k in ("min", "p10", "median", "p90", "max"))
            )
        lines.append("")
        for split, (bad, listed) in self.untrainable.items():
            lines.append(
                f"[{split}] boxes that cannot train: {bad} of {listed} ({bad / max(listed, 1):.1%}; "
                f"limit {self.max_untrainable:.0%}): dropped while reading, or under {self.min_box_size:g} px "
                f"at the {h}x{w} input"
            )
        lines.append(fit_line(self.fit))
        if self.suggestion is not None:
            lines.append(
                f"  suggested settings raise the anchor fit from {self.fit.fit:.1%} to {self.suggestion.fit:.1%}: "
                f"{self.suggestion.train_options()}"
            )
        elif self.fit.fit < GOOD_FIT and self.fit.num_boxes:
            where = f" at the fixed {h}x{w} input" if self.fixed_image_size else ""
            lines.append(
                f"  no anchor setting{where} raises the fit by {MIN_GAIN:.0%} or more: keep the model's anchors"
            )
        for finding in self.findings:
            lines.append(f"note: {finding}")
        for problem in self.fatal:
            lines.append(f"FATAL: {problem}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model": self.model_cfg.name,
            "image_size": list(self.model_cfg.image_size),
            "splits": {
                s: {"source": d.source, **d.report.to_dict()} for s, d in self.splits.items()
            },
            "class_histogram": self.histogram,
            "box_sizes": self.sizes,
            "untrainable": {
                s: {"boxes": bad, "listed": n} for s, (bad, n) in self.untrainable.items()
            },
            "max_untrainable": self.max_untrainable,
            "anchor_fit": dataclasses.asdict(self.fit),
            "suggestion": dataclasses.asdict(self.suggestion)
            | {"train_options": self.suggestion.train_options()}
            if self.suggestion
            else None,
            "findings": self.findings,
            "fatal": self.fatal,
        }


def fit_line(fit: AnchorFit) -> str:
    parts = ", ".join(f"{name} {share:.1%} of {n}" for name, (share, n) in fit.by_size.items())
    return (
        f"anchor fit: {fit.fit:.1%} of {fit.num_boxes} boxes have an anchor with IoU >= {MATCH_IOU} "
        f"(anchor scale {fit.anchor_scale:g}, {fit.image_size[0]}x{fit.image_size[1]}){'; ' + parts if parts else ''}"
    )


def check_dataset(
    source: str | Path,
    model: str = "efficientdet_d0",
    image_size=None,
    splits=("train", "val"),
    verify_images: bool = True,
    search: bool = True,
    model_cfg: ModelConfig | None = None,
    max_untrainable: float = MAX_UNTRAINABLE,
    progress: bool = True,
) -> DoctorReport:
    """Run every check on ``source`` (dataset YAML or COCO JSON). The first split is the training split.

    ``image_size`` (S or (H, W)) fixes the input size: the anchor search then keeps it.
    """
    from .spec import DatasetSpec, load_dataset

    if not 0.0 <= max_untrainable <= 1.0:
        raise ConfigError(
            f"--max-untrainable {max_untrainable}: not a share of boxes; fix: give a value from 0 to 1 (e.g. 0.25)"
        )
    cfg = model_cfg or get_model_config(model, image_size=image_size)
    loaded: dict[str, DetectionData] = {}
    fatal: list[str] = []
    source = Path(source)
    if source.suffix.lower() in (".yaml", ".yml"):
        present = DatasetSpec.from_yaml(source).splits
        splits = [
            s for i, s in enumerate(splits) if i == 0 or s in present
        ]  # later splits are optional
    else:
        splits = ["train"]
    for split in splits:
        first = next(iter(loaded.values()), None)
        try:
            loaded[split] = load_dataset(
                source,
                split,
                verify_images=verify_images,
                show_progress=progress,
                class_names=first.class_names if first else None,
                category_ids=first.category_ids if first else None,
            )
        except DataError as exc:
            fatal.append(str(exc))
    if not loaded:
        raise DataError(fatal[0] if fatal else f"{source}: nothing to check")
    train = next(iter(loaded.values()))
    if train.num_classes == 0:
        fatal.append(
            f"{source}: no classes declared; fix: list the class names (or COCO categories)"
        )
    cfg = cfg.replace(num_classes=max(train.num_classes, 1))
    min_size = AugmentConfig.min_box_size
    untrainable = {}
    for split, data in loaded.items():
        small = small_box_problems(data, cfg.image_size, min_size)
        data.report.problems.extend(small)
        untrainable[split] = untrainable_share(data, len(small))
    fit = measure_anchor_fit(train, cfg.anchors, cfg.image_size)
    suggestion = None
    if search and fit.fit < GOOD_FIT and fit.num_boxes:
        best = search_anchor_settings(
            train, cfg, fixed_image_size=image_size is not None, progress=progress
        )[0]
        if best.fit >= fit.fit + MIN_GAIN:
            suggestion = best
    return DoctorReport(
        splits=loaded,
        model_cfg=cfg,
        findings=category_findings(train),
        histogram=class_histogram(train),
        sizes=size_stats(train, cfg.image_size),
        fit=fit,
        suggestion=suggestion,
        fatal=fatal,
        untrainable=untrainable,
        max_untrainable=max_untrainable,
        min_box_size=min_size,
        fixed_image_size=image_size is not None,
    )


def quick_summary(
    train: DetectionData, model_cfg: ModelConfig, min_box_size: float = AugmentConfig.min_box_size
) -> str:
    """What ``train`` prints before the first epoch: boxes too small to train (always, with the
    count), class findings and the anchor fit (no decoding)."""
    small = small_box_problems(train, model_cfg.image_size, min_box_size)
    fit = measure_anchor_fit(train, model_cfg.anchors, model_cfg.image_size, max_boxes=5000)
    lines = [small_box_line(train, small, model_cfg.image_size, min_box_size), fit_line(fit)]
    lines += [f"note: {finding}" for finding in category_findings(train)]
    if fit.fit < GOOD_FIT:
        lines.append(
            "note: a low anchor fit slows or stops learning; run 'efficientdet data check' for suggested settings"
        )
    return "\n".join(lines)


def plot_box_sizes(report: DoctorReport, path: str | Path) -> Path:
    """Scatter of box width x height (model-input pixels, log-log) over the anchor shapes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report.model_cfg
    train = next(iter(report.splits.values()))
    boxes, labels = input_boxes(train, cfg.image_size)
    fig, ax = plt.subplots(figsize=(7, 6))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    for i, name in enumerate(train.class_names):
        mask = labels == i
        if mask.any():
            ax.scatter(w[mask], h[mask], s=6, alpha=0.5, label=name)
    a = cfg.anchors
    for level in range(a.min_level, a.max_level + 1):
        for octave in range(a.num_scales):
            for rx, ry in a.aspect_ratios:
                side = a.anchor_scale * 2**level * 2 ** (octave / a.num_scales)
                ax.scatter(
                    [side * rx],
                    [side * ry],
                    marker="s",
                    s=40,
                    facecolors="none",
                    edgecolors="black",
                )
    ax.scatter([], [], marker="s", facecolors="none", edgecolors="black", label="anchors")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("box width (model-input px)")
    ax.set_ylabel("box height (model-input px)")
    ax.set_title(
        f"{cfg.name} at {cfg.image_size[0]}x{cfg.image_size[1]}: anchor fit {report.fit.fit:.1%}"
    )
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    from ..fileio import write_via_temp

    path = Path(path)
    try:
        write_via_temp(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
    return path


# ---- CLI --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="dataset YAML (ours or an Ultralytics data.yaml) or COCO JSON")
    parser.add_argument(
        "--model",
        default="efficientdet_d0",
        help="model whose input size and anchors to check against",
    )
    from .. import cli_options

    cli_options.add(
        parser, "image_size"
    )  # shared CLI vocabulary (efficientdet/cli_options.py); kept when given
    parser.add_argument(
        "--splits", nargs="+", default=["train", "val"], help="splits of a dataset YAML to read"
    )
    cli_options.add(parser, "out", "exist_ok", "json", "quiet")
    parser.add_argument("--no-plot", action="store_true", help="do not draw box_sizes.png")
    parser.add_argument(
        "--max-untrainable",
        type=float,
        default=MAX_UNTRAINABLE,
        metavar="SHARE",
        help=f"exit with status 2 when more than this share of a split's boxes cannot train "
        f"(dropped while reading, or under {AugmentConfig.min_box_size:g} px at the input; "
        f"default {MAX_UNTRAINABLE})",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="do not decode every image (faster)"
    )


def run(args: argparse.Namespace) -> int:
    from ..cli_options import check_json_output
    from ..fileio import make_dirs, write_json
    from ..run_dirs import make_run_dir
    from .spec import dataset_files

    check_json_output(args, {"dataset": dataset_files(args.data)})
    report = check_dataset(
        args.data,
        args.model,
        parse_image_size(args.image_size),
        tuple(args.splits),
        verify_images=not args.no_verify,
        max_untrainable=args.max_untrainable,
        progress=not args.quiet,
    )
    print(report.table())
    out = make_dirs(make_run_dir(args.out, args.exist_ok, command="check"))
    write_json(out / "report.json", report.to_dict())
    print(f"JSON report: {out / 'report.json'}")
    if args.json:
        from ..cli_options import write_json_output

        write_json_output(args, report.to_dict())
        if args.json != "-":
            print(f"JSON report: {args.json}")
    if not args.no_plot:
        print(f"box size plot: {plot_box_sizes(report, out / 'box_sizes.png')}")
    if report.fatal:
        raise DataError(
            report.fatal[0]
            + (f" (and {len(report.fatal) - 1} more above)" if len(report.fatal) > 1 else "")
        )
    too_many = report.too_many_untrainable()
    if too_many:
        raise DataError(too_many[0])
    return 0
