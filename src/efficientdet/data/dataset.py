"""``DetectionDataset``: records -> (normalised image tensor, target dict) for the model.

Item ``i`` is ``(image, target)``:

* ``image``: (3, H, W) float32, ``(pixel - mean) / std`` (0-255 units), letterboxed
  top-left (see :mod:`efficientdet.data.transforms`), padding = mean colour (0 after
  normalisation);
* ``target``: ``{"boxes": (M, 4) float32 xyxy model-input pixels, "labels": (M,) int64
  0-based, "image_id": int, "scale": float, "original_size": (h, w)}``. In evaluation mode
  original boxes = ``boxes / scale``. Boxes flagged ``ignore`` (COCO crowd, VOC difficult)
  are left out of targets.

A file that fails to open or decode is reported once (see :meth:`load_report`) and the next
good image is returned in its place; the failure is recorded in shared memory, so it is
seen by the main process and skipped at once on later epochs, in every worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import DataError
from .records import DetectionData, ImageRecord, RecordTable
from .report import DataReport
from .transforms import (
    AugmentConfig,
    apply_exif,
    clip_boxes,
    hflip_boxes,
    letterbox_scale,
    normalize,
    open_image,
    random_scale_crop,
    resize_crop,
    resized_size,
    scale_boxes,
    to_rgb,
)

log = logging.getLogger("efficientdet.data")

_OK, _CORRUPT, _SIZE_MISMATCH = 0, 1, 2


class DetectionDataset(torch.utils.data.Dataset):
    """Records (or a :class:`DetectionData`) as model inputs.

    ``image_size_hw``: model input (H, W); ``mean``/``std``: per RGB channel, 0-255 units;
    ``train``: random scale jitter, crop and flip per ``augment`` (default
    :class:`AugmentConfig`); otherwise a plain letterbox. ``class_names``/``category_ids``
    default to those of a DetectionData; ``seed`` seeds augmentation in the main process
    (workers use their own per-worker seed, see ``create_loader``). Training on a split
    without annotations (``DetectionData.annotated`` False) is refused.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord] | DetectionData,
        image_size_hw: tuple[int, int],
        mean,
        std,
        train: bool = False,
        augment: AugmentConfig | None = None,
        *,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        seed: int = 0,
    ) -> None:
        self.source_report = DataReport()
        if isinstance(records, DetectionData) and train and not records.annotated:
            raise DataError(
                f"{records.source or 'dataset'}: no annotations to train on (an image_info JSON or "
                "a folder of images); fix: give the split's instances JSON with its annotations"
            )
        if isinstance(records, DetectionData):
            class_names = class_names if class_names is not None else records.class_names
            category_ids = category_ids if category_ids is not None else records.category_ids
            self.source_report = records.report
            records = records.records
        # flat arrays: forked workers share these pages (a list of objects is copied page by page)
        self.records = RecordTable.from_records(records)
        if not self.records:
            raise DataError(
                "DetectionDataset: no records; fix: load a dataset with at least one usable image"
            )
        self.class_names = list(class_names) if class_names is not None else []
        self.category_ids = (
            list(category_ids) if category_ids is not None else list(range(len(self.class_names)))
        )
        self.image_size = (int(image_size_hw[0]), int(image_size_hw[1]))
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        r, g, b = (round(min(max(v, 0), 255)) for v in self.mean)
        self.fill = (r, g, b)
        self.train = bool(train)
        self.augment = augment or AugmentConfig()
        self.seed = int(seed)
        # Shared with DataLoader workers (shared memory): load status and boxes dropped per record.
        self._status = torch.zeros(len(self.records), dtype=torch.uint8).share_memory_()
        self._dropped = torch.zeros(len(self.records), dtype=torch.int64).share_memory_()
        self._rng_key: tuple[str, int, int] | tuple[str, int] | None = None
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        key = ("worker", info.id, info.seed) if info is not None else ("main", self.seed)
        if self._rng_key != key or self._rng is None:
            self._rng = np.random.default_rng(info.seed if info is not None else self.seed)
            self._rng_key = key
        return self._rng

    def __getitem__(self, index: int):
        n = len(self.records)
        for k in range(n):
            j = (int(index) + k) % n
            if self._status[j] == _CORRUPT:
                continue
            item = self._load(j)
            if item is not None:
                return item
        raise DataError(
            f"{self.records[0].path}: none of the {n} images could be decoded; fix: check the image files (efficientdet data check)"
        )

    def _load(self, j: int):
        r = self.records[j]
        out_h, out_w = self.image_size
        if self.train:
            a = self.augment
            scale, (ox, oy) = random_scale_crop(
                self._generator(), r.height, r.width, self.image_size, a.scale_min, a.scale_max
            )
            flip = self._generator().random() < a.flip_prob
            min_size = a.min_box_size
        else:
            scale, (ox, oy), flip, min_size = (
                letterbox_scale(r.height, r.width, self.image_size),
                (0, 0),
                False,
                0.0,
            )
        sh, sw = resized_size(r.height, r.width, scale)
        try:
            image, orientation, (real_w, real_h), factor = open_image(
                r.path, draft_size_wh=(sw, sh)
            )
            with image:
                image.load()
                image = to_rgb(apply_exif(image, orientation))
        except Exception as exc:
            self._status[j] = _CORRUPT
            log.warning(
                "%s: image id %s: cannot be decoded (%s); using the next image",
                r.path,
                r.image_id,
                f"{type(exc).__name__}: {exc}".splitlines()[0],
            )
            return None
        if (real_w, real_h) != (r.width, r.height) and self._status[j] == _OK:
            self._status[j] = _SIZE_MISMATCH
        pixel_scale = (factor * real_w / r.width, factor * real_h / r.height)
        canvas = resize_crop(
            image, (r.width, r.height), scale, (ox, oy), self.image_size, self.fill, pixel_scale
        )

        assert r.ignore is not None  # ImageRecord.__post_init__ fills it
        use = ~r.ignore
        boxes = scale_boxes(r.boxes[use], scale, (ox, oy))
        labels = r.labels[use]
        cw, ch = min(out_w, sw - ox), min(out_h, sh - oy)  # the image part of the canvas
        if flip and cw > 0:
            canvas[:, :cw] = canvas[:, :cw][:, ::-1]
            boxes = hflip_boxes(boxes, cw)
        boxes, keep = clip_boxes(boxes, (max(cw, 0), max(ch, 0)), min_size)
        dropped = int((~keep).sum())
        if dropped:
            self._dropped[j] += dropped
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep], dtype=np.float32)).reshape(
                -1, 4
            ),
            "labels": torch.from_numpy(np.ascontiguousarray(labels[keep], dtype=np.int64)),
            "image_id": int(r.image_id),
            "scale": float(scale),
            "original_size": (int(r.height), int(r.width)),
        }
        return normalize(canvas, self.mean, self.std), target

    def load_report(self) -> DataReport:
        """Problems met while loading images so far (any process): corrupt files substituted,
        size mismatches the readers did not report already, and boxes dropped in training for
        being under ``augment.min_box_size`` input pixels after scale/crop (``box_too_small``,
        one problem per image with its count; ``stats["boxes_dropped_by_augment"]`` is the total)."""
        report = DataReport()
        status = self._status.numpy()
        for j in np.nonzero(status == _CORRUPT)[0]:
            r = self.records[int(j)]
            report.add(
                "corrupt_image",
                r.path,
                _item(r),
                "image cannot be decoded at load time",
                "substituted the next good image",
            )
        # (file, item) of the mismatches the readers found (COCO: "image id N (name)", VOC: "image name")
        known = {(p.file, p.item) for p in self.source_report.of_kind("size_mismatch")}
        for j in np.nonzero(status == _SIZE_MISMATCH)[0]:
            r = self.records[int(j)]
            if {(r.annotation_file, _item(r)), (r.annotation_file, f"image {r.file_name}")} & known:
                continue  # reported by the reader already
            report.add(
                "size_mismatch",
                r.path,
                _item(r),
                f"decoded size differs from the annotated {r.width}x{r.height}",
                "image resized to the annotated size",
            )
        dropped = self._dropped.numpy()
        for j in np.nonzero(dropped)[0]:
            r = self.records[int(j)]
            report.add(
                "box_too_small",
                r.annotation_file or r.path,
                _item(r),
                f"{int(dropped[j])} boxes fell under {self.augment.min_box_size:g} px after random scale/crop "
                f"at the {self.image_size[0]}x{self.image_size[1]} input",
                value=int(dropped[j]),
            )
        report.stats["boxes_dropped_by_augment"] = int(dropped.sum())
        return report


def _item(record: ImageRecord) -> str:
    """``image id 7 (a.jpg)``: how load-time problems name an image."""
    return f"image id {record.image_id} ({record.file_name})"
