"""Model size and cost without running real tensors (the model is built on the meta device)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig
from .model import EfficientDet


def _meta_model(cfg: ModelConfig) -> EfficientDet:
    with torch.device("meta"):
        return EfficientDet(cfg).eval()


def count_parameters(cfg: ModelConfig) -> int:
    return sum(p.numel() for p in _meta_model(cfg).parameters())


def count_multiply_adds(cfg: ModelConfig, image_size: tuple[int, int] | None = None) -> int:
    """Multiply-adds of one forward pass at ``image_size`` (default: the config's), batch 1.

    ``torch.utils.flop_counter`` counts 2 FLOPs per multiply-add (convolutions and matmuls);
    the EfficientDet paper's "FLOPs" are multiply-adds, so this is the number to compare.
    """
    h, w = image_size or cfg.image_size
    model = _meta_model(cfg)
    with torch.device("meta"):
        x = torch.empty(1, 3, h, w)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2
