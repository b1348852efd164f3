"""Training losses: sigmoid focal loss for classes, Huber or GIoU loss for boxes.

Normalisation follows the official code: both losses are divided by ``num_positives + 1``
summed over the batch (the Huber loss additionally by 4, one per coordinate), and the total is
``class_loss + box_loss_weight * box_loss`` (``giou_loss_weight`` for the GIoU option).
Everything is vectorised over the batch and anchors; only the ground-truth checks and ATSS
loop per image.
"""

from __future__ import annotations

from typing import Sequence

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
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 1.5, label_smoothing: float = 0.0
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


def huber_loss(input: Tensor, target: Tensor, delta: float = 0.1) -> Tensor:
    """Element-wise Huber loss: 0.5 x^2 for |x| <= delta, delta * (|x| - delta/2) beyond."""
    abs_err = (input - target).abs()
    quadratic = abs_err.clamp(max=delta)
    return 0.5 * quadratic.pow(2) + delta * (abs_err - quadratic)


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

    def __init__(self, anchor_cfg: AnchorConfig, loss_cfg: LossConfig | None = None, num_classes: int = 90) -> None:
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
            raise ConfigError(f"{len(targets)} targets for a batch of {class_outputs[0].shape[0]}: give one dict per image")
        cls_logits, box_deltas = flatten_head_outputs(class_outputs, box_outputs, a)  # (N, A_all, K), (N, A_all, 4)
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

        # class loss: one-hot (N, A_all, K), background -1 and ignored -2 have no hot entry
        classes = torch.arange(self.num_classes, device=cls_logits.device)
        onehot = (t.cls_targets.unsqueeze(-1) == classes).to(cls_logits.dtype)
        focal = sigmoid_focal_loss(cls_logits, onehot, cfg.alpha, cfg.gamma, cfg.label_smoothing)
        not_ignored = (t.cls_targets != -2).unsqueeze(-1).to(focal.dtype)
        class_loss = (focal * not_ignored).sum() / normalizer

        if cfg.box_loss == "huber":
            mask = (t.box_targets != 0).to(box_deltas.dtype)
            box_loss = (huber_loss(box_deltas, t.box_targets, cfg.huber_delta) * mask).sum() / (normalizer * 4.0)
            weight = cfg.box_loss_weight
        else:  # giou on decoded boxes of positive anchors
            positive = t.cls_targets >= 0  # (N, A_all)
            pred = decode_boxes(box_deltas[positive], anchors.expand_as(box_deltas)[positive])  # (P, 4)
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
