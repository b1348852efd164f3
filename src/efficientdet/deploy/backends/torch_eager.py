"""PyTorch eager backend: an EfficientDet module (checkpoint, named model or ``model=``), BN folded."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...config import ModelConfig
from ...nn.fuse import fuse_for_inference, rewrite_for_eager
from .base import Backend


class TorchBackend(Backend):
    """Runs ``model`` on ``device`` in float32, or with ``half`` in bf16 (CPU) / fp16 (CUDA).

    ``fuse`` folds BN into the convs and applies the eager rewrites (on a copy:
    :mod:`efficientdet.nn.fuse`), ``channels_last`` (default True on CPU)
    converts model and input, ``compile`` wraps the network in ``torch.compile``. Any input
    size works; ``model`` keeps the unfused module (e.g. to export it).
    """

    name = "torch"
    outputs = "raw"

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        half: bool = False,
        channels_last: bool | None = None,
        fuse: bool = True,
        compile: bool = False,
    ):
        config = model.config
        assert isinstance(config, ModelConfig)  # an EfficientDet (create_model / load)
        self.config = config
        self.device = device
        self.dtype = (
            (torch.bfloat16 if device.type == "cpu" else torch.float16) if half else torch.float32
        )
        self.channels_last = (
            (device.type == "cpu") if channels_last is None else bool(channels_last)
        )
        self.model = model.eval()
        net = (
            rewrite_for_eager(fuse_for_inference(copy.deepcopy(self.model))) if fuse else self.model
        )
        net = net.to(self.device, self.dtype)
        if self.channels_last:
            # Module.to takes memory_format at runtime; torch's stub omits it
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.network = torch.compile(net, dynamic=False) if compile else net

    def raw(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cls_out, box_out = self.network(batch)
        if self.dtype != torch.float32:
            cls_out = [c.float() for c in cls_out]
            box_out = [b.float() for b in box_out]
        return cls_out, box_out
