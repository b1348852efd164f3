"""Candidate selection: the top-k (anchor, class) pairs of raw class logits, per image.

Class outputs per level are (N, A*K, H_l, W_l), channel ``a*K + class`` (the network's layout,
:mod:`efficientdet.detection.layout`). :func:`topk_candidates` is the eager selection of
:func:`efficientdet.detection.postprocess.postprocess`; :func:`fixed_shape_topk` is the same
selection with fixed shapes and no data-dependent control flow, for traced graphs (ONNX export);
:func:`select_classes` keeps a subset of classes before either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .layout import flatten_levels


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
    top-k. (For a traced graph see :func:`fixed_shape_topk`.)
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
    # (N, A*K, H, W) -> (N, A_all, K) -> (N, A_all*K)
    flat = flatten_levels(class_outputs, num_classes).reshape(n, -1)
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
    logits, anchors, classes = (torch.stack(t) for t in zip(*per_image, strict=True))
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
        for c, size in zip(chunks, sizes, strict=True):
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
        for c, hw in zip(class_outputs, hws, strict=True)
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
        for c, hw, lm in zip(class_outputs, hws, level_max, strict=True):
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


def fixed_shape_topk(cls_flat: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k over anchors x classes of flat logits, with fixed shapes (it traces into a graph).

    cls_flat: (N, A_all, K) logits in anchor order; ``k`` <= A_all * K. Returns logits (N, k)
    by descending logit, anchor indices (N, k) and class indices (N, k). When k < A_all it is an
    exact two-stage selection (the k best elements lie in the k anchors with the best maxima);
    equal logits at the cut-off may be taken in any order.
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
    return logits, anchor_idx, class_idx
