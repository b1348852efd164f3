"""Pascal VOC XML: one ``.xml`` per image.

Coordinate convention: VOC stores 1-based inclusive pixel indices (``xmin=1`` is the first
column, ``xmax=W`` the last). Records use continuous 0-based pixel-edge coordinates, so
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (the box keeps its width
``xmax - xmin + 1``; same as Detectron2). ``difficult=1`` objects are kept with
``ignore=True``: the dataset leaves them out of training targets and evaluation marks them
``iscrowd`` (ignored, neither true nor false positives).

Classes: the YAML's ``names`` (objects of other names are reported and dropped), or, when
absent, every name found, sorted. Dataset category ids are ``1..N`` (VOC has no ids).
Image ids are 0..N-1 in sorted XML file order. Sizes come from ``<size>``; the image header
is read only when ``<size>`` is missing or zero.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import DataError
from .records import (
    IMAGE_EXTENSIONS,
    DetectionData,
    ImageRecord,
    check_image_file,
    finish,
    read_image_size,
    sanitize_boxes,
)
from .report import DataReport


def _text(node, tag: str, default: str = "") -> str:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else default


def read_voc(
    annotations: str | Path,
    images_dir: str | Path,
    *,
    class_names: list[str] | None = None,
    ids_file: str | Path | None = None,
    verify_images: bool = False,
    report: DataReport | None = None,
) -> DetectionData:
    """Read every ``*.xml`` in the folder ``annotations`` (or only the stems listed one per line
    in ``ids_file``, as in ``ImageSets/Main/train.txt``); images are looked up in ``images_dir``
    by ``<filename>``, then by the XML stem with a common image extension."""
    ann_dir, images_dir = Path(annotations), Path(images_dir)
    report = report if report is not None else DataReport()
    if not ann_dir.is_dir():
        raise DataError(f"{ann_dir}: VOC annotation folder not found; fix: set 'annotations' to the folder of .xml files")
    if ids_file is not None:
        try:
            stems = [s.strip() for s in Path(ids_file).read_text().splitlines() if s.strip()]
        except OSError:
            raise DataError(f"{ids_file}: VOC image-set list not found; fix: set 'list' to an existing ImageSets file") from None
        xml_files = [ann_dir / f"{s.split()[0]}.xml" for s in stems]
    else:
        xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise DataError(f"{ann_dir}: no .xml files; fix: set 'annotations' to the folder holding the VOC XML files")

    parsed = []  # (xml path, image path, w, h, [(item, box, name, difficult)])
    boxes_listed = 0
    for xml_path in xml_files:
        src = str(xml_path)
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, OSError) as exc:
            kind = "unreadable_annotations"
            report.add(kind, src, "file", f"cannot parse XML ({exc})", "skipped image")
            continue
        filename = _text(root, "filename") or xml_path.stem
        candidates = [images_dir / filename] + [images_dir / (xml_path.stem + e) for e in IMAGE_EXTENSIONS]
        path = next((p for p in candidates if p.is_file()), candidates[0])
        item = f"image {filename}"
        objects = []
        for k, obj in enumerate(root.findall("object")):
            boxes_listed += 1
            name = _text(obj, "name")
            oitem = f"object {k} ({name or '?'}) of {filename}"
            bnd = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (float(_text(bnd, t, "nan")) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (ValueError, AttributeError):
                report.add("bad_annotation", src, oitem, "bndbox lacks xmin/ymin/xmax/ymax numbers")
                continue
            difficult = _text(obj, "difficult", "0") in ("1", "true", "True")
            objects.append((oitem, (xmin - 1.0, ymin - 1.0, xmax, ymax), name, difficult))
        size = root.find("size")
        try:
            w, h = int(float(_text(size, "width", "0"))), int(float(_text(size, "height", "0")))
        except (ValueError, AttributeError):
            w = h = 0
        parsed.append((src, str(path), w, h, item, filename, objects))

    if class_names is None:
        class_names = sorted({o[2] for p in parsed for o in p[6] if o[2]})
        if not class_names:
            raise DataError(f"{ann_dir}: no named objects in any XML; fix: list the classes under 'names' in the YAML")
    label_of = {n: i for i, n in enumerate(class_names)}

    records = []
    for image_id, (src, path, w, h, item, filename, objects) in enumerate(parsed):
        if not check_image_file(path, report, src, item, verify_images):
            continue
        if w <= 0 or h <= 0:
            try:
                w, h = read_image_size(path)
            except Exception as exc:  # noqa: BLE001
                report.add("corrupt_image", src, item, f"image file {path} cannot be opened ({type(exc).__name__})")
                continue
        known = []
        for o in objects:
            if o[2] not in label_of:
                report.add("unknown_category", src, o[0], f"class name {o[2]!r} is not in names {list(class_names)}")
            else:
                known.append(o)
        boxes, keep = sanitize_boxes(np.array([o[1] for o in known]).reshape(-1, 4), w, h, report, src, [o[0] for o in known])
        records.append(
            ImageRecord(
                path=path, width=w, height=h, boxes=boxes[keep],
                labels=np.array([label_of[o[2]] for o in known], dtype=np.int64)[keep],
                ignore=np.array([o[3] for o in known], dtype=bool)[keep],
                image_id=image_id, file_name=filename,
            )
        )
    finish(records, report, str(ann_dir), len(xml_files), boxes_listed,
           f"check that the images named in the XML files are in {images_dir}")
    return DetectionData(records, list(class_names), list(range(1, len(class_names) + 1)), report, source=str(ann_dir), format="voc")
