"""Draw detections on an image: a box and a "name score" label per detection, a colour per class.

Line width and font size scale with the image (about 0.3% and 2.2% of its mean side), so the
labels are readable on a 200-pixel thumbnail and on a 4K frame alike. Uses PIL ImageDraw and
its default font at that size (``ImageFont.load_default(size=...)``).
"""

from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class index (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


@lru_cache(maxsize=16)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def draw_detections(image, boxes, scores, labels, names, line_width: int | None = None, font_size: int | None = None):
    """Return an RGB PIL copy of ``image`` (PIL or (H, W, 3) uint8 RGB) with the detections drawn.

    boxes: (D, 4) xyxy pixels; scores: (D,); labels: (D,) class indices; names: the class
    names indexed by label.
    """
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image.convert("RGB").copy()
    w, h = img.size
    side = (w + h) / 2
    lw = line_width or max(1, round(side * 0.003))
    fs = font_size or max(10, round(side * 0.022))
    font = _font(fs)
    draw = ImageDraw.Draw(img)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(int)
    # lowest score first, so the strongest boxes and labels end on top
    for i in np.argsort(scores, kind="stable"):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        color = class_color(int(labels[i]))
        draw.rectangle((x1, y1, x2, y2), outline=color, width=lw)
        name = names[labels[i]] if 0 <= labels[i] < len(names) else str(labels[i])
        text = f"{name} {scores[i]:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx1 - tx0, ty1 - ty0
        pad = max(1, fs // 6)
        top = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1  # above the box, inside when no room
        left = min(max(0.0, x1), max(0.0, w - tw - 2 * pad))
        draw.rectangle((left, top, left + tw + 2 * pad, top + th + 2 * pad), fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((left + pad - tx0, top + pad - ty0), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)
    return img
