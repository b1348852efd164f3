"""Model factory: named models, weights resolution, and rebuilding a model from our checkpoint
(the format itself lives in :mod:`efficientdet.weights.checkpoint`)."""

from __future__ import annotations

import os

from .config import get_model_config
from .nn.efficientnet import EfficientNet
from .nn.model import EfficientDet
from .weights import load_weights, read_checkpoint
from .weights.checkpoint import (  # noqa: F401 - re-exported: the public names of the format
    CHECKPOINT_VERSION, config_from_dict, config_to_dict, save_model_dict, validate_checkpoint)
from .weights.registry import fetch_pretrained

def create_model(
    name: str,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    weights: str | os.PathLike | None = None,
    grad_checkpointing: bool = False,
    **overrides,
) -> EfficientDet:
    """Build a named model (``list_models()``), optionally with weights.

    ``weights``: None/"none" (random init), "coco" (the registered effdet release file, downloaded
    once into the torch hub cache) or a path (ours, effdet's, or EfficientNet-PyTorch for the
    backbone). With another ``num_classes`` than the weights', all but the class prediction layer
    load. ``overrides``: any ModelConfig/AnchorConfig field (``anchor_scale=3.0``, ...).
    """
    cfg = get_model_config(name, num_classes=num_classes, image_size=image_size, **overrides)
    model = EfficientDet(cfg, grad_checkpointing=grad_checkpointing)
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return model
    if isinstance(weights, str) and weights.lower() == "coco":
        path, entry = fetch_pretrained(cfg.name)
        load_weights(model, path, source=entry.source)
    else:
        load_weights(model, weights)
    return model


def create_backbone(name: str, num_classes: int = 1000, weights: str | os.PathLike | None = None, **kwargs) -> EfficientNet:
    """EfficientNet B0-B7 / Lite0-Lite4 in classifier form (``forward(x) -> logits``)."""
    net = EfficientNet(name, num_classes=num_classes, **kwargs)
    if weights is not None:
        load_weights(net, weights)
    return net


def load_model(path: str | os.PathLike | dict) -> tuple[EfficientDet, dict]:
    """Rebuild a model from our checkpoint; returns (model in eval mode, checkpoint dict)."""
    ckpt = read_checkpoint(path) if not isinstance(path, dict) else path
    label = os.fspath(path) if not isinstance(path, dict) else "checkpoint"
    model = EfficientDet(validate_checkpoint(ckpt, label))
    load_weights(model, ckpt, source="efficientdet", name=label)
    return model.eval(), ckpt
