"""Decode pipelines: raw head outputs -> per-image detections in original-image pixels.

Steps (official EfficientDet / effdet): top-k (``max_candidates``) over anchors x classes on
the class logits (:mod:`.topk`), decode the (ty, tx, th, tw) deltas of those candidates, clip
to the image, class-aware NMS (:mod:`.nms`: hard at ``iou_threshold`` or Gaussian soft-NMS),
keep ``max_detections``, then undo the letterbox: this project resizes an image by one factor
``scale`` and places it at the top-left of the model input, so original boxes are
``model_boxes / scale``, clipped to the original (h, w).

:func:`postprocess` is the eager pipeline (the Detector, the evaluator); the ``fixed_shape_*``
steps are the same arithmetic with fixed shapes, for the ONNX graph with NMS inside.
Everything is plain torch (CPU, CUDA); no torchvision needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import NMSConfig
from ..errors import ConfigError
from .boxes import clip_boxes, decode_boxes
from .layout import flatten_levels
from .nms import batched_nms, soft_nms
from .topk import fixed_shape_topk, select_classes, topk_candidates

# per-image values as callers give them: one number, one per image, or a tensor
PerImage = float | Sequence[float] | Sequence[Sequence[float]] | Tensor


def _per_image(
    value: PerImage | None, n: int, name: str, device: torch.device, as_size: bool = False
) -> Tensor | None:
    """scales -> (N,) float32, original_sizes -> (N, 2) float32 (h, w); None stays None."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if as_size:
        t = t.reshape(-1, 2)
        if t.shape[0] == 1 and n > 1:
            t = t.expand(n, 2)
    else:
        t = t.reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
    if t.shape[0] != n:
        raise ConfigError(f"{name}: got {t.shape[0]} values for a batch of {n}; give one per image")
    if (t <= 0).any():
        raise ConfigError(f"{name}: values must be positive (letterbox scale / original (h, w))")
    return t


def postprocess(
    class_outputs: Sequence[Tensor],
    box_outputs: Sequence[Tensor],
    anchors_xyxy: Tensor,
    nms_cfg: NMSConfig | None = None,
    image_size_hw: Sequence[int] | None = None,
    scales: PerImage | None = None,
    original_sizes: PerImage | None = None,
    clip: bool = True,
    class_subset: Sequence[int] | None = None,
) -> list[dict]:
    """Detections per image from raw head outputs.

    class_outputs / box_outputs: per level (N, A*K, H_l, W_l) / (N, A*4, H_l, W_l);
    anchors_xyxy: (sum_l H_l*W_l*A, 4) from
    :class:`~efficientdet.detection.anchors.AnchorGenerator` for ``image_size_hw``
    (model input (h, w)); scales: letterbox factor per image (float, sequence or (N,)), 1 when
    None; original_sizes: (h, w) per image ((N, 2) or list). With ``clip`` (default) boxes are
    clipped before NMS to the image region of the model input (``original * scale``, or the
    whole input) and after rescaling to the original size; ``clip=False`` keeps them raw.
    ``class_subset``: only these classes (0-based) compete for the candidates and detections.
    Returns a list (len N) of {"boxes": (D, 4) float32 xyxy original pixels, "scores": (D,)
    sigmoid probabilities, "labels": (D,) int64 0-based}, by descending score.
    """
    cfg = nms_cfg if nms_cfg is not None else NMSConfig()
    n = class_outputs[0].shape[0]
    num_anchors = box_outputs[0].shape[1] // 4
    if anchors_xyxy.shape[0] != sum(b.shape[-2] * b.shape[-1] for b in box_outputs) * num_anchors:
        raise ConfigError(
            f"{anchors_xyxy.shape[0]} anchors do not fit the head outputs: build the anchors for the model input size"
        )
    device = class_outputs[0].device
    scales_t = _per_image(scales, n, "scales", device)
    sizes_t = _per_image(original_sizes, n, "original_sizes", device, as_size=True)
    if class_subset is not None:
        class_outputs = select_classes(class_outputs, num_anchors, class_subset)
    logits, anchor_idx, class_idx = topk_candidates(class_outputs, num_anchors, cfg.max_candidates)
    if class_subset is not None:
        class_idx = torch.as_tensor(list(class_subset), device=device)[class_idx]
    deltas = flatten_levels(box_outputs, 4)  # (N, A_all, 4)
    anchors_xyxy = anchors_xyxy.to(device=device, dtype=torch.float32)
    results = []
    for i in range(n):
        scores = logits[i].float().sigmoid()
        boxes = decode_boxes(
            deltas[i, anchor_idx[i]].float(), anchors_xyxy[anchor_idx[i]]
        )  # (k, 4)
        labels = class_idx[i]
        if cfg.score_threshold > 0:
            ok = scores >= cfg.score_threshold
            scores, boxes, labels = scores[ok], boxes[ok], labels[ok]
        scale = scales_t[i] if scales_t is not None else None
        if clip:
            region = None
            if sizes_t is not None:
                region = sizes_t[i] * (scale if scale is not None else 1.0)
                if image_size_hw is not None:
                    region = torch.minimum(
                        region, torch.tensor([float(v) for v in image_size_hw], device=device)
                    )
            elif image_size_hw is not None:
                region = torch.tensor([float(v) for v in image_size_hw], device=device)
            if region is not None:
                boxes = clip_boxes(boxes, region)
        if cfg.method == "hard":
            keep = batched_nms(boxes, scores, labels, cfg.iou_threshold, cfg.max_detections)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        else:
            keep, scores = soft_nms(
                boxes, scores, labels, cfg.soft_sigma, cfg.soft_score_threshold, cfg.max_detections
            )
            boxes, labels = boxes[keep], labels[keep]
        if scale is not None:
            boxes = boxes / scale
        if clip and sizes_t is not None:
            boxes = clip_boxes(boxes, sizes_t[i])
        results.append({"boxes": boxes, "scores": scores, "labels": labels})
    return results


