"""COCO JSON: read into :class:`DetectionData`, write ground truth and detections back.

Category ids (COCO's 1..90 with gaps, or any integers) map to contiguous 0-based labels in
the order of increasing id; ``DetectionData.category_ids[label]`` maps back. COCO ``bbox``
is [x, y, w, h] in pixels; records hold xyxy = [x, y, x + w, y + h]. ``iscrowd=1``
annotations are kept with ``ignore=True``. Image sizes come from the JSON (``width``,
``height``); only entries without them open the image header.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from .records import DetectionData, ImageRecord, check_image_file, finish, read_image_size, sanitize_boxes
from .report import DataReport


def read_coco(
    json_path: str | Path,
    images_dir: str | Path | None = None,
    *,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    verify_images: bool = False,
    report: DataReport | None = None,
) -> DetectionData:
    """Read a COCO detection JSON. ``images_dir`` defaults to ``<json folder>/images`` if it
    exists, else the JSON's folder. ``class_names``+``category_ids`` impose a class list
    (e.g. the training split's on the validation split); otherwise it is the JSON's
    ``categories`` sorted by id. Problems go to ``report`` (a new one if None).
    """
    json_path = Path(json_path)
    report = report if report is not None else DataReport()
    src = str(json_path)
    if images_dir is None:
        images_dir = json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
    images_dir = Path(images_dir)
    if not json_path.is_file():
        raise DataError(f"{json_path}: COCO annotation file not found; fix: give the path of an existing instances JSON")
    try:
        with open(json_path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{json_path}: not valid JSON ({exc}); fix: re-export the annotations as COCO JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{json_path}: no 'images' list; fix: give a COCO instances JSON with images, annotations, categories")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder for {json_path.name} not found; fix: pass images=<folder> or set 'images' in the YAML")

    # classes
    cats = [c for c in doc.get("categories", []) or [] if isinstance(c, dict) and "id" in c]
    if category_ids is None:
        cats = sorted(cats, key=lambda c: int(c["id"]))
        category_ids = [int(c["id"]) for c in cats]
        names_from_json = [str(c.get("name", c["id"])) for c in cats]
        if class_names is not None and list(class_names) != names_from_json:
            raise DataError(
                f"{json_path}: class names {list(class_names)} in the YAML differ from the JSON categories "
                f"{names_from_json}; fix: remove 'names' from the YAML or make it match"
            )
        class_names = names_from_json
    if class_names is None:
        raise DataError(f"{json_path}: category_ids given without class_names")
    if not category_ids:
        raise DataError(f"{json_path}: no 'categories'; fix: add the categories list (id, name) to the JSON")
    label_of = {cid: i for i, cid in enumerate(category_ids)}

    # images
    entries: dict[int, dict] = {}
    usable: dict[int, tuple[str, int, int]] = {}
    for n, img in enumerate(doc["images"]):
        item = f"images[{n}]"
        if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
            report.add("bad_image_entry", src, item, "image entry lacks 'id' or 'file_name'")
            continue
        image_id = int(img["id"])
        item = f"image id {image_id} ({img['file_name']})"
        if image_id in entries:
            report.add("duplicate_image_id", src, item, f"image id {image_id} appears again (first: {entries[image_id]['file_name']})")
            continue
        entries[image_id] = img
        path = str(images_dir / img["file_name"])
        if not check_image_file(path, report, src, item, verify_images):
            continue
        w, h = img.get("width"), img.get("height")
        if not (isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0):
            try:
                w, h = read_image_size(path)
            except Exception as exc:  # noqa: BLE001
                report.add("corrupt_image", src, item, f"image file {path} cannot be opened ({type(exc).__name__})")
                continue
        usable[image_id] = (path, int(w), int(h))

    # annotations
    anns = doc.get("annotations")
    if not anns:
        report.add("empty_annotations", src, "annotations", "the 'annotations' list is empty or missing; every image is background")
        anns = []
    per_image: dict[int, list] = {i: [] for i in usable}
    boxes_listed = 0
    for n, ann in enumerate(anns):
        boxes_listed += 1
        ann_id = ann.get("id", n) if isinstance(ann, dict) else n
        item = f"annotation id {ann_id}"
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or "image_id" not in ann:
            report.add("bad_annotation", src, item, "annotation lacks 'image_id' or a 4-number 'bbox'")
            continue
        try:
            x, y, bw, bh = (float(v) if v is not None else math.nan for v in bbox)
            image_id, cat = int(ann["image_id"]), int(ann.get("category_id", -1))
        except (TypeError, ValueError):
            report.add("bad_annotation", src, item, f"bbox {bbox} or ids are not numbers")
            continue
        item = f"annotation id {ann_id} (image id {image_id})"
        if image_id not in entries:
            report.add("orphan_annotation", src, item, f"image id {image_id} is not in 'images'")
            continue
        if image_id not in usable:
            continue  # its image was skipped and reported already
        if cat not in label_of:
            report.add("unknown_category", src, item, f"category_id {cat} is not in categories {category_ids}")
            continue
        area = ann.get("area")
        area = float(area) if isinstance(area, (int, float)) and area > 0 else math.nan
        per_image[image_id].append((item, (x, y, x + bw, y + bh), label_of[cat], bool(ann.get("iscrowd", 0)), area))

    records = []
    for image_id, (path, w, h) in usable.items():
        found = per_image[image_id]
        boxes = np.array([a[1] for a in found], dtype=np.float64).reshape(-1, 4)
        boxes, keep = sanitize_boxes(boxes, w, h, report, src, [a[0] for a in found])
        records.append(
            ImageRecord(
                path=path,
                width=w,
                height=h,
                boxes=boxes[keep],
                labels=np.array([a[2] for a in found], dtype=np.int64)[keep],
                ignore=np.array([a[3] for a in found], dtype=bool)[keep],
                areas=np.array([a[4] for a in found], dtype=np.float32)[keep],
                image_id=image_id,
                file_name=str(entries[image_id]["file_name"]),
            )
        )
    finish(records, report, src, len(doc["images"]), boxes_listed,
           f"check that the images are in {images_dir} (pass images=<folder> or set 'images' in the YAML)")
    return DetectionData(records, list(class_names), list(category_ids), report, source=src, format="coco")


def records_to_coco(data: DetectionData) -> dict:
    """Ground truth as a COCO dict (for pycocotools): bbox xywh, dataset category ids,
    ``iscrowd`` = the record's ignore flag, ``area`` = the annotation's own area when it had
    one (COCO's size buckets are defined on it), else the box area."""
    images, annotations = [], []
    ann_id = 1
    for r in data.records:
        images.append({"id": int(r.image_id), "file_name": r.file_name, "width": int(r.width), "height": int(r.height)})
        for box, label, ignore, area in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist(), r.areas.tolist()):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": ann_id,
                "image_id": int(r.image_id),
                "category_id": int(data.category_ids[label]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": area if math.isfinite(area) else (x2 - x1) * (y2 - y1),
                "iscrowd": int(ignore),
            })
            ann_id += 1
    categories = [{"id": int(c), "name": n} for c, n in zip(data.category_ids, data.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco(image_id: int, boxes, scores, labels, category_ids: list[int]) -> list[dict]:
    """COCO results for one image: boxes (K, 4) xyxy original-image pixels, scores (K,),
    labels (K,) 0-based -> [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(lab)]),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(s),
        }
        for b, s, lab in zip(boxes, scores, labels)
    ]
