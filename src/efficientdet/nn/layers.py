"""Building blocks: TF-"same" convolution and pooling, separable conv, norm and activation.

TensorFlow's "same" padding pads ``max((ceil(i/s) - 1) * s + k - i, 0)`` in total, the odd pixel
on the bottom/right. For stride 1 and odd kernels that is symmetric and becomes a static
``padding=k//2``; only strided layers pad dynamically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one spatial dim for TF "same"."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_same(
    x: torch.Tensor, kernel: int, stride: int, dilation: int = 1, value: float = 0.0
) -> torch.Tensor:
    """Pad (N, C, H, W) so that a ``kernel``/``stride`` window gives ceil(H/stride) outputs."""
    ih, iw = x.shape[-2:]
    top, bottom = same_padding(int(ih), kernel, stride, dilation)
    left, right = same_padding(int(iw), kernel, stride, dilation)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TF "same" padding; static when symmetric, dynamic for strided convs."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        self.dynamic_pad = stride > 1
        padding = 0 if self.dynamic_pad else kernel_size // 2
        super().__init__(
            in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_pad:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


class MaxPool2dSame(nn.Module):
    """Max pooling with TF "same" padding: padded cells never win (as if padded with -inf).

    For the 3x3 stride-2 pool of the BiFPN no pad is materialised: TF pads (0, 1) for an even
    size, which is ``ceil_mode`` (the last window may overhang), and (1, 1) for an odd size,
    which is ``padding=1``; max pooling never takes padding. Other shapes, and maps smaller
    than the window (1 or 2 pixels: OpenVINO refuses a window larger than its input even with
    ``ceil_mode``), pad explicitly with -inf.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 3 and self.stride == 2 and min(int(d) for d in x.shape[-2:]) >= 3:
            # int(): spatial sizes are static (exported graphs fix them; only the batch is dynamic)
            return F.max_pool2d(
                x, 3, 2, padding=(int(x.shape[-2]) % 2, int(x.shape[-1]) % 2), ceil_mode=True
            )
        x = pad_same(x, self.kernel_size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


def make_act(name: str) -> nn.Module:
    """Activation by config name: swish (SiLU), relu6, relu."""
    if name == "swish":
        return nn.SiLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}")


def make_bn(channels: int, eps: float = BN_EPS, momentum: float = BN_MOMENTUM) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


class SeparableConv(nn.Module):
    """Depthwise 3x3 (no bias) then pointwise 1x1 (bias), optional BN: the BiFPN/head conv.

    State-dict keys: ``conv_dw``, ``conv_pw`` and, with ``bn=True``, ``bn``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, bn: bool = True, bias: bool = True
    ):
        super().__init__()
        self.conv_dw = Conv2dSame(in_ch, in_ch, kernel_size, groups=in_ch, bias=False)
        self.conv_pw = nn.Conv2d(in_ch, out_ch, 1, bias=bias)
        self.bn = make_bn(out_ch) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv_pw(self.conv_dw(x)))


class ConvBn(nn.Module):
    """1x1 conv (with bias, as the official graph has) followed by BN; keys ``conv``, ``bn``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=True)
        self.bn = make_bn(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth ("drop connect"): zero whole samples of a residual branch, rescale the rest."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep
