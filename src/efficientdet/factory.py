"""Model factory: named models, weights resolution and our checkpoint's model section.

Our checkpoint format (plain types and tensors only, loaded with ``weights_only=True``)::

    {"format": "efficientdet", "version": 1, "model": state_dict, "config": config_to_dict(cfg),
     "class_names": [...], "category_ids": [...] | None, ...training state added by the trainer}
"""

from __future__ import annotations

import dataclasses
import os

from .config import AnchorConfig, ModelConfig, get_model_config
from .errors import WeightsError
from .nn.efficientnet import EfficientNet
from .nn.model import EfficientDet
from .weights import load_weights, read_checkpoint
from .weights.registry import fetch_pretrained

CHECKPOINT_VERSION = 1


def config_to_dict(cfg: ModelConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict) -> ModelConfig:
    data = dict(data)
    data["anchors"] = AnchorConfig(**data["anchors"])
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in data.items() if k in known})


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


def save_model_dict(model: EfficientDet, class_names: list[str] | None = None, category_ids: list[int] | None = None) -> dict:
    """The model section of our checkpoint, as plain types."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(model.config.num_classes)]
    if len(names) != model.config.num_classes:
        raise WeightsError(f"{len(names)} class names for a {model.config.num_classes}-class model")
    return {
        "format": "efficientdet",
        "version": CHECKPOINT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config_to_dict(model.config),
        "class_names": names,
        "category_ids": list(category_ids) if category_ids is not None else None,
    }


def load_model(path: str | os.PathLike | dict) -> tuple[EfficientDet, dict]:
    """Rebuild a model from our checkpoint; returns (model in eval mode, checkpoint dict)."""
    ckpt = read_checkpoint(path) if not isinstance(path, dict) else path
    label = os.fspath(path) if not isinstance(path, dict) else "checkpoint"
    if not isinstance(ckpt, dict) or ckpt.get("format") != "efficientdet":
        raise WeightsError(
            f"{label}: not an efficientdet checkpoint; for effdet or other weights use "
            "create_model(NAME, weights=PATH)"
        )
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise WeightsError(f"{label}: checkpoint version {ckpt['version']} is newer than this library; upgrade efficientdet")
    model = EfficientDet(config_from_dict(ckpt["config"]))
    load_weights(model, ckpt, source="efficientdet", name=label)
    return model.eval(), ckpt

