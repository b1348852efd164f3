"""Draw detections on an image: a box and a "name score" label per detection, a colour per class.

Line width and font size scale with the image (about 0.3% and 2.2% of its mean side), so the
labels are readable on a 200-pixel thumbnail and on a 4K frame alike. Uses PIL ImageDraw and
its default font at that size (``ImageFont.load_default(size=...)``).

Crowded images: :func:`place_labels` puts each label, strongest detection first, at the first
free spot of: above the box, inside its top, below it, inside its bottom (left-aligned, then
right-aligned), always inside the image; only when every spot is taken does a label go where
it overlaps the fewest others. Labels are drawn after all boxes, so no box line crosses a
label, with black or white text by the fill's luminance (WCAG contrast >= 4.5 either way on
these fills) and a thin dark edge so light fills stand out on light images.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache

import numpy as np


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class index (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


@lru_cache(maxsize=16)
def label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


Rect = tuple[float, float, float, float]  # x1, y1, x2, y2


def _overlap(a: Rect, b: Rect) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(
    boxes, label_sizes, image_size: tuple[int, int], order, avoid: Sequence[Rect] = ()
) -> list[Rect]:
    """Label rectangles for ``boxes`` ((D, 4) xyxy): label i is ``label_sizes[i]`` = (w, h) pixels.

    ``image_size``: (W, H); ``order``: every detection index once, the one to place first first
    (strongest first); ``avoid``: rectangles already taken (labels drawn before). Returns one
    rectangle per box (input order), inside the image whenever the label fits in it.
    """
    W, H = image_size
    placed: list[Rect] = list(avoid)
    rects: dict[int, Rect] = {}
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        w, h = label_sizes[i]
        spots = []
        for left in (x1, x2 - w):
            for top in (y1 - h, y1, y2, y2 - h):  # above, inside top, below, inside bottom
                lx = min(max(0.0, left), max(0.0, W - w))
                ty = min(max(0.0, top), max(0.0, H - h))
                spots.append((lx, ty, lx + w, ty + h))
        best = min(
            spots,
            key=lambda r: (
                sum(_overlap(r, p) for p in placed) > 0,
                sum(_overlap(r, p) for p in placed),
            ),
        )
        rects[i] = best
        placed.append(best)
    return [rects[i] for i in range(len(label_sizes))]


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``fill`` (WCAG relative luminance)."""

    def linear(c: int) -> float:
        v = c / 255.0
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * linear(fill[0]) + 0.7152 * linear(fill[1]) + 0.0722 * linear(fill[2])
    return (0, 0, 0) if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else (255, 255, 255)


def draw_detections(
    image,
    boxes,
    scores,
    labels,
    names,
    line_width: int | None = None,
    font_size: int | None = None,
    *,
    color: tuple[int, int, int] | None = None,
    dashed: bool = False,
    suffixes: list[str] | None = None,
    avoid: Sequence[Rect] = (),
    placed: list[Rect] | None = None,
):
    """Return an RGB PIL copy of ``image`` (PIL or (H, W, 3) uint8 RGB) with the detections drawn.

    boxes: (D, 4) xyxy pixels; scores: (D,), or None for boxes without a score (ground truth:
    the label is the name alone, placed in input order); labels: (D,) class indices; names:
    the class names indexed by label. Labels are placed by :func:`place_labels`. ``color``:
    one RGB colour for every box and label (default: :func:`class_color` per class);
    ``dashed``: dashed box outlines; ``suffixes``: a text per box appended to its label.
    ``avoid``: label rectangles of an earlier call to keep clear of; ``placed``: a list the
    label rectangles of this call are appended to (to pass as ``avoid`` to the next call).
    """
    from PIL import Image, ImageDraw

    img = (
        Image.fromarray(np.asarray(image))
        if not isinstance(image, Image.Image)
        else image.convert("RGB").copy()
    )
    w, h = img.size
    side = (w + h) / 2
    lw = line_width or max(1, round(side * 0.003))
    fs = font_size or max(10, round(side * 0.022))
    font = label_font(fs)
    pad = max(1, fs // 6)
    draw = ImageDraw.Draw(img)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(int)
    has_scores = scores is not None
    # no scores: rank by input order (the first box's label is placed first)
    scores = (
        np.asarray(scores, dtype=np.float32).reshape(-1)
        if has_scores
        else -np.arange(len(labels), dtype=np.float32)
    )
    texts, extents, sizes = [], [], []
    for i in range(len(scores)):
        name = names[labels[i]] if 0 <= labels[i] < len(names) else str(labels[i])
        texts.append(f"{name} {scores[i]:.2f}" if has_scores else name)
        if suffixes is not None and suffixes[i]:
            texts[-1] += f" {suffixes[i]}"
        extents.append(draw.textbbox((0, 0), texts[-1], font=font))
        sizes.append(
            (extents[-1][2] - extents[-1][0] + 2 * pad, extents[-1][3] - extents[-1][1] + 2 * pad)
        )
    strongest_first = np.argsort(-scores, kind="stable")
    rects = place_labels(boxes, sizes, (w, h), strongest_first, avoid)
    if placed is not None:
        placed.extend(rects)
    # boxes, then labels; lowest score first, so the strongest end on top
    for i in strongest_first[::-1]:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        box = (x1, y1, x2, y2)
        outline = color or class_color(int(labels[i]))
        if dashed:
            _dashed_rectangle(draw, box, outline, lw, dash=max(3, 2 * fs // 5))
        else:
            draw.rectangle(box, outline=outline, width=lw)
    for i in strongest_first[::-1]:
        fill = color or class_color(int(labels[i]))
        x0, y0, x1, y1 = rects[i]
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill, outline=(40, 40, 40))
        tx0, ty0 = extents[i][:2]
        draw.text((x0 + pad - tx0, y0 + pad - ty0), texts[i], fill=_text_color(fill), font=font)
    return img


def _dashed_rectangle(draw, box: Rect, color: tuple[int, int, int], width: int, dash: int) -> None:
    """The outline PIL's ``rectangle(box, width=width)`` draws (the same pixels: x1..x2, y1..y2
    inclusive, ``width`` pixels inwards), as dashes of ``dash`` pixels with gaps of ``dash``."""
    x1, y1, x2, y2 = (round(v) for v in box)
    for k in range(width):  # one 1-pixel ring per step inwards, as PIL draws a thick outline
        a, b, c, d = x1 + k, y1 + k, x2 - k, y2 - k
        if c < a or d < b:
            break
        for start in range(a, c + 1, 2 * dash):
            end = min(start + dash - 1, c)
            draw.line([(start, b), (end, b)], fill=color)
            draw.line([(start, d), (end, d)], fill=color)
        for start in range(b, d + 1, 2 * dash):
            end = min(start + dash - 1, d)
            draw.line([(a, start), (a, end)], fill=color)
            draw.line([(c, start), (c, end)], fill=color)
