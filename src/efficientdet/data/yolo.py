"""YOLO txt labels: one ``.txt`` per image, one ``class cx cy w h`` line per box.

``cx cy w h`` are normalised to the image as displayed (EXIF orientation applied), so
``x1 = (cx - w/2) * W``, ``x2 = (cx + w/2) * W`` (same for y with H). ``class`` is the 0-based
index into ``names``; dataset category ids are the same indices. A line of more than 5
values is an Ultralytics segment ``class x1 y1 x2 y2 ...``: its bounding box is used.

Images: every image file under each images folder (sorted), and the images listed in each
``.txt`` list (one path per line; relative lines are relative to the list's folder); image
ids are 0..N-1 in that order. Label files: with a labels folder, ``labels/<path relative to
the images folder>.txt``; otherwise the Ultralytics rule: the last ``/images/`` of the image
path replaced by ``/labels/`` (next to the image when there is none). An image without a label
file, or with an empty one, is a background image; a label file found next to the image
instead is reported (``misplaced_label``), and label files of no image are reported
(``orphan_label``). Image sizes are read from the file header.
"""

from __future__ import annotations

import os
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


def default_labels_dir(images_dir: Path) -> Path:
    """``.../images/train`` -> ``.../labels/train`` (last ``images`` component replaced)."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir  # labels next to the images


def label_path_for(image_path: Path) -> Path:
    """Ultralytics' rule: ``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (last ``images`` folder)."""
    return default_labels_dir(image_path.parent) / (image_path.stem + ".txt")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(
    sources: list[Path], labels_dir: Path | None, report: DataReport
) -> tuple[list[tuple[Path, str, Path]], list[Path]]:
    """([(image path, name for messages, label path)], label folders to scan for orphans).

    ``sources``: image folders and/or ``.txt`` lists of image paths."""
    entries: list[tuple[Path, str, Path]] = []
    label_roots: list[Path] = []
    for source in sources:
        if source.is_dir():
            root = labels_dir if labels_dir is not None else default_labels_dir(source)
            label_roots.append(root)
            for path in sorted(p for p in source.rglob("*") if _is_image(p) and p.is_file()):
                rel = path.relative_to(source)
                entries.append((path, str(rel), root / rel.with_suffix(".txt")))
        elif source.is_file() and source.suffix.lower() == ".txt":
            try:
                lines = source.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError:
                raise DataError(
                    f"{source}: image list is not UTF-8 text; fix: write one image path per line"
                ) from None
            for n, line in enumerate(lines, start=1):
                name = line.strip()
                if not name:
                    continue
                if "\x00" in name or not _is_image(Path(name)):
                    report.add(
                        "bad_image_entry",
                        str(source),
                        f"line {n}",
                        f"{name[:80]!r} is not an image path ({', '.join(IMAGE_EXTENSIONS)})",
                    )
                    continue
                path = Path(name) if Path(name).is_absolute() else source.parent / name
                entries.append(
                    (
                        path,
                        name,
                        labels_dir / path.with_suffix(".txt").name
                        if labels_dir
                        else label_path_for(path),
                    )
                )
        elif source.is_file() and _is_image(source):
            entries.append(
                (source, source.name, (labels_dir or source.parent) / (source.stem + ".txt"))
            )
        else:
            raise DataError(
                f"{source}: YOLO images not found (need an image folder or a .txt list of images); "
                "fix: set the split in the YAML to an existing folder or list"
            )
    return entries, label_roots


