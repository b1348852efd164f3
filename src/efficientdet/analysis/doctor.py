"""Dataset doctor (``efficientdet data check``): what makes detectors fail in silence, found early.

``check_dataset`` reads every split (decoding every image), then reports: the problems the
readers found (missing/corrupt/duplicate images, orphan annotations, invalid boxes and what
training does with each, unknown categories), category diagnostics (id 0 where 0 is not a
class, an off-by-one class count, declared classes without boxes, the class histogram), box
sizes per class in model-input pixels, and the anchor fit (:mod:`.anchor_fit`: the share of
ground-truth boxes whose best anchor has IoU >= 0.5). When the fit is under ``GOOD_FIT``, the
anchor search over image size (only when the user did not fix it), anchor scale and a menu of
aspect-ratio sets proposes settings, printed as ``efficientdet train`` options, and only when
they raise the fit by at least ``MIN_GAIN``.

Boxes too small to train on (under ``AugmentConfig.min_box_size`` px at the model input, where
training drops them) are reported per box for every split; ``data check`` exits with status 2
when more than ``MAX_UNTRAINABLE`` of a split's boxes cannot train (dropped while reading, or
too small). Problems are read from the readers' structured records, never from message text.

A split without annotations (a COCO ``image_info`` JSON, as test-dev ships: images only) is
read and counted, and said to be such: it has no boxes or classes to check, and what applies
to it is ``val``'s detections-only output (:mod:`efficientdet.engine.val_cli`); when it is the
training split, the class, box size and anchor sections are left out. Exit status 0.

``quick_summary`` is the cheap part (no decoding) that ``train`` prints before the first epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ModelConfig, get_model_config, parse_image_size
from ..data.records import DetectionData
from ..data.report import DataProblem, DataReport
from ..data.transforms import AugmentConfig, letterbox_scale
from ..detection.anchors import anchor_levels
from ..errors import ConfigError, DataError
from .anchor_fit import (
    AnchorFit,
    fit_line,
    input_boxes,
    measure_anchor_fit,
    search_anchor_settings,
    trained_mask,
)

GOOD_FIT = 0.9  # below this share of boxes with a positive anchor, search for better settings
MIN_GAIN = 0.02  # a suggestion must raise the anchor fit by at least this much (2 points)
MAX_UNTRAINABLE = 0.25  # data check fails when a larger share of a split's boxes cannot train


# ---- boxes too small to train on ------------------------------------------------------------------


def small_box_problems(
    data: DetectionData,
    image_size_hw: tuple[int, int],
    min_size: float = AugmentConfig.min_box_size,
) -> list[DataProblem]:
    """One ``box_too_small`` problem per box (not ignored) whose width or height, letterboxed into
    ``image_size_hw``, is under ``min_size`` px: training drops such boxes
    (:class:`efficientdet.data.dataset.DetectionDataset`).
    Each names the annotation file, the image and the smallest box side that trains there."""
    found = DataReport()
    h, w = image_size_hw
    for record in data.records:
        if not len(record.labels):
            continue
        scale = letterbox_scale(record.height, record.width, image_size_hw)
        boxes = record.boxes.astype(np.float64)
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        for k in np.nonzero((side * scale < min_size) & trained_mask(record))[0]:
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
    total = sum(int(trained_mask(r).sum()) for r in data.records)
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
    counts = Counter(int(label) for r in data.records for label in r.labels[trained_mask(r)])
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
                    k: round(float(v), 1)
                    for k, v in zip(("min", "p10", "median", "p90", "max"), q, strict=True)
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

    @property
    def train_annotated(self) -> bool:
        """The training (first) split has annotations (False: an ``image_info`` file)."""
        return next(iter(self.splits.values())).annotated

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
            if not data.annotated:
                lines.append(
                    f"[{split}] {data.source}: no annotations ({len(data.records)} images; an "
                    "image_info file, as COCO test-dev ships): no boxes or classes to check; what "
                    f"applies is detections only: efficientdet val --weights W --data {data.source} "
                    "writes results.json for an evaluation server (no metrics)"
                )
        if not self.train_annotated:  # no class, box or anchor to report
            return "\n".join(lines + [f"FATAL: {problem}" for problem in self.fatal])
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
            if not self.splits[split].annotated:
                continue
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
                s: {"source": d.source, "annotated": d.annotated, **d.report.to_dict()}
                for s, d in self.splits.items()
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
    from ..data.spec import DatasetSpec, load_dataset

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
        findings=category_findings(train) if train.annotated else [],
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
    # the anchor shapes of the real grid (detection/anchors.py: the one home of the size formula)
    for _, _, half in anchor_levels(cfg.anchors, cfg.image_size):  # half: (A, 2) half w, h
        ax.scatter(
            2 * half[:, 0], 2 * half[:, 1], marker="s", s=40, facecolors="none", edgecolors="black"
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
    from ..data.spec import dataset_files
    from ..fileio import make_dirs, write_json
    from ..run_dirs import make_run_dir

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
    if not args.no_plot and report.train_annotated:
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
