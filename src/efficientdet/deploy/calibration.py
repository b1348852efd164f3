"""Calibration images for int8 export (TFLite, OpenVINO/NNCF, ONNX Runtime QDQ).

The images come from the user's own data (a dataset YAML or COCO JSON: its train split; or a
folder of images) and are letterboxed and normalised exactly as at inference
(:func:`efficientdet.deploy.preprocess.preprocess`), so the quantiser sees the activations the
deployed model will see. The choice is deterministic: ``count`` images evenly spaced over the
sorted list. An image that cannot be read is skipped, counted and named in
``CalibrationSet.skipped``; a set with no readable image is refused in one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

DEFAULT_CALIBRATION_IMAGES = 200


@dataclass
class CalibrationSet:
    """``count`` image paths chosen from ``source``; ``skipped``: (path, reason) of unreadable ones."""

    source: str
    paths: list[str]
    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def batches(self, batch: int = 8, raw_pixels: bool = False) -> Iterator[np.ndarray]:
        """Yield (n, 3, H, W) batches: float32 normalised, or with ``raw_pixels`` uint8 0-255.

        ``raw_pixels`` is the input of a model that normalises inside its graph (uint8 TFLite):
        the letterboxed pixels before ``(x - mean) / std``, the padding at the mean colour (so
        it becomes 0 after normalisation, as in the float model). Unreadable images are
        appended to ``skipped`` and left out.
        """
        import torch

        from .preprocess import as_image_tensor, letterbox_batch

        mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
        images: list = []
        sizes: list[tuple[int, int]] = []

        def flush() -> np.ndarray:
            x, _ = letterbox_batch(images, sizes, self.input_hw, self.mean, self.std)
            images.clear()
            sizes.clear()
            out = x.numpy()
            if raw_pixels:
                out = np.clip(np.rint(out * std + mean), 0, 255).astype(np.uint8)
            return out

        with torch.inference_mode():
            for path in self.paths:
                try:
                    image, hw, _ = as_image_tensor(path, self.input_hw)
                except DataError as exc:
                    self.skipped.append((path, str(exc)))
                    continue
                images.append(image)
                sizes.append(hw)
                if len(images) == batch:
                    yield flush()
            if images:
                yield flush()
        if len(self.skipped) == len(self.paths):
            raise DataError(
                f"{self.source}: none of the {len(self.paths)} calibration images could be read "
                f"(first: {self.skipped[0][1]}); fix: pass --calib-data with readable images"
            )

    def array(self, raw_pixels: bool = False) -> np.ndarray:
        """All calibration images as one (N, 3, H, W) array (float32, or uint8 with ``raw_pixels``)."""
        return np.concatenate(list(self.batches(raw_pixels=raw_pixels)), axis=0)


def check_calibration_set(calibration: object) -> None:
    """TypeError (one line) unless ``calibration`` is None or a :class:`CalibrationSet`, the one
    calibration type every exporter takes (ONNX, OpenVINO, TFLite)."""
    if calibration is not None and not isinstance(calibration, CalibrationSet):
        raise TypeError(
            f"calibration={type(calibration).__name__}: the exporters take a CalibrationSet; "
            "fix: make one with efficientdet.calibration_set(images, image_size, mean, std)"
        )


def _image_paths(source: str) -> list[str]:
    from ..data.records import IMAGE_EXTENSIONS

    path = Path(source)
    if path.is_dir():
        found = sorted(
            str(p)
            for p in path.rglob("*")
            if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not found:
            raise DataError(
                f"{source}: folder holds no images ({', '.join(IMAGE_EXTENSIONS[:5])}, ...); "
                "fix: pass --calib-data a folder of images or a dataset YAML / COCO JSON"
            )
        return found
    if not path.exists():
        raise DataError(
            f"{source}: calibration data not found; fix: pass --calib-data an existing dataset "
            "YAML, COCO JSON or folder of images"
        )
    from ..data.spec import load_dataset

    data = load_dataset(source, "train")
    found = sorted({r.path for r in data.records})
    if not found:
        raise DataError(
            f"{source}: the train split lists no images; fix: pass --calib-data a dataset with images"
        )
    return found


def evenly_spaced(items: Sequence[str], count: int) -> list[str]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def calibration_set(
    source: str | os.PathLike,
    input_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    count: int = DEFAULT_CALIBRATION_IMAGES,
) -> CalibrationSet:
    """Choose ``count`` calibration images from ``source`` (dataset YAML, COCO JSON or folder)."""
    if count < 1:
        raise DataError(f"--calib-images {count}: must be at least 1; fix: pass e.g. 200")
    source = str(source)
    paths = evenly_spaced(_image_paths(source), count)
    return CalibrationSet(
        source,
        paths,
        (int(input_hw[0]), int(input_hw[1])),
        (float(mean[0]), float(mean[1]), float(mean[2])),
        (float(std[0]), float(std[1]), float(std[2])),
    )
