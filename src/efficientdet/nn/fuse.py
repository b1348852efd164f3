"""Inference rewrites of an eval-mode EfficientDet; the network keeps its ``forward(images
(N, 3, H, W)) -> (class outputs, box outputs)`` contract.

:func:`fuse_for_inference` folds every BN into the conv before it: ``Detector`` (``fuse=True``)
and ``export`` apply it. :func:`rewrite_for_eager` also moves the strided blocks' padding to
their narrow inputs and folds the BiFPN fusion weights into constants: the PyTorch backend
applies it; exports do not (their graphs would carry the extra pad and zeroing ops, and the
exporters fold constants themselves).
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn

from ..errors import ConfigError
from .bifpn import FuseInputs
from .efficientnet import InvertedResidualBlock
from .heads import HeadNet, _LevelBN
from .layers import SeparableConv


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta."""
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None  # our BNs track running statistics
    with torch.no_grad():
        factor = bn.weight / torch.sqrt(var + bn.eps)  # (C_out,)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
        new_bias = (bias - mean) * factor + bn.bias
        conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


class _FusedHeadNet(nn.Module):
    """A HeadNet with each level's BN folded into a per-level copy of the shared pointwise conv.

    Same ``forward([P3..]) -> [(N, A*outputs, H_l, W_l)]`` as ``HeadNet``.
    """

    def __init__(self, head: HeadNet):
        super().__init__()
        self.act: nn.Module = head.act
        self.predict: nn.Module = head.predict
        self.conv_dw = nn.ModuleList()  # shared over levels, no bias
        self.conv_pw = nn.ModuleList()  # [repeat][level]
        for rep, bns in zip(head.conv_rep, head.bn_rep, strict=True):
            assert isinstance(rep, SeparableConv) and isinstance(bns, nn.ModuleList)
            self.conv_dw.append(rep.conv_dw)
            per_level = nn.ModuleList()
            for level_bn in bns:
                assert isinstance(level_bn, _LevelBN)
                pw = copy.deepcopy(rep.conv_pw)
                _fold_bn(pw, level_bn.bn)
                per_level.append(pw)
            self.conv_pw.append(per_level)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(features):
            for dw, pws in zip(self.conv_dw, self.conv_pw, strict=True):
                x = self.act(cast(nn.ModuleList, pws)[level](dw(x)))
            outputs.append(self.predict(x))
        return outputs


# (module class name, [(conv attribute, bn attribute)]): convs followed directly by a BN in forward
_CONV_BN_PAIRS: dict[str, list[tuple[str, str]]] = {
    "EfficientNet": [("conv_stem", "bn1"), ("conv_head", "bn2")],
    "DepthwiseSeparableBlock": [("conv_dw", "bn1"), ("conv_pw", "bn2")],
    "InvertedResidualBlock": [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")],
    "SeparableConv": [("conv_pw", "bn")],
    "ConvBn": [("conv", "bn")],
}


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of an eval-mode EfficientDet into the conv before it, in place.

    Exact up to float rounding (outputs within ~1e-5 of the unfused model). The class and box
    heads share their convs across levels but have a BN per level, so each level gets its own
    folded copy of the pointwise conv. The result is for inference only (no BN left to
    train). Returns ``model``.
    """
    if model.training:
        raise ConfigError(
            "fuse_for_inference: call model.eval() first (BatchNorm folding uses running statistics)"
        )
    for module in list(model.modules()):
        for conv_name, bn_name in _CONV_BN_PAIRS.get(type(module).__name__, []):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold_bn(conv, bn)
                setattr(module, bn_name, nn.Identity())
    for head_name in ("class_net", "box_net"):
        head = getattr(model, head_name, None)
        if head is not None and type(head).__name__ == "HeadNet":
            setattr(model, head_name, _FusedHeadNet(head))
    left = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise RuntimeError(
            f"fuse_for_inference: BatchNorm left unfused at {left[:3]}"
        )  # a layout we do not know: our bug
    return model


def rewrite_for_eager(model: nn.Module) -> nn.Module:
    """The PyTorch backend's rewrites of an eval-mode model: :func:`pad_before_expand` and
    :func:`fold_fusion_weights`. Exact up to float rounding; in place; returns ``model``."""
    return fold_fusion_weights(pad_before_expand(model))


def _check_eval(model: nn.Module, name: str) -> None:
    if model.training:
        raise ConfigError(f"{name}: call model.eval() first (an inference rewrite)")


def pad_before_expand(model: nn.Module) -> nn.Module:
    """Make the strided inverted-residual blocks pad their narrow input instead of their expansion.

    TF "same" padding of a strided depthwise conv materialises a padded copy of the expanded
    tensor (D0 at 512: 96 channels at 256x256, 25 MB). Padding the block's input (16 channels)
    before the 1x1 expansion and zeroing the border after it gives the same result for a
    fraction of the memory traffic (measured by ``benchmarks/bench_eager_rewrites.py``). Used
    in eval mode with gradients off only; in place (the flag goes on every block, stride-1 ones
    ignore it); returns ``model``.
    """
    _check_eval(model, "pad_before_expand")
    for module in model.modules():
        if isinstance(module, InvertedResidualBlock):
            module.pad_input_first = True
    return model


def fold_fusion_weights(model: nn.Module) -> nn.Module:
    """Store every BiFPN node's normalised fusion weights as Python floats, so that eager
    inference fuses its inputs with one kernel each instead of renormalising the weights (relu,
    sum, add, divide, index) on every call. Eval mode only; a node whose weights change later
    (an optimizer step, ``load_state_dict``) goes back to renormalising; in place; returns
    ``model``."""
    _check_eval(model, "fold_fusion_weights")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FuseInputs) and module.fusion != "sum":
                weights = tuple(float(w) for w in module.normalized_weights())
                module.folded_weights = (module.edge_weights._version, weights)
    return model
