"""The head-output layout: per-level NCHW maps <-> flat anchor-major tensors.

Per level (what the network returns): class (N, A*K, H_l, W_l), box (N, A*4, H_l, W_l).
Flat (what exported files return): class (N, A_all, K), box (N, A_all, 4), anchors in the
order (level, row, column, anchor) of :class:`efficientdet.detection.anchors.AnchorGenerator`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def flatten_levels(levels: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """Per-level (N, A*C, H, W) -> (N, A_all, C) in anchor order (C = K classes or 4 box deltas)."""
    n = levels[0].shape[0]
    # (N, A*C, H, W) -> (N, H, W, A*C) -> (N, H*W*A, C)
    return torch.cat([x.permute(0, 2, 3, 1).reshape(n, -1, channels) for x in levels], 1)


def levels_to_flat(
    cls_levels: Sequence[torch.Tensor], box_levels: Sequence[torch.Tensor], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level (N, A*K, H, W), (N, A*4, H, W) -> (N, A_all, K), (N, A_all, 4) in anchor order."""
    return flatten_levels(cls_levels, num_classes), flatten_levels(box_levels, 4)


def flat_to_levels(
    cls_flat: torch.Tensor,
    box_flat: torch.Tensor,
    feature_sizes: Sequence[tuple[int, int]],
    num_anchors: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Flat (N, A_all, K), (N, A_all, 4) -> per-level (N, A*K, H, W), (N, A*4, H, W) views (no copy)."""
    n, _, k = cls_flat.shape
    cls_levels, box_levels, start = [], [], 0
    for h, w in feature_sizes:
        count = h * w * num_anchors
        # (N, H*W*A, K) -> (N, H, W, A*K) -> (N, A*K, H, W)
        cls_levels.append(
            cls_flat[:, start : start + count].reshape(n, h, w, num_anchors * k).permute(0, 3, 1, 2)
        )
        box_levels.append(
            box_flat[:, start : start + count].reshape(n, h, w, num_anchors * 4).permute(0, 3, 1, 2)
        )
        start += count
    return cls_levels, box_levels
