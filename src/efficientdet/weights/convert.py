"""Converters from other projects' state-dict layouts to ours.

Our layout equals effdet's (``backbone.*``, ``fpn.*``, ``class_net.*``, ``box_net.*``; the
backbone in timm's ``tf_efficientnet_*`` layout), so effdet files need only their wrapper
prefixes removed. EfficientNet-PyTorch (lukemelas) numbers its blocks flat and names layers
differently; ``from_efficientnet_pytorch`` maps them onto our stages.
"""

from __future__ import annotations

import re

import torch
from torch import nn

WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")

# EfficientNet-PyTorch name -> ours, per block kind (ds: no expansion conv)
_DS_NAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: handles ``state_dict``/``model``/``state_dict_ema`` wrappers
    and strips ``module.``/``model.`` key prefixes (DDP, effdet's DetBench)."""
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model_state", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def is_efficientnet_pytorch(state: dict) -> bool:
    return any(k.startswith("_blocks.") for k in state)


def from_efficientnet_pytorch(
    state: dict[str, torch.Tensor], backbone: nn.Module
) -> dict[str, torch.Tensor]:
    """Map lukemelas EfficientNet-PyTorch keys (``_blocks.{i}._expand_conv``...) onto ``backbone``'s
    (an ``efficientdet.nn.efficientnet.EfficientNet``) ``blocks.{stage}.{block}`` layout."""
    flat_to_stage = [
        (s, b, type(block).__name__)
        for s, stage in enumerate(backbone.get_submodule("blocks").children())
        for b, block in enumerate(stage.children())
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if match:
            index, layer, param = int(match.group(1)), match.group(2), match.group(3)
            if index >= len(flat_to_stage):
                out[key] = value  # reported as unexpected by the loader
                continue
            stage, block, kind = flat_to_stage[index]
            names = _DS_NAMES if kind == "DepthwiseSeparableBlock" else _IR_NAMES
            out[f"blocks.{stage}.{block}.{names.get(layer, layer)}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        out[f"{_TOP_NAMES.get(layer, layer)}.{param}"] = value
    return out
