"""Anchor assignment: effdet's labeler targets, a numpy arg-max matcher, hand-built ATSS cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from efficientdet.config import AnchorConfig
from efficientdet.detection.anchors import AnchorGenerator
from efficientdet.detection.assign import assign_atss, filter_degenerate_boxes, label_anchors
from efficientdet.detection.boxes import box_iou, decode_boxes, encode_boxes
from efficientdet.errors import DataError

from .reference import REFERENCE_NAMES, load_reference


def _targets(ref):
    return [
        {"boxes": b, "labels": lab}
        for b, lab in zip(ref["gt_boxes_xyxy"], ref["gt_labels0"], strict=True)
    ]


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_labeler_targets_equal_effdet(name):
    ref = load_reference(name)
    hw = ref["image_size_hw"]
    anchors = AnchorGenerator(AnchorConfig(anchor_scale=float(ref["config"]["anchor_scale"])))(hw)
    out = label_anchors(anchors, _targets(ref), hw, num_classes=ref["num_classes"])
    n = len(ref["gt_boxes_xyxy"])
    # effdet per level (N, H, W, A) / (N, H, W, A*4) -> flat anchor order (N, A_all) / (N, A_all, 4)
    ref_cls = torch.cat([c.reshape(n, -1) for c in ref["cls_targets"]], 1)
    ref_box = torch.cat([b.reshape(n, -1, 4) for b in ref["box_targets"]], 1)
    assert torch.equal(out.cls_targets, ref_cls)
    assert torch.equal(out.num_positives, ref["num_positives"].float())
    assert out.num_dropped == 0
    # ty, tx: bit-exact
    assert torch.equal(out.box_targets[..., :2], ref_box[..., :2])
    # th, tw = log(ratio): our torch.log here is correctly rounded (equals float64 log rounded),
    # the machine that recorded effdet's targets had a <= 1 ulp log; so: exact up to 1 ulp.
    th_tw, ref_th_tw = out.box_targets[..., 2:], ref_box[..., 2:]
    ulp = torch.finfo(torch.float32).eps * ref_th_tw.abs().clamp(min=1e-30)
    assert ((th_tw - ref_th_tw).abs() <= ulp).all()
    assert (th_tw == ref_th_tw).float().mean() > 0.99
    # box 1 is tiny (7 x 8 px, smaller than any anchor): still force-matched
    for i in range(n):
        tiny = ref["gt_boxes_xyxy"][i][1]
        assert (out.matched_boxes[i] == tiny).all(-1).any()


def _numpy_argmax_matcher(iou: np.ndarray, match_thr: float, unmatched_thr: float) -> np.ndarray:
    """Plain reference: iou (M, A) -> matches (A,), -1 background, -2 ignored, force-matched."""
    m, a = iou.shape
    matches = np.full(a, -1, dtype=np.int64)
    if m == 0:
        return matches
    for j in range(a):
        best = int(np.argmax(iou[:, j]))
        v = iou[best, j]
        if v >= match_thr:
            matches[j] = best
        elif v >= unmatched_thr:
            matches[j] = -2
    forced = {}
    for i in range(m):
        j = int(np.argmax(iou[i]))
        if j not in forced:  # lowest box index wins
            forced[j] = i
    for j, i in forced.items():
        matches[j] = i
    return matches


def test_argmax_matcher_500_boxes_against_numpy():
    gen = AnchorGenerator(AnchorConfig())
    hw = (128, 160)
    anchors = gen(hw)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * torch.tensor([150.0, 120.0])
    wh = torch.rand(500, 2, generator=g) * 60 + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    labels = torch.randint(0, 5, (500,), generator=g)
    out = label_anchors(
        anchors,
        [{"boxes": boxes, "labels": labels}],
        hw,
        num_classes=5,
        match_threshold=0.5,
        unmatched_threshold=0.4,
    )
    iou = box_iou(boxes, anchors).numpy()
    ref = _numpy_argmax_matcher(iou, 0.5, 0.4)
    expected_cls = np.where(ref >= 0, labels.numpy()[np.maximum(ref, 0)], ref)
    np.testing.assert_array_equal(out.cls_targets[0].numpy(), expected_cls)
    assert (ref == -2).any() and (ref >= 0).sum() == out.num_positives[0]
    pos = ref >= 0
    np.testing.assert_allclose(out.matched_boxes[0].numpy()[pos], boxes.numpy()[ref[pos]])


def test_box_targets_decode_back_to_boxes():
    anchors = AnchorGenerator(AnchorConfig())((128, 128))
    boxes = torch.tensor([[10.0, 20.0, 50.0, 90.0], [0.0, 0.0, 128.0, 128.0]])
    out = label_anchors(anchors, [{"boxes": boxes, "labels": torch.tensor([0, 1])}], (128, 128))
    pos = out.cls_targets[0] >= 0
    decoded = decode_boxes(out.box_targets[0][pos], anchors[pos])
    torch.testing.assert_close(decoded, out.matched_boxes[0][pos], atol=1e-4, rtol=0)


def test_empty_image_all_background():
    anchors = AnchorGenerator(AnchorConfig())((128, 128))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    one = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.tensor([3])}
    out = label_anchors(anchors, [empty, one], (128, 128), num_classes=4)
    assert (out.cls_targets[0] == -1).all() and (out.box_targets[0] == 0).all()
    assert out.num_positives[0] == 0 and out.num_positives[1] > 0
    out = label_anchors(anchors, [empty], (128, 128))
    assert (out.cls_targets == -1).all()


def test_degenerate_boxes_dropped_and_counted():
    good = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    bad = torch.tensor(
        [
            [20.0, 20.0, 20.0, 40.0],  # zero width
            [20.0, 40.0, 30.0, 30.0],  # negative height
            [200.0, 10.0, 220.0, 30.0],  # right of the image
            [-30.0, -30.0, -5.0, -5.0],  # above-left of the image
            [float("nan"), 0.0, 10.0, 10.0],
        ]
    )
    boxes, labels, dropped = filter_degenerate_boxes(
        torch.cat([bad[:2], good, bad[2:]]), torch.arange(6), (128, 128)
    )
    assert dropped == 5 and torch.equal(boxes, good) and labels.tolist() == [2]
    anchors = AnchorGenerator(AnchorConfig())((128, 128))
    with_bad = label_anchors(
        anchors,
        [{"boxes": torch.cat([bad, good]), "labels": torch.zeros(6, dtype=torch.long)}],
        (128, 128),
    )
    clean = label_anchors(
        anchors, [{"boxes": good, "labels": torch.zeros(1, dtype=torch.long)}], (128, 128)
    )
    assert with_bad.num_dropped == 5 and clean.num_dropped == 0
    assert torch.equal(with_bad.cls_targets, clean.cls_targets)
    assert torch.equal(with_bad.box_targets, clean.box_targets)


def test_whole_image_box_and_tiny_box():
    anchors = AnchorGenerator(AnchorConfig())((256, 256))
    whole = torch.tensor([[0.0, 0.0, 256.0, 256.0]])
    out = label_anchors(anchors, [{"boxes": whole, "labels": torch.tensor([0])}], (256, 256))
    iou = box_iou(whole, anchors)[0]
    expected = iou >= 0.5
    expected[int(iou.argmax())] = True
    assert torch.equal(out.cls_targets[0] == 0, expected) and expected.any()
    # a 1 x 1 box: far below every anchor's IoU threshold, force-matched to its best anchor only
    tiny = torch.tensor([[100.0, 100.0, 101.0, 101.0]])
    out = label_anchors(anchors, [{"boxes": tiny, "labels": torch.tensor([7])}], (256, 256))
    best = int(box_iou(tiny, anchors)[0].argmax())
    assert out.num_positives[0] == 1 and out.cls_targets[0, best] == 7


def test_bad_targets_raise_data_error():
    anchors = AnchorGenerator(AnchorConfig())((128, 128))
    box = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    with pytest.raises(DataError, match="0-based"):
        label_anchors(
            anchors, [{"boxes": box, "labels": torch.tensor([5])}], (128, 128), num_classes=5
        )
    with pytest.raises(DataError, match=r"\(M, 4\)"):
        label_anchors(
            anchors,
            [{"boxes": torch.zeros(2, 5), "labels": torch.zeros(2, dtype=torch.long)}],
            (128, 128),
        )
    with pytest.raises(DataError, match="one label per box"):
        label_anchors(
            anchors, [{"boxes": box, "labels": torch.zeros(2, dtype=torch.long)}], (128, 128)
        )
    with pytest.raises(DataError, match="dict"):
        label_anchors(anchors, [box], (128, 128))


# ----------------------------------------------------------------------------- ATSS by hand
def test_atss_four_anchor_grid():
    anchors = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20]])
    gt = torch.tensor([[0.0, 0.0, 12.0, 12.0]])
    # IoUs 100/144, 20/224, 20/224, 4/240: mean 0.2225, std 0.3166 -> threshold 0.539: only anchor 0
    assert assign_atss(anchors, [4], gt, topk=4).tolist() == [0, -1, -1, -1]


def test_atss_centre_must_be_strictly_inside():
    far = [[20.0, 20, 30, 30], [40, 40, 50, 50]]
    # centre (0, 5) on the box edge: IoU 90/190 = 0.474 >= threshold 0.432, but not inside
    edge = torch.tensor([[-9.0, 0, 9, 10], *far])
    assert assign_atss(edge, [3], torch.tensor([[0.0, 0, 10, 10]]), topk=3).tolist() == [-1, -1, -1]
    # centre (1, 5) inside: IoU 100/180 = 0.556 >= threshold 0.506
    inside = torch.tensor([[-8.0, 0, 10, 10], *far])
    assert assign_atss(inside, [3], torch.tensor([[0.0, 0, 10, 10]]), topk=3).tolist() == [
        0,
        -1,
        -1,
    ]


def test_atss_shared_anchor_goes_to_highest_iou():
    anchors = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]])
    tall = [0.0, 0, 10, 12]  # IoU 0.833 with anchor 0 (positive: threshold 0.759)
    exact = [0.0, 0, 10, 10]  # IoU 1.0 (positive: threshold 0.911)
    assert assign_atss(anchors, [3], torch.tensor([tall, exact]), topk=3).tolist() == [1, -1, -1]
    assert assign_atss(anchors, [3], torch.tensor([exact, tall]), topk=3).tolist() == [0, -1, -1]


def test_atss_topk_per_level_by_centre_distance():
    # level 0: two anchors; level 1: a far anchor with perfect IoU is outside the top-1 nearest
    anchors = torch.tensor([[0.0, 0, 10, 10], [30, 30, 40, 40], [2, 2, 8, 8], [0, 0, 10, 10]])
    gt = torch.tensor([[0.0, 0, 10, 10]])
    # topk=1: candidates anchor 0 (level 0, dist 0) and anchor 2 (level 1, centre (5, 5), dist 0;
    # anchor 3 ties at distance 0, so use a level-1 order where 2 is strictly nearer)
    anchors[3] = torch.tensor([1.0, 1, 11, 11])  # centre (6, 6), IoU 81/119
    # candidates: IoU 1.0 and 36/100: mean 0.68, std 0.4525 -> threshold 1.13: nothing positive
    assert assign_atss(anchors, [2, 2], gt, topk=1).tolist() == [-1, -1, -1, -1]
    # topk=2: level 0 gives IoUs (1, 0), level 1 (0.36, 0.681): mean 0.510, std 0.428 -> 0.938
    assert assign_atss(anchors, [2, 2], gt, topk=2).tolist() == [0, -1, -1, -1]


def test_atss_empty_ground_truth_and_no_priors():
    anchors = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10]])
    assert assign_atss(anchors, [2], torch.zeros(0, 4)).tolist() == [-1, -1]
    assert assign_atss(torch.zeros(0, 4), [0], torch.tensor([[0.0, 0, 10, 10]])).shape == (0,)
    out = label_anchors(
        torch.zeros(0, 4),
        [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}],
        assigner="atss",
        num_anchors_per_level=[0],
    )
    assert out.cls_targets.shape == (1, 0) and out.num_positives.tolist() == [0.0]
    out = label_anchors(
        torch.zeros(0, 4),
        [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}],
    )
    assert out.cls_targets.shape == (1, 0)


def test_atss_on_real_grid_positives_inside_boxes():
    gen = AnchorGenerator(AnchorConfig())
    anchors = gen((256, 256))
    boxes = torch.tensor([[20.0, 30.0, 120.0, 100.0], [150.0, 140.0, 250.0, 250.0]])
    out = label_anchors(
        anchors,
        [{"boxes": boxes, "labels": torch.tensor([1, 2])}],
        (256, 256),
        assigner="atss",
        num_anchors_per_level=gen.num_anchors_per_level((256, 256)),
    )
    pos = out.cls_targets[0] >= 0
    assert pos.sum() > 0 and set(out.cls_targets[0][pos].tolist()) == {1, 2}
    ctr = (anchors[pos, :2] + anchors[pos, 2:]) / 2
    mb = out.matched_boxes[0][pos]
    assert ((ctr > mb[:, :2]) & (ctr < mb[:, 2:])).all()
    torch.testing.assert_close(out.box_targets[0][pos], encode_boxes(mb, anchors[pos]))


@pytest.mark.parametrize("edge", ["left", "top", "right", "bottom"])
def test_atss_centre_within_0_01_of_an_edge_is_not_inside(edge):
    """Reference ATSS / mmdetection: inside means min(l, t, r, b) > 0.01 px, not > 0."""
    box = torch.tensor([[0.0, 0, 10, 10]], dtype=torch.float64)

    def anchors(d):  # an 18 x 10 (or 10 x 18) anchor whose centre lies d px inside the given edge
        x1, y1, x2, y2 = {
            "left": (d - 9, 0, d + 9, 10),
            "right": (1 - d, 0, 19 - d, 10),
            "top": (0, d - 9, 10, d + 9),
            "bottom": (0, 1 - d, 10, 19 - d),
        }[edge]
        return torch.tensor(
            [[x1, y1, x2, y2], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=torch.float64
        )

    # IoU (9 + d) * 10 / (280 - (9 + d) * 10) = 0.474 for d ~ 0, above mean + std = 0.432 of (0.474, 0, 0)
    assert assign_atss(anchors(0.005), [3], box, topk=3).tolist() == [
        -1,
        -1,
        -1,
    ]  # 0.005 px from the edge
    assert assign_atss(anchors(0.009), [3], box, topk=3).tolist() == [
        -1,
        -1,
        -1,
    ]  # 0.009 px: still within 0.01
    assert assign_atss(anchors(0.011), [3], box, topk=3).tolist() == [0, -1, -1]  # 0.011 px: inside
