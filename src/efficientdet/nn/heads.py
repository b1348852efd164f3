"""Class and box prediction nets, shared across pyramid levels.

Per level: ``repeats`` x (separable conv [shared] -> BN [own per level] -> act), then a
separable prediction conv [shared]. Output channel order is anchor-major: channel
``a * K + k`` (class net) and ``a * 4 + c`` (box net, c in ty, tx, th, tw), as effdet and
the official model lay it out.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .layers import SeparableConv, make_act, make_bn


class _LevelBN(nn.Module):
    """Wrapper giving effdet's key name ``bn_rep.{repeat}.{level}.bn``."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = make_bn(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class HeadNet(nn.Module):
    """``forward([P3..P_max]) -> [(N, num_anchors * outputs_per_anchor, H_l, W_l) per level]``."""

    def __init__(
        self,
        channels: int,
        repeats: int,
        num_levels: int,
        num_anchors: int,
        outputs_per_anchor: int,
        act: str,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.num_levels = num_levels
        self.conv_rep = nn.ModuleList(
            [SeparableConv(channels, channels, bn=False) for _ in range(repeats)]
        )
        self.bn_rep = nn.ModuleList(
            [nn.ModuleList([_LevelBN(channels) for _ in range(num_levels)]) for _ in range(repeats)]
        )
        self.act = make_act(act)
        self.predict = SeparableConv(channels, num_anchors * outputs_per_anchor, bn=False)
        bias = self.predict.conv_pw.bias
        assert bias is not None  # bn=False: the pointwise conv has a bias
        nn.init.constant_(bias, bias_init)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(features):
            for conv, bns in zip(self.conv_rep, self.bn_rep, strict=True):
                x = self.act(cast(nn.ModuleList, bns)[level](conv(x)))
            outputs.append(self.predict(x))
        return outputs


def class_prior_bias(prior: float) -> float:
    """Bias making every class start at probability ``prior``: -log((1 - p) / p)."""
    return -math.log((1.0 - prior) / prior)
