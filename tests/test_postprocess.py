"""Post-processing: effdet's detections, NMS / soft-NMS against plain numpy loops, letterbox."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from efficientdet.config import AnchorConfig, NMSConfig
from efficientdet.detection.anchors import AnchorGenerator
from efficientdet.detection.layout import flatten_levels
from efficientdet.detection.nms import batched_nms, nms, soft_nms
from efficientdet.detection.postprocess import (
    fixed_shape_candidates,
    fixed_shape_detections,
    postprocess,
)
from efficientdet.detection.topk import topk_candidates

from .reference import REFERENCE_NAMES, load_reference


# ----------------------------------------------------------------------------- numpy references
def _np_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box a (4,) with boxes b (n, 4), float32, inter / (area_a + area_b - inter), 0 if no overlap."""
    ih = np.maximum(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), np.float32(0))
    iw = np.maximum(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), np.float32(0))
    inter = ih * iw
    union = (a[3] - a[1]) * (a[2] - a[0]) + (b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter == 0, np.float32(0), inter / union).astype(np.float32)


def _np_nms(boxes, scores, labels, thr):
    """Greedy NMS, one kept box at a time (its IoU row vectorised over the remaining boxes)."""
    order = np.array(sorted(range(len(scores)), key=lambda i: -scores[i]), dtype=np.int64)  # stable
    keep, suppressed = [], np.zeros(len(scores), bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[pos + 1 :]
        hit = (labels[rest] == labels[i]) & (_np_iou(boxes[i], boxes[rest]) > thr)
        suppressed[rest[hit]] = True
    return keep


def _np_soft_nms(boxes, scores, labels, sigma, thr):
    s = scores.astype(np.float32).copy()
    alive = s > thr
    out_i, out_s = [], []
    while alive.any():
        i = int(np.argmax(np.where(alive, s, -np.inf)))  # first max on ties
        out_i.append(i)
        out_s.append(s[i])
        alive[i] = False
        j = np.nonzero(alive & (labels == labels[i]))[0]
        iou = _np_iou(boxes[i], boxes[j])
        s[j] = s[j] * np.exp(-(iou * iou) / np.float32(sigma)).astype(np.float32)
        alive &= s > thr
    return out_i, np.array(out_s, np.float32)


def _random_set(rng, n):
    """Boxes on a coarse integer grid (identical, touching and zero-area boxes appear), tied scores."""
    grid = int(rng.choice([6, 12, 40]))
    xy = rng.integers(0, grid, (n, 2))
    wh = rng.integers(0, max(2, grid // 2), (n, 2))  # 0 gives zero-area boxes
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    if rng.random() < 0.3:
        boxes[: n // 3] = boxes[0]  # a block of identical boxes
    scores = (
        (rng.integers(0, 8, n) / 8.0).astype(np.float32)
        if rng.random() < 0.5
        else rng.random(n).astype(np.float32)
    )
    labels = rng.integers(0, int(rng.choice([1, 3])), n)
    return boxes, scores, labels


def test_nms_matches_numpy_loop_on_random_sets():
    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(1, 40))
        boxes, scores, labels = _random_set(rng, n)
        thr = float(rng.choice([0.0, 0.3, 0.5, 0.7, 1.0]))
        expected = _np_nms(boxes, scores, labels, thr)
        chunk = int(rng.choice([3, 7, 256]))
        got = batched_nms(
            torch.from_numpy(boxes),
            torch.from_numpy(scores),
            torch.from_numpy(labels),
            thr,
            chunk_size=chunk,
        )
        assert got.tolist() == expected, (trial, n, thr)
        m = int(rng.integers(1, n + 1))
        got = batched_nms(
            torch.from_numpy(boxes),
            torch.from_numpy(scores),
            torch.from_numpy(labels),
            thr,
            m,
            chunk,
        )
        assert got.tolist() == expected[:m]


def test_nms_large_sets_and_class_agnostic():
    rng = np.random.default_rng(1)
    for n in (300, 1500):
        xy = rng.random((n, 2)).astype(np.float32) * 200
        boxes = np.concatenate([xy, xy + rng.random((n, 2)).astype(np.float32) * 40 + 1], 1)
        scores = rng.random(n).astype(np.float32)
        labels = rng.integers(0, 4, n)
        expected = _np_nms(boxes, scores, labels, 0.5)
        got = batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5
        )
        assert got.tolist() == expected
        expected = _np_nms(boxes, scores, np.zeros(n, int), 0.5)
        assert nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).tolist() == expected


def test_nms_long_suppression_chain():
    # box i overlaps only box i+1 (IoU 0.6): greedy keeps every other box
    n = 200
    x = np.arange(n, dtype=np.float32) * 0.25
    boxes = np.stack([x, np.zeros(n, np.float32), x + 1, np.ones(n, np.float32)], 1)
    scores = np.linspace(1, 0, n, dtype=np.float32)
    expected = _np_nms(boxes, scores, np.zeros(n, int), 0.5)
    got = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), None, 0.5, chunk_size=64)
    assert got.tolist() == expected


