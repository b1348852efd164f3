"""Post-processing: raw head outputs -> per-image detections in original-image pixels.

Steps (official EfficientDet / effdet): top-k (``max_candidates``) over anchors x classes on
the class logits, decode the (ty, tx, th, tw) deltas of those candidates, clip to the image,
class-aware NMS (hard at ``iou_threshold`` or Gaussian soft-NMS), keep ``max_detections``,
then undo the letterbox: this project resizes an image by one factor ``scale`` and places it
at the top-left of the model input, so original boxes are ``model_boxes / scale``, clipped to
the original (h, w).

Tie-breaking (documented contract, checked against a reference loop in the tests): NMS
visits boxes by descending score with a stable sort, so equal scores keep the lower input
index first; a box is suppressed when its IoU with a kept box of the same class is strictly
greater than the threshold; zero-area boxes have IoU 0 with everything.

Everything is plain torch (CPU, CUDA); no torchvision needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import NMSConfig
from ..errors import ConfigError
from .boxes import box_iou, clip_boxes, decode_boxes


# ----------------------------------------------------------------------------- NMS
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
    kept_labels = labels[:0] if labels is not None else None
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


# ----------------------------------------------------------------------------- candidates
def flatten_box_outputs(box_outputs: Sequence[Tensor]) -> Tensor:
    """Per-level (N, A*4, H, W) -> (N, sum_l H*W*A, 4) deltas in anchor order."""
    n = box_outputs[0].shape[0]
    # (N, A*4, H, W) -> (N, H, W, A*4) -> (N, H*W*A, 4)
    return torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in box_outputs], 1)


def topk_candidates(
    class_outputs: Sequence[Tensor], num_anchors: int, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k over anchors x classes of raw class logits, per image.

    class_outputs[l]: (N, A*K, H_l, W_l) (channel ``a*K + class``). Returns logits (N, k'),
    anchor indices (N, k') into the flat anchor tensor and class indices (N, k'), sorted by
    descending logit, k' = min(k, anchors x classes). Equal logits at the cut-off may be
    taken in any order.

    Eager mode uses an exact two-stage selection that avoids copying the (N, A_all, K)
    logits: the k-th best per-anchor maximum bounds the k-th best element from below, so
    only the class rows of anchors reaching it are read, and only entries reaching it are
    ranked. It reads channels_last outputs (and views of a flat (N, A_all, K) tensor, as ONNX
    Runtime returns) anchor-major, NCHW outputs class-major, without a copy either way. When
    k covers every anchor, or ties make the bound useless (an untrained head), it is a plain
    top-k. (For a traced graph see :func:`fixed_shape_candidates`.)
    """
    num_classes = class_outputs[0].shape[1] // num_anchors
    total_anchors = sum(c.shape[-2] * c.shape[-1] for c in class_outputs) * num_anchors
    k = min(k, total_anchors * num_classes)
    if k >= total_anchors:
        return _plain_topk(class_outputs, num_classes, k)
    # (N, A*K, H, W) -> (H, W, A*K) per image: contiguous when the memory is anchor-major
    if all(c.permute(0, 2, 3, 1)[0].is_contiguous() for c in class_outputs):
        return _topk_anchor_major(class_outputs, num_classes, k)
    return _topk_class_major(class_outputs, num_anchors, num_classes, k)


def _plain_topk(
    class_outputs: Sequence[Tensor], num_classes: int, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    n = class_outputs[0].shape[0]
    # (N, A*K, H, W) -> (N, H, W, A*K) -> (N, H*W*A*K)
    flat = torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1) for c in class_outputs], 1)
    logits, idx = flat.topk(k, dim=1)
    return logits, idx // num_classes, idx % num_classes


