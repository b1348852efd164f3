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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import schema
from .jsonstream import top_level_items
from .records import (
    DetectionData,
    RecordTable,
    StringColumn,
    check_image,
    finish,
    progress,
    sanitize_boxes,
)
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

    The file is streamed (:mod:`.jsonstream`): images and annotations are decoded one at a
    time into flat columns, so a train2017-sized file never exists as one Python object.
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
    if not json_path.is_file():
        raise DataError(
            f"{json_path}: COCO annotation file not found; fix: give the path of an existing instances JSON"
        )
    no_images = DataError(
        f"{json_path}: no 'images' list; fix: give a COCO instances JSON with images, annotations, categories"
    )
    doc: dict = {}  # the small top-level values (info, licenses, categories)
    streamed: set[str] = set()  # "images" / "annotations" when they were arrays
    images: _Images | None = None
    columns = _AnnotationColumns()
    pending: list = []  # annotations listed before the images (kept until those are read)
    try:
        with open(json_path, encoding="utf-8") as f:
            for key, value in top_level_items(
                f, stream=("images", "annotations"), skip_polygons=("annotations",)
            ):
                if key in ("images", "annotations") and (key in doc or key in streamed):
                    raise DataError(
                        f"{json_path}: '{key}' appears twice; fix: merge the two lists into one"
                    )
                if key == "images" and isinstance(value, Iterator):
                    streamed.add(key)
                    if not images_dir.is_dir():
                        raise DataError(
                            f"{images_dir}: image folder for {json_path.name} not found; fix: pass images=<folder> or set 'images' in the YAML"
                        )
                    listed = progress(value, f"reading {json_path.name}", show_progress)
                    images = _read_images(listed, images_dir, src, report, verify_images)
                    columns.add_all(pending, images, src, report)
                    pending = []
                elif key == "annotations" and isinstance(value, Iterator):
                    streamed.add(key)
                    if images is None:
                        pending = list(value)
                    else:
                        columns.add_all(value, images, src, report)
                elif key == "":
                    raise no_images
                else:
                    doc[key] = value
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{json_path}: not valid UTF-8 JSON ({reason}); fix: re-export the annotations as COCO JSON"
        ) from None
    except OSError as exc:
        raise DataError(
            f"{json_path}: cannot be read ({exc.strerror or type(exc).__name__}); "
            "fix: check that the file is readable"
        ) from None
    if images is None:
        raise no_images
    if "annotations" not in streamed:
        anns = doc.get("annotations")
        if anns is not None and not isinstance(anns, list):
            report.add(
                "bad_annotation",
                src,
                "annotations",
                f"'annotations' is not a list ({schema.describe(anns)})",
                "every image is background",
                "make 'annotations' a list of annotation objects",
            )
    # no "annotations" key: an image_info file (e.g. COCO test-dev), not annotated
    annotated = "annotations" in streamed or "annotations" in doc
    if columns.listed == 0 and annotated:
        report.add(
            "empty_annotations",
            src,
            "annotations",
            "the 'annotations' list is empty or missing; every image is background",
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
    records = columns.table(images, list(category_ids), src, report)
    finish(
        records,
        report,
        src,
        images.listed,
        columns.listed,
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
            cid = _int64(cat.get("id"), "id")
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


def _int64(value, what: str) -> int:
    """schema.integer within int64 (ids are held in int64 arrays)."""
    n = schema.integer(value, what)
    if not -(2**63) <= n < 2**63:
        raise schema.Invalid(f"{what}: {n} is outside the 64-bit integer range")
    return n


@dataclass
class _Images:
    """What the images list gave: ``entries`` {image id: file name} of valid entries,
    ``usable`` {image id: (path, width, height)} in file order, ``listed`` entries seen."""

    entries: dict[int, str]
    usable: dict[int, tuple[str, int, int]]
    listed: int


def _read_images(
    images: Iterable, images_dir: Path, src: str, report: DataReport, verify: bool
) -> _Images:
    """Check every image entry (type, duplicate id, file, size); see :class:`_Images`."""
    entries: dict[int, str] = {}
    usable: dict[int, tuple[str, int, int]] = {}
    n, folder = -1, str(images_dir)
    for n, img in enumerate(images):
        item = f"images[{n}]"
        try:
            if not isinstance(img, dict):
                raise schema.Invalid(
                    f"expected an object with id and file_name, got {schema.describe(img)}"
                )
            image_id = _int64(img.get("id"), "id")
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
        path = _image_path(folder, file_name)
        size = check_image(path, report, src, item, verify, annotated)
        if size is not None:
            usable[image_id] = (path, *size)
    return _Images(entries, usable, n + 1)


def _image_path(folder: str, name: str) -> str:
    """``str(Path(folder) / name)`` without pathlib's cost for plain names (118k of them)."""
    if folder in (".", "/") or name in ("", ".") or "//" in name or name.startswith("./"):
        return str(Path(folder) / name)
    if "/./" in name or name.endswith(("/", "/.")):
        return str(Path(folder) / name)
    return f"{folder}/{name}"


BATCH = 8192  # annotations checked together by the columnar fast path


class _AnnotationColumns:
    """The annotations of usable images as flat columns, in file order.

    Batches of annotation dicts are checked column by column (types of every id, box value
    and flag at once); a batch holding anything unusual (a wrong type, a missing key, an
    orphan, a flag that is not 0/1) goes through :func:`_read_annotation` item by item, which
    reports each problem with its file and item exactly as before.
    """

    def __init__(self) -> None:
        self.listed = 0
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.items: dict[int, str] = {}  # annotation index -> item text, for the item-by-item path

    def add_all(self, annotations: Iterable, images: _Images, src: str, report: DataReport) -> None:
        batch: list = []
        for ann in annotations:
            batch.append(ann)
            if len(batch) == BATCH:
                self._add(batch, images, src, report)
                batch = []
        if batch:
            self._add(batch, images, src, report)

    def _add(self, batch: list, images: _Images, src: str, report: DataReport) -> None:
        start = self.listed
        self.listed += len(batch)
        part = _fast_columns(batch, start, images)
        if part is None:
            part = self._one_by_one(batch, start, images, src, report)
        self.parts.append(part)

    def _one_by_one(
        self, batch: list, start: int, images: _Images, src: str, report: DataReport
    ) -> tuple[np.ndarray, ...]:
        rows = []
        for k, ann in enumerate(batch):
            parsed = _read_annotation(start + k, ann, images.entries, src, report)
            if parsed is None:
                continue
            item, image_id, cat, box, crowd, area = parsed
            if image_id not in images.usable:
                continue  # its image was skipped and reported already
            try:
                cat = _int64(cat, "category_id")
            except schema.Invalid as exc:
                report.add("bad_annotation", src, item, str(exc))
                continue
            self.items[start + k] = item
            rows.append((start + k, image_id, cat, 0, *box, crowd, area))
        table = np.array(rows, dtype=np.float64).reshape(-1, 10) if rows else np.zeros((0, 10))
        ints = [np.array([r[i] for r in rows], dtype=np.int64) for i in range(4)]
        return (*ints, table[:, 4:8], table[:, 8].astype(bool), table[:, 9])

    def table(
        self, images: _Images, category_ids: list[int], src: str, report: DataReport
    ) -> RecordTable:
        """The records of the usable images: unknown categories reported and left out, boxes
        checked and clipped (:func:`sanitize_boxes`, called only for images with a box that
        needs it), grouped per image in file order."""
        if self.parts:
            cols = [np.concatenate([p[i] for p in self.parts]) for i in range(7)]
        else:
            cols = [
                np.zeros((0, 4) if i == 4 else 0, np.float64 if i >= 4 else np.int64)
                for i in range(7)
            ]
        index, image_id, cat, ann_id, boxes, crowd, area = cols
        self.parts = []

        def item(k: int) -> str:
            n = int(index[k])
            if n in self.items:
                return self.items[n]
            i = int(image_id[k])
            return f"annotation id {int(ann_id[k])} (image id {i}, {images.entries[i]})"

        ids = np.array(category_ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        pos = np.minimum(np.searchsorted(ids[order], cat), max(len(ids) - 1, 0))
        known = ids[order][pos] == cat if len(ids) else np.zeros(len(cat), bool)
        for k in np.flatnonzero(~known):
            report.add(
                "unknown_category",
                src,
                item(int(k)),
                f"category_id {int(cat[k])} is not in categories {category_ids}",
                value=int(cat[k]),
            )
        labels = order[pos]

        usable_ids = np.fromiter(images.usable, np.int64, len(images.usable))
        sizes = np.array([(w, h) for _, w, h in images.usable.values()], np.int64).reshape(-1, 2)
        sorter = np.argsort(usable_ids)
        row = sorter[np.searchsorted(usable_ids[sorter], image_id)] if len(image_id) else image_id
        group = np.flatnonzero(known)
        group = group[np.argsort(row[group], kind="stable")]  # per image, in file order
        row, boxes = row[group], boxes[group]
        first = np.zeros(len(usable_ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=len(usable_ids)), out=first[1:])

        # boxes that need a look: not finite, empty, or past the image border
        w, h = sizes[row, 0], sizes[row, 1]
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(boxes).all(1)
            ok &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            ok &= (boxes[:, :2] >= 0).all(1) & (boxes[:, 2] <= w) & (boxes[:, 3] <= h)
        keep = np.ones(len(boxes), dtype=bool)
        for r in np.unique(row[~ok]):
            a, b = first[r], first[r + 1]
            boxes[a:b], keep[a:b] = sanitize_boxes(
                boxes[a:b], int(sizes[r, 0]), int(sizes[r, 1]), report, src,
                [item(int(k)) for k in group[a:b]],
            )  # fmt: skip
        first[1:] = np.cumsum(np.bincount(row[keep], minlength=len(usable_ids)))
        kept = group[keep]
        paths = [p for p, _, _ in images.usable.values()]
        return RecordTable(
            path=StringColumn(paths),
            file_name=StringColumn([images.entries[int(i)] for i in usable_ids]),
            annotation_file=StringColumn([src] * len(paths)),
            width=sizes[:, 0],
            height=sizes[:, 1],
            image_id=usable_ids,
            first=first,
            boxes=boxes[keep],
            labels=labels[kept],
            ignore=crowd[kept],
            areas=area[kept],
        )


def _fast_columns(batch: list, start: int, images: _Images) -> tuple[np.ndarray, ...] | None:
    """(index, image id, category id, annotation id, xyxy float64, crowd, area) of the
    annotations of usable images in ``batch``; None when any entry needs the item-by-item
    checks. Every value is type-checked as :func:`_read_annotation` does."""
    if set(map(type, batch)) != {dict}:
        return None
    ann_ids = [a.get("id") for a in batch]
    image_ids = [a.get("image_id") for a in batch]
    cats = [a.get("category_id") for a in batch]
    bboxes = [a.get("bbox") for a in batch]
    crowds = [a.get("iscrowd", 0) for a in batch]
    if not set(map(type, ann_ids)) == set(map(type, image_ids)) == set(map(type, cats)) == {int}:
        return None
    if set(map(type, bboxes)) != {list} or set(map(len, bboxes)) != {4}:
        return None
    coords = list(chain.from_iterable(bboxes))
    if not set(map(type, coords)) <= {int, float} or not set(map(type, crowds)) <= {int}:
        return None
    if not set(crowds) <= {0, 1}:
        return None
    entries = images.entries
    if not all(i in entries for i in image_ids):
        return None  # orphans: reported one by one
    try:
        ids = np.array(image_ids, dtype=np.int64)
        xywh = np.array(coords, dtype=np.float64).reshape(-1, 4)
        columns = [np.array(c, dtype=np.int64) for c in (cats, ann_ids)]
    except OverflowError:
        return None
    areas = [a.get("area") for a in batch]
    if set(map(type, areas)) <= {int, float}:
        try:
            area = np.array(areas, dtype=np.float64)
        except OverflowError:
            area = np.array([_area(v) for v in areas], dtype=np.float64)
    else:
        area = np.array([_area(v) for v in areas], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        area[~(np.isfinite(area) & (area > 0))] = np.nan
    usable = images.usable
    keep = np.fromiter((i in usable for i in image_ids), bool, len(image_ids))
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    index = np.arange(start, start + len(batch), dtype=np.int64)
    crowd = np.array(crowds, dtype=bool)
    return (
        index[keep],
        ids[keep],
        columns[0][keep],
        columns[1][keep],
        xyxy[keep],
        crowd[keep],
        area[keep],
    )


def _area(value) -> float:
    """An annotation's ``area`` as given, NaN when it is not a finite number > 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return math.nan
    try:
        area = float(value)
    except OverflowError:
        return math.nan
    return area if math.isfinite(area) and area > 0 else math.nan


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
    return item, image_id, cat, (x, y, x + bw, y + bh), crowd, _area(ann.get("area"))


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
        assert r.ignore is not None and r.areas is not None  # ImageRecord.__post_init__ fills them
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
