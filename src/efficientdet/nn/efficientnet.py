"""EfficientNet B0-B7 and EfficientNet-Lite0-4 (Tan & Le 2019; TF "same" padding).

Used two ways: as the EfficientDet backbone (``features_only=True``: returns the stride 8, 16
and 32 feature maps, P3..P5) and as an ImageNet classifier. State-dict keys follow the layout
of timm's ``tf_efficientnet_*`` models (``conv_stem``, ``bn1``, ``blocks.{stage}.{block}.*``,
``conv_head``, ``bn2``, ``classifier``), the layout effdet's ported COCO files use, so those
load by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .layers import Conv2dSame, drop_path, make_act, make_bn, same_padding


@dataclass(frozen=True)
class StageSpec:
    """One stage of the B0 baseline: block type, repeats, kernel, stride, expansion, channels."""

    block: str  # "ds" (depthwise-separable) or "ir" (inverted residual / MBConv)
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


B0_STAGES = (
    StageSpec("ds", 1, 3, 1, 1, 16),
    StageSpec("ir", 2, 3, 2, 6, 24),
    StageSpec("ir", 2, 5, 2, 6, 40),
    StageSpec("ir", 3, 3, 2, 6, 80),
    StageSpec("ir", 3, 5, 1, 6, 112),
    StageSpec("ir", 4, 5, 2, 6, 192),
    StageSpec("ir", 1, 3, 1, 6, 320),
)

# name: (width multiplier, depth multiplier, native resolution, classifier dropout)
BACKBONES: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}


def round_channels(channels: float, multiplier: float, divisor: int = 8) -> int:
    """Scale a channel count and round to a multiple of ``divisor``, never losing over 10%."""
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> 1x1 reduce -> act -> 1x1 expand -> sigmoid -> scale."""

    def __init__(self, channels: int, reduced: int, act: str):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act = make_act(act)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class DepthwiseSeparableBlock(nn.Module):
    """dw conv -> BN -> act -> [SE] -> 1x1 conv -> BN, residual when shapes allow."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        se_ratio: float,
        act: str,
        drop_path_rate: float,
    ):
        super().__init__()
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_path_rate = drop_path_rate
        self.conv_dw = Conv2dSame(in_ch, in_ch, kernel, stride, groups=in_ch, bias=False)
        self.bn1 = make_bn(in_ch)
        self.act = make_act(act)
        self.se = (
            SqueezeExcite(in_ch, max(1, int(in_ch * se_ratio)), act) if se_ratio else nn.Identity()
        )
        self.conv_pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn2 = make_bn(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.act(self.bn1(self.conv_dw(x))))
        out = self.bn2(self.conv_pw(out))
        if self.has_skip:
            out = drop_path(out, self.drop_path_rate, self.training) + x
        return out


class InvertedResidualBlock(nn.Module):
    """MBConv: 1x1 expand -> BN -> act -> dw conv -> BN -> act -> [SE] -> 1x1 project -> BN."""

    # eval-time rewrite set by nn.fuse.pad_before_expand (a class default, so that modules
    # pickled before it existed still run)
    pad_input_first = False

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand: int,
        se_ratio: float,
        act: str,
        drop_path_rate: float,
    ):
        super().__init__()
        mid = in_ch * expand
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_path_rate = drop_path_rate
        self.conv_pw = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = make_bn(mid)
        self.act1 = make_act(act)
        self.conv_dw = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self.bn2 = make_bn(mid)
        self.act2 = make_act(act)
        # the SE width is a fraction of the block's *input* channels, as in the official code
        self.se = (
            SqueezeExcite(mid, max(1, int(in_ch * se_ratio)), act) if se_ratio else nn.Identity()
        )
        self.conv_pwl = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = make_bn(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # inference only: training BN would count the border, and autograd refuses the
        # in-place zeroing of an output a ReLU saved
        if (
            self.pad_input_first
            and self.conv_dw.dynamic_pad
            and not self.training
            and not torch.is_grad_enabled()
        ):
            out = self._expand_then_strided_dw(x)
        else:
            out = self.conv_dw(self.act1(self.bn1(self.conv_pw(x))))
        out = self.se(self.act2(self.bn2(out)))
        out = self.bn3(self.conv_pwl(out))
        if self.has_skip:
            out = drop_path(out, self.drop_path_rate, self.training) + x
        return out

    def _expand_then_strided_dw(self, x: torch.Tensor) -> torch.Tensor:
        """``conv_dw(act1(bn1(conv_pw(x))))`` with the TF-"same" zero padding applied to the
        narrow input ``x`` (N, C_in, H, W) rather than to the ``expand`` times wider expansion.
        The 1x1 expansion turns the zero border into act(bias): it is zeroed again, so the
        result is the same. Inference only. ``conv_dw``'s own "same" padding is bypassed (its
        ``_conv_forward`` is the plain convolution)."""
        k, s = self.conv_dw.kernel_size[0], self.conv_dw.stride[0]
        top, bottom = same_padding(int(x.shape[-2]), k, s)
        left, right = same_padding(int(x.shape[-1]), k, s)
        out = self.act1(self.bn1(self.conv_pw(F.pad(x, (left, right, top, bottom)))))
        height, width = out.shape[-2:]
        out[:, :, :top].zero_()
        out[:, :, height - bottom :].zero_()
        out[:, :, :, :left].zero_()
        out[:, :, :, width - right :].zero_()
        return self.conv_dw._conv_forward(out, self.conv_dw.weight, self.conv_dw.bias)


class EfficientNet(nn.Module):
    """EfficientNet backbone or classifier.

    ``features_only=True``: ``forward(x (N,3,H,W)) -> [P3 (N,C3,H/8,W/8), P4 (/16), P5 (/32)]``
    (ceil division, TF "same"). Otherwise ``forward(x) -> logits (N, num_classes)``.
    """

    def __init__(
        self,
        name: str = "efficientnet_b0",
        num_classes: int = 1000,
        features_only: bool = False,
        drop_path_rate: float = 0.2,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if name not in BACKBONES:
            raise ConfigError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
        width, depth, _, dropout = BACKBONES[name]
        lite = "lite" in name
        act = "relu6" if lite else "swish"
        se_ratio = 0.0 if lite else 0.25
        self.name = name
        self.features_only = features_only
        self.grad_checkpointing = grad_checkpointing

        stem_ch = 32 if lite else round_channels(32, width)
        self.conv_stem = Conv2dSame(3, stem_ch, 3, stride=2, bias=False)
        self.bn1 = make_bn(stem_ch)
        self.act1 = make_act(act)

        # Lite keeps the first and last stages' depth fixed (they are cheap to keep, costly to scale)
        repeats = [
            spec.repeats
            if lite and i in (0, len(B0_STAGES) - 1)
            else math.ceil(spec.repeats * depth)
            for i, spec in enumerate(B0_STAGES)
        ]
        total_blocks = sum(repeats)
        stages: list[nn.Sequential] = []
        in_ch, block_idx = stem_ch, 0
        self.feature_info: list[dict] = []
        stride_so_far = 2
        for stage_idx, (spec, n) in enumerate(zip(B0_STAGES, repeats, strict=True)):
            out_ch = round_channels(spec.channels, width)
            blocks: list[nn.Module] = []
            for i in range(n):
                stride = spec.stride if i == 0 else 1
                rate = drop_path_rate * block_idx / total_blocks
                if spec.block == "ds":
                    blocks.append(
                        DepthwiseSeparableBlock(
                            in_ch, out_ch, spec.kernel, stride, se_ratio, act, rate
                        )
                    )
                else:
                    blocks.append(
                        InvertedResidualBlock(
                            in_ch, out_ch, spec.kernel, stride, spec.expand, se_ratio, act, rate
                        )
                    )
                in_ch = out_ch
                block_idx += 1
            stages.append(nn.Sequential(*blocks))
            stride_so_far *= spec.stride
            next_stride = B0_STAGES[stage_idx + 1].stride if stage_idx + 1 < len(B0_STAGES) else 2
            if (
                next_stride == 2 and stride_so_far >= 8
            ):  # last stage at this resolution: a feature tap
                self.feature_info.append(
                    {"stage": stage_idx, "channels": out_ch, "reduction": stride_so_far}
                )
        self.blocks = nn.Sequential(*stages)
        self.feature_stages = [info["stage"] for info in self.feature_info]

        if not features_only:
            head_ch = 1280 if lite else round_channels(1280, width)
            self.conv_head = nn.Conv2d(in_ch, head_ch, 1, bias=False)
            self.bn2 = make_bn(head_ch)
            self.act2 = make_act(act)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(head_ch, num_classes)

    @property
    def feature_channels(self) -> list[int]:
        return [info["channels"] for info in self.feature_info]

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act1(self.bn1(self.conv_stem(x)))
        features = []
        for idx, stage in enumerate(self.blocks):
            x = self._run_stage(stage, x)
            if idx in self.feature_stages:
                features.append(x)
        if not self.features_only:
            features.append(x)
        return features

    def forward(self, x: torch.Tensor):
        features = self.forward_features(x)
        if self.features_only:
            return features
        x = self.act2(self.bn2(self.conv_head(features[-1])))
        return self.classifier(self.dropout(x.mean((2, 3))))
