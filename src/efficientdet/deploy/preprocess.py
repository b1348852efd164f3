"""Images in, one normalised letterboxed batch out: decoding (EXIF, JPEG draft), letterbox, mean/std.

Inputs: a path, a PIL image, a numpy (H, W, 3) uint8 RGB array ((H, W) grey accepted), or a
tensor (3, H, W) uint8 or float in 0-255 ((N, 3, H, W) counts as N images).

The letterbox (the project's, see ``efficientdet.data.transforms``): ``scale = min(H / h,
W / w)`` for an h x w image and an H x W model input; the image is resized once to
``round(h * scale) x round(w * scale)`` (bilinear with antialias; uint8 images are resized as
uint8 by torch, which matches PIL's BILINEAR within one grey level), normalised
``(x - mean) / std`` and placed at the TOP-LEFT of a zero (= mean colour) canvas. A large
JPEG given by path is decoded at a reduced size (PIL ``draft``) when that still covers the
model input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError


def load_path(path: str, input_hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode an image file -> ((h', w', 3) uint8 tensor, displayed original (h, w)).

    JPEGs are drafted (decoded at 1/2..1/8) when the reduced size still covers the resized
    image, so h' <= h; the letterbox scale is always computed from (h, w).
    """
    from ..data.transforms import apply_exif, letterbox_scale, open_image, to_rgb

    try:
        image, orientation, (w, h), _ = open_image(path)
        with image:
            scale = letterbox_scale(h, w, input_hw)
            if image.format == "JPEG" and scale < 0.5:
                image.draft(
                    "RGB" if image.mode in ("RGB", "YCbCr") else None,
                    (max(1, int(image.width * scale) + 1), max(1, int(image.height * scale) + 1)),
                )
            image.load()
            rgb = to_rgb(apply_exif(image, orientation))
            array = np.array(rgb)  # writable copy (np.asarray of PIL is read-only)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"{path}: cannot read this image ({exc.__class__.__name__}: {exc}); fix: check that the file is a complete image"
        ) from None
    return torch.from_numpy(array), (h, w)


def as_image_tensor(
    item, input_hw: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int], str | None]:
    """Any supported input -> (image tensor, original (h, w), source label).

    The tensor is (3, h', w'): uint8 HWC data seen through a permuted view (files, PIL, numpy)
    or the given CHW tensor; h' may be below h for drafted JPEGs.
    """
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such image file; fix: check the path")
        tensor, hw = load_path(path, input_hw)
        return tensor.permute(2, 0, 1), hw, path
    if isinstance(item, torch.Tensor):
        x = item
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise ConfigError(
                f"image tensor of shape {tuple(item.shape)} is not an image; fix: give (3, H, W) uint8 or float 0-255"
            )
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return x, (int(x.shape[1]), int(x.shape[2])), None
    if isinstance(item, np.ndarray):
        a = item
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ConfigError(
                f"image array of shape {item.shape} is not an image; fix: give (H, W, 3) RGB uint8"
            )
        a = a[:, :, :3]
        if not a.flags.writeable:
            a = a.copy()
        if a.dtype != np.uint8:
            return (
                torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1),
                a.shape[:2],
                None,
            )
        return (
            torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1),
            (int(a.shape[0]), int(a.shape[1])),
            None,
        )
    from PIL import Image

    if isinstance(item, Image.Image):
        from ..data.transforms import to_rgb

        a = np.array(to_rgb(item))
        return (
            torch.from_numpy(a).permute(2, 0, 1),
            (int(a.shape[0]), int(a.shape[1])),
            getattr(item, "filename", None) or None,
        )
    raise ConfigError(
        f"unsupported image input {type(item).__name__}; fix: give a path, PIL image, HWC uint8 array or CHW tensor"
    )


def letterbox_batch(
    images: Sequence[torch.Tensor],
    original_hw: Sequence[tuple[int, int]],
    input_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Letterbox and normalise images into one batch.

    images: (3, h', w') uint8 or float tensors (HWC data as a permuted view); original_hw: the (h, w) that the
    letterbox scale refers to (h' != h only for drafted JPEGs). Returns (batch (N, 3, H, W)
    ``dtype`` on ``device``, scales (N,) float32): image i is resized to round(h*s) x round(w*s),
    normalised ``(x - mean) / std`` and placed top-left; the rest is 0 (the mean colour).
    """
    from ..data.transforms import letterbox_scale, resized_size

    n = len(images)
    H, W = input_hw
    device = torch.device(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch = torch.empty(
        n, 3, H, W, device=device, dtype=torch.float32, memory_format=layout
    ).zero_()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).reshape(3, 1, 1)
    inv_std = (
        (1.0 / torch.tensor(std, dtype=torch.float64)).to(torch.float32).to(device).reshape(3, 1, 1)
    )
    scales = torch.empty(n, dtype=torch.float32)
    for i, (img, (h, w)) in enumerate(zip(images, original_hw, strict=True)):
        s = letterbox_scale(h, w, input_hw)
        nh, nw = resized_size(h, w, s)
        nh, nw = min(nh, H), min(nw, W)
        scales[i] = s
        x = img.unsqueeze(0)  # (1, 3, h', w')
        if x.dtype != torch.uint8:
            x = x.to(device=device, dtype=torch.float32)
        if tuple(x.shape[-2:]) != (nh, nw):
            # uint8 stays uint8 on CPU (fast AVX path, rounds like PIL); floats resize in float
            if x.dtype == torch.uint8 and x.device.type != "cpu":
                x = x.float()
            x = F.interpolate(
                x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
            )
        x = x[0].to(device=device, dtype=torch.float32, non_blocking=True)
        batch[i, :, :nh, :nw] = (x - mean_t) * inv_std
    return batch.to(dtype), scales


def as_list(images) -> list:
    """One input, a list/tuple, or an (N, 3, H, W) tensor -> a list of single inputs."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def preprocess(
    items: Sequence,
    input_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]], list[str | None]]:
    """Inputs -> (batch (N, 3, H, W) ``dtype`` on ``device``, scales (N,), original sizes [(h, w)], source labels)."""
    tensors, sizes, labels = [], [], []
    for item in items:
        t, hw, label = as_image_tensor(item, input_hw)
        tensors.append(t)
        sizes.append(hw)
        labels.append(label)
    batch, scales = letterbox_batch(
        tensors, sizes, input_hw, mean, std, device, dtype, channels_last
    )
    return batch, scales, sizes, labels
