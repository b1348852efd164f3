"""A folder of images without annotations as a split (test-dev style: detect, write, no metrics).

Image ids for results files (:func:`image_id_from_name`), the one rule wherever a file has no
id of its own (``val`` on a folder, ``predict``): a file name whose stem is all digits is its
number (COCO's ``000000397133.jpg`` -> 397133, so results of COCO images carry COCO's ids);
any other name gets a stable id from the name itself (CRC-32 of the UTF-8 file name, 31 bits),
the same on every run and machine, whatever else the folder holds.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .records import IMAGE_EXTENSIONS, DetectionData, ImageRecord, check_image, finish
from .report import DataReport


def image_id_from_name(file_name: str) -> int:
    """The results-file image id of ``file_name`` (module docstring): the number of an all-digit
    stem, else the CRC-32 of the name (without folders) in 31 bits (a non-negative int32)."""
    name = Path(file_name).name
    stem = Path(name).stem
    if stem.isdigit():
        return int(stem)
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def read_image_folder(
    folder: str | Path,
    *,
    class_names: list[str],
    category_ids: list[int],
    verify_images: bool = False,
    report: DataReport | None = None,
) -> DetectionData:
    """The images directly in ``folder`` (not recursive, sorted by name) as an unannotated split
    (``annotated`` False, no boxes), with the model's ``class_names`` / ``category_ids``.

    Ids by :func:`image_id_from_name`; a second file with an id already taken (``1.jpg`` and
    ``1.png``) is reported (``duplicate_image_id``) and skipped, unreadable files
    (``corrupt_image``) too. ``report.stats["not_images"]`` counts the other entries of the
    folder (files of other types, subfolders), which are not read.
    """
    folder = Path(folder)
    report = report if report is not None else DataReport()
    src = str(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; fix: give a folder of images")
    if not class_names or len(class_names) != len(category_ids):
        raise DataError(
            f"{folder}: a folder of images needs the model's class names and category ids; "
            "fix: evaluate with a checkpoint or exported file that carries them"
        )
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    images = [p for p in entries if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)]
    report.stats["not_images"] += len(entries) - len(images)
    records: list[ImageRecord] = []
    taken: dict[int, str] = {}
    for path in images:
        image_id = image_id_from_name(path.name)
        item = f"image id {image_id} ({path.name})"
        if image_id in taken:
            report.add(
                "duplicate_image_id",
                src,
                item,
                f"{path.name} and {taken[image_id]} both give image id {image_id}",
                value=image_id,
                fix="rename one of the two files",
            )
            continue
        size = check_image(str(path), report, src, item, verify_images)
        if size is None:
            continue
        taken[image_id] = path.name
        records.append(
            ImageRecord(
                path=str(path),
                width=size[0],
                height=size[1],
                boxes=np.zeros((0, 4), np.float32),
                labels=np.zeros(0, np.int64),
                image_id=image_id,
                file_name=path.name,
            )
        )
    finish(
        records,
        report,
        src,
        len(images),
        0,
        f"put readable images ({', '.join(IMAGE_EXTENSIONS[:5])}, ...) in {folder}",
    )
    return DetectionData(
        records,
        list(class_names),
        [int(c) for c in category_ids],
        report,
        source=src,
        format="folder",
        annotated=False,
    )
