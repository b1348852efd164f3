"""Box formats, IoU and the box coder.

Public boxes are ``xyxy``: (x1, y1, x2, y2) in pixels, x2 > x1 and y2 > y1 for a valid box.
Other layouts are named in the variable (``boxes_yxyx``, ``boxes_cxcywh``). Box deltas are
in the official TF layout ``(ty, tx, th, tw)`` (Faster R-CNN coder, no scale factors).

All functions work on any leading batch shape ``(..., 4)`` unless stated otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

ENCODE_EPS = 1e-7  # added to sizes before division and log (effdet; the TF code uses 1e-8)


# ----------------------------------------------------------------------------- formats
def xyxy_to_yxyx(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) yxyx (the TF / effdet anchor layout)."""
    return boxes[..., [1, 0, 3, 2]]


def yxyx_to_xyxy(boxes_yxyx: Tensor) -> Tensor:
    """(..., 4) yxyx -> (..., 4) xyxy."""
    return boxes_yxyx[..., [1, 0, 3, 2]]


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) (centre x, centre y, width, height)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = x2 - x1, y2 - y1
    return torch.stack([x1 + w / 2, y1 + h / 2, w, h], dim=-1)


def cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """(..., 4) (cx, cy, w, h) -> (..., 4) xyxy."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xywh_to_xyxy(boxes_xywh: Tensor) -> Tensor:
    """(..., 4) COCO (x, y, width, height) -> (..., 4) xyxy."""
    x, y, w, h = boxes_xywh.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) COCO (x, y, width, height)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


# ----------------------------------------------------------------------------- geometry
def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area, (y2 - y1) * (x2 - x1); negative for inverted boxes."""
    return (boxes[..., 3] - boxes[..., 1]) * (boxes[..., 2] - boxes[..., 0])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU: (..., M, 4) xyxy x (..., N, 4) xyxy -> (..., M, N).

    Same arithmetic as the official ``iou`` (and effdet): ``inter / (area1 + area2 - inter)``
    and exactly 0 where the intersection is 0, so zero-area boxes have IoU 0 with everything.
    """
    b1 = boxes1.unsqueeze(-2)  # (..., M, 1, 4)
    b2 = boxes2.unsqueeze(-3)  # (..., 1, N, 4)
    ih = (torch.minimum(b1[..., 3], b2[..., 3]) - torch.maximum(b1[..., 1], b2[..., 1])).clamp(
        min=0
    )
    iw = (torch.minimum(b1[..., 2], b2[..., 2]) - torch.maximum(b1[..., 0], b2[..., 0])).clamp(
        min=0
    )
    inter = ih * iw
    union = box_area(boxes1).unsqueeze(-1) + box_area(boxes2).unsqueeze(-2) - inter
    return torch.where(inter == 0, torch.zeros_like(inter), inter / union)


def elementwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of matching rows: (..., 4) xyxy and (..., 4) xyxy -> (...); 0 where they do not overlap."""
    ih = (
        torch.minimum(boxes1[..., 3], boxes2[..., 3])
        - torch.maximum(boxes1[..., 1], boxes2[..., 1])
    ).clamp(min=0)
    iw = (
        torch.minimum(boxes1[..., 2], boxes2[..., 2])
        - torch.maximum(boxes1[..., 0], boxes2[..., 0])
    ).clamp(min=0)
    inter = ih * iw
    union = box_area(boxes1) + box_area(boxes2) - inter
    return torch.where(inter == 0, torch.zeros_like(inter), inter / union)


