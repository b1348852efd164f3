"""Training losses: sigmoid focal loss for classes, Huber or GIoU loss for boxes.

Normalisation follows the official code: both losses are divided by ``num_positives + 1``
summed over the batch (the Huber loss additionally by 4, one per coordinate), and the total is
``class_loss + box_loss_weight * box_loss`` (``giou_loss_weight`` for the GIoU option).
Everything is vectorised over the batch and anchors; only the ground-truth checks and ATSS
loop per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AnchorConfig, LossConfig
from ..errors import ConfigError
from .anchors import AnchorGenerator
from .assign import label_anchors
from .boxes import decode_boxes, elementwise_giou


def flatten_head_outputs(
    class_outputs: Sequence[Tensor], box_outputs: Sequence[Tensor], num_anchors: int
) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> flat tensors in anchor order.

    class_outputs[l]: (N, A*K, H_l, W_l), channel ``a*K + k``; box_outputs[l]: (N, A*4, H_l, W_l),
    channel ``a*4 + c`` with c in (ty, tx, th, tw). Returns (N, sum_l H_l*W_l*A, K) logits and
    (N, sum_l H_l*W_l*A, 4) deltas.
    """
    n = class_outputs[0].shape[0]
    num_classes = class_outputs[0].shape[1] // num_anchors
    # (N, A*K, H, W) -> (N, H, W, A*K) -> (N, H*W*A, K)
    cls = torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1, num_classes) for c in class_outputs], 1)
    box = torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in box_outputs], 1)
    return cls, box


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 1.5,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Element-wise focal loss (official formulation), not reduced.

    logits, targets: same shape, targets in {0, 1} (float). The modulating factor uses the
    unsmoothed targets; label smoothing moves targets to ``t * (1 - s) + s / 2`` for the
    cross-entropy only.
    """
    p = logits.sigmoid()
    p_t = targets * p + (1.0 - targets) * (1.0 - p)
    alpha_t = targets * alpha + (1.0 - targets) * (1.0 - alpha)
    modulator = (1.0 - p_t) ** gamma
    if label_smoothing > 0:
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return alpha_t * modulator * ce


class _FocalLossSum(torch.autograd.Function):
    """Sum of the focal loss over all (anchor, class) entries with its gradient computed in the
    same pass. The dense part treats every entry as a negative; the few positive entries are
    then corrected from their gathered logits. About a quarter of the memory traffic of the
    element-wise autograd graph, which matters at (N, 49104, 90) logits per step."""

    @staticmethod
    def forward(
        ctx, logits: Tensor, cls_targets: Tensor, alpha: float, gamma: float, label_smoothing: float
    ) -> Tensor:
        s2 = 0.5 * label_smoothing  # smoothed target of a negative; 1 - s2 for a positive
        with torch.autocast(logits.device.type, enabled=False):
            p = logits.sigmoid()
            ce = F.softplus(logits)  # cross-entropy of a negative: softplus(x) - s2 * x
            if s2:
                ce.sub_(logits, alpha=s2)
            # negatives: loss = (1 - alpha) p^gamma ce, ignored anchors (-2) weigh 0
            modulator = p.pow(gamma).mul_(
                (cls_targets != -2).unsqueeze(-1).to(p.dtype) * (1.0 - alpha)
            )
            total = (modulator * ce).sum()
            # d/dx = (1 - alpha) p^gamma (gamma (1 - p) ce + p - s2)
            grad = ce.mul_(torch.rsub(p, 1.0))
            torch.add(p, grad, alpha=gamma, out=grad)
            if s2:
                grad.sub_(s2)
            grad.mul_(modulator)
            del modulator, ce

            positive = cls_targets >= 0
            rows, cols = positive.nonzero(as_tuple=True)
            flat = (rows * cls_targets.shape[1] + cols) * logits.shape[-1] + cls_targets[positive]
            x, p = logits.reshape(-1)[flat], p.reshape(-1)[flat]
            neg_ce = F.softplus(x) - s2 * x
            pos_ce = F.softplus(-x) + s2 * x
            neg_loss = (1.0 - alpha) * p.pow(gamma) * neg_ce
            pos_mod = alpha * (1.0 - p).pow(gamma)
            total = total + (pos_mod * pos_ce - neg_loss).sum()
            # d/dx = alpha (1 - p)^gamma (-gamma p ce + p - 1 + s2)
            grad.view(-1)[flat] = pos_mod * (p - 1.0 + s2 - gamma * p * pos_ce)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_total, None, None, None, None


def focal_loss_sum(
    logits: Tensor,
    cls_targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 1.5,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Summed :func:`sigmoid_focal_loss` of (N, A, K) float32 logits against per-anchor targets
    (N, A) int64: class index, -1 background (all-zero targets) or -2 ignored (no loss).
    Differentiable in ``logits``; equal to the element-wise reference, with less memory."""
    return _FocalLossSum.apply(
        logits.contiguous(), cls_targets, float(alpha), float(gamma), float(label_smoothing)
    )