def test_soft_nms_matches_numpy_loop():
    rng = np.random.default_rng(2)
    for trial in range(500):
        n = int(rng.integers(1, 30))
        boxes, scores, labels = _random_set(rng, n)
        exp_i, exp_s = _np_soft_nms(boxes, scores, labels, 0.5, 0.001)
        got_i, got_s = soft_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5, 0.001
        )
        assert got_i.tolist() == exp_i, trial
        np.testing.assert_allclose(got_s.numpy(), exp_s, rtol=1e-6, atol=0)
        m = int(rng.integers(1, n + 1))
        got_i, _ = soft_nms(
            torch.from_numpy(boxes),
            torch.from_numpy(scores),
            torch.from_numpy(labels),
            0.5,
            0.001,
            m,
        )
        assert got_i.tolist() == exp_i[:m]


def test_soft_nms_identical_boxes_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3 + [[20.0, 20, 30, 30]])
    idx, sc = soft_nms(
        boxes, torch.tensor([0.9, 0.9, 0.5, 0.8]), None, sigma=0.5, score_threshold=0.001
    )
    e = float(np.exp(np.float32(-2.0)))  # IoU 1: exp(-1 / 0.5)
    assert idx.tolist() == [0, 3, 1, 2]
    torch.testing.assert_close(sc, torch.tensor([0.9, 0.8, 0.9 * e, 0.5 * e * e]))


# ----------------------------------------------------------------------------- effdet fixtures
def _sort_key(boxes, scores, labels):
    # order up to score ties: sort by score, then class, then box
    rows = np.concatenate([-scores[:, None], labels[:, None].astype(np.float32), boxes], 1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_detections_match_effdet(name):
    ref = load_reference(name)
    hw = ref["image_size_hw"]
    anchors = AnchorGenerator(AnchorConfig(anchor_scale=float(ref["config"]["anchor_scale"])))(hw)
    dets = postprocess(ref["class_out"], ref["box_out"], anchors, NMSConfig(), hw, clip=False)
    for i, d in enumerate(dets):
        r = ref["detections_xyxy_score_cls1"][i]
        r = r[r[:, 4] > 0]
        assert d["boxes"].dtype == torch.float32 and d["labels"].dtype == torch.int64
        assert len(d["scores"]) == len(r) == 100
        ours = _sort_key(d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy() + 1)
        theirs = _sort_key(r[:, :4].numpy(), r[:, 4].numpy(), r[:, 5].numpy())
        np.testing.assert_allclose(ours[:, 0], theirs[:, 0], atol=1e-5, rtol=0)  # scores
        np.testing.assert_array_equal(ours[:, 1], theirs[:, 1])  # classes
        np.testing.assert_allclose(ours[:, 2:], theirs[:, 2:], atol=1e-3, rtol=0)  # boxes


def test_topk_two_stage_equals_plain_topk():
    ref = load_reference(REFERENCE_NAMES[0])
    cls = ref["class_out"]
    n = cls[0].shape[0]
    flat = torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1) for c in cls], 1)  # (N, A_all*K)
    for k in (1, 100, 5000, 20000):
        logits, anchor_idx, class_idx = topk_candidates(cls, 9, k)
        expected = flat.topk(k, dim=1).values
        assert torch.equal(logits, expected)
        assert torch.equal(flat.gather(1, anchor_idx * 90 + class_idx), logits)