def elementwise_giou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalised IoU of matching rows: (..., 4) xyxy x (..., 4) xyxy -> (...) in [-1, 1].

    ``giou = iou - (hull - union) / hull`` with ``hull`` the smallest enclosing box area.
    """
    ih = (
        torch.minimum(boxes1[..., 3], boxes2[..., 3])
        - torch.maximum(boxes1[..., 1], boxes2[..., 1])
    ).clamp(min=0)
    iw = (
        torch.minimum(boxes1[..., 2], boxes2[..., 2])
        - torch.maximum(boxes1[..., 0], boxes2[..., 0])
    ).clamp(min=0)
    inter = ih * iw
    union = box_area(boxes1) + box_area(boxes2) - inter
    iou = inter / (union + eps)
    hh = torch.maximum(boxes1[..., 3], boxes2[..., 3]) - torch.minimum(
        boxes1[..., 1], boxes2[..., 1]
    )
    hw = torch.maximum(boxes1[..., 2], boxes2[..., 2]) - torch.minimum(
        boxes1[..., 0], boxes2[..., 0]
    )
    hull = hh.clamp(min=0) * hw.clamp(min=0)
    return iou - (hull - union) / (hull + eps)


def clip_boxes(boxes: Tensor, size_hw: Tensor | tuple[float, float]) -> Tensor:
    """Clamp (..., 4) xyxy boxes to [0, w] x [0, h].

    ``size_hw`` is (h, w) for all boxes, or a tensor (..., 2) broadcastable to the boxes'
    leading shape (one (h, w) per image, e.g. (N, 1, 2) for boxes (N, K, 4)).
    """
    if not isinstance(size_hw, Tensor):
        h, w = float(size_hw[0]), float(size_hw[1])
        return torch.stack(
            [
                boxes[..., 0].clamp(0, w),
                boxes[..., 1].clamp(0, h),
                boxes[..., 2].clamp(0, w),
                boxes[..., 3].clamp(0, h),
            ],
            dim=-1,
        )
    size_hw = size_hw.to(boxes.dtype)
    upper = torch.stack(
        [size_hw[..., 1], size_hw[..., 0], size_hw[..., 1], size_hw[..., 0]], dim=-1
    )
    return torch.minimum(boxes.clamp(min=0), upper)


# ----------------------------------------------------------------------------- box coder
def encode_boxes(boxes: Tensor, anchors: Tensor, eps: float = ENCODE_EPS) -> Tensor:
    """Faster R-CNN encoding without scale factors (official EfficientDet / effdet).

    boxes, anchors: (..., 4) xyxy (broadcastable) -> (..., 4) deltas (ty, tx, th, tw) with
    ``ty = (cy - cy_a) / h_a``, ``th = log(h / h_a)``; ``eps`` is added to every size first.
    """
    ha = anchors[..., 3] - anchors[..., 1]
    wa = anchors[..., 2] - anchors[..., 0]
    cya = anchors[..., 1] + ha / 2.0
    cxa = anchors[..., 0] + wa / 2.0
    h = boxes[..., 3] - boxes[..., 1]
    w = boxes[..., 2] - boxes[..., 0]
    cy = boxes[..., 1] + h / 2.0
    cx = boxes[..., 0] + w / 2.0
    ha, wa, h, w = ha + eps, wa + eps, h + eps, w + eps
    ty = (cy - cya) / ha
    tx = (cx - cxa) / wa
    th = torch.log(h / ha)
    tw = torch.log(w / wa)
    return torch.stack([ty, tx, th, tw], dim=-1)


def decode_boxes(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of :func:`encode_boxes` (without eps): deltas (..., 4) (ty, tx, th, tw) and
    anchors (..., 4) xyxy (broadcastable) -> boxes (..., 4) xyxy in the anchors' pixels."""
    ya = (anchors[..., 1] + anchors[..., 3]) / 2
    xa = (anchors[..., 0] + anchors[..., 2]) / 2
    ha = anchors[..., 3] - anchors[..., 1]
    wa = anchors[..., 2] - anchors[..., 0]
    ty, tx, th, tw = deltas.unbind(-1)
    w = torch.exp(tw) * wa
    h = torch.exp(th) * ha
    cy = ty * ha + ya
    cx = tx * wa + xa
    return torch.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], dim=-1)
