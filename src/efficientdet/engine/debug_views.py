"""Debug views: what the model sees in training and what it predicts, as images a person looks at.

* :func:`render_training_batch`: a batch as the loader yields it (after augmentation,
  normalised), un-normalised, with every target box and its class name, tiled into one grid.
* :func:`render_predictions`: predictions (class colour, "name score") over the ground truth
  (white, dashed, "name") on a few validation images, one tile per image, a legend line on top.
* :func:`pick_debug_images`: the fixed handful of validation images to show every time.
* :func:`save_view`: a view as a PNG, written atomically (:mod:`efficientdet.fileio`).

The drawing is :func:`efficientdet.visualize.draw_detections` (class colours, label
placement); this module only un-normalises, tiles and adds the legend.

Grid layout (both renderers): ``cols = ceil(sqrt(n))`` tiles per row, ``rows = ceil(n / cols)``;
every cell is the size of the largest tile, cells are ``GAP`` pixels apart (and from the
edges of the grid) on a dark background; tile ``i`` sits at row ``i // cols``, column
``i % cols``, its top-left corner at ``(GAP + col * (cell_w + GAP), top + GAP + row * (cell_h + GAP))``
where ``top`` is 0 for a training batch and the legend strip's height for predictions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

GAP = 2  # pixels between tiles
BACKGROUND = (24, 24, 24)  # grid background (RGB)
TRUTH_COLOR = (255, 255, 255)  # ground truth in render_predictions: white, dashed
IGNORE_COLOR = (160, 160, 160)  # ignore / crowd boxes in render_training_batch: grey, dashed


def _unnormalize(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> list[np.ndarray]:
    """(B, 3, H, W) ``(pixel - mean) / std`` float tensor -> B (H, W, 3) uint8 RGB arrays
    (``x * std + mean``, rounded, clipped to 0..255; mean/std per channel in 0-255 units)."""
    x = images.detach().to("cpu", torch.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W), got {tuple(x.shape)}")
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
    pixels = (x * s + m).round().clamp(0, 255).to(torch.uint8)  # (B, 3, H, W)
    return [np.ascontiguousarray(p.permute(1, 2, 0).numpy()) for p in pixels]  # -> (H, W, 3)


def _numpy(value: Any, shape: tuple[int, ...], dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value if value is not None else np.zeros(0), dtype=dtype).reshape(shape)


def render_training_batch(
    images: torch.Tensor,
    targets: Sequence[dict],
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    max_images: int = 16,
) -> np.ndarray:
    """A training batch as the model sees it -> one (H, W, 3) uint8 RGB grid image.

    ``images``: (B, 3, H, W) normalised float tensor as the loader yields it; ``targets``: the
    dataset's target dicts (``boxes`` (M, 4) xyxy input pixels, ``labels`` (M,) 0-based; an
    optional ``ignore`` (M,) bool marks ignore / crowd boxes, drawn grey and dashed with
    "(ignore)" after the name). The first ``max_images`` images are tiled (module docstring).
    """
    from ..visualize import draw_detections

    if len(targets) < min(len(images), max_images):
        raise ValueError(f"render_training_batch: {len(images)} images but {len(targets)} targets")
    names = list(class_names)
    tiles = []
    for image, target in zip(_unnormalize(images[:max_images], mean, std), targets, strict=False):
        boxes = _numpy(target.get("boxes"), (-1, 4), np.float32)
        labels = _numpy(target.get("labels"), (-1,), np.int64)
        ignore = (
            _numpy(target["ignore"], (-1,), bool)
            if target.get("ignore") is not None
            else np.zeros(len(labels), dtype=bool)
        )
        taken: list = []  # label rectangles of the ordinary boxes: ignore labels avoid them
        drawn = draw_detections(image, boxes[~ignore], None, labels[~ignore], names, placed=taken)
        if ignore.any():
            drawn = draw_detections(
                drawn,
                boxes[ignore],
                None,
                labels[ignore],
                names,
                color=IGNORE_COLOR,
                dashed=True,
                suffixes=["(ignore)"] * int(ignore.sum()),
                avoid=taken,
            )
        tiles.append(np.asarray(drawn))
    return _grid(tiles, top=0)


def render_predictions(
    images: Sequence[np.ndarray],
    predictions: Sequence[dict],
    truths: Sequence[dict],
    class_names: Sequence[str],
) -> np.ndarray:
    """Predictions vs ground truth -> one (H, W, 3) uint8 RGB image: a legend line, then a tile
    per image.

    ``images``: (H, W, 3) uint8 RGB arrays (any sizes); ``predictions``: one dict per image,
    ``boxes`` (D, 4) xyxy pixels of that image, ``scores`` (D,), ``labels`` (D,) 0-based (all of
    them are drawn: filter by score before); ``truths``: one dict per image, ``boxes`` (M, 4),
    ``labels`` (M,). Ground truth is white and dashed with its class name; predictions are in
    their class colour with "name score", drawn over it.
    """
    from ..visualize import draw_detections

    if not len(images) == len(predictions) == len(truths):
        raise ValueError(
            f"render_predictions: {len(images)} images, {len(predictions)} predictions and "
            f"{len(truths)} truths; give one of each per image"
        )
    names = list(class_names)
    tiles = []
    for image, pred, truth in zip(images, predictions, truths, strict=True):
        truth_labels: list = []  # label rectangles of the ground truth: predictions avoid them
        drawn = draw_detections(
            np.asarray(image, dtype=np.uint8),
            _numpy(truth.get("boxes"), (-1, 4), np.float32),
            None,
            _numpy(truth.get("labels"), (-1,), np.int64),
            names,
            color=TRUTH_COLOR,
            dashed=True,
            placed=truth_labels,
        )
        drawn = draw_detections(
            drawn,
            _numpy(pred.get("boxes"), (-1, 4), np.float32),
            _numpy(pred.get("scores"), (-1,), np.float32),
            _numpy(pred.get("labels"), (-1,), np.int64),
            names,
            avoid=truth_labels,
        )
        tiles.append(np.asarray(drawn))
    legend = "white dashed: ground truth (name)   colour: prediction (name score)"
    return _grid(tiles, legend=legend)


def _grid(tiles: list[np.ndarray], top: int = 0, legend: str | None = None) -> np.ndarray:
    """Tiles (H_i, W_i, 3) uint8 -> one grid image (module docstring), with ``legend`` as a text
    line above the tiles when given."""
    from PIL import Image, ImageDraw

    from ..visualize import label_font

    if not tiles:
        raise ValueError("no images to render; give at least one")
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    width = GAP + cols * (cell_w + GAP)
    font = label_font(max(10, min(16, width // 40)))
    if legend is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        x0, y0, x1, y1 = probe.textbbox((0, 0), legend, font=font)
        top = int(y1 - y0) + 2 * GAP + 2
        width = max(width, int(x1 - x0) + 2 * GAP + 4)
    grid = np.empty((top + GAP + rows * (cell_h + GAP), width, 3), np.uint8)
    grid[:] = BACKGROUND
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = top + GAP + r * (cell_h + GAP), GAP + c * (cell_w + GAP)
        grid[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    if legend is not None:
        img = Image.fromarray(grid)
        ImageDraw.Draw(img).text(
            (GAP + 2 - x0, GAP + 1 - y0), legend, fill=(235, 235, 235), font=font
        )
        grid = np.asarray(img).copy()
    return grid


def save_view(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 RGB view to ``path`` as a PNG, all or nothing (a temporary
    file renamed when complete; an OSError becomes one OutputError line). Returns the path."""
    from PIL import Image

    from ..fileio import write_via_temp

    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"save_view: expected an (H, W, 3) uint8 array, got {array.dtype} {array.shape}"
        )
    path = Path(path)
    image = Image.fromarray(array)
    write_via_temp(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def pick_debug_images(records_or_dataset: Any, count: int = 4) -> list[int]:
    """A fixed handful of image indices to show each time: ``count`` indices (ascending) spread
    evenly over the split, taken from the images that have boxes first (ignore-only images
    count as without), then from the others when too few have boxes.

    ``records_or_dataset``: a list of :class:`~efficientdet.data.records.ImageRecord`, a
    :class:`~efficientdet.data.records.DetectionData` or a
    :class:`~efficientdet.data.dataset.DetectionDataset` (anything with ``.records``).
    Deterministic: the same split always gives the same indices.
    """
    records = getattr(records_or_dataset, "records", records_or_dataset)
    count = max(0, min(int(count), len(records)))
    with_boxes = [i for i, r in enumerate(records) if (~np.asarray(r.ignore, dtype=bool)).any()]
    without = [i for i, r in enumerate(records) if not (~np.asarray(r.ignore, dtype=bool)).any()]
    chosen = _spread(with_boxes, count) + _spread(without, count - min(count, len(with_boxes)))
    return sorted(chosen)


def _spread(items: list[int], k: int) -> list[int]:
    """``k`` of ``items`` at evenly spaced positions (first and last included when k >= 2)."""
    if k <= 0 or not items:
        return []
    if k >= len(items):
        return list(items)
    positions = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[p] for p in positions]
