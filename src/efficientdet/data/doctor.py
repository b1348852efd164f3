"""Dataset doctor: find what makes detectors fail in silence, before training.

``check_dataset`` reads every split (decoding every image), then reports: the problems the
readers found (missing/corrupt/duplicate images, orphan annotations, invalid boxes and what
training does with each, unknown categories), category diagnostics (id 0 where 0 is not a
class, an off-by-one class count, declared classes without boxes, the class histogram), box
sizes per class in model-input pixels, and the anchor fit: the share of ground-truth boxes
whose best anchor has IoU >= 0.5, the official matcher's positive threshold. A box below that
is only ever matched by the forced best-anchor rule, with a poor regression target. When the
fit is low, a small search over image size, anchor scale and aspect ratios proposes settings,
printed as ``efficientdet train`` options.

``quick_summary`` is the cheap part (no decoding) that ``train`` prints before the first epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import AnchorConfig, ModelConfig, get_model_config, parse_image_size
from ..detection.anchors import AnchorGenerator
from ..detection.boxes import box_iou
from ..errors import DataError
from .records import DetectionData
from .transforms import letterbox_scale

MATCH_IOU = 0.5
GOOD_FIT = 0.9  # below this share of boxes with a positive anchor, search for better settings
# COCO's size buckets (area in pixels of the model input)
SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))
MAX_FIT_BOXES = 20_000  # boxes sampled for the anchor fit of a large dataset


# ---- boxes in model-input pixels ---------------------------------------------------------------

def input_boxes(data: DetectionData, image_size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
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

def best_anchor_iou(boxes_xyxy: np.ndarray, anchor_cfg: AnchorConfig, image_size_hw: tuple[int, int],
                    chunk: int = 512) -> np.ndarray:
    """(M,) IoU of each box with its best anchor of the real grid at ``image_size_hw``."""
    if len(boxes_xyxy) == 0:
        return np.zeros((0,))
    anchors = AnchorGenerator(anchor_cfg)(image_size_hw)
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32)
    best = [box_iou(boxes[i:i + chunk], anchors).amax(dim=1) for i in range(0, len(boxes), chunk)]
    return torch.cat(best).numpy().astype(np.float64)


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


def measure_anchor_fit(data: DetectionData, anchor_cfg: AnchorConfig, image_size_hw: tuple[int, int],
                       max_boxes: int = MAX_FIT_BOXES, seed: int = 0) -> AnchorFit:
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
        image_size=tuple(image_size_hw), anchor_scale=anchor_cfg.anchor_scale, aspect_ratios=anchor_cfg.aspect_ratios,
        num_scales=anchor_cfg.num_scales, num_boxes=len(boxes), fit=float(positive.mean()) if len(boxes) else 1.0,
        by_size=by_size, median_best_iou=float(np.median(best)) if len(best) else 0.0,
    )


def data_aspect_ratios(boxes_xyxy: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Three (rx, ry) ratios with rx * ry = 1 at the 15th, 50th and 85th percentile of box w/h."""
    w = boxes_xyxy[:, 2] - boxes_xyxy[:, 0]
    h = boxes_xyxy[:, 3] - boxes_xyxy[:, 1]
    ratios = np.quantile(w / np.maximum(h, 1e-6), [0.15, 0.5, 0.85])
    return tuple((round(float(np.sqrt(r)), 2), round(float(1 / np.sqrt(r)), 2)) for r in ratios)


