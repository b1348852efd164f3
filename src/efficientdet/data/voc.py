"""Pascal VOC XML: one ``.xml`` per image.

Coordinate convention: VOC stores 1-based inclusive pixel indices (``xmin=1`` is the first
column, ``xmax=W`` the last). Records use continuous 0-based pixel-edge coordinates, so
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (the box keeps its width
``xmax - xmin + 1``; same as Detectron2). ``difficult=1`` objects are kept with
``ignore=True``: the dataset leaves them out of training targets and evaluation marks them
``iscrowd`` (ignored, neither true nor false positives).

Classes: the YAML's ``names`` (objects of other names are reported and dropped), or, when
absent, every name found, sorted. Dataset category ids are ``1..N`` (VOC has no ids).
Image ids are 0..N-1 in sorted XML file order. Sizes come from ``<size>`` and are checked
against the image file's header (``size_mismatch``); the header's size is used when
``<size>`` is missing or zero.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import schema
from .records import (
    IMAGE_EXTENSIONS,
    DetectionData,
    ImageRecord,
    check_image,
    finish,
    progress,
    sanitize_boxes,
)
from .report import DataReport


def _text(node, tag: str, default: str = "") -> str:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else default


def _number(node, tag: str) -> float:
    """A coordinate from ``<tag>`` text (``nan``/``inf`` pass through to the box checks)."""
    raw = _text(node, tag)
    try:
        return float(raw)
    except ValueError:
        raise schema.Invalid(f"<{tag}>: expected a number, got {raw!r}") from None


def _annotated_size(size, src: str, item: str, report: DataReport) -> tuple[int, int] | None:
    """(width, height) from ``<size>``; None when absent or 0 (the header is read instead)."""
    if (
        size is None
        or _text(size, "width", "0") in ("0", "")
        or _text(size, "height", "0") in ("0", "")
    ):
        return None
    try:
        return (
            schema.positive_size(_number(size, "width"), "<width>"),
            schema.positive_size(_number(size, "height"), "<height>"),
        )
    except schema.Invalid as exc:
        report.add(
            "bad_image_entry",
            src,
            item,
            str(exc),
            "size read from the image file",
            "write <width> and <height> as integers > 0",
        )
        return None


def read_voc(
    annotations: str | Path,
    images_dir: str | Path,
    *,
    class_names: list[str] | None = None,
    ids_file: str | Path | None = None,
    verify_images: bool = False,
    report: DataReport | None = None,
    show_progress: bool = False,
) -> DetectionData:
    """Read every ``*.xml`` in the folder ``annotations`` (or only the stems listed one per line
    in ``ids_file``, as in ``ImageSets/Main/train.txt``); images are looked up in ``images_dir``
    by ``<filename>``, then by the XML stem with a common image extension."""
    ann_dir, images_dir = Path(annotations), Path(images_dir)
    report = report if report is not None else DataReport()
    if not ann_dir.is_dir():
        raise DataError(
            f"{ann_dir}: VOC annotation folder not found; fix: set 'annotations' to the folder of .xml files"
        )
    if ids_file is not None:
        try:
            stems = [
                s.strip()
                for s in Path(ids_file).read_text(encoding="utf-8").splitlines()
                if s.strip()
            ]
        except OSError:
            raise DataError(
                f"{ids_file}: VOC image-set list not found; fix: set 'list' to an existing ImageSets file"
            ) from None
        except UnicodeDecodeError:
            raise DataError(
                f"{ids_file}: VOC image-set list is not UTF-8 text; fix: write one image stem per line"
            ) from None
        xml_files = [ann_dir / f"{s.split()[0]}.xml" for s in stems]
    else:
        xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise DataError(
            f"{ann_dir}: no .xml files; fix: set 'annotations' to the folder holding the VOC XML files"
        )

    parsed = []  # (xml path, image path, (w, h) or None, item, file name, [(item, box, name, difficult)])
    boxes_listed = 0
    for xml_path in xml_files:
        src = str(xml_path)
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, OSError, ValueError) as exc:
            report.add(
                "unreadable_annotations",
                src,
                "file",
                f"cannot parse XML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                "skipped image",
            )
            continue
        try:
            filename = schema.relative_path(_text(root, "filename") or xml_path.stem, "filename")
        except schema.Invalid as exc:
            report.add("bad_image_entry", src, "filename", str(exc))
            continue
        candidates = [images_dir / filename] + [
            images_dir / (xml_path.stem + e) for e in IMAGE_EXTENSIONS
        ]
        path = next((p for p in candidates if p.is_file()), candidates[0])
        item = f"image {filename}"
        objects = []
        for k, obj in enumerate(root.findall("object")):
            boxes_listed += 1
            name = _text(obj, "name")
            oitem = f"object {k} ({name or '?'}) of {filename}"
            try:
                bnd = obj.find("bndbox")
                if bnd is None:
                    raise schema.Invalid("no <bndbox>")
                xmin, ymin, xmax, ymax = (_number(bnd, t) for t in ("xmin", "ymin", "xmax", "ymax"))
                difficult = schema.flag(_text(obj, "difficult", "0"), "difficult")
            except schema.Invalid as exc:
                report.add("bad_annotation", src, oitem, str(exc))
                continue
            objects.append((oitem, (xmin - 1.0, ymin - 1.0, xmax, ymax), name, difficult))
        size = _annotated_size(root.find("size"), src, item, report)
        parsed.append((src, str(path), size, item, filename, objects))

    if class_names is None:
        class_names = sorted({o[2] for p in parsed for o in p[5] if o[2]})
        if not class_names:
            raise DataError(
                f"{ann_dir}: no named objects in any XML; fix: list the classes under 'names' in the YAML"
            )
    label_of = {n: i for i, n in enumerate(class_names)}

    records = []
    rows = progress(parsed, f"reading {ann_dir.name}", show_progress)
    for image_id, (src, path, size, item, filename, objects) in enumerate(rows):
        wh = check_image(path, report, src, item, verify_images, size)
        if wh is None:
            continue
        w, h = wh
        known = []
        for o in objects:
            if o[2] not in label_of:
                report.add(
                    "unknown_category",
                    src,
                    o[0],
                    f"class name {o[2]!r} is not in names {list(class_names)}",
                    value=o[2],
                )
            else:
                known.append(o)
        boxes, keep = sanitize_boxes(
            np.array([o[1] for o in known]).reshape(-1, 4), w, h, report, src, [o[0] for o in known]
        )
        records.append(
            ImageRecord(
                path=path,
                width=w,
                height=h,
                boxes=boxes[keep],
                labels=np.array([label_of[o[2]] for o in known], dtype=np.int64)[keep],
                ignore=np.array([o[3] for o in known], dtype=bool)[keep],
                image_id=image_id,
                file_name=filename,
                annotation_file=src,
            )
        )
    finish(
        records,
        report,
        str(ann_dir),
        len(xml_files),
        boxes_listed,
        f"check that the images named in the XML files are in {images_dir}",
    )
    return DetectionData(
        records,
        list(class_names),
        list(range(1, len(class_names) + 1)),
        report,
        source=str(ann_dir),
        format="voc",
    )