# ----------------------------------------------------------------------------- letterbox, options
def _single_hit_outputs(hw, hit_anchor, num_classes=4, hit_class=2, deltas=(0.0, 0.0, 0.0, 0.0)):
    """Head outputs with one confident (anchor, class) and -10 logits elsewhere."""
    gen = AnchorGenerator(AnchorConfig())
    cls, box, start = [], [], 0
    for h, w in gen.feature_sizes(hw):
        c = torch.full((1, 9 * num_classes, h, w), -10.0)
        b = torch.zeros(1, 36, h, w)
        local = hit_anchor - start
        if 0 <= local < h * w * 9:
            cell, a = divmod(local, 9)
            c[0, a * num_classes + hit_class, cell // w, cell % w] = 5.0
            b[0, a * 4 : a * 4 + 4, cell // w, cell % w] = torch.tensor(deltas)
        cls.append(c)
        box.append(b)
        start += h * w * 9
    return cls, box, gen(hw)


def test_letterbox_undo_and_clip():
    hw = (128, 128)
    anchors = AnchorGenerator(AnchorConfig())(hw)
    # pick an anchor sticking out of the left/top of the image: [-12, -12, 20, 20] (anchor 0)
    cls, box, anchors = _single_hit_outputs(hw, 0)
    cfg = NMSConfig(max_detections=5)
    d = postprocess(
        cls, box, anchors, cfg, hw, scales=0.5, original_sizes=[(200, 240)], clip=False
    )[0]
    assert d["labels"][0] == 2
    torch.testing.assert_close(d["boxes"][0], torch.tensor([-24.0, -24.0, 40.0, 40.0]))
    d = postprocess(cls, box, anchors, cfg, hw, scales=0.5, original_sizes=[(200, 240)])[0]
    torch.testing.assert_close(d["boxes"][0], torch.tensor([0.0, 0.0, 40.0, 40.0]))
    # a box past the bottom-right of the original image (64 x 64 region of the input at scale 2)
    last = anchors.shape[0] - 9  # a P7 anchor near the bottom-right
    cls, box, anchors = _single_hit_outputs(hw, last, deltas=(0.0, 0.0, 0.5, 0.5))
    d = postprocess(cls, box, anchors, cfg, hw, scales=2.0, original_sizes=[(30, 20)])[0]
    assert (
        (d["boxes"][:, 2] <= 20).all()
        and (d["boxes"][:, 3] <= 30).all()
        and (d["boxes"] >= 0).all()
    )
    d = postprocess(cls, box, anchors, cfg, hw)[0]  # default: clip to the model input
    assert (d["boxes"] <= 128).all() and (d["boxes"] >= 0).all()


def test_score_threshold_and_soft_nms():
    ref = load_reference(REFERENCE_NAMES[1])
    hw = ref["image_size_hw"]
    anchors = AnchorGenerator(AnchorConfig(anchor_scale=3.0))(hw)
    hard = postprocess(ref["class_out"], ref["box_out"], anchors, NMSConfig(), hw)
    thr = float(hard[0]["scores"][40])  # about 40 detections of image 0 reach it
    cfg = NMSConfig(score_threshold=thr, max_candidates=1000)
    d = postprocess(ref["class_out"], ref["box_out"], anchors, cfg, hw)
    assert all((x["scores"] >= thr).all() for x in d)
    assert 0 < len(d[0]["scores"]) < 100
    soft = postprocess(
        ref["class_out"],
        ref["box_out"],
        anchors,
        NMSConfig(method="gaussian", max_candidates=1000),
        hw,
    )
    for x, y in zip(soft, hard, strict=True):
        assert len(x["scores"]) == 100 and (x["scores"][:-1] >= x["scores"][1:]).all()
        assert x["scores"][0] == y["scores"][0]


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_fixed_shape_steps_give_the_postprocess_detections(name):
    """The ONNX export's steps (fixed_shape_candidates, an NMS, fixed_shape_detections; here the
    NMS is batched_nms) give postprocess's detections, zero-padded to max_detections: two-stage
    and plain top-k, padding past the candidates, letterbox."""
    ref = load_reference(name)
    hw = tuple(ref["image_size_hw"])
    anchors = AnchorGenerator(AnchorConfig(anchor_scale=3.0 if "lite" in name else 4.0))(hw)
    cls, box = ref["class_out"], ref["box_out"]
    n, num_classes = cls[0].shape[0], cls[0].shape[1] // 9
    cls_flat = torch.cat(
        [c.permute(0, 2, 3, 1).reshape(n, -1, num_classes) for c in cls], 1
    )  # (N, A_all, K)
    box_flat = flatten_levels(box, 4)
    scales, sizes = (
        torch.tensor([0.5, 1.25]),
        torch.tensor([[hw[0] * 2.0, hw[1] * 2.0], [100.0, 120.0]]),
    )
    configs = (
        NMSConfig(),  # k < A_all: two-stage top-k
        NMSConfig(
            max_candidates=40, max_detections=60
        ),  # fewer candidates than detections: padding
        NMSConfig(score_threshold=0.3, max_detections=50, iou_threshold=0.6, max_candidates=10**6),
    )  # plain
    for cfg in configs:
        expected = postprocess(cls, box, anchors, cfg, hw, scales, sizes)
        k = min(cfg.max_candidates, cls_flat.shape[1] * num_classes)
        scores, boxes, labels = fixed_shape_candidates(
            cls_flat, box_flat, anchors, k, hw, scales, sizes
        )
        assert scores.shape == labels.shape == (n, k) and boxes.shape == (n, k, 4)
        kept = torch.zeros(n, k)
        for i in range(n):
            ok = (scores[i] >= cfg.score_threshold).nonzero().squeeze(1)
            keep = batched_nms(
                boxes[i, ok], scores[i, ok], labels[i, ok], cfg.iou_threshold, cfg.max_detections
            )
            kept[i, ok[keep]] = 1.0
        b, s, lab, num = fixed_shape_detections(
            boxes, scores, labels, kept, cfg.max_detections, scales, sizes
        )
        m = cfg.max_detections
        assert (
            b.shape == (n, m, 4)
            and s.shape == lab.shape == (n, m)
            and num.dtype == lab.dtype == torch.int64
        )
        for i, e in enumerate(expected):
            d = int(num[i])
            assert d == len(e["scores"]) > 0
            assert torch.equal(lab[i, :d], e["labels"]) and torch.equal(s[i, :d], e["scores"])
            torch.testing.assert_close(b[i, :d], e["boxes"], atol=1e-5, rtol=0)
            assert not s[i, d:].any() and not b[i, d:].any() and not lab[i, d:].any()


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_memory_layouts_give_the_same_detections(name):
    """NCHW, channels_last and views of a flat (N, A_all, K) tensor (ONNX Runtime's output) take
    different top-k paths; all give the detections of the NCHW path, letterbox included."""
    ref = load_reference(name)
    hw = tuple(ref["image_size_hw"])
    anchors = AnchorGenerator(AnchorConfig(anchor_scale=3.0 if "lite" in name else 4.0))(hw)
    cls, box = ref["class_out"], ref["box_out"]
    n = cls[0].shape[0]
    flat = torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1) for c in cls], 1)  # (N, A_all*K)
    flat_views, start = [], 0
    for c in cls:  # per-level (N, A*K, H, W) views of the flat tensor
        _, ak, h, w = c.shape
        flat_views.append(
            flat[:, start : start + h * w * ak].reshape(n, h, w, ak).permute(0, 3, 1, 2)
        )
        start += h * w * ak
    layouts = {
        "channels_last": [c.contiguous(memory_format=torch.channels_last) for c in cls],
        "flat views": flat_views,
    }
    scales, sizes = (
        torch.tensor([0.5, 1.25]),
        torch.tensor([[hw[0] * 2.0, hw[1] * 2.0], [100.0, 120.0]]),
    )
    for cfg in (NMSConfig(), NMSConfig(score_threshold=0.3, max_detections=50, iou_threshold=0.6)):
        expected = postprocess(cls, box, anchors, cfg, hw, scales, sizes)
        for layout, outputs in layouts.items():
            assert all(o.permute(0, 2, 3, 1)[0].is_contiguous() for o in outputs), layout
            for e, g in zip(
                expected, postprocess(outputs, box, anchors, cfg, hw, scales, sizes), strict=True
            ):
                assert len(g["scores"]) == len(e["scores"]) > 0, layout
                assert torch.equal(g["labels"], e["labels"]) and torch.equal(
                    g["scores"], e["scores"]
                ), layout
                torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_topk_candidates_is_the_plain_top_k(ties, channels_last):
    """Both two-stage paths (and their fallback for heavily tied logits, as from an untrained
    head) return the values of a plain top-k over anchors x classes."""
    g = torch.Generator().manual_seed(0)
    a, k_cls = 3, 7
    levels = [torch.randn(2, a * k_cls, h, w, generator=g) for h, w in ((10, 10), (5, 8), (3, 3))]
    if ties:
        levels = [torch.full_like(c, -4.5) for c in levels]
        levels[0][:, 5, 2, 3] = 1.0
    if channels_last:
        levels = [c.contiguous(memory_format=torch.channels_last) for c in levels]
    flat = torch.cat(
        [c.permute(0, 2, 3, 1).reshape(2, -1, k_cls) for c in levels], 1
    )  # (2, A_all, K)
    logits, anchor_idx, class_idx = topk_candidates(levels, a, 100)
    assert torch.equal(logits, flat.reshape(2, -1).topk(100).values)
    assert torch.equal(flat[torch.arange(2).unsqueeze(1), anchor_idx, class_idx], logits)


