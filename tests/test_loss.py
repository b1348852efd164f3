"""DetectionLoss: effdet's recorded losses, hand-computed focal/Huber values, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from efficientdet.config import AnchorConfig, LossConfig
from efficientdet.detection.anchors import AnchorGenerator
from efficientdet.detection.assign import label_anchors
from efficientdet.detection.loss import (
    DetectionLoss,
    focal_loss_sum,
    huber_loss,
    sigmoid_focal_loss,
)
from efficientdet.errors import ConfigError

from .reference import REFERENCE_NAMES, load_reference


def _targets(ref):
    return [
        {"boxes": b, "labels": lab}
        for b, lab in zip(ref["gt_boxes_xyxy"], ref["gt_labels0"], strict=True)
    ]


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_losses_match_effdet(name):
    ref = load_reference(name)
    crit = DetectionLoss(
        AnchorConfig(anchor_scale=float(ref["config"]["anchor_scale"])),
        LossConfig(),
        ref["num_classes"],
    )
    out = crit(ref["class_out"], ref["box_out"], _targets(ref), ref["image_size_hw"])
    for key in ("loss", "class_loss", "box_loss"):
        assert out[key].dim() == 0
        assert abs(out[key].item() / ref[key].item() - 1) < 1e-4, key
    assert out["num_positives"] == float(ref["num_positives"].sum())
    assert out["num_dropped_boxes"] == 0


def test_focal_and_huber_by_hand():
    x = torch.tensor([0.0, 0.0, 2.0])
    t = torch.tensor([1.0, 0.0, 1.0])
    got = sigmoid_focal_loss(x, t, alpha=0.25, gamma=1.5)
    p2 = 1 / (1 + math.exp(-2))
    expected = [
        0.25 * 0.5**1.5 * math.log(2),
        0.75 * 0.5**1.5 * math.log(2),
        0.25 * (1 - p2) ** 1.5 * -math.log(p2),
    ]
    torch.testing.assert_close(got, torch.tensor(expected))
    # label smoothing 0.1: cross-entropy target 0.95, modulating factor from the hard target
    got = sigmoid_focal_loss(x[2:], t[2:], 0.25, 1.5, label_smoothing=0.1)
    ce = -(0.95 * math.log(p2) + 0.05 * math.log(1 - p2))
    torch.testing.assert_close(got, torch.tensor([0.25 * (1 - p2) ** 1.5 * ce]))
    err = huber_loss(torch.tensor([0.05, -0.3, 0.1]), torch.zeros(3), delta=0.1)
    torch.testing.assert_close(
        err, torch.tensor([0.5 * 0.05**2, 0.5 * 0.01 + 0.1 * 0.2, 0.5 * 0.01])
    )


@pytest.mark.parametrize("gamma,smoothing", [(1.5, 0.0), (2.0, 0.1)])
def test_fused_focal_loss_sum_and_gradient_equal_the_elementwise_reference(gamma, smoothing):
    g = torch.Generator().manual_seed(0)
    n, a, k = 2, 300, 7
    logits = (torch.randn(n, a, k, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    cls_targets = torch.randint(
        -2, k, (n, a), generator=g
    )  # -2 ignored, -1 background, 0..k-1 class
    assert {-2, -1, 0}.issubset(set(cls_targets.unique().tolist()))
    got = focal_loss_sum(logits, cls_targets, 0.25, gamma, smoothing)
    (got_grad,) = torch.autograd.grad(got * 3.0, logits)

    onehot = (cls_targets.unsqueeze(-1) == torch.arange(k)).double()
    kept = (cls_targets != -2).unsqueeze(-1).double()
    expected = (sigmoid_focal_loss(logits, onehot, 0.25, gamma, smoothing) * kept).sum()
    (expected_grad,) = torch.autograd.grad(expected * 3.0, logits)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-10, atol=1e-14)
    assert (got_grad[cls_targets == -2] == 0).all()


def _head_outputs(hw, num_classes=3, n=2, seed=0, requires_grad=False):
    gen = AnchorGenerator(AnchorConfig())
    g = torch.Generator().manual_seed(seed)
    cls = [torch.randn(n, 9 * num_classes, h, w, generator=g) - 3 for h, w in gen.feature_sizes(hw)]
    box = [torch.randn(n, 36, h, w, generator=g) * 0.1 for h, w in gen.feature_sizes(hw)]
    if requires_grad:
        for t in cls + box:
            t.requires_grad_(True)
    return cls, box


def _deltas_to_head(box_targets, hw, n):
    """(N, A_all, 4) -> per level (N, A*4, H, W): the inverse of the head flattening."""
    out, start = [], 0
    for h, w in AnchorGenerator(AnchorConfig()).feature_sizes(hw):
        chunk = box_targets[:, start : start + h * w * 9]  # (N, H*W*A, 4)
        out.append(chunk.reshape(n, h, w, 36).permute(0, 3, 1, 2).contiguous())
        start += h * w * 9
    return out


def test_empty_images_finite_loss_and_gradients():
    hw = (128, 128)
    cls, box = _head_outputs(hw, requires_grad=True)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    crit = DetectionLoss(AnchorConfig(), LossConfig(), 3)
    out = crit(cls, box, [empty, empty], hw)
    assert torch.isfinite(out["loss"]) and out["class_loss"] > 0
    assert out["box_loss"].item() == 0 and out["num_positives"] == 0
    out["loss"].backward()
    assert all(torch.isfinite(t.grad).all() for t in cls + box)
    # GIoU with no positives is also finite
    out = DetectionLoss(AnchorConfig(), LossConfig(box_loss="giou"), 3)(
        cls, box, [empty, empty], hw
    )
    assert torch.isfinite(out["loss"]) and out["box_loss"].item() == 0


def test_perfect_box_prediction_gives_zero_box_loss():
    hw = (128, 128)
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [0.0, 0.0, 128.0, 128.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[50.0, 50.0, 52.0, 53.0]]), "labels": torch.tensor([1])},
    ]
    anchors = AnchorGenerator(AnchorConfig())(hw)
    t = label_anchors(anchors, targets, hw, num_classes=3)
    cls, _ = _head_outputs(hw)
    box = _deltas_to_head(t.box_targets, hw, 2)
    for kind in ("huber", "giou"):
        out = DetectionLoss(AnchorConfig(), LossConfig(box_loss=kind), 3)(cls, box, targets, hw)
        assert out["box_loss"].item() < 1e-5, kind
    # and a wrong prediction costs: weight 50 * Huber on shifted deltas
    shifted = [b + 0.05 for b in box]
    out = DetectionLoss(AnchorConfig(), LossConfig(), 3)(cls, shifted, targets, hw)
    npos = t.num_positives.sum()
    expected = (t.box_targets != 0).sum() * 0.5 * 0.05**2 / ((npos + 1) * 4)
    torch.testing.assert_close(out["box_loss"], expected.float(), rtol=1e-4, atol=0)
    torch.testing.assert_close(out["loss"], out["class_loss"] + 50 * out["box_loss"])


def test_500_boxes_and_degenerate_count():
    hw = (128, 128)
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(500, 2, generator=g) * 120
    boxes = torch.cat([xy, xy + torch.rand(500, 2, generator=g) * 40 + 1], 1)
    boxes[:3, 2] = boxes[:3, 0]  # 3 zero-width boxes
    targets = [{"boxes": boxes, "labels": torch.randint(0, 3, (500,), generator=g)}] * 2
    cls, box = _head_outputs(hw)
    for assigner in ("argmax", "atss"):
        out = DetectionLoss(AnchorConfig(), LossConfig(assigner=assigner), 3)(cls, box, targets, hw)
        assert torch.isfinite(out["loss"]) and out["num_positives"] > 0
        assert out["num_dropped_boxes"] == 6


def test_ignored_anchors_add_no_class_loss():
    hw = (128, 128)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0]]), "labels": torch.tensor([0])}]
    cls, box = _head_outputs(hw, n=1)
    anchors = AnchorGenerator(AnchorConfig())(hw)
    t = label_anchors(anchors, targets, hw, match_threshold=0.5, unmatched_threshold=0.2)
    ignored = t.cls_targets[0] == -2
    assert ignored.any()
    # raising the logits of ignored anchors must not change the loss
    crit = DetectionLoss(AnchorConfig(), LossConfig(unmatched_threshold=0.2), 3)
    base = crit(cls, box, targets, hw)["class_loss"]
    bumped, start = [], 0
    for c in cls:
        _, _, h, w = c.shape
        m = ignored[start : start + h * w * 9].reshape(h, w, 9).permute(2, 0, 1)  # (A, H, W)
        m = m.repeat_interleave(3, 0).unsqueeze(0)  # (1, A*K, H, W), channel a*K + k
        bumped.append(c + 5.0 * m)
        start += h * w * 9
    torch.testing.assert_close(crit(bumped, box, targets, hw)["class_loss"], base)


def test_wrong_image_size_or_classes_is_config_error():
    cls, box = _head_outputs((128, 128), n=1)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    with pytest.raises(ConfigError, match="feature sizes"):
        DetectionLoss(AnchorConfig(), LossConfig(), 3)(cls, box, targets, (256, 256))
    with pytest.raises(ConfigError, match="num_classes"):
        DetectionLoss(AnchorConfig(), LossConfig(), 4)(cls, box, targets, (128, 128))
    assert len(list(DetectionLoss(AnchorConfig(), LossConfig(), 3).parameters())) == 0