def search_anchor_settings(data: DetectionData, model_cfg: ModelConfig, max_boxes: int = 5000) -> list[AnchorFit]:
    """Candidate settings ranked by fit (best first); the model's own settings are included.

    Searches image size (native, x1.25, x1.5, x2, rounded to 32), anchor scale (1.0-5.0) and
    aspect ratios (the official three, and three from the data's box shapes).
    """
    base = model_cfg.anchors
    boxes, _ = input_boxes(data, model_cfg.image_size)
    ratio_sets = [base.aspect_ratios]
    if len(boxes):
        ratio_sets.append(data_aspect_ratios(boxes))
    h0, w0 = model_cfg.image_size
    sizes = []
    for factor in (1.0, 1.25, 1.5, 2.0):
        size = (int(round(h0 * factor / 32)) * 32, int(round(w0 * factor / 32)) * 32)
        if size not in sizes:
            sizes.append(size)
    results = []
    for size in sizes:
        for scale in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0):
            for ratios in ratio_sets:
                cfg = dataclasses.replace(base, anchor_scale=scale, aspect_ratios=ratios)
                results.append(measure_anchor_fit(data, cfg, size, max_boxes=max_boxes))
    # best fit first; among near-equal fits prefer the smaller (cheaper) image size
    results.sort(key=lambda f: (-round(f.fit, 3), f.image_size[0] * f.image_size[1], -f.median_best_iou))
    return results


# ---- categories and sizes -----------------------------------------------------------------------

def category_findings(data: DetectionData) -> list[str]:
    """Explanations for category problems: id 0, off-by-one class counts, classes without boxes."""
    findings = []
    unknown = data.report.of_kind("unknown_category")
    coco_ids = Counter(m.group(1) for p in unknown if (m := re.search(r"category_id (\S+)", p.message)))
    if coco_ids.get("0"):
        findings.append(
            f"{coco_ids['0']} annotations use category_id 0, which is not a declared category "
            f"(declared: {sorted(data.category_ids)}); COCO ids are the 'categories' ids, usually from 1: "
            "were the ids exported 0-based? fix the ids or add the category"
        )
    n = data.num_classes
    yolo_classes = Counter(m.group(1) for p in unknown if (m := re.search(r"class (\S+) is not in 0\.\.", p.message)))
    if yolo_classes.get(str(n)):
        findings.append(
            f"{yolo_classes[str(n)]} labels use class {n} with only {n} names (0..{n - 1}): "
            "is a name missing from 'names' (an off-by-one class count)?"
        )
    if unknown and not findings:
        values = sorted(set(coco_ids) | set(yolo_classes))
        findings.append(f"{len(unknown)} boxes have classes outside the declared ones ({', '.join(values) or 'names'}); they are dropped")
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
            stats[name] = {"boxes": int(len(s)), **{k: round(float(v), 1) for k, v in zip(("min", "p10", "median", "p90", "max"), q)}}
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
        lines.append(f"  {'class'.ljust(width)}  {'boxes':>7}  {'min':>7}  {'p10':>7}  {'median':>7}  {'p90':>7}  {'max':>7}")
        for name, s in self.sizes.items():
            lines.append(f"  {name.ljust(width)}  {s['boxes']:>7}  " + "  ".join(f"{s[k]:>7}" for k in ("min", "p10", "median", "p90", "max")))
        lines.append("")
        lines.append(fit_line(self.fit))
        if self.suggestion is not None:
            lines.append(f"  suggested settings raise it to {self.suggestion.fit:.1%}: {self.suggestion.train_options()}")
        for finding in self.findings:
            lines.append(f"note: {finding}")
        for problem in self.fatal:
            lines.append(f"FATAL: {problem}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model": self.model_cfg.name,
            "image_size": list(self.model_cfg.image_size),
            "splits": {s: {"source": d.source, **d.report.to_dict()} for s, d in self.splits.items()},
            "class_histogram": self.histogram,
            "box_sizes": self.sizes,
            "anchor_fit": dataclasses.asdict(self.fit),
            "suggestion": dataclasses.asdict(self.suggestion) | {"train_options": self.suggestion.train_options()}
            if self.suggestion else None,
            "findings": self.findings,
            "fatal": self.fatal,
        }


def fit_line(fit: AnchorFit) -> str:
    parts = ", ".join(f"{name} {share:.1%} of {n}" for name, (share, n) in fit.by_size.items())
    return (f"anchor fit: {fit.fit:.1%} of {fit.num_boxes} boxes have an anchor with IoU >= {MATCH_IOU} "
            f"(anchor scale {fit.anchor_scale:g}, {fit.image_size[0]}x{fit.image_size[1]}){'; ' + parts if parts else ''}")


