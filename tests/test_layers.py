"""TF "same" padding layers against the padding rule written out in the test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from efficientdet.nn.layers import Conv2dSame, MaxPool2dSame


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2  # the odd pixel goes bottom/right


@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (2, 3), (1, 1), (5, 4), (24, 40)])
def test_max_pool_same_equals_explicit_minus_inf_padding(h, w):
    x = torch.randn(2, 3, h, w) - 10.0  # all negative: a zero pad would win, -inf never does
    top, bottom = tf_same_pad(h, 3, 2)
    left, right = tf_same_pad(w, 3, 2)
    expected = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, 2)
    got = MaxPool2dSame(3, 2)(x)
    assert got.shape[-2:] == (math.ceil(h / 2), math.ceil(w / 2))
    assert torch.equal(got, expected)
    assert torch.equal(
        MaxPool2dSame(3, 2)(x.contiguous(memory_format=torch.channels_last)), expected
    )


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (3, 2)])
def test_strided_conv_same_equals_explicit_padding(kernel, h, w):
    conv = Conv2dSame(4, 6, kernel, stride=2)
    x = torch.randn(1, 4, h, w)
    top, bottom = tf_same_pad(h, kernel, 2)
    left, right = tf_same_pad(w, kernel, 2)
    expected = F.conv2d(F.pad(x, (left, right, top, bottom)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), expected)
