"""The anchor grid: per level ``num_scales`` octave scales x aspect ratios per feature cell.

Layout of the flat anchor tensor (the same as the official code and effdet, so raw head
outputs line up with it): level-major (P3 first), then feature row, column, then anchor
within the cell, scale-major then aspect ratio: ``index = offset_l + (r * W_l + c) * A + a``
with ``a = scale_i * len(aspect_ratios) + ratio_j``.

Geometry (TF "same" padding): feature sizes are the image size ceil-halved once per level,
``H_l = ceil(H_{l-1} / 2)``; the stride of level l is ``image_size / feature_size`` per axis
(exactly ``2**l`` when the size divides), anchor centres are at ``stride/2 + k * stride`` and
the anchor of scale i, ratio (rx, ry) has width ``anchor_scale * stride_x * 2**(i/num_scales) * rx``
(height likewise with stride_y, ry). Computed in float64 as effdet does, then cast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import AnchorConfig, parse_image_size


def feature_sizes(
    image_size_hw: Sequence[int], min_level: int, max_level: int
) -> list[tuple[int, int]]:
    """[(H_l, W_l) for l in min_level..max_level], ceil-halving the image size once per level."""
    h, w = parse_image_size(image_size_hw)
    sizes = []
    for level in range(1, max_level + 1):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        if level >= min_level:
            sizes.append((h, w))
    return sizes


def anchor_levels(
    cfg: AnchorConfig, image_size_hw: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The grid per level, without materialising it: [(xs (W_l,), ys (H_l,), half (A, 2))] of
    float64 column / row centres and the A anchor shapes' half width and height, in cell order.
    Anchor ``a`` of cell (r, c) is ``[xs[c] - half[a, 0], ys[r] - half[a, 1], xs[c] + half[a, 0], ys[r] + half[a, 1]]``."""
    img_h, img_w = parse_image_size(image_size_hw)
    levels = []
    for fh, fw in feature_sizes((img_h, img_w), cfg.min_level, cfg.max_level):
        stride_y, stride_x = img_h / float(fh), img_w / float(fw)
        # np.arange exactly as the reference builds centres (start + i * delta)
        xs = np.arange(stride_x / 2, img_w, stride_x)
        ys = np.arange(stride_y / 2, img_h, stride_y)
        half = []
        for octave in range(cfg.num_scales):
            octave_scale = octave / float(cfg.num_scales)
            for rx, ry in cfg.aspect_ratios:
                half.append(
                    (
                        cfg.anchor_scale * stride_x * 2**octave_scale * rx / 2.0,
                        cfg.anchor_scale * stride_y * 2**octave_scale * ry / 2.0,
                    )
                )
        levels.append((xs, ys, np.array(half, dtype=np.float64)))
    return levels


def generate_anchors_xyxy(cfg: AnchorConfig, image_size_hw: Sequence[int]) -> np.ndarray:
    """The anchor grid as a float64 array (sum_l H_l*W_l*A, 4) of xyxy pixels (see module doc)."""
    per_level = []
    for xs, ys, half in anchor_levels(cfg, image_size_hw):
        xv, yv = np.meshgrid(xs, ys)  # (H_l, W_l) each
        xv, yv = xv.reshape(-1, 1), yv.reshape(-1, 1)  # (H_l*W_l, 1) row-major: row then column
        # (H*W, 1) -/+ (A,) -> (H*W, A, 4) -> (H*W*A, 4)
        cells = np.stack(
            [xv - half[:, 0], yv - half[:, 1], xv + half[:, 0], yv + half[:, 1]], axis=2
        )
        per_level.append(cells.reshape(-1, 4))
    return np.concatenate(per_level, axis=0)


class AnchorGenerator:
    """Anchor boxes for an image size, cached per (size, device, dtype).

    >>> gen = AnchorGenerator(AnchorConfig())
    >>> gen((512, 512)).shape
    torch.Size([49104, 4])
    """

    def __init__(self, cfg: AnchorConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else AnchorConfig()
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors(self) -> int:
        """Anchors per feature cell (A)."""
        return self.cfg.num_anchors

    def feature_sizes(self, image_size_hw: Sequence[int]) -> list[tuple[int, int]]:
        """[(H_l, W_l)] for the levels min..max."""
        return feature_sizes(image_size_hw, self.cfg.min_level, self.cfg.max_level)

    def num_anchors_per_level(self, image_size_hw: Sequence[int]) -> list[int]:
        """[H_l * W_l * A] per level, in the order of the flat anchor tensor."""
        return [h * w * self.cfg.num_anchors for h, w in self.feature_sizes(image_size_hw)]

    def __call__(
        self,
        image_size_hw: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """(sum_l H_l*W_l*A, 4) xyxy anchors in model-input pixels for ``image_size_hw`` (h, w)."""
        hw = parse_image_size(image_size_hw)
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (hw, device, dtype)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = torch.from_numpy(generate_anchors_xyxy(self.cfg, hw)).to(
                dtype=dtype, device=device
            )
            self._cache[key] = anchors
        return anchors

    def __repr__(self) -> str:
        return f"AnchorGenerator({self.cfg})"
