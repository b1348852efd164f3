"""COCO JSON: read into :class:`DetectionData`, write ground truth and detections back.

Category ids (COCO's 1..90 with gaps, or any integers) map to contiguous 0-based labels in
the order of increasing id; ``DetectionData.category_ids[label]`` maps back. COCO ``bbox``
is [x, y, w, h] in pixels; records hold xyxy = [x, y, x + w, y + h]. ``iscrowd=1``
annotations are kept with ``ignore=True``. A JSON without an "annotations" key (an
``image_info`` file, as COCO test-dev ships) reads as an unannotated split
(``DetectionData.annotated`` False), not as a problem. Image sizes come from the JSON (``width``,
``height``) and are checked against each image file's header (``size_mismatch``; the header is
read, never decoded); entries without them take the header's size.

Every value is type-checked (:mod:`.schema`): an image entry, category or annotation of the
wrong type is a counted problem naming the JSON and the item (with the image's file name);
two categories with one id or one name are refused (a merge would relabel boxes in silence).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import schema
from .records import DetectionData, ImageRecord, check_image, finish, progress, sanitize_boxes
from .report import DataReport


def read_coco(
    json_path: str | Path,
    images_dir: str | Path | None = None,
    *,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    verify_images: bool = False,
    report: DataReport | None = None,
    show_progress: bool = False,
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
        images_dir = (
            json_path.parent / "images"
            if (json_path.parent / "images").is_dir()
            else json_path.parent
        )
    images_dir = Path(images_dir)
    doc = _load_json(json_path)
    if not images_dir.is_dir():
        raise DataError(
            f"{images_dir}: image folder for {json_path.name} not found; fix: pass images=<folder> or set 'images' in the YAML"
        )

    if category_ids is None:
        category_ids, names_from_json = _read_categories(doc, src, report)
        if class_names is not None and list(class_names) != names_from_json:
            raise DataError(
                f"{json_path}: class names {list(class_names)} in the YAML differ from the JSON categories "
                f"{names_from_json}; fix: remove 'names' from the YAML or make it match"
            )
        class_names = names_from_json
    if class_names is None:
        raise DataError(f"{json_path}: category_ids given without class_names")
    if not category_ids:
        raise DataError(
            f"{json_path}: no usable 'categories'; fix: add the categories list (integer id, name) to the JSON"
        )
    label_of = {cid: i for i, cid in enumerate(category_ids)}

    images = progress(doc["images"], f"reading {json_path.name}", show_progress)
    entries, usable = _read_images(images, images_dir, src, report, verify_images)

    # annotations (no "annotations" key: an image_info file, e.g. COCO test-dev: not annotated)
    annotated = "annotations" in doc
    anns = doc.get("annotations")
    if not isinstance(anns, list):
        if anns is not None:
            report.add(
                "bad_annotation",
                src,
                "annotations",
                f"'annotations' is not a list ({schema.describe(anns)})",
                "every image is background",
                "make 'annotations' a list of annotation objects",
            )
        anns = []
    if not anns and annotated:
        report.add(
            "empty_annotations",
            src,
            "annotations",
            "the 'annotations' list is empty or missing; every image is background",
        )
    per_image: dict[int, list] = {i: [] for i in usable}
    for n, ann in enumerate(anns):
        parsed = _read_annotation(n, ann, entries, src, report)
        if parsed is None:
            continue
        item, image_id, cat, box, crowd, area = parsed
        if image_id not in usable:
            continue  # its image was skipped and reported already
        if cat not in label_of:
            report.add(
                "unknown_category",
                src,
                item,
                f"category_id {cat} is not in categories {category_ids}",
                value=cat,
            )
            continue
        per_image[image_id].append((item, box, label_of[cat], crowd, area))

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
                file_name=entries[image_id],
                annotation_file=src,
            )
        )
    finish(
        records,
        report,
        src,
        len(doc["images"]),
        len(anns),
        f"check that the images are in {images_dir} (pass images=<folder> or set 'images' in the YAML)",
    )
    return DetectionData(
        records,
        list(class_names),
        list(category_ids),
        report,
        source=src,
        format="coco",
        annotated=annotated,
    )


def _load_json(json_path: Path) -> dict:
    """The COCO JSON document (a dict with an 'images' list), or a one-line DataError."""
    if not json_path.is_file():
        raise DataError(
            f"{json_path}: COCO annotation file not found; fix: give the path of an existing instances JSON"
        )
    try:
        with open(json_path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{json_path}: not valid UTF-8 JSON ({reason}); fix: re-export the annotations as COCO JSON"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(
            f"{json_path}: no 'images' list; fix: give a COCO instances JSON with images, annotations, categories"
        )
    return doc


def read_image_index(json_path: str | Path) -> tuple[dict[str, int | None], list[int], list[str]]:
    """What a results file needs from a COCO JSON (instances or ``image_info``), without reading
    any image: ({file name without folders: image id, or None when two images share the name},
    category ids sorted, their names). Bad entries are skipped as :func:`read_coco` reports them."""
    json_path = Path(json_path)
    doc = _load_json(json_path)
    report = DataReport()
    category_ids, names = _read_categories(doc, str(json_path), report)
    ids: dict[str, int | None] = {}
    for img in doc["images"]:
        try:
            image_id = schema.integer(img.get("id") if isinstance(img, dict) else None, "id")
            file_name = schema.relative_path(img.get("file_name"), "file_name")
        except schema.Invalid:
            continue
        name = Path(file_name).name
        ids[name] = None if name in ids and ids[name] != image_id else image_id
    return ids, category_ids, names


def _read_categories(doc: dict, src: str, report: DataReport) -> tuple[list[int], list[str]]:
    """(ids sorted, names in that order). Bad entries are reported and skipped; two categories
    with one id or one name raise DataError (merging them would relabel boxes in silence)."""
    cats = doc.get("categories")
    if not isinstance(cats, list):
        raise DataError(
            f"{src}: 'categories' is {schema.describe(cats)}, not a list; "
            'fix: add the categories list [{"id": 1, "name": ...}] to the JSON'
        )
    by_id: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for n, cat in enumerate(cats):
        item = f"categories[{n}]"
        try:
            if not isinstance(cat, dict):
                raise schema.Invalid(
                    f"expected an object with id and name, got {schema.describe(cat)}"
                )
            cid = schema.integer(cat.get("id"), "id")
            name = schema.text(cat["name"], "name") if "name" in cat else str(cid)
        except schema.Invalid as exc:
            report.add("bad_category", src, item, str(exc))
            continue
        if cid in by_id:
            raise DataError(
                f"{src}: {item}: category id {cid} is used by both {by_id[cid]!r} and {name!r}; "
                "fix: give every category its own id"
            )
        if name in by_name:
            raise DataError(
                f"{src}: {item}: category name {name!r} is used by ids {by_name[name]} and {cid}; "
                "fix: give every category its own name (or merge them and their annotations)"
            )
        by_id[cid], by_name[name] = name, cid
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def _read_images(images: list, images_dir: Path, src: str, report: DataReport, verify: bool):
    """({image id: file name} of valid entries, {image id: (path, w, h)} of usable images)."""
    entries: dict[int, str] = {}
    usable: dict[int, tuple[str, int, int]] = {}
    for n, img in enumerate(images):
        item = f"images[{n}]"
        try:
            if not isinstance(img, dict):
                raise schema.Invalid(
                    f"expected an object with id and file_name, got {schema.describe(img)}"
                )
            image_id = schema.integer(img.get("id"), "id")
            file_name = schema.relative_path(img.get("file_name"), "file_name")
        except schema.Invalid as exc:
            report.add("bad_image_entry", src, item, str(exc))
            continue
        item = f"image id {image_id} ({file_name})"
        if image_id in entries:
            report.add(
                "duplicate_image_id",
                src,
                item,
                f"image id {image_id} appears again (first: {entries[image_id]})",
                value=image_id,
            )
            continue
        entries[image_id] = file_name
        annotated = None
        if img.get("width") is not None or img.get("height") is not None:
            try:
                annotated = (
                    schema.positive_size(img.get("width"), "width"),
                    schema.positive_size(img.get("height"), "height"),
                )
            except schema.Invalid as exc:
                report.add(
                    "bad_image_entry",
                    src,
                    item,
                    str(exc),
                    "size read from the image file",
                    "write width and height as integers > 0 (or leave them out)",
                )
        path = str(images_dir / file_name)
        size = check_image(path, report, src, item, verify, annotated)
        if size is not None:
            usable[image_id] = (path, *size)
    return entries, usable


def _read_annotation(n: int, ann, entries: dict[int, str], src: str, report: DataReport):
    """(item, image id, category id, xyxy box, crowd, area) of annotation ``n``, or None (reported)."""
    ann_id = ann.get("id", n) if isinstance(ann, dict) else n
    item = f"annotation id {ann_id}" if isinstance(ann_id, (int, str)) else f"annotations[{n}]"
    try:
        if not isinstance(ann, dict):
            raise schema.Invalid(
                f"expected an object with image_id, category_id and bbox, got {schema.describe(ann)}"
            )
        image_id = schema.integer(ann.get("image_id"), "image_id")
    except schema.Invalid as exc:
        report.add("bad_annotation", src, item, str(exc))
        return None
    if image_id not in entries:
        report.add(
            "orphan_annotation",
            src,
            f"{item} (image id {image_id})",
            f"image id {image_id} is not in 'images'",
            value=image_id,
        )
        return None
    item = f"{item} (image id {image_id}, {entries[image_id]})"
    try:
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise schema.Invalid(
                f"bbox: expected [x, y, width, height], got {schema.describe(bbox)}"
            )
        x, y, bw, bh = (schema.number(v, "bbox", allow_null=True) for v in bbox)
        cat = schema.integer(ann.get("category_id"), "category_id")
    except schema.Invalid as exc:
        report.add("bad_annotation", src, item, str(exc))
        return None
    crowd = False
    if "iscrowd" in ann:
        try:
            crowd = schema.flag(ann["iscrowd"], "iscrowd")
        except schema.Invalid as exc:
            report.add("bad_iscrowd", src, item, str(exc), value=ann["iscrowd"])
    area = ann.get("area")
    area = (
        float(area) if isinstance(area, (int, float)) and not isinstance(area, bool) else math.nan
    )
    area = area if math.isfinite(area) and area > 0 else math.nan
    return item, image_id, cat, (x, y, x + bw, y + bh), crowd, area


def records_to_coco(data: DetectionData) -> dict:
    """Ground truth as a COCO dict (for pycocotools): bbox xywh, dataset category ids,
    ``iscrowd`` = the record's ignore flag, ``area`` = the annotation's own area when it had
    one (COCO's size buckets are defined on it), else the box area."""
    images, annotations = [], []
    ann_id = 1
    for r in data.records:
        images.append(
            {
                "id": int(r.image_id),
                "file_name": r.file_name,
                "width": int(r.width),
                "height": int(r.height),
            }
        )
        for box, label, ignore, area in zip(
            r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist(), r.areas.tolist(), strict=True
        ):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": int(r.image_id),
                    "category_id": int(data.category_ids[label]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": area if math.isfinite(area) else (x2 - x1) * (y2 - y1),
                    "iscrowd": int(ignore),
                }
            )
            ann_id += 1
    categories = [
        {"id": int(c), "name": n} for c, n in zip(data.category_ids, data.class_names, strict=True)
    ]
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
        for b, s, lab in zip(boxes, scores, labels, strict=True)
    ]