def read_label_file(
    label_path: Path, image_name: str, num_classes: int, width: int, height: int, report: DataReport
) -> tuple[list[tuple], list[str], int] | None:
    """([(class, x1, y1, x2, y2) pixels], items, lines with a box) of one label file; None
    when the file cannot be read as text (reported)."""
    src = str(label_path)
    try:
        text = label_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add(
            "unreadable_annotations",
            src,
            f"byte {exc.start} (image {image_name})",
            "label file is not UTF-8 text",
            "skipped image",
            "write the labels as plain text: 'class cx cy w h' per line",
        )
        return None
    except OSError as exc:
        report.add(
            "unreadable_annotations",
            src,
            f"file (image {image_name})",
            f"cannot read ({exc.strerror or exc})",
            "skipped image",
        )
        return None
    rows, items, listed = [], [], 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        listed += 1
        item = f"line {line_no} (image {image_name})"
        try:
            if len(fields) < 5 or (len(fields) > 5 and len(fields) % 2 == 0):
                raise schema.Invalid(
                    f"expected 'class cx cy w h' (or a segment 'class x y x y ...'), got {len(fields)} values"
                )
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                raise schema.Invalid(f"non-numeric values in {line.strip()[:80]!r}") from None
            cls = schema.class_index(fields[0], num_classes)
        except schema.OutOfRange as exc:
            report.add("unknown_category", src, item, str(exc), value=fields[0])
            continue
        except schema.Invalid as exc:
            report.add("bad_annotation", src, item, str(exc), value=fields[0])
            continue
        if len(values) == 4:
            cx, cy, bw, bh = values
            x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
        else:  # segment: its bounding box
            xs, ys = values[0::2], values[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        rows.append((cls, x1 * width, y1 * height, x2 * width, y2 * height))
        items.append(item)
    return rows, items, listed


def read_yolo(
    images: str | Path | list,
    labels_dir: str | Path | None = None,
    *,
    class_names: list[str],
    verify_images: bool = False,
    report: DataReport | None = None,
    show_progress: bool = False,
) -> DetectionData:
    """Read a YOLO split: ``images`` is an image folder, a ``.txt`` image list, or a list of
    those; ``labels_dir`` the labels folder (None: the Ultralytics rule, see module doc)."""
    sources = [Path(p) for p in images] if isinstance(images, (list, tuple)) else [Path(images)]
    report = report if report is not None else DataReport()
    where = ", ".join(str(s) for s in sources)
    if not class_names:
        raise DataError(
            f"{where}: YOLO datasets need class names; fix: add 'names: [...]' to the YAML"
        )
    labels_dir = Path(labels_dir) if labels_dir is not None else None
    if labels_dir is not None and not labels_dir.is_dir():
        report.add(
            "empty_annotations",
            str(labels_dir),
            "folder",
            "labels folder not found; every image is background",
            fix="set 'annotations' to the folder of .txt label files",
        )
    entries, label_roots = list_images(sources, labels_dir, report)
    num_classes = len(class_names)

    records: list[ImageRecord] = []
    boxes_listed = 0
    seen: set[str] = set()
    expected_labels: set[str] = set()
    if (
        labels_dir is None
        and entries
        and not any(label_path.is_file() for _, _, label_path in entries)
    ):
        # the Ultralytics rule found no label file at all: a misplaced labels folder, not a background set
        first = entries[0][2]
        report.add(
            "empty_annotations",
            str(first.parent),
            "folder",
            f"no label file for any of the {len(entries)} images (looked for e.g. {first}); every image is background",
            fix="put the .txt labels in the 'labels' folder beside 'images' (Ultralytics layout), or set 'annotations'",
        )
    for image_id, (path, name, label_path) in enumerate(
        progress(entries, "reading images", show_progress)
    ):
        item = f"image {name}"
        key = os.path.normpath(str(path))
        if key in seen:
            report.add(
                "duplicate_image_id",
                str(path),
                item,
                "image listed twice in this split",
                value=name,
            )
            continue
        seen.add(key)
        expected_labels.add(os.path.normpath(str(label_path)))
        size = check_image(str(path), report, str(path), item, verify_images)
        if size is None:
            continue
        w, h = size
        rows: list[tuple] = []
        items: list[str] = []
        if label_path.is_file():
            parsed = read_label_file(label_path, name, num_classes, w, h, report)
            if parsed is None:
                continue
            rows, items, listed = parsed
            boxes_listed += listed
        elif (beside := path.with_suffix(".txt")).is_file() and beside != label_path:
            report.add(
                "misplaced_label",
                str(beside),
                item,
                f"label file is next to the image, but labels are read from {label_path}",
                fix=f"move the label files to {label_path.parent} (or set 'annotations' to the folder that holds them)",
            )
        boxes = np.array([r[1:] for r in rows], dtype=np.float64).reshape(-1, 4)
        boxes, keep = sanitize_boxes(boxes, w, h, report, str(label_path), items)
        records.append(
            ImageRecord(
                path=str(path),
                width=w,
                height=h,
                boxes=boxes[keep],
                labels=np.array([r[0] for r in rows], dtype=np.int64)[keep],
                image_id=image_id,
                file_name=name,
                annotation_file=str(label_path),
            )
        )
    _report_orphans(label_roots, expected_labels, report)
    finish(
        records,
        report,
        where,
        len(entries),
        boxes_listed,
        f"put the images ({', '.join(IMAGE_EXTENSIONS)}) under {where} or fix the split in the YAML",
    )
    return DetectionData(
        records, list(class_names), list(range(num_classes)), report, source=where, format="yolo"
    )


def _report_orphans(label_roots: list[Path], expected: set[str], report: DataReport) -> None:
    """Report every ``.txt`` under the label folders that belongs to no image of the split."""
    for root in dict.fromkeys(label_roots):
        if not root.is_dir():
            continue
        for label in sorted(root.rglob("*.txt")):
            if os.path.normpath(str(label)) not in expected:
                report.add(
                    "orphan_label",
                    str(label),
                    "file",
                    f"no image {label.stem}.* (any of {', '.join(IMAGE_EXTENSIONS)}) for this label file in the split",
                )