def test_class_subset_keeps_only_those_classes():
    """With ``class_subset`` only the chosen classes compete: the same detections as NMS over
    those classes' logits alone, with labels in the full class numbering."""
    ref = load_reference("effdet_d0_256")
    hw = tuple(ref["image_size_hw"])
    anchors = AnchorGenerator(AnchorConfig())(hw)
    subset = [0, 2, 44]
    got = postprocess(
        ref["class_out"], ref["box_out"], anchors, NMSConfig(), hw, class_subset=subset
    )
    masked = []  # all other classes pushed to -inf: they can never be candidates
    for c in ref["class_out"]:
        m = torch.full_like(c, float("-inf")).view(2, 9, 90, *c.shape[-2:])
        m[:, :, subset] = c.view(2, 9, 90, *c.shape[-2:])[:, :, subset]
        masked.append(m.view_as(c))
    expected = postprocess(
        masked, ref["box_out"], anchors, NMSConfig(max_candidates=2 * 9 * 3 * 1364), hw
    )
    for e, g in zip(expected, got, strict=True):
        keep = e["scores"] > 0  # -inf logits give score 0 fillers
        assert set(g["labels"].tolist()) <= set(subset)
        n_det = len(g["scores"])
        assert torch.equal(g["labels"], e["labels"][keep][:n_det]) and torch.equal(
            g["scores"], e["scores"][keep][:n_det]
        )
