"""Image loading and geometric transforms (PIL + numpy + torch; no torchvision).

Letterbox convention (fixed project-wide): ``scale = min(H / h, W / w)`` for an h x w image
and an H x W model input; the resized image sits at the TOP-LEFT and the bottom/right is
padded with the mean colour (0 after normalisation). Input boxes = original boxes * scale,
so original boxes = input boxes / scale (:func:`unletterbox_boxes`).

Training adds the official EfficientDet augmentation: a random scale factor in
``[scale_min, scale_max]`` (official 0.1-2.0) multiplies the letterbox scale, a random crop
of H x W is taken from the scaled image (offset uniform over the overflow), and a
horizontal flip with probability ``flip_prob``. Boxes follow exactly; boxes clipped to
below ``min_box_size`` input pixels are dropped and counted.

All boxes are (M, 4) float32 xyxy pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. ``scale_min``/``scale_max``: random scale jitter of the
    letterbox scale; ``flip_prob``: horizontal flip probability; ``min_box_size``: boxes
    narrower or shorter than this (model-input pixels) after the crop are dropped."""

    scale_min: float = 0.1
    scale_max: float = 2.0
    flip_prob: float = 0.5
    min_box_size: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(
                f"scale jitter {self.scale_min}..{self.scale_max}: need 0 < scale_min <= scale_max"
            )
        if not 0 <= self.flip_prob <= 1:
            raise ConfigError(f"flip_prob={self.flip_prob}: need 0 <= value <= 1")
        if self.min_box_size < 0:
            raise ConfigError(f"min_box_size={self.min_box_size}: need a value >= 0")


# ---------------------------------------------------------------------------- loading


def to_rgb(image):
    """Any PIL mode -> RGB uint8. 16-bit (I;16*, I with values > 255) is scaled by 1/257
    (65535 -> 255); float (F) is clipped to 0..255; alpha (RGBA, LA, PA, P with
    transparency) is dropped, keeping the colour channels."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("P", "PA"):
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


EXIF_ORIENTATION = 0x0112


def open_image(path: str, draft_size_wh: tuple[int, int] | None = None):
    """Open ``path`` for loading: returns (PIL image not yet transposed, exif orientation,
    displayed size (w, h) before any draft, draft factor f). With ``draft_size_wh`` (displayed
    orientation), a JPEG is decoded at a reduced scale (1/2, 1/4, 1/8) still at least that
    size; then image pixel = f * full-resolution pixel."""
    from PIL import Image

    image = Image.open(path)
    try:
        orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        orientation = 1
    w, h = image.size
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    factor = 1.0
    if draft_size_wh is not None and image.format == "JPEG":
        dw, dh = draft_size_wh
        if orientation in (5, 6, 7, 8):
            dw, dh = dh, dw
        result = image.draft(
            image.mode if image.mode in ("RGB", "L") else None, (max(1, dw), max(1, dh))
        )
        if result is not None:  # result box: the full image in drafted pixels
            factor = result[1][2] / (h if orientation in (5, 6, 7, 8) else w)
    return image, orientation, (w, h), factor


def apply_exif(image, orientation: int):
    """Rotate/flip pixels so the image appears as EXIF ``orientation`` says (1 = as stored)."""
    from PIL import Image

    ops = {
        2: [Image.Transpose.FLIP_LEFT_RIGHT],
        3: [Image.Transpose.ROTATE_180],
        4: [Image.Transpose.FLIP_TOP_BOTTOM],
        5: [Image.Transpose.TRANSPOSE],
        6: [Image.Transpose.ROTATE_270],
        7: [Image.Transpose.TRANSVERSE],
        8: [Image.Transpose.ROTATE_90],
    }.get(orientation, [])
    for op in ops:
        image = image.transpose(op)
    return image


def load_image(path: str):
    """Load ``path`` as an RGB uint8 PIL image as displayed (EXIF orientation applied)."""
    image, orientation, _, _ = open_image(path)
    with image:
        image.load()
        return to_rgb(apply_exif(image, orientation))


# ---------------------------------------------------------------------------- geometry


def letterbox_scale(height: int, width: int, out_hw: tuple[int, int]) -> float:
    """``min(H / h, W / w)``: the scale that fits an h x w image inside H x W."""
    return min(out_hw[0] / height, out_hw[1] / width)


def scale_boxes(
    boxes: np.ndarray, scale: float, offset_xy: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Original pixels -> input pixels: ``boxes * scale - (ox, oy, ox, oy)``."""
    ox, oy = offset_xy
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.float32(scale)
    return out - np.array([ox, oy, ox, oy], dtype=np.float32)