# ----------------------------------------------------------------------------- fixed shapes
# The steps of :func:`postprocess` around NMS, batched over images with fixed shapes and no
# data-dependent Python control flow, so that they trace into a graph: ONNX export with NMS
# inside the graph (:class:`efficientdet.deploy.export.NMSExport`, which supplies the NMS).


def fixed_shape_candidates(
    cls_flat: Tensor,
    box_flat: Tensor,
    anchors_xyxy: Tensor,
    k: int,
    image_size_hw: Sequence[int],
    scales: Tensor,
    original_sizes: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k over anchors x classes, decoded and clipped, with fixed shapes.

    cls_flat (N, A_all, K) logits and box_flat (N, A_all, 4) deltas in anchor order (as
    :func:`efficientdet.detection.layout.levels_to_flat` gives); anchors_xyxy (A_all, 4) for the
    model input ``image_size_hw``; ``k`` <= A_all * K; scales (N,) letterbox factors;
    original_sizes (N, 2) (h, w). Returns scores (N, k) sigmoid probabilities by descending
    logit, boxes (N, k, 4) xyxy in input pixels clipped to the image region of the input
    (``original * scale``, at most the input), class indices (N, k). The top-k is
    :func:`efficientdet.detection.topk.fixed_shape_topk`.
    """
    n = cls_flat.shape[0]
    logits, anchor_idx, class_idx = fixed_shape_topk(cls_flat, k)  # (N, k) each
    scores = logits.float().sigmoid()
    deltas = box_flat.gather(1, anchor_idx.unsqueeze(-1).expand(n, k, 4))  # (N, k, 4)
    boxes = decode_boxes(deltas.float(), anchors_xyxy[anchor_idx])  # (N, k, 4) input pixels
    limit = torch.tensor([float(v) for v in image_size_hw], device=boxes.device)
    region = torch.minimum(
        original_sizes * scales.unsqueeze(1), limit
    )  # (N, 2) image area of the input
    return scores, clip_boxes(boxes, region.unsqueeze(1)), class_idx


def fixed_shape_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    kept: Tensor,
    max_detections: int,
    scales: Tensor,
    original_sizes: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The kept candidates as padded detections in original pixels, with fixed shapes.

    boxes (N, k, 4) input pixels, scores (N, k) (>= 0), labels (N, k) and kept (N, k) (> 0:
    kept by NMS) from :func:`fixed_shape_candidates` and an NMS; scales (N,), original_sizes
    (N, 2) (h, w). Returns boxes (N, M, 4) xyxy original pixels (``/ scale``, clipped to the
    original), scores (N, M), labels (N, M) int64 and num_detections (N,) int64, M =
    ``max_detections``: the kept candidates by descending score, rows past num_detections zero.
    """
    n, k = scores.shape[0], int(scores.shape[1])  # int(): a constant of a traced graph
    m = min(max_detections, k)
    ranked = torch.where(kept > 0, scores, torch.full((), -1.0))
    top, take = ranked.topk(m, dim=1)  # kept first, by score (ties: lower candidate index first)
    valid = top >= 0
    out_boxes = boxes.gather(1, take.unsqueeze(-1).expand(n, m, 4)) / scales.reshape(n, 1, 1)
    out_boxes = clip_boxes(out_boxes, original_sizes.unsqueeze(1))
    vf = valid.to(out_boxes.dtype)
    out_boxes = out_boxes * vf.unsqueeze(-1)
    out_scores = top.clamp(min=0) * vf
    out_labels = labels.gather(1, take) * valid.to(torch.long)
    num = valid.to(torch.long).sum(1)
    pad = max_detections - m
    if pad > 0:
        out_boxes = torch.cat([out_boxes, out_boxes.new_zeros(n, pad, 4)], 1)
        out_scores = torch.cat([out_scores, out_scores.new_zeros(n, pad)], 1)
        out_labels = torch.cat([out_labels, out_labels.new_zeros(n, pad)], 1)
    return out_boxes, out_scores, out_labels, num
