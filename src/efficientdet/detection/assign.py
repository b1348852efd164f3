"""Anchor assignment: which ground-truth box (if any) each anchor learns from.

Two assigners, both returning ``matches``: per anchor the index of its ground-truth box,
``-1`` for background and ``-2`` for ignored (neither positive nor negative).

* ``argmax`` (official EfficientDet, effdet ``AnchorLabeler``): IoU arg-max matcher, positive
  at IoU >= ``match_threshold``, background below ``unmatched_threshold``, ignored in between
  (no ignore band at the default 0.5 / 0.5); then every ground-truth box is force-matched to
  its best anchor (ties: the first anchor; an anchor claimed by several boxes goes to the
  lowest box index). Exactly reproduces effdet's targets.
* ``atss`` (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free
  Detection"): see :func:`assign_atss`.

:func:`label_anchors` turns matches into class targets, (ty, tx, th, tw) box targets and the
positive count, after dropping degenerate ground-truth boxes (counted, so the trainer can
report them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import DataError
from .boxes import box_iou, encode_boxes

BACKGROUND = -1
IGNORE = -2
# ATSS centre test: an anchor centre counts as inside a box when its smallest distance to the
# box's edges exceeds this (pixels), as in the reference ATSS code and mmdetection's ATSSAssigner.
ATSS_CENTER_MARGIN = 0.01


# ----------------------------------------------------------------------------- ground truth
def filter_degenerate_boxes(
    boxes: Tensor, labels: Tensor, image_size_hw: Sequence[int] | None = None
) -> tuple[Tensor, Tensor, int]:
    """Drop unusable ground-truth boxes; returns (boxes (M', 4), labels (M',), num_dropped).

    Dropped: non-finite coordinates, zero or negative width/height, and (when
    ``image_size_hw`` is given) boxes entirely outside [0, w] x [0, h]. Boxes partly outside
    are kept as they are (the data pipeline clips them).
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), labels.reshape(0), 0
    x1, y1, x2, y2 = boxes.unbind(-1)
    keep = torch.isfinite(boxes).all(-1) & (x2 > x1) & (y2 > y1)
    if image_size_hw is not None:
        h, w = float(image_size_hw[0]), float(image_size_hw[1])
        keep &= (x2 > 0) & (y2 > 0) & (x1 < w) & (y1 < h)
    num_dropped = int(keep.numel() - keep.sum())
    if num_dropped:
        boxes, labels = boxes[keep], labels[keep]
    return boxes, labels, num_dropped


def _check_target(i: int, target: dict, num_classes: int | None) -> tuple[Tensor, Tensor]:
    if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
        raise DataError(
            f"targets[{i}]: need a dict with 'boxes' (M, 4) xyxy and 'labels' (M,) int64"
        )
    boxes = torch.as_tensor(target["boxes"])
    labels = torch.as_tensor(target["labels"])
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise DataError(
            f"targets[{i}]['boxes'] has shape {tuple(boxes.shape)}: need (M, 4) xyxy pixels"
        )
    labels = labels.reshape(-1)
    if labels.numel() != boxes.shape[0]:
        raise DataError(
            f"targets[{i}]: {boxes.shape[0]} boxes but {labels.numel()} labels; give one label per box"
        )
    if labels.is_floating_point():
        raise DataError(
            f"targets[{i}]['labels'] is {labels.dtype}: give int64 0-based class indices"
        )
    if labels.numel() and num_classes is not None:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"targets[{i}]['labels'] range {lo}..{hi}: classes are 0-based and the model has {num_classes}"
                " (map dataset ids to 0..num_classes-1)"
            )
    return boxes, labels.long()


# ----------------------------------------------------------------------------- arg-max matcher
def match_argmax(
    iou: Tensor,
    valid: Tensor | None = None,
    match_threshold: float = 0.5,
    unmatched_threshold: float = 0.5,
    force_match: bool = True,
) -> Tensor:
    """Official arg-max matcher on a batch of IoU matrices.

    iou: (B, M, A) IoU of M ground-truth boxes (padded) with A anchors; valid: (B, M) bool
    marks real boxes (padding rows never match). Returns matches (B, A) int64: box index,
    -1 background (best IoU < unmatched_threshold), -2 ignored (between the thresholds).
    """
    b, m, a = iou.shape
    if valid is None:
        valid = torch.ones(b, m, dtype=torch.bool, device=iou.device)
    if m == 0 or a == 0:
        return torch.full((b, a), BACKGROUND, dtype=torch.long, device=iou.device)
    iou = iou.masked_fill(~valid.unsqueeze(-1), -1.0)  # padding rows below any real IoU
    best_iou, matches = iou.max(dim=1)  # (B, A), first box on ties
    matches = torch.where(
        best_iou < unmatched_threshold, torch.full_like(matches, BACKGROUND), matches
    )
    between = (best_iou >= unmatched_threshold) & (best_iou < match_threshold)
    matches = torch.where(between, torch.full_like(matches, IGNORE), matches)
    if force_match:
        best_anchor = iou.argmax(dim=2)  # (B, M), first anchor on ties
        best_anchor = torch.where(
            valid, best_anchor, torch.full_like(best_anchor, a)
        )  # padding -> dummy column
        forced = torch.full((b, a + 1), m, dtype=torch.long, device=iou.device)
        box_idx = torch.arange(m, device=iou.device).expand(b, m)
        forced.scatter_reduce_(1, best_anchor, box_idx, reduce="amin")  # lowest box index wins
        forced = forced[:, :a]
        matches = torch.where(forced < m, forced, matches)
    return matches