def unletterbox_boxes(
    boxes: np.ndarray, scale: float, original_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Input pixels -> original pixels: ``boxes / scale``, clipped to the image if its (h, w) is given."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.float32(scale)
    if original_hw is not None:
        h, w = original_hw
        out = np.clip(out, 0, np.array([w, h, w, h], dtype=np.float32))
    return out


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror xyxy boxes in an image ``width`` wide: x1' = width - x2, x2' = width - x1."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1).astype(np.float32)


def clip_boxes(
    boxes: np.ndarray, extent_wh: tuple[float, float], min_size: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Clip to [0, w] x [0, h]; returns (clipped boxes, keep) where keep drops boxes whose
    clipped width or height is <= 0 or < ``min_size``."""
    w, h = extent_wh
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    b = np.clip(b, 0, np.array([w, h, w, h], dtype=np.float32))
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (bw > 0) & (bh > 0) & (bw >= min_size) & (bh >= min_size)
    return b, keep


def resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(h, w) of an image scaled by ``scale``, at least 1 pixel."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def random_scale_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    out_hw: tuple[int, int],
    scale_min: float,
    scale_max: float,
) -> tuple[float, tuple[int, int]]:
    """Official jitter: scale = letterbox scale * U(scale_min, scale_max); crop offset (ox, oy)
    = floor(U(0, 1) * max(0, scaled size - out size)) per axis."""
    scale = letterbox_scale(height, width, out_hw) * float(rng.uniform(scale_min, scale_max))
    sh, sw = resized_size(height, width, scale)
    ox = math.floor(rng.uniform(0, 1) * max(0, sw - out_hw[1]))
    oy = math.floor(rng.uniform(0, 1) * max(0, sh - out_hw[0]))
    return scale, (ox, oy)


def resize_crop(
    image,
    full_wh: tuple[int, int],
    scale: float,
    offset_xy: tuple[int, int],
    out_hw: tuple[int, int],
    fill: tuple[int, int, int],
    pixel_scale_xy: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Scale an image of full-resolution size ``full_wh`` by ``scale``, crop the H x W window
    at ``offset_xy`` of the scaled image, place it top-left on an H x W canvas of ``fill``.

    ``pixel_scale_xy``: pixels of ``image`` per pixel of ``full_wh`` (below 1 after a JPEG
    draft, or when the file's size differs from the annotated size). Only the source region
    that lands in the window is resampled. Returns (H, W, 3) uint8.
    """
    from PIL import Image

    out_h, out_w = out_hw
    w, h = full_wh
    sh, sw = resized_size(h, w, scale)
    ox, oy = offset_xy
    cw, ch = min(out_w, sw - ox), min(out_h, sh - oy)
    canvas = np.empty((out_h, out_w, 3), dtype=np.uint8)
    canvas[:] = np.array(fill, dtype=np.uint8)
    if cw <= 0 or ch <= 0:
        return canvas
    # source region (full-resolution pixels) of the window, then in the loaded image's pixels
    sx, sy = pixel_scale_xy
    region = (ox / scale * sx, oy / scale * sy, (ox + cw) / scale * sx, (oy + ch) / scale * sy)
    region = (region[0], region[1], min(region[2], image.width), min(region[3], image.height))
    patch = image.resize((cw, ch), Image.Resampling.BILINEAR, box=region)
    canvas[:ch, :cw] = np.asarray(patch, dtype=np.uint8)
    return canvas


def normalize(image_hwc: np.ndarray, mean, std):
    """(H, W, 3) uint8 -> (3, H, W) float32 torch tensor ``(x - mean) / std`` (0-255 units)."""
    import torch

    x = np.ascontiguousarray(np.asarray(image_hwc).transpose(2, 0, 1)).astype(
        np.float32
    )  # (H, W, 3) -> (3, H, W)
    x -= np.asarray(mean, dtype=np.float32)[:, None, None]
    x /= np.asarray(std, dtype=np.float32)[:, None, None]
    return torch.from_numpy(x)