def check_dataset(source: str | Path, model: str = "efficientdet_d0", image_size=None, splits=("train", "val"),
                  verify_images: bool = True, search: bool = True, model_cfg: ModelConfig | None = None) -> DoctorReport:
    """Run every check on ``source`` (dataset YAML or COCO JSON). The first split is the training split."""
    from .spec import load_dataset

    cfg = model_cfg or get_model_config(model, image_size=image_size)
    loaded: dict[str, DetectionData] = {}
    fatal: list[str] = []
    source = Path(source)
    for split in splits if source.suffix.lower() in (".yaml", ".yml") else ("train",):
        first = next(iter(loaded.values()), None)
        try:
            loaded[split] = load_dataset(source, split, verify_images=verify_images,
                                         class_names=first.class_names if first else None,
                                         category_ids=first.category_ids if first else None)
        except DataError as exc:
            if "no '" in str(exc) and split != splits[0]:
                continue  # an optional split (e.g. no val section)
            fatal.append(str(exc))
    if not loaded:
        raise DataError(fatal[0] if fatal else f"{source}: nothing to check")
    train = next(iter(loaded.values()))
    if train.num_classes == 0:
        fatal.append(f"{source}: no classes declared; fix: list the class names (or COCO categories)")
    cfg = cfg.replace(num_classes=max(train.num_classes, 1))
    fit = measure_anchor_fit(train, cfg.anchors, cfg.image_size)
    suggestion = None
    if search and fit.fit < GOOD_FIT and fit.num_boxes:
        best = search_anchor_settings(train, cfg)[0]
        if best.fit > fit.fit:
            suggestion = best
    return DoctorReport(
        splits=loaded, model_cfg=cfg, findings=category_findings(train), histogram=class_histogram(train),
        sizes=size_stats(train, cfg.image_size), fit=fit, suggestion=suggestion, fatal=fatal,
    )


def quick_summary(train: DetectionData, model_cfg: ModelConfig) -> str:
    """What ``train`` prints before the first epoch: class findings and the anchor fit (no decoding)."""
    fit = measure_anchor_fit(train, model_cfg.anchors, model_cfg.image_size, max_boxes=5000)
    lines = [fit_line(fit)] + [f"note: {finding}" for finding in category_findings(train)]
    if fit.fit < GOOD_FIT:
        lines.append("note: a low anchor fit slows or stops learning; run 'efficientdet data check' for suggested settings")
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
                ax.scatter([side * rx], [side * ry], marker="s", s=40, facecolors="none", edgecolors="black")
    ax.scatter([], [], marker="s", facecolors="none", edgecolors="black", label="anchors")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("box width (model-input px)")
    ax.set_ylabel("box height (model-input px)")
    ax.set_title(f"{cfg.name} at {cfg.image_size[0]}x{cfg.image_size[1]}: anchor fit {report.fit.fit:.1%}")
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- CLI --------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="dataset YAML or COCO JSON")
    parser.add_argument("--model", default="efficientdet_d0", help="model whose input size and anchors to check against")
    from .. import cli_options

    cli_options.add(parser, "image_size")  # shared CLI vocabulary (efficientdet/cli_options.py)
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="splits of a dataset YAML to read")
    cli_options.add(parser, "json")
    parser.add_argument("--plot", default="box_sizes.png", metavar="FILE", help="PNG of box sizes against anchors ('' for none)")
    parser.add_argument("--no-verify", action="store_true", help="do not decode every image (faster)")


def run(args: argparse.Namespace) -> int:
    report = check_dataset(args.data, args.model, parse_image_size(args.image_size), tuple(args.splits),
                           verify_images=not args.no_verify)
    print(report.table())
    if args.plot:
        print(f"box size plot: {plot_box_sizes(report, args.plot)}")
    if args.json:
        from ..cli_options import write_json_output

        write_json_output(args, report.to_dict())
        if args.json != "-":
            print(f"JSON report: {args.json}")
    return 1 if report.fatal else 0
