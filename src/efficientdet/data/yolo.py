"""YOLO txt labels: one ``.txt`` per image, one ``class cx cy w h`` line per box.

``cx cy w h`` are normalised to the image as displayed (EXIF orientation applied), so
``x1 = (cx - w/2) * W``, ``x2 = (cx + w/2) * W`` (same for y with H). ``class`` is the 0-based
index into ``names``; dataset category ids are the same indices. Images are every image
file under the images folder (sorted; image ids 0..N-1 in that order); the label file of
``images/a/b.jpg`` is ``labels/a/b.txt`` (the ``labels`` folder defaults to the images path
with its last ``images`` component replaced by ``labels``). An image without a label file,
or with an empty one, is a background image. Image sizes are read from the file header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .records import IMAGE_EXTENSIONS, DetectionData, ImageRecord, finish, read_image_size, sanitize_boxes, verify_image
from .report import DataReport


def default_labels_dir(images_dir: Path) -> Path:
    """``.../images/train`` -> ``.../labels/train`` (last ``images`` component replaced)."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir  # labels next to the images


def read_yolo(
    images_dir: str | Path,
    labels_dir: str | Path | None = None,
    *,
    class_names: list[str],
    verify_images: bool = False,
    report: DataReport | None = None,
) -> DetectionData:
    """Read a YOLO split: images under ``images_dir``, labels under ``labels_dir``."""
    images_dir = Path(images_dir)
    report = report if report is not None else DataReport()
    if not class_names:
        raise DataError(f"{images_dir}: YOLO datasets need class names; fix: add 'names: [...]' to the YAML")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: YOLO image folder not found; fix: set 'images' in the YAML to the folder of images")
    labels_dir = Path(labels_dir) if labels_dir is not None else default_labels_dir(images_dir)
    image_paths = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not labels_dir.is_dir():
        report.add("empty_annotations", str(labels_dir), "folder", "labels folder not found; every image is background")
    num_classes = len(class_names)

    records: list[ImageRecord] = []
    boxes_listed = 0
    for image_id, path in enumerate(image_paths):
        rel = path.relative_to(images_dir)
        item = f"image {rel}"
        if verify_images and (err := verify_image(str(path))):
            report.add("corrupt_image", str(path), item, f"cannot be decoded ({err})")
            continue
        try:
            w, h = read_image_size(path)
        except Exception as exc:  # noqa: BLE001
            report.add("corrupt_image", str(path), item, f"cannot be opened ({type(exc).__name__})")
            continue
        label_path = labels_dir / rel.with_suffix(".txt")
        src = str(label_path)
        rows, items = [], []
        if label_path.is_file():
            for line_no, line in enumerate(label_path.read_text(errors="replace").splitlines(), start=1):
                fields = line.split()
                if not fields:
                    continue
                boxes_listed += 1
                litem = f"line {line_no}"
                if len(fields) != 5:
                    report.add("bad_annotation", src, litem, f"expected 'class cx cy w h', got {len(fields)} fields")
                    continue
                try:
                    cls_f = float(fields[0])
                    cx, cy, bw, bh = (float(v) for v in fields[1:])
                except ValueError:
                    report.add("bad_annotation", src, litem, f"non-numeric values in {line.strip()!r}")
                    continue
                if cls_f != int(cls_f) or not 0 <= cls_f < num_classes:
                    report.add("unknown_category", src, litem, f"class {fields[0]} is not in 0..{num_classes - 1}")
                    continue
                rows.append((int(cls_f), (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
                items.append(litem)
        boxes = np.array([r[1:] for r in rows], dtype=np.float64).reshape(-1, 4)
        boxes, keep = sanitize_boxes(boxes, w, h, report, src, items)
        records.append(
            ImageRecord(
                path=str(path), width=w, height=h, boxes=boxes[keep],
                labels=np.array([r[0] for r in rows], dtype=np.int64)[keep],
                image_id=image_id, file_name=str(rel),
            )
        )
    finish(records, report, str(images_dir), len(image_paths), boxes_listed,
           f"put the images ({', '.join(IMAGE_EXTENSIONS)}) under {images_dir} or fix 'images' in the YAML")
    return DetectionData(records, list(class_names), list(range(num_classes)), report, source=str(images_dir), format="yolo")
