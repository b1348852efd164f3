"""The common in-memory form every reader produces.

* :class:`ImageRecord`: one image, its size and its boxes, ``boxes`` (M, 4) float32 xyxy in
  pixels of the image as displayed (EXIF orientation applied), continuous coordinates:
  a box covering pixel columns 0..9 is ``x1=0, x2=10``.
* :class:`RecordTable`: the records of a split held in a few flat numpy arrays (one row per
  image, one per box, strings as one UTF-8 buffer + offsets), read as a sequence of
  ``ImageRecord`` views made on access. A COCO-size split is a handful of arrays, not 118k
  Python objects, so forked DataLoader workers share its pages instead of copying them as
  reference counts change.
* :class:`DetectionData`: the records of one split (a ``RecordTable``) plus ``class_names`` and
  ``category_ids`` (0-based index -> the dataset's own category id), and the
  :class:`DataReport` of the read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import numpy as np

from ..errors import DataError
from .report import DataReport

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".ppm",
    ".pgm",
)
# Boxes that overshoot the border by less than this many pixels are clipped silently
# (float rounding in exported annotations), larger overshoots are clipped and reported.
CLIP_TOLERANCE = 0.01


@dataclass
class ImageRecord:
    """One image and its annotations.

    boxes: (M, 4) float32 xyxy pixels; labels: (M,) int64 0-based class indices;
    ignore: (M,) bool, True for boxes to ignore in training and to mark ``iscrowd`` in
    evaluation (COCO ``iscrowd=1``, VOC ``difficult=1``). areas: (M,) float32 object areas
    from the annotations (COCO ``area``, the segment's), NaN where none is given; COCO's
    small/medium/large metrics use them, falling back to the box area.
    """

    path: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int
    ignore: np.ndarray | None = None
    file_name: str = (
        ""  # as written in the annotations (COCO file_name, VOC filename, YOLO relative path)
    )
    areas: np.ndarray | None = None
    annotation_file: str = ""  # the file holding this image's boxes (COCO JSON, VOC XML, YOLO .txt)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.ignore is None:
            self.ignore = np.zeros(len(self.labels), dtype=bool)
        self.ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if self.areas is None:
            self.areas = np.full(len(self.labels), np.nan, dtype=np.float32)
        self.areas = np.asarray(self.areas, dtype=np.float32).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.ignore) == len(self.areas)):
            raise ValueError(f"record {self.image_id}: boxes, labels and ignore differ in length")
        if not self.file_name:
            self.file_name = Path(self.path).name


class StringColumn:
    """N strings as one UTF-8 byte buffer (uint8) + (N + 1,) int64 offsets; ``col[i]`` is a str.

    Lone surrogates (possible in JSON text) round-trip through ``surrogatepass``."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.buffer[a:b].tobytes().decode("utf-8", "surrogatepass")

    def take(self, index: np.ndarray) -> StringColumn:
        """The strings at ``index`` (int array) as a new column."""
        return StringColumn([self[int(i)] for i in index])


class RecordTable(Sequence[ImageRecord]):
    """The records of one split in flat arrays; ``table[i]`` is an :class:`ImageRecord` whose
    box arrays are read-only views into the table (nothing is copied per access).

    Per image (N,): ``path``, ``file_name``, ``annotation_file`` (:class:`StringColumn`),
    ``width``, ``height``, ``image_id`` (int64), ``first`` (N + 1,) int64: the boxes of image
    ``i`` are rows ``first[i]:first[i + 1]`` of the per-box (M,) arrays ``boxes`` (M, 4) float32
    xyxy, ``labels`` int64, ``ignore`` bool, ``areas`` float32 (NaN where not given).
    """

    def __init__(
        self,
        *,
        path: StringColumn,
        file_name: StringColumn,
        annotation_file: StringColumn,
        width: np.ndarray,
        height: np.ndarray,
        image_id: np.ndarray,
        first: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        ignore: np.ndarray,
        areas: np.ndarray,
    ) -> None:
        n, m = len(path), len(labels)
        self.path, self.file_name, self.annotation_file = path, file_name, annotation_file
        self.width = _frozen(width, np.int64, (n,))
        self.height = _frozen(height, np.int64, (n,))
        self.image_id = _frozen(image_id, np.int64, (n,))
        self.first = _frozen(first, np.int64, (n + 1,))
        self.boxes = _frozen(boxes, np.float32, (m, 4))
        self.labels = _frozen(labels, np.int64, (m,))
        self.ignore = _frozen(ignore, np.bool_, (m,))
        self.areas = _frozen(areas, np.float32, (m,))
        if not (len(file_name) == len(annotation_file) == n) or self.first[-1] != m:
            raise ValueError("RecordTable: columns differ in length")

    @classmethod
    def from_records(cls, records: Iterable[ImageRecord]) -> RecordTable:
        """A table holding ``records`` (copied; any iterable of ImageRecord)."""
        if isinstance(records, RecordTable):
            return records
        records = list(records)
        counts = np.fromiter((len(r.labels) for r in records), np.int64, len(records))
        first = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(counts, out=first[1:])

        def rows(name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
            parts = [getattr(r, name) for r in records]
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

        return cls(
            path=StringColumn([r.path for r in records]),
            file_name=StringColumn([r.file_name for r in records]),
            annotation_file=StringColumn([r.annotation_file for r in records]),
            width=np.array([r.width for r in records], dtype=np.int64),
            height=np.array([r.height for r in records], dtype=np.int64),
            image_id=np.array([r.image_id for r in records], dtype=np.int64),
            first=first,
            boxes=rows("boxes", np.float32, (0, 4)),
            labels=rows("labels", np.int64, (0,)),
            ignore=rows("ignore", np.bool_, (0,)),
            areas=rows("areas", np.float32, (0,)),
        )

    def __len__(self) -> int:
        return len(self.image_id)

    @overload
    def __getitem__(self, i: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, i: slice) -> list[ImageRecord]: ...

    def __getitem__(self, i: int | slice) -> ImageRecord | list[ImageRecord]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        k = int(i)
        if not -n <= k < n:
            raise IndexError(f"record {k} out of range (0..{n - 1})")
        k %= n
        a, b = self.first[k], self.first[k + 1]
        return ImageRecord(
            path=self.path[k],
            width=int(self.width[k]),
            height=int(self.height[k]),
            boxes=self.boxes[a:b],
            labels=self.labels[a:b],
            image_id=int(self.image_id[k]),
            ignore=self.ignore[a:b],
            file_name=self.file_name[k],
            areas=self.areas[a:b],
            annotation_file=self.annotation_file[k],
        )

    def __iter__(self) -> Iterator[ImageRecord]:
        for k in range(len(self)):
            yield self[k]

    def box_counts(self) -> np.ndarray:
        """(N,) int64 number of boxes per image."""
        return np.diff(self.first)


def _frozen(values: np.ndarray, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` as a contiguous read-only array of ``dtype`` and ``shape`` (views handed
    out by RecordTable must not let one caller change the records every other one sees)."""
    out: np.ndarray = np.ascontiguousarray(values, dtype=dtype).reshape(shape)
    out.setflags(write=False)
    return out


@dataclass
class DetectionData:
    """Records of one split with the class list; what ``load_dataset`` returns.

    ``category_ids[i]`` is the dataset's own id of class ``i`` (COCO category id, YOLO class
    index, VOC: i + 1); :meth:`to_category_id` / :meth:`to_label` map both ways. ``records``
    may be given as any sequence of ImageRecord; it is held as a :class:`RecordTable`.
    ``annotated`` is False for a split that has no annotations at all (a COCO ``image_info``
    JSON without an "annotations" key, as COCO test-dev ships, or a folder of images): its
    records have no boxes and it cannot be scored (an empty annotations list is annotated:
    every image is background).
    """

    records: Sequence[ImageRecord]
    class_names: list[str]
    category_ids: list[int]
    report: DataReport = field(default_factory=DataReport)
    source: str = ""
    format: str = ""
    annotated: bool = True

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.category_ids):
            raise ValueError("class_names and category_ids differ in length")
        self.records = RecordTable.from_records(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_category_id(self, label: int) -> int:
        return self.category_ids[int(label)]

    def to_label(self, category_id: int) -> int:
        return self.category_ids.index(int(category_id))


def exif_oriented_size(image) -> tuple[int, int]:
    """(width, height) of an opened PIL image as displayed: swapped for EXIF orientations 5-8."""
    w, h = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed, from the file header only (no pixel decoding).

    Raises FileNotFoundError for a missing file and OSError for an unreadable one. A JPEG is
    read by :func:`jpeg_size` (a few small reads, ~20x faster than PIL on COCO-size folders);
    anything it does not recognise is left to PIL.
    """
    wh = jpeg_size(path)
    if wh is not None:
        return wh
    from PIL import Image

    with Image.open(path) as image:
        return exif_oriented_size(image)


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): height, width follow
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_HEADER_BYTES = 16384  # one read holds the markers of most JPEGs


def jpeg_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) as displayed of a JPEG, from its markers up to the first scan, with the
    EXIF orientation of its one Exif APP1 segment; None for anything else or anything unusual
    (not a JPEG, junk between markers, a second Exif or an XMP segment, no frame size), which
    PIL then reads. Gives what PIL's size + ``getexif()`` give (tests compare the two)."""
    with open(path, "rb", buffering=0) as f:
        data = f.read(_HEADER_BYTES)  # file bytes from offset `start` on
        if not data.startswith(b"\xff\xd8\xff"):
            return None
        start, pos, size, orientation, app1_seen = 0, 2, None, 1, False
        while True:
            if pos + 4 > len(data):
                data += f.read(max(_HEADER_BYTES, pos + 4 - len(data)))
                if pos + 4 > len(data):
                    return None
            if data[pos] != 0xFF:
                return None
            marker, length = data[pos + 1], (data[pos + 2] << 8) | data[pos + 3]
            if marker == 0xDA:  # start of scan: the header is over
                break
            if marker in (0x00, 0x01, 0xFF) or 0xD0 <= marker <= 0xD9 or length < 2:
                return None
            end = pos + 2 + length
            if marker not in _SOF_MARKERS and marker != 0xE1:
                if end + 4 > len(data):  # skip a segment past the buffer without reading it
                    start += end
                    f.seek(start)
                    data, pos = f.read(_HEADER_BYTES), 0
                else:
                    pos = end
                continue
            if end > len(data):  # the body is needed: read up to its end
                data += f.read(end - len(data))
                if end > len(data):
                    return None
            if marker == 0xE1:
                body = data[pos + 4 : end]
                if app1_seen or not body.startswith(b"Exif\0\0"):
                    return None  # a second Exif is merged by PIL, XMP may hold the orientation
                app1_seen = True
                found = _exif_orientation(body[6:])
                if found is None:
                    return None
                orientation = found
            elif length < 7:
                return None
            else:  # precision (1 byte), height, width (2 bytes each)
                size = ((data[pos + 7] << 8) | data[pos + 8], (data[pos + 5] << 8) | data[pos + 6])
            pos = end
    if size is None or 0 in size:
        return None
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation (0x0112) of a TIFF-structured Exif block's first IFD: 1 when absent,
    None when the block is not plainly readable."""
    if tiff[:4] not in (b"II*\0", b"MM\0*") or len(tiff) < 8:
        return None
    endian: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], endian)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd : ifd + 2], endian)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    found = [
        tiff[e + 2 : e + 10]
        for e in range(ifd + 2, ifd + 2 + 12 * count, 12)
        if int.from_bytes(tiff[e : e + 2], endian) == 0x0112
    ]
    if not found:
        return 1
    if len(found) > 1 or found[0][:6] != (
        b"\x03\0\x01\0\0\0" if endian == "little" else b"\0\x03\0\0\0\x01"
    ):
        return None  # not one SHORT: PIL's reading decides
    return int.from_bytes(found[0][6:8], endian)


def sanitize_boxes(
    boxes: np.ndarray,
    width: int,
    height: int,
    report: DataReport,
    file: str,
    items: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Check (M, 4) xyxy boxes against an image of ``width`` x ``height``.

    NaN/inf -> dropped (nan_box); x2 <= x1 or y2 <= y1 -> dropped (bad_box_size); fully
    outside -> dropped (box_outside); partly outside -> clipped (box_clipped). Each problem is
    added to ``report`` with ``file`` and ``items[i]``. Returns (clipped boxes, keep mask).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), dtype=bool)
    out = boxes.copy()
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            report.add(
                "nan_box", file, items[i], f"box {[x1, y1, x2, y2]} has NaN or infinite coordinates"
            )
            keep[i] = False
            continue
        if x2 <= x1 or y2 <= y1:
            report.add(
                "bad_box_size",
                file,
                items[i],
                f"box xyxy {_fmt(boxes[i])} has width {x2 - x1:g}, height {y2 - y1:g}",
            )
            keep[i] = False
            continue
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if cx2 <= cx1 or cy2 <= cy1:
            report.add(
                "box_outside",
                file,
                items[i],
                f"box xyxy {_fmt(boxes[i])} lies outside the {width}x{height} image",
            )
            keep[i] = False
            continue
        overshoot = max(-x1, -y1, x2 - width, y2 - height)
        if overshoot > CLIP_TOLERANCE:
            report.add(
                "box_clipped",
                file,
                items[i],
                f"box xyxy {_fmt(boxes[i])} extends past the {width}x{height} image",
            )
        out[i] = (cx1, cy1, cx2, cy2)
    out[~keep] = 0.0  # dropped rows may hold NaN or 1e308: never cast them
    return out.astype(np.float32), keep


def _fmt(box) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def finish(
    records: Sequence[ImageRecord],
    report: DataReport,
    source: str,
    listed: int,
    boxes_listed: int,
    fix: str,
) -> None:
    """Fill report stats; raise DataError naming ``source`` and ``fix`` when no image is usable."""
    report.stats["images_listed"] += listed
    report.stats["images_used"] += len(records)
    report.stats["boxes_listed"] += boxes_listed
    if isinstance(records, RecordTable):
        counts = records.box_counts()
    else:
        counts = np.array([len(r.labels) for r in records], dtype=np.int64)
    report.stats["boxes_used"] += int(counts.sum())
    report.stats["images_without_boxes"] += int((counts == 0).sum())
    if not records:
        problems = ", ".join(f"{n} {k}" for k, n in report.counts().items())
        raise DataError(
            f"{source}: no usable images ({listed} listed; {problems or 'no images listed'}); fix: {fix}"
        )


def check_image(
    path: str,
    report: DataReport,
    file: str,
    item: str,
    verify: bool = False,
    annotated_wh: tuple[int, int] | None = None,
) -> tuple[int, int] | None:
    """The (width, height) to use for the image at ``path``, or None when it is unusable (reported).

    Reads the file header (no decoding; with ``verify`` the whole file is decoded; without it, a
    file whose header cannot be read but whose size is annotated is kept for the dataset to
    report when it fails to load). A size in
    the annotations (``annotated_wh``) that differs from the file's is reported as
    ``size_mismatch`` and kept: the boxes were drawn on that size, and the dataset resizes
    the decoded image to it. Without an annotated size the header's size is used.
    """
    import os

    if not os.path.isfile(path):
        report.add("missing_image", file, item, f"image file {path} not found")
        return None
    error = verify_image(path) if verify else ""
    if not error:
        try:
            real_wh = read_image_size(path)
        except Exception as exc:
            if annotated_wh is not None and not verify:
                # the size is known: keep the image; loading finds it undecodable, reports it
                # and substitutes another (DetectionDataset), as for any file corrupt past its header
                return int(annotated_wh[0]), int(annotated_wh[1])
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if error:
        report.add("corrupt_image", file, item, f"image file {path} cannot be decoded ({error})")
        return None
    if annotated_wh is None:
        return real_wh
    if tuple(annotated_wh) != tuple(real_wh):
        report.add(
            "size_mismatch",
            file,
            item,
            f"annotated size {annotated_wh[0]}x{annotated_wh[1]} but the file {path} is {real_wh[0]}x{real_wh[1]}",
            value=f"{real_wh[0]}x{real_wh[1]}",
        )
    return int(annotated_wh[0]), int(annotated_wh[1])


def progress(items, desc: str, enabled: bool):
    """``items`` wrapped in a tqdm bar on stderr when ``enabled`` (reading a large split takes time)."""
    if not enabled:
        return items
    import sys

    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", leave=False, file=sys.stderr)


def verify_image(path: str) -> str:
    """Decode ``path`` fully; returns '' when fine, else the error text (one line)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return ""
