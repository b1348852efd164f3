"""BiFPN (EfficientDet paper, section 3): weighted bidirectional feature pyramid.

The topology is data: ``bifpn_nodes(min_level, max_level)`` lists each fused node with the
ids of its inputs (ids 0..L-1 are the cell's input levels, L.. the nodes in creation order).
Feature sizes down the pyramid are ceil-halved (TF "same"), so resampling goes to an explicit
target size and any input size works.

State-dict keys follow effdet's layout (``resample.{i}``, ``cell.{r}.fnode.{n}.combine``,
``after_combine.conv``) so ported files load by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import ConvBn, MaxPool2dSame, SeparableConv, make_act


@dataclass(frozen=True)
class FusionNode:
    level: int
    inputs: tuple[
        int, ...
    ]  # node ids: 0..L-1 the cell inputs (levels min..max), then earlier nodes


def bifpn_nodes(min_level: int, max_level: int) -> list[FusionNode]:
    """Top-down nodes (max-1 .. min) then bottom-up nodes (min+1 .. max)."""
    latest = {level: [i] for i, level in enumerate(range(min_level, max_level + 1))}
    next_id = max_level - min_level + 1
    nodes = []
    for level in range(max_level - 1, min_level - 1, -1):  # top-down: lateral + upsampled coarser
        nodes.append(FusionNode(level, (latest[level][-1], latest[level + 1][-1])))
        latest[level].append(next_id)
        next_id += 1
    for level in range(
        min_level + 1, max_level + 1
    ):  # bottom-up: all of this level + downsampled finer
        nodes.append(FusionNode(level, (*latest[level], latest[level - 1][-1])))
        latest[level].append(next_id)
        next_id += 1
    return nodes


def feature_sizes(
    image_size: tuple[int, int], min_level: int, max_level: int
) -> list[tuple[int, int]]:
    """(H, W) of levels min..max by repeated ceil-halving of the image size."""
    h, w = image_size
    sizes = []
    for level in range(1, max_level + 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        if level >= min_level:
            sizes.append((h, w))
    return sizes


class Resample(nn.Module):
    """Bring a feature map to ``out_ch`` channels (1x1 conv + BN when needed) and the target size.

    Downsampling: 3x3 stride-2 max pool, "same" padded, repeated per octave. Upsampling:
    nearest neighbour to the exact target size (odd sizes down the pyramid make a plain x2 wrong).
    """

    def __init__(self, in_ch: int, out_ch: int, octaves: int):
        super().__init__()
        self.octaves = octaves  # > 0: downsample by 2**octaves, < 0: upsample, 0: same level
        if in_ch != out_ch:
            self.conv = ConvBn(in_ch, out_ch)
        self.pool: nn.Module | None = MaxPool2dSame(3, 2) if octaves > 0 else None

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if hasattr(self, "conv"):
            x = self.conv(x)
        if self.pool is not None:  # octaves > 0
            for _ in range(self.octaves):
                x = self.pool(x)
        if self.octaves < 0:
            x = F.interpolate(x, size=size, mode="nearest")
        return x


class FuseInputs(nn.Module):
    """Resample each input to the node's level and size, then fuse: fast-attention, softmax or sum.

    ``resample`` is keyed by the input's node id, as in effdet's files.
    """

    # eval-time rewrite set by nn.fuse.fold_fusion_weights: (edge_weights' version counter when
    # folded, the normalised weights as floats); used only while the weights are unchanged
    folded_weights: tuple[int, tuple[float, ...]] | None = None

    def __init__(self, resamplers: dict[int, Resample], fusion: str):
        super().__init__()
        self.fusion = fusion
        self.input_ids = list(resamplers)
        self.resample = nn.ModuleDict({str(i): r for i, r in resamplers.items()})
        if fusion in ("fastattn", "softmax"):
            self.edge_weights = nn.Parameter(torch.ones(len(resamplers)))

    def normalized_weights(self) -> torch.Tensor:
        """(inputs,) fusion weights: relu(w) / (sum + 1e-4) for fast attention, else softmax(w)."""
        if self.fusion == "fastattn":
            w = F.relu(self.edge_weights)
            return w / (w.sum() + 1e-4)
        return self.edge_weights.softmax(0)

    def forward(self, inputs: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        xs = [self.resample[str(i)](x, size) for i, x in zip(self.input_ids, inputs, strict=True)]
        if self.fusion == "sum":
            out = xs[0]
            for x in xs[1:]:
                out = out + x
            return out
        folded = self.folded_weights
        if folded is not None and not self.training and folded[0] == self.edge_weights._version:
            # one kernel per input; no per-call renormalisation of the weights (five kernels)
            out = xs[0] * folded[1][0]
            for x, weight in zip(xs[1:], folded[1][1:], strict=True):
                out.add_(x, alpha=weight)
            return out
        w = self.normalized_weights()
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class FusionNodeModule(nn.Module):
    """One BiFPN node: fuse inputs -> act -> separable conv + BN."""

    def __init__(
        self,
        node: FusionNode,
        node_channels: list[int],
        node_levels: list[int],
        channels: int,
        fusion: str,
        act: str,
    ):
        super().__init__()
        self.input_ids = list(node.inputs)
        self.combine = FuseInputs(
            {
                i: Resample(node_channels[i], channels, node.level - node_levels[i])
                for i in node.inputs
            },
            fusion,
        )
        self.after_combine = nn.Sequential()
        self.after_combine.add_module("act", make_act(act))
        self.after_combine.add_module("conv", SeparableConv(channels, channels))

    def forward(self, nodes: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return self.after_combine(self.combine([nodes[i] for i in self.input_ids], size))


class BiFPNCell(nn.Module):
    """One BiFPN layer: L inputs (levels min..max) -> L outputs, all ``channels`` wide."""

    def __init__(
        self,
        in_channels: list[int],
        min_level: int,
        max_level: int,
        channels: int,
        fusion: str,
        act: str,
    ):
        super().__init__()
        self.nodes = bifpn_nodes(min_level, max_level)
        self.min_level = min_level
        levels = list(range(min_level, max_level + 1))
        node_channels, node_levels = list(in_channels), list(levels)
        fnodes = []
        for node in self.nodes:
            fnodes.append(FusionNodeModule(node, node_channels, node_levels, channels, fusion, act))
            node_channels.append(channels)
            node_levels.append(node.level)
        self.fnode = nn.ModuleList(fnodes)
        num_levels = len(levels)
        # the last node written for each level is that level's output
        self.output_ids = [
            max(i for i, lvl in enumerate(node_levels) if lvl == level) for level in levels
        ]
        assert len(self.output_ids) == num_levels

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [tuple(f.shape[-2:]) for f in features]
        nodes = list(features)
        for node, module in zip(self.nodes, self.fnode, strict=True):
            nodes.append(module(nodes, sizes[node.level - self.min_level]))
        return [nodes[i] for i in self.output_ids]


class BiFPN(nn.Module):
    """Backbone taps (P3..P5) -> extra levels P6.. by resampling -> ``repeats`` BiFPN cells.

    ``forward([P3, P4, P5]) -> [P3', ..., P_max']``, each (N, channels, H_l, W_l).
    """

    def __init__(
        self,
        backbone_channels: list[int],
        min_level: int,
        max_level: int,
        channels: int,
        repeats: int,
        fusion: str,
        act: str,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        num_backbone = len(backbone_channels)
        self.resample = nn.ModuleDict()
        level_channels = list(backbone_channels)
        for i in range(
            num_backbone, max_level - min_level + 1
        ):  # P6, P7 (, P8): pool the level below
            self.resample[str(i)] = Resample(level_channels[-1], channels, 1)
            level_channels.append(channels)
        self.cell = nn.Sequential(
            *[
                BiFPNCell(
                    level_channels if r == 0 else [channels] * len(level_channels),
                    min_level,
                    max_level,
                    channels,
                    fusion,
                    act,
                )
                for r in range(repeats)
            ]
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = list(features)
        for resample in self.resample.values():
            x = features[-1]
            size = ((x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2)
            features.append(resample(x, size))
        for cell in self.cell:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                features = checkpoint(cell, features, use_reentrant=False)
            else:
                features = cell(features)
        return features