# ----------------------------------------------------------------------------- ATSS
def assign_atss(
    anchors: Tensor, num_anchors_per_level: Sequence[int], gt_boxes: Tensor, topk: int = 9
) -> Tensor:
    """Adaptive Training Sample Selection for one image.

    anchors: (A, 4) xyxy, level-major with ``num_anchors_per_level`` summing to A;
    gt_boxes: (M, 4) xyxy (valid boxes). Returns matches (A,) int64: box index or -1.

    Per box: on every level take the ``topk`` anchors whose centres are nearest (L2) to the
    box centre (all of them when a level has fewer; ties in distance go to whichever
    ``torch.topk`` returns); the IoU threshold is mean + std of these candidates' IoUs (std
    with Bessel's correction as in the reference ATSS code; 0 for a single candidate); a
    candidate is positive when its IoU >= threshold and its centre lies inside the box by
    more than ``ATSS_CENTER_MARGIN`` (0.01 px) from every edge, as in the reference code. An
    anchor positive for several boxes goes to the one with the highest IoU (then the lowest
    box index). There is no force-matching: a box whose candidates all fail stays
    unmatched, as in the paper.

    Centerness: the ATSS paper adds a centerness branch to FCOS-style heads; we do not. The
    EfficientDet heads stay unchanged (same weights, export and effdet compatibility), and
    ATSS here only changes which anchors are positive for the focal and box losses.
    """
    num_anchors = anchors.shape[0]
    matches = torch.full((num_anchors,), BACKGROUND, dtype=torch.long, device=anchors.device)
    m = gt_boxes.shape[0]
    if num_anchors == 0 or m == 0:
        return matches
    if sum(num_anchors_per_level) != num_anchors:
        raise ValueError(
            f"num_anchors_per_level sums to {sum(num_anchors_per_level)}, anchors has {num_anchors}"
        )
    anchor_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
    gt_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (M, 2)
    dist = (gt_ctr[:, None, :] - anchor_ctr[None, :, :]).pow(2).sum(-1)  # (M, A) squared distance
    candidates = []
    start = 0
    for n in num_anchors_per_level:
        if n > 0:
            k = min(topk, n)
            idx = dist[:, start : start + n].topk(k, dim=1, largest=False).indices  # (M, k)
            candidates.append(idx + start)
        start += n
    cand = torch.cat(candidates, dim=1)  # (M, C)
    iou = box_iou(gt_boxes, anchors)  # (M, A)
    cand_iou = iou.gather(1, cand)  # (M, C)
    mean = cand_iou.mean(dim=1, keepdim=True)
    std = cand_iou.std(dim=1, keepdim=True) if cand.shape[1] > 1 else torch.zeros_like(mean)
    cand_ctr = anchor_ctr[cand]  # (M, C, 2)
    inside = (
        torch.stack(
            [
                cand_ctr[..., 0] - gt_boxes[:, None, 0],
                cand_ctr[..., 1] - gt_boxes[:, None, 1],
                gt_boxes[:, None, 2] - cand_ctr[..., 0],
                gt_boxes[:, None, 3] - cand_ctr[..., 1],
            ],
            dim=-1,
        ).amin(-1)
        > ATSS_CENTER_MARGIN
    )  # (M, C)
    positive = (cand_iou >= mean + std) & inside  # (M, C)
    score = torch.full_like(iou, -1.0)  # (M, A): IoU where positive, -1 elsewhere
    score.scatter_(1, cand, torch.where(positive, cand_iou, torch.full_like(cand_iou, -1.0)))
    best, best_box = score.max(dim=0)  # (A,), lowest box index on ties
    return torch.where(best >= 0, best_box, matches)


