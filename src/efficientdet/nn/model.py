"""EfficientDet = EfficientNet backbone + BiFPN + class/box heads (raw outputs only).

Anchors, loss and NMS live in ``efficientdet.detection``; the model is a plain module that
trains, exports and benchmarks without flags in ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .bifpn import BiFPN
from .efficientnet import EfficientNet
from .heads import HeadNet, class_prior_bias


class EfficientDet(nn.Module):
    """``forward(images (N, 3, H, W) normalised) -> (class_outputs, box_outputs)``.

    Both are lists over levels min..max (P3..P7, P8 for D7x) of shape (N, A*K, H_l, W_l) and
    (N, A*4, H_l, W_l), with A anchors per cell, K classes, H_l = ceil(H / 2**l).
    """

    def __init__(self, config: ModelConfig, grad_checkpointing: bool = False):
        super().__init__()
        self.config = config
        self.backbone = EfficientNet(
            config.backbone,
            features_only=True,
            drop_path_rate=config.backbone_drop_path,
            grad_checkpointing=grad_checkpointing,
        )
        self.fpn = BiFPN(
            self.backbone.feature_channels,
            config.min_level,
            config.max_level,
            config.fpn_channels,
            config.fpn_repeats,
            config.fusion,
            config.act,
            grad_checkpointing=grad_checkpointing,
        )
        num_levels = config.anchors.num_levels
        num_anchors = config.anchors.num_anchors
        self.class_net = HeadNet(
            config.fpn_channels,
            config.head_repeats,
            num_levels,
            num_anchors,
            config.num_classes,
            config.act,
            bias_init=class_prior_bias(config.class_prior),
        )
        self.box_net = HeadNet(
            config.fpn_channels, config.head_repeats, num_levels, num_anchors, 4, config.act
        )
        self._init_heads()
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps, module.momentum = config.bn_eps, config.bn_momentum

    def _init_heads(self) -> None:
        """BiFPN and head convs keep PyTorch's default (variance-scaling) init, as the official model
        uses; only the two prediction layers start small, N(0, 0.01), so every anchor begins at the
        class prior with zero box deltas. (A small init everywhere stalls the first hundred steps.)"""
        for net in (self.class_net, self.box_net):
            nn.init.normal_(net.predict.conv_pw.weight, std=0.01)  # biases: HeadNet's bias_init

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute backbone stages and BiFPN cells in backward to save activation memory."""
        self.backbone.grad_checkpointing = enabled
        self.fpn.grad_checkpointing = enabled

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = self.fpn(self.backbone(images))
        return self.class_net(features), self.box_net(features)
