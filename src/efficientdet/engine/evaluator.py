"""COCO-style evaluation: run a model over a dataset, score it with pycocotools.

``evaluate`` turns each image into the model input exactly as training does in eval mode
(:class:`DetectionDataset` ``train=False``: letterbox top-left, the model config's mean/std),
runs the model under ``torch.inference_mode``, decodes with the anchor grid and
:func:`postprocess` (boxes back in original-image pixels), maps 0-based labels to the
dataset's own category ids and scores the detections with ``COCOeval('bbox')`` against
:func:`records_to_coco` (crowd / difficult boxes are ``iscrowd`` and neither help nor hurt).

The model is an EfficientDet module, or a detector such as
:class:`efficientdet.deploy.detector.Detector` (duck-typed: ``config``, ``image_size``,
``detect_batch``), which is how ``val`` scores an exported TorchScript / ONNX file through the
same data, letterbox and COCOeval.

Conventions of the numbers (pycocotools'): a value of -1 means "no ground truth to score"
(e.g. ``AP_small`` when there are no small objects, or a class with no gt boxes).

A split without annotations (``DetectionData.annotated`` False: a COCO ``image_info`` JSON as
test-dev ships, a folder of images) cannot be scored: ``evaluate`` refuses it unless called
with ``require_metrics=False``, when it returns the detections alone (``EvalResult.scored``
False), ready for an evaluation server.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..config import ModelConfig, NMSConfig
from ..errors import ConfigError, DataError

STAT_NAMES = (
    "mAP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    ``stats``: the 12 COCO numbers by name (:data:`STAT_NAMES`); ``per_class``: one dict per
    class ``{"class", "category_id", "AP", "AP50", "num_gt"}`` (AP over IoU .5:.95, area all,
    100 detections; -1 when the class has no gt box); ``detections``: COCO results
    ``[{"image_id", "category_id" (the dataset's), "bbox": [x, y, w, h] original pixels, "score"}]``;
    ``precision``: COCOeval's ``eval["precision"]`` (T=10 IoUs, R=101 recall points, K classes
    in category-id order, A=4 areas, M=3 maxDets; -1 where undefined), for PR curves.
    ``scored``: False for a split without annotations (``stats`` and ``per_class`` empty,
    ``precision`` None: detections only); ``source``: the data's file, for messages.
    """

    stats: dict[str, float]
    per_class: list[dict] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)
    num_images: int = 0
    precision: np.ndarray | None = None
    scored: bool = True
    source: str = ""

    @property
    def map(self) -> float:
        return self.stats.get("mAP", -1.0)  # -1: nothing scored (pycocotools convention)

    def table(self) -> str:
        """The 12 numbers, then a per-class table (AP, AP50, gt boxes); for a split without
        annotations, one line saying that no metrics were computed."""
        if not self.scored:
            return (
                f"no metrics computed: {self.source or 'the split'} has no annotations "
                f"({self.num_images} images, {len(self.detections)} detections)"
            )
        lines = [f"COCO bbox metrics ({self.num_images} images, {len(self.detections)} detections)"]
        for i in range(0, len(STAT_NAMES), 6):
            names = STAT_NAMES[i : i + 6]
            lines.append("  " + "  ".join(f"{n:>9}" for n in names))
            lines.append("  " + "  ".join(f"{_fmt(self.stats[n]):>9}" for n in names))
        if self.per_class:
            width = max(5, *(len(str(c["class"])) for c in self.per_class))
            lines.append(f"  {'class':<{width}}  {'id':>5}  {'AP':>6}  {'AP50':>6}  {'gt':>6}")
            for c in self.per_class:
                lines.append(
                    f"  {c['class']!s:<{width}}  {c['category_id']:>5}  {_fmt(c['AP']):>6}  "
                    f"{_fmt(c['AP50']):>6}  {c['num_gt']:>6}"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain types for JSON: scored, stats, per_class, num_images, num_detections."""
        return {
            "scored": self.scored,
            "stats": dict(self.stats),
            "per_class": [dict(c) for c in self.per_class],
            "num_images": self.num_images,
            "num_detections": len(self.detections),
        }


def _fmt(v: float) -> str:
    return "-" if v < 0 else f"{v:.3f}"


def _coco_from_dict(doc: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": [], "annotations": [], "categories": [], **doc}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(gt: dict, detections: list[dict]) -> tuple[dict[str, float], list[dict]]:
    """(stats by :data:`STAT_NAMES`, per-class list) of :func:`coco_eval`."""
    stats, per_class, _ = coco_eval(gt, detections)
    return stats, per_class


def coco_eval(gt: dict, detections: list[dict]) -> tuple[dict[str, float], list[dict], np.ndarray]:
    """Score COCO ``detections`` against the COCO ground-truth dict ``gt`` (pycocotools
    ``COCOeval(iouType="bbox")``, stdout captured).

    Returns (stats by :data:`STAT_NAMES`, per-class list, ``eval["precision"]`` (T, R, K, A, M)):
    per-class AP is the mean of ``precision[t, :, k, area=all, maxDets=100]`` over IoU
    thresholds .5:.95 (AP) or at .5 (AP50), ignoring -1 entries, and -1 when the class has no gt box.
    """
    from pycocotools.cocoeval import COCOeval

    gt_coco = _coco_from_dict(gt)
    image_ids = set(gt_coco.getImgIds())
    bad = [d["image_id"] for d in detections if d["image_id"] not in image_ids]
    if bad:
        raise DataError(
            f"detections: image id {bad[0]} is not in the ground truth; fix: score detections of the same dataset"
        )
    categories = sorted(gt_coco.dataset["categories"], key=lambda c: int(c["id"]))
    with contextlib.redirect_stdout(io.StringIO()):
        if detections:
            dt_coco = gt_coco.loadRes(
                [dict(d) for d in detections]
            )  # loadRes adds area/id in place
        else:
            dt_coco = _coco_from_dict(
                {"images": gt_coco.dataset["images"], "categories": categories}
            )
        ev = COCOeval(gt_coco, dt_coco, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats, strict=True)}
    precision = ev.eval["precision"]  # (T IoUs, R recall points, K classes, A areas, M maxDets)
    cat_index = {c: i for i, c in enumerate(ev.params.catIds)}
    num_gt: dict[int, int] = {}
    for a in gt_coco.dataset["annotations"]:
        if not a.get("iscrowd", 0):
            num_gt[int(a["category_id"])] = num_gt.get(int(a["category_id"]), 0) + 1
    per_class = []
    for c in categories:
        cid = int(c["id"])
        k = cat_index[cid]
        p_all = precision[:, :, k, 0, -1]
        p_50 = precision[0, :, k, 0, -1]
        ap = float(np.mean(p_all[p_all > -1])) if (p_all > -1).any() else -1.0
        ap50 = float(np.mean(p_50[p_50 > -1])) if (p_50 > -1).any() else -1.0
        per_class.append(
            {
                "class": str(c.get("name", cid)),
                "category_id": cid,
                "AP": ap,
                "AP50": ap50,
                "num_gt": num_gt.get(cid, 0),
            }
        )
    return stats, per_class, precision


def batch_detections_to_coco(
    class_out,
    box_out,
    targets: Sequence[dict],
    anchors: torch.Tensor,
    nms_cfg: NMSConfig,
    image_size_hw: Sequence[int],
    category_ids: Sequence[int],
) -> list[tuple[int, list[dict]]]:
    """Raw head outputs of a batch from :class:`~efficientdet.data.dataset.DetectionDataset`
    (targets carry ``image_id``, ``scale``, ``original_size``) -> ``[(image_id, COCO result
    dicts with the dataset's category ids)]``, one entry per image, boxes in original pixels."""
    from ..detection.postprocess import postprocess

    dets = postprocess(
        [c.float() for c in class_out],
        [b.float() for b in box_out],
        anchors,
        nms_cfg,
        image_size_hw,
        scales=[t["scale"] for t in targets],
        original_sizes=[t["original_size"] for t in targets],
    )
    return _to_coco(dets, targets, category_ids)


def _to_coco(
    dets: Sequence[dict], targets: Sequence[dict], category_ids: Sequence[int]
) -> list[tuple[int, list[dict]]]:
    """Per-image {"boxes", "scores", "labels"} in original pixels -> [(image_id, COCO result dicts)]."""
    from ..data.coco import detections_to_coco

    return [
        (
            t["image_id"],
            detections_to_coco(
                t["image_id"],
                d["boxes"].cpu().numpy(),
                d["scores"].cpu().numpy(),
                d["labels"].cpu().numpy(),
                list(category_ids),
            ),
        )
        for t, d in zip(targets, dets, strict=True)
    ]


def evaluate(
    model: Any,
    data: Any,
    image_size_hw: Sequence[int] | None = None,
    nms_cfg: NMSConfig | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    require_metrics: bool = True,
) -> EvalResult:
    """Detect on every image of ``data`` (a :class:`DetectionData`) and score with COCO metrics.

    ``model``: an EfficientDet ``nn.Module`` (``model.config`` gives mean/std, anchors and class count); it is
    moved to ``device`` and put in eval mode, and its training mode is restored afterwards.
    Or a Detector (any backend; see the module docstring): its own device, precision and
    conf / iou / max_det apply, so ``nms_cfg`` and ``amp_dtype`` must stay None and
    ``image_size_hw`` None or its input size.
    ``image_size_hw``: model input (h, w) (default ``model.config.image_size``). ``amp_dtype``:
    e.g. ``torch.float16``/``torch.bfloat16`` for autocast, None for float32. Images that fail
    to decode get no detections (their gt still counts); images without gt are fine.
    ``require_metrics``: a split without annotations (``data.annotated`` False) is a DataError
    (before any work); with False its detections are returned unscored (``scored`` False).
    """
    from tqdm import tqdm

    from ..data.coco import records_to_coco
    from ..data.dataset import DetectionDataset
    from ..data.loader import create_loader
    from ..detection.anchors import AnchorGenerator
    from .ema import unwrap_model

    name = getattr(data, "source", "") or "dataset"
    if len(data.records) == 0:
        raise DataError(
            f"{name}: no images to evaluate; fix: give a validation split with at least one image"
        )
    annotated = getattr(data, "annotated", True)
    if not annotated and require_metrics:
        raise DataError(
            f"{name}: no annotations to compute metrics against (an image_info file or a folder "
            "of images); fix: give the split's annotated instances JSON, or ask for detections "
            "only (efficientdet val without --require-metrics)"
        )
    is_detector = hasattr(model, "detect_batch")
    cfg = cast(ModelConfig, model.config if is_detector else unwrap_model(model).config)
    if cfg.num_classes != len(data.class_names):
        raise ConfigError(
            f"{name}: {len(data.class_names)} classes in the data but the model predicts {cfg.num_classes}; "
            "fix: evaluate on the dataset the model was trained for"
        )
    if is_detector:
        if nms_cfg is not None or amp_dtype is not None:
            raise ConfigError(
                "evaluate(Detector): give conf / iou / max_det / half to the Detector, not nms_cfg / amp_dtype"
            )
        if image_size_hw is not None and tuple(int(v) for v in image_size_hw) != tuple(
            model.image_size
        ):
            raise ConfigError(
                f"image size {tuple(image_size_hw)}: this detector takes {tuple(model.image_size)}; "
                "fix: drop the option or re-export at that size"
            )
        image_size_hw = model.image_size
    height, width = (
        int(v) for v in (image_size_hw if image_size_hw is not None else cfg.image_size)
    )
    image_size_hw = (height, width)
    nms_cfg = nms_cfg if nms_cfg is not None else NMSConfig()
    device = torch.device(device)
    dataset = DetectionDataset(data, image_size_hw, cfg.mean, cfg.std, train=False)
    loader = create_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    anchors = AnchorGenerator(cfg.anchors)(image_size_hw, device=device)

    was_training = False if is_detector else model.training
    if not is_detector:
        model.to(device).eval()
    detections: list[dict] = []
    seen: set[int] = set()
    try:
        with torch.inference_mode():
            for images, targets in tqdm(
                loader, desc="eval", unit="batch", disable=not progress, leave=False
            ):
                if is_detector:
                    dets = model.detect_batch(
                        images,
                        torch.tensor([float(t["scale"]) for t in targets]),
                        [tuple(t["original_size"]) for t in targets],
                    )
                    per_image = _to_coco(dets, targets, data.category_ids)
                else:
                    images = images.to(device, non_blocking=True)
                    with torch.autocast(
                        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                    ):
                        class_out, box_out = model(images)
                    per_image = batch_detections_to_coco(
                        class_out,
                        box_out,
                        targets,
                        anchors,
                        nms_cfg,
                        image_size_hw,
                        data.category_ids,
                    )
                for image_id, coco_dets in per_image:
                    if image_id in seen:  # an undecodable image was substituted by the next one
                        continue
                    seen.add(image_id)
                    detections.extend(coco_dets)
    finally:
        if not is_detector:
            model.train(was_training)
    if not annotated:  # test-dev style: the detections are the result
        return EvalResult(
            stats={}, detections=detections, num_images=len(data.records), scored=False, source=name
        )
    stats, per_class, precision = coco_eval(records_to_coco(data), detections)
    return EvalResult(
        stats=stats,
        per_class=per_class,
        detections=detections,
        num_images=len(data.records),
        precision=precision,
        source=name,
    )


def write_results_json(path: str | os.PathLike, detections: list[dict]) -> None:
    """COCO results list as JSON (loads with pycocotools ``COCO.loadRes``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(detections), encoding="utf-8")


def write_metrics(path: str | os.PathLike, result: EvalResult) -> None:
    """``result.to_dict()`` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")


def write_per_class_csv(path: str | os.PathLike, result: EvalResult) -> None:
    """Per-class rows: class, category_id, AP, AP50, num_gt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "category_id", "AP", "AP50", "num_gt"])
        writer.writeheader()
        writer.writerows(result.per_class)
