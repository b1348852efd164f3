"""Non-maximum suppression: exact greedy hard NMS (class-aware or not) and Gaussian soft-NMS.

Boxes are (B, 4) xyxy, scores (B,), labels (B,) int; results are indices into the inputs.
Tie-breaking (documented contract, checked against reference loops in
tests/test_postprocess.py): boxes are visited by descending score with a stable sort, so equal
scores keep the lower input index first; a box is suppressed when its IoU with a kept box of
the same class is strictly greater than the threshold; zero-area boxes have IoU 0 with
everything.

Plain torch (CPU, CUDA; no torchvision). Used by
:func:`efficientdet.detection.postprocess.postprocess` and by the eager stand-in for ONNX
``NonMaxSuppression`` in :mod:`efficientdet.deploy.export`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .boxes import box_iou


def _greedy_keep(suppress: Tensor, alive: Tensor) -> Tensor:
    """Exact greedy NMS on a precomputed relation.

    suppress: (B, B) bool, ``suppress[j, i]`` = box j (earlier in score order, j < i) would
    suppress box i; alive: (B,) bool boxes still candidates. Returns keep (B,) bool.

    Fixed-point iteration ``keep_i = alive_i and not any_j(keep_j and suppress[j, i])``:
    the greedy result is its unique fixed point and after t rounds the first t entries
    are final, so it ends after (longest suppression chain + 1) rounds, each one
    boolean (B, B) pass.
    """
    keep = alive.clone()
    while True:
        hit = (suppress & keep.unsqueeze(1)).any(0)  # (B,) suppressed by a kept box
        new_keep = alive & ~hit
        if bool((new_keep == keep).all()):
            break
        keep = new_keep
    return keep


def _suppression(boxes: Tensor, labels: Tensor | None, iou_threshold: float) -> Tensor:
    """(B, 4) xyxy in score order -> (B, B) bool ``[j, i]``: j < i, same label, IoU > threshold."""
    over = box_iou(boxes, boxes) > iou_threshold
    if labels is not None:
        over &= labels.unsqueeze(1) == labels.unsqueeze(0)
    idx = torch.arange(boxes.shape[0], device=boxes.device)
    return over & (
        idx.unsqueeze(1) < idx.unsqueeze(0)
    )  # strictly upper triangle (triu is slow on CPU bools)


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor | None,
    iou_threshold: float = 0.5,
    max_output: int | None = None,
    chunk_size: int = 256,
) -> Tensor:
    """Exact greedy class-aware NMS.

    boxes: (B, 4) xyxy; scores: (B,); labels: (B,) int (None: class-agnostic). Returns the
    kept indices (D,) int64 into the inputs, by descending score (stable: equal scores keep
    the lower index first). ``max_output`` stops once that many are kept (the result equals
    the first ``max_output`` of full greedy NMS). Works in score-ordered chunks of
    ``chunk_size``: each chunk is checked against the boxes kept so far, then resolved with
    one IoU matrix and :func:`_greedy_keep`, so the cost follows the boxes actually visited.
    """
    n = boxes.shape[0]
    if max_output is None:
        max_output = n
    if n > 1 and bool((scores[1:] <= scores[:-1]).all()):
        order = torch.arange(n, device=scores.device)  # already in (stable) descending order
    else:
        order = torch.sort(scores, descending=True, stable=True).indices  # (B,)
    boxes, labels = boxes[order], (labels[order] if labels is not None else None)
    kept: list[Tensor] = []  # positions in score order
    kept_boxes = boxes[:0]
    kept_labels = labels[:0] if labels is not None else order[:0]  # (D,) labels of the kept boxes
    num_kept = 0
    for start in range(0, n, chunk_size):
        cb = boxes[start : start + chunk_size]  # (C, 4)
        cl = labels[start : start + chunk_size] if labels is not None else None
        alive = torch.ones(cb.shape[0], dtype=torch.bool, device=boxes.device)
        if num_kept:
            over = box_iou(kept_boxes, cb) > iou_threshold  # (D, C)
            if cl is not None:
                over &= kept_labels.unsqueeze(1) == cl.unsqueeze(0)
            alive = ~over.any(0)
        keep = _greedy_keep(_suppression(cb, cl, iou_threshold), alive)
        pos = keep.nonzero().squeeze(1)
        kept.append(pos + start)
        num_kept += int(pos.numel())
        if num_kept >= max_output:
            break
        kept_boxes = torch.cat([kept_boxes, cb[pos]])
        if cl is not None:
            kept_labels = torch.cat([kept_labels, cl[pos]])
    if not kept:
        return order[:0]
    return order[torch.cat(kept)[:max_output]]


def nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, max_output: int | None = None
) -> Tensor:
    """Class-agnostic exact greedy NMS: (B, 4) xyxy, (B,) -> kept indices by descending score."""
    return batched_nms(boxes, scores, None, iou_threshold, max_output)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor | None = None,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    max_output: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Gaussian soft-NMS (Bodla et al. 2017), class-aware when ``labels`` is given.

    boxes: (B, 4) xyxy; scores: (B,). Repeatedly takes the alive box with the highest current
    score (ties: lowest index), outputs it with that score, and multiplies the scores of the
    other alive boxes of its class by ``exp(-iou**2 / sigma)``; a box stays alive while its
    score > ``score_threshold``. Returns (indices (D,) int64, scores (D,)) in selection order.
    One vectorised step per output box (at most ``max_output`` steps), none per pair.
    """
    n = boxes.shape[0]
    steps = n if max_output is None else min(n, max_output)
    current = scores.clone()
    alive = current > score_threshold
    out_idx, out_score, out_valid = [], [], []
    neg_inf = torch.tensor(float("-inf"), dtype=current.dtype, device=current.device)
    for _ in range(steps):
        i = torch.argmax(torch.where(alive, current, neg_inf))  # first max on ties
        out_idx.append(i)
        out_score.append(current[i])
        out_valid.append(alive[i])
        alive = alive.index_fill(0, i.reshape(1), False)
        iou = box_iou(boxes[i].unsqueeze(0), boxes)[0]  # (B,)
        decay = torch.exp(-(iou * iou) / sigma)
        if labels is not None:
            decay = torch.where(labels == labels[i], decay, torch.ones_like(decay))
        current = torch.where(alive, current * decay, current)
        alive = alive & (current > score_threshold)
    if not out_idx:
        return torch.zeros(0, dtype=torch.long, device=boxes.device), scores[:0]
    idx, sc, valid = torch.stack(out_idx), torch.stack(out_score), torch.stack(out_valid)
    return idx[valid], sc[valid]