def _plain_topk_image(
    class_outputs: Sequence[Tensor], i: int, num_classes: int, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_plain_topk` of image ``i`` alone: (k,) logits, anchor and class indices. The
    two-stage paths fall back to it under heavy ties, where one plain top-k is cheaper."""
    logits, anchor_idx, class_idx = _plain_topk(
        [c[i : i + 1] for c in class_outputs], num_classes, k
    )
    return logits[0], anchor_idx[0], class_idx[0]


def _stack_images(per_image: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """[(logits, anchors, classes) (k,) per image] -> three (N, k) tensors."""
    logits, anchors, classes = (torch.stack(t) for t in zip(*per_image))
    return logits, anchors, classes


def _topk_anchor_major(
    class_outputs: Sequence[Tensor], num_classes: int, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Two-stage top-k for anchor-major memory: per level a (N, H*W*A, K) view, K contiguous."""
    n = class_outputs[0].shape[0]
    # (N, A*K, H, W) -> (N, H, W, A*K) -> (N, H*W*A, K): a view for anchor-major memory
    chunks = [c.permute(0, 2, 3, 1).reshape(n, -1, num_classes) for c in class_outputs]
    sizes = [c.shape[1] for c in chunks]
    total = sum(sizes)
    amax = torch.cat([c.amax(-1) for c in chunks], 1)  # (N, A_all)
    bound = amax.kthvalue(total - k + 1, dim=1).values  # (N,)
    per_image = []
    for i in range(n):
        anchors = (amax[i] >= bound[i]).nonzero().squeeze(1)  # (s,) ascending, s >= k
        if anchors.numel() > 2 * k:
            per_image.append(_plain_topk_image(class_outputs, i, num_classes, k))
            continue
        rows, start = [], 0
        for c, size in zip(chunks, sizes):
            sel = anchors[(anchors >= start) & (anchors < start + size)]
            if sel.numel():
                rows.append(c[i].index_select(0, sel - start))  # (s_c, K)
            start += size
        rows_t = torch.cat(rows)  # (s, K), rows in the order of `anchors`
        r, cls_idx = (rows_t >= bound[i]).nonzero().unbind(1)  # candidates, usually a few times k
        logits, pick = rows_t[r, cls_idx].topk(k)  # sorted descending; at least k by construction
        per_image.append((logits, anchors[r[pick]], cls_idx[pick]))
    return _stack_images(per_image)


def _topk_class_major(
    class_outputs: Sequence[Tensor], num_anchors: int, num_classes: int, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Two-stage top-k for NCHW memory, reading class columns of the selected anchors."""
    n = class_outputs[0].shape[0]
    total_anchors = sum(c.shape[-2] * c.shape[-1] for c in class_outputs) * num_anchors
    hws = [c.shape[-2] * c.shape[-1] for c in class_outputs]
    # per-anchor max over classes: (N, A*K, H, W) -> (N, A, K, H*W) -> (N, A, H*W) -> (N, H*W*A)
    level_max = [
        c.reshape(n, num_anchors, num_classes, hw).amax(2).transpose(1, 2).reshape(n, -1)
        for c, hw in zip(class_outputs, hws)
    ]
    # the k-th largest per-anchor max is a lower bound of the k-th largest element: every
    # top-k element is >= it and lies in an anchor whose max is >= it
    amax = torch.cat(level_max, 1)  # (N, A_all)
    bound = amax.kthvalue(total_anchors - k + 1, dim=1).values  # (N,)
    class_offsets = torch.arange(num_classes, device=class_outputs[0].device)
    per_image = []
    for i in range(n):
        if int((amax[i] >= bound[i]).sum()) > 2 * k:
            per_image.append(_plain_topk_image(class_outputs, i, num_classes, k))
            continue
        vals_l, anchor_l, class_l = [], [], []
        offset = 0
        for c, hw, lm in zip(class_outputs, hws, level_max):
            # selected anchors as (a, hw) in a-major order, so the reads below walk memory forwards
            a_idx, hw_idx = (
                (lm[i] >= bound[i]).view(hw, num_anchors).t().nonzero().unbind(1)
            )  # (s,) each
            if a_idx.numel():
                sel = hw_idx * num_anchors + a_idx  # (s,) local anchor index
                # element (a, k, hw) of image i sits at (a*K + k)*HW + hw of c[i]: (K, s) indices,
                # nearly ascending addresses (about 2x faster than the transposed order)
                idx = class_offsets.unsqueeze(1) * hw + (
                    a_idx * (num_classes * hw) + hw_idx
                ).unsqueeze(0)
                cols = (
                    c[i].reshape(-1).index_select(0, idx.reshape(-1)).view(num_classes, -1)
                )  # (K, s)
                k_idx, r = (cols >= bound[i]).nonzero().unbind(1)  # candidates (c,)
                vals_l.append(cols[k_idx, r])
                anchor_l.append(sel[r] + offset)
                class_l.append(k_idx)
            offset += hw * num_anchors
        vals, anchors, classes = torch.cat(vals_l), torch.cat(anchor_l), torch.cat(class_l)
        logits, pick = vals.topk(k)  # sorted descending; at least k candidates by construction
        per_image.append((logits, anchors[pick], classes[pick]))
    return _stack_images(per_image)


def select_classes(
    class_outputs: Sequence[Tensor], num_anchors: int, classes: Sequence[int]
) -> list[Tensor]:
    """Keep only ``classes`` (0-based) of per-level (N, A*K, H, W) logits -> (N, A*K', H, W)."""
    out = []
    index = torch.as_tensor(list(classes), device=class_outputs[0].device)
    for c in class_outputs:
        n, _, h, w = c.shape
        # (N, A*K, H, W) -> (N, A, K, H, W) -> (N, A, K', H, W) -> (N, A*K', H, W)
        out.append(c.view(n, num_anchors, -1, h, w).index_select(2, index).reshape(n, -1, h, w))
    return out


def _per_image(value, n: int, name: str, device, as_size: bool = False) -> Tensor | None:
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
    scales=None,
    original_sizes=None,
    clip: bool = True,
    class_subset: Sequence[int] | None = None,
) -> list[dict]:
    """Detections per image from raw head outputs.

    class_outputs / box_outputs: per level (N, A*K, H_l, W_l) / (N, A*4, H_l, W_l);
    anchors_xyxy: (sum_l H_l*W_l*A, 4) from :class:`AnchorGenerator` for ``image_size_hw``
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
    deltas = flatten_box_outputs(box_outputs)  # (N, A_all, 4)
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
    (``original * scale``, at most the input), class indices (N, k). When k < A_all the top-k
    is an exact two-stage selection (the k best elements lie in the k anchors with the best
    maxima); equal logits at the cut-off may be taken in any order.
    """
    # int(): the anchor and class counts are constants of a traced graph; the batch may stay dynamic
    n, num_anchors, num_classes = cls_flat.shape[0], int(cls_flat.shape[1]), int(cls_flat.shape[2])
    if k < num_anchors:
        _, top_anchor = cls_flat.amax(-1).topk(k, dim=1)  # (N, k)
        rows = cls_flat.gather(1, top_anchor.unsqueeze(-1).expand(n, k, num_classes))  # (N, k, K)
        logits, idx = rows.reshape(n, -1).topk(k, dim=1)  # (N, k) by descending logit
        row = torch.div(idx, num_classes, rounding_mode="floor")
        anchor_idx = top_anchor.gather(1, row)
        class_idx = idx - row * num_classes
    else:
        logits, idx = cls_flat.reshape(n, -1).topk(k, dim=1)
        anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
        class_idx = idx - anchor_idx * num_classes
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