# ----------------------------------------------------------------------------- targets
class AnchorTargets(NamedTuple):
    """Training targets for a batch, flat over anchors in the anchor-tensor order.

    cls_targets: (N, A) int64 class index, -1 background, -2 ignored;
    box_targets: (N, A, 4) (ty, tx, th, tw), zero where not positive;
    matched_boxes: (N, A, 4) xyxy ground truth of each positive anchor, zero elsewhere;
    num_positives: (N,) float32 positives per image; num_dropped: degenerate boxes dropped.
    """

    cls_targets: Tensor
    box_targets: Tensor
    matched_boxes: Tensor
    num_positives: Tensor
    num_dropped: int


def label_anchors(
    anchors: Tensor,
    targets: Sequence[dict],
    image_size_hw: Sequence[int] | None = None,
    *,
    num_classes: int | None = None,
    assigner: str = "argmax",
    match_threshold: float = 0.5,
    unmatched_threshold: float = 0.5,
    atss_topk: int = 9,
    num_anchors_per_level: Sequence[int] | None = None,
    max_iou_elements: int = 1 << 25,
) -> AnchorTargets:
    """Assign anchors to ground truth for every image of a batch.

    anchors: (A, 4) xyxy model-input pixels; targets: list (len N) of {"boxes": (M, 4) xyxy
    model-input pixels, "labels": (M,) int64 0-based}. Degenerate boxes are dropped first
    (see :func:`filter_degenerate_boxes`). The arg-max matcher runs batched over padded
    boxes, in chunks of images holding at most ``max_iou_elements`` IoU entries; ATSS
    (needs ``num_anchors_per_level``) runs per image.
    """
    device, dtype = anchors.device, anchors.dtype
    n, a = len(targets), anchors.shape[0]
    boxes_list, labels_list, num_dropped = [], [], 0
    for i, target in enumerate(targets):
        boxes, labels = _check_target(i, target, num_classes)
        boxes, labels, dropped = filter_degenerate_boxes(
            boxes.to(device=device, dtype=dtype), labels.to(device), image_size_hw
        )
        boxes_list.append(boxes)
        labels_list.append(labels)
        num_dropped += dropped
    m_max = max([b.shape[0] for b in boxes_list], default=0)
    gt_boxes = torch.zeros(n, max(m_max, 1), 4, dtype=dtype, device=device)  # (N, M, 4) padded
    gt_labels = torch.zeros(n, max(m_max, 1), dtype=torch.long, device=device)
    valid = torch.zeros(n, max(m_max, 1), dtype=torch.bool, device=device)
    for i, (boxes, labels) in enumerate(zip(boxes_list, labels_list, strict=True)):
        gt_boxes[i, : boxes.shape[0]] = boxes
        gt_labels[i, : labels.shape[0]] = labels
        valid[i, : boxes.shape[0]] = True

    if assigner == "argmax":
        chunk = max(1, max_iou_elements // max(1, m_max * a))
        parts = []
        for s in range(0, n, chunk):
            iou = box_iou(gt_boxes[s : s + chunk], anchors)  # (B, M, A)
            parts.append(
                match_argmax(iou, valid[s : s + chunk], match_threshold, unmatched_threshold)
            )
        matches = (
            torch.cat(parts, 0) if parts else torch.zeros(0, a, dtype=torch.long, device=device)
        )
    elif assigner == "atss":
        if num_anchors_per_level is None:
            raise ValueError("assigner='atss' needs num_anchors_per_level")
        matches = (
            torch.stack(
                [assign_atss(anchors, num_anchors_per_level, b, atss_topk) for b in boxes_list]
            )
            if n
            else (torch.zeros(0, a, dtype=torch.long, device=device))
        )
    else:
        from ..errors import ConfigError

        raise ConfigError(f"assigner={assigner!r}: choose argmax or atss")

    positive = matches >= 0  # (N, A)
    idx = matches.clamp(min=0)  # (N, A) index into the padded boxes
    cls_targets = torch.where(positive, gt_labels.gather(1, idx), matches)  # -1 / -2 kept
    matched_boxes = gt_boxes.gather(1, idx.unsqueeze(-1).expand(n, a, 4))  # (N, A, 4)
    matched_boxes = torch.where(
        positive.unsqueeze(-1), matched_boxes, torch.zeros_like(matched_boxes)
    )
    box_targets = encode_boxes(matched_boxes, anchors.unsqueeze(0))  # (N, A, 4)
    box_targets = torch.where(positive.unsqueeze(-1), box_targets, torch.zeros_like(box_targets))
    num_positives = positive.sum(1).to(torch.float32)
    return AnchorTargets(cls_targets, box_targets, matched_boxes, num_positives, num_dropped)