def huber_loss(input: Tensor, target: Tensor, delta: float = 0.1) -> Tensor:
    """Element-wise Huber loss: 0.5 x^2 for |x| <= delta, delta * (|x| - delta/2) beyond."""
    abs_err = (input - target).abs()
    quadratic = abs_err.clamp(max=delta)
    return 0.5 * quadratic.pow(2) + delta * (abs_err - quadratic)


LOSS_KEYS = ("loss", "class_loss", "box_loss")  # DetectionLoss's normalised losses (0-dim tensors)


class DetectionLoss(nn.Module):
    """Focal + box loss from raw head outputs and per-image ground truth (no parameters).

    ``forward(class_outputs, box_outputs, targets, image_size_hw)`` with the head layout of
    :func:`flatten_head_outputs`, targets a list (len N) of {"boxes": (M, 4) float xyxy
    model-input pixels, "labels": (M,) int64 0-based} and ``image_size_hw`` the model input
    (h, w). Returns {"loss", "class_loss", "box_loss"} (0-dim tensors; ``box_loss`` before its
    weight), "num_positives" (float, whole batch) and "num_dropped_boxes" (int, degenerate
    ground-truth boxes ignored). Ignored anchors (between the two match thresholds) add no
    class loss; the Huber loss skips box-target entries that are exactly 0, as the official
    code does.
    """

    def __init__(
        self, anchor_cfg: AnchorConfig, loss_cfg: LossConfig | None = None, num_classes: int = 90
    ) -> None:
        super().__init__()
        self.anchor_cfg = anchor_cfg
        self.cfg = loss_cfg if loss_cfg is not None else LossConfig()
        self.num_classes = int(num_classes)
        self.anchors = AnchorGenerator(anchor_cfg)

    def forward(
        self,
        class_outputs: Sequence[Tensor],
        box_outputs: Sequence[Tensor],
        targets: Sequence[dict],
        image_size_hw: Sequence[int],
    ) -> dict:
        cfg = self.cfg
        a = self.anchor_cfg.num_anchors
        sizes = self.anchors.feature_sizes(image_size_hw)
        got = [tuple(c.shape[-2:]) for c in class_outputs]
        if got != sizes:
            raise ConfigError(
                f"head outputs have feature sizes {got} but image size {tuple(image_size_hw)} gives {sizes}:"
                " pass the model input size (h, w) and the anchor config the model was built with"
            )
        if class_outputs[0].shape[1] != a * self.num_classes:
            raise ConfigError(
                f"class outputs have {class_outputs[0].shape[1]} channels, expected {a} anchors x {self.num_classes}"
                " classes: build DetectionLoss with the model's num_classes"
            )
        if len(targets) != class_outputs[0].shape[0]:
            raise ConfigError(
                f"{len(targets)} targets for a batch of {class_outputs[0].shape[0]}: give one dict per image"
            )
        cls_logits, box_deltas = flatten_head_outputs(
            class_outputs, box_outputs, a
        )  # (N, A_all, K), (N, A_all, 4)
        cls_logits, box_deltas = cls_logits.float(), box_deltas.float()
        anchors = self.anchors(image_size_hw, device=cls_logits.device, dtype=torch.float32)
        t = label_anchors(
            anchors,
            targets,
            image_size_hw,
            num_classes=self.num_classes,
            assigner=cfg.assigner,
            match_threshold=cfg.match_threshold,
            unmatched_threshold=cfg.unmatched_threshold,
            atss_topk=cfg.atss_topk,
            num_anchors_per_level=self.anchors.num_anchors_per_level(image_size_hw),
        )
        normalizer = t.num_positives.sum() + 1.0

        class_loss = (
            focal_loss_sum(cls_logits, t.cls_targets, cfg.alpha, cfg.gamma, cfg.label_smoothing)
            / normalizer
        )

        if cfg.box_loss == "huber":
            mask = (t.box_targets != 0).to(box_deltas.dtype)
            box_loss = (huber_loss(box_deltas, t.box_targets, cfg.huber_delta) * mask).sum() / (
                normalizer * 4.0
            )
            weight = cfg.box_loss_weight
        else:  # giou on decoded boxes of positive anchors
            positive = t.cls_targets >= 0  # (N, A_all)
            pred = decode_boxes(
                box_deltas[positive], anchors.expand_as(box_deltas)[positive]
            )  # (P, 4)
            giou = elementwise_giou(pred, t.matched_boxes[positive])
            box_loss = (1.0 - giou).sum() / normalizer
            weight = cfg.giou_loss_weight
        loss = class_loss + weight * box_loss
        return {
            "loss": loss,
            "class_loss": class_loss,
            "box_loss": box_loss,
            "num_positives": float(t.num_positives.sum()),
            "num_dropped_boxes": int(t.num_dropped),
        }
