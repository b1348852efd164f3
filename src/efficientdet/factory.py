"""Model factory: named models, weights resolution, and rebuilding a model from our checkpoint
(the format itself lives in :mod:`efficientdet.weights.checkpoint`)."""

from __future__ import annotations

import os
from collections.abc import Callable

from .config import ModelConfig, get_model_config, resolve_model_name
from .errors import ConfigError, WeightsError
from .nn.efficientnet import EfficientNet
from .nn.model import EfficientDet
from .weights import load_weights, read_checkpoint
from .weights.checkpoint import (  # noqa: F401 - re-exported: the public names of the format
    CHECKPOINT_VERSION,
    config_from_dict,
    config_to_dict,
    is_our_checkpoint,
    save_model_dict,
    validate_checkpoint,
)
from .weights.registry import fetch_pretrained

# What our checkpoint decides and a caller may only repeat: the model name and these fields.
CHECKPOINT_FIELDS = (
    "image_size",
    "anchor_scale",
    "aspect_ratios",
    "num_scales",
    "min_level",
    "max_level",
)


def python_option(field: str) -> str:
    """How a setting is spelled in messages to Python callers (``anchor_scale``)."""
    return field


def show_value(field: str, value) -> str:
    if field == "image_size":
        return f"{value[0]}x{value[1]}"
    if field == "aspect_ratios":
        return " ".join(f"{w:g},{h:g}" for w, h in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def checkpoint_config(
    ckpt: dict,
    label: str,
    name: str | None = None,
    *,
    option: Callable[[str], str] = python_option,
    **overrides,
) -> ModelConfig:
    """The ModelConfig saved in our checkpoint ``ckpt`` (read from ``label``), with ``overrides``.

    The checkpoint decides the model and the CHECKPOINT_FIELDS (image size, anchors, levels): a
    ``name`` or override that differs raises one WeightsError naming both values and the file
    (``option`` spells the setting: ``anchor_scale`` for Python, ``--anchor-scale`` for the CLI).
    Other overrides (``num_classes``, ``bn_momentum``, ...) apply; None means "as saved".
    """
    saved = validate_checkpoint(ckpt, label)
    given = {k: v for k, v in overrides.items() if v is not None}
    conflicts = []
    if name is not None and resolve_model_name(name) != saved.name:
        conflicts.append(("model", resolve_model_name(name), saved.name))
    for key in CHECKPOINT_FIELDS:
        if key in given:
            wanted = saved.replace(
                **{key: given[key]}
            )  # normalised: 64 -> (64, 64), lists -> tuples
            have = getattr(saved, key) if key == "image_size" else getattr(saved.anchors, key)
            want = getattr(wanted, key) if key == "image_size" else getattr(wanted.anchors, key)
            if want != have:
                conflicts.append((key, show_value(key, want), show_value(key, have)))
    if conflicts:
        key, want, have = conflicts[0]
        more = (
            f" (and {', '.join(option(c[0]) for c in conflicts[1:])})" if len(conflicts) > 1 else ""
        )
        raise WeightsError(
            f"{option(key)} {want} conflicts with the checkpoint's {have} ({label}){more}; "
            f"fix: drop {', '.join(option(c[0]) for c in conflicts)} (the checkpoint carries its model, image size and anchors)"
        )
    rest = {k: v for k, v in given.items() if k not in CHECKPOINT_FIELDS}
    return saved.replace(**rest) if rest else saved


def create_model(
    name: str | None = None,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    weights: str | os.PathLike | None = None,
    grad_checkpointing: bool = False,
    *,
    class_names: list[str] | None = None,
    **overrides,
) -> EfficientDet:
    """Build a named model (``list_models()``), optionally with weights.

    ``weights``: None/"none" (random init), "coco" (the registered effdet release file, downloaded
    once into the torch hub cache) or a path (ours, effdet's, or EfficientNet-PyTorch for the
    backbone). With another ``num_classes`` than the weights', all but the class prediction layer
    load. ``overrides``: any ModelConfig/AnchorConfig field (``anchor_scale=3.0``, ...).

    Our checkpoint carries its model: ``name`` may be left out, and the image size and anchors
    come from the file (a differing value raises WeightsError naming both). ``class_names``: the
    classes the new model predicts, in order (sets ``num_classes``); the checkpoint's class layer
    is mapped to them by name, or trained anew when the names differ (see ``load_weights``).
    """
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            raise ConfigError(
                f"num_classes={num_classes} but {len(class_names)} class_names; fix: give one of them"
            )
        num_classes = len(class_names)
    no_weights = weights is None or (isinstance(weights, str) and weights.lower() == "none")
    coco = isinstance(weights, str) and weights.lower() == "coco"
    ckpt = read_checkpoint(weights) if weights is not None and not (no_weights or coco) else None
    label = os.fspath(weights) if weights is not None and ckpt is not None else ""
    if is_our_checkpoint(ckpt):
        cfg = checkpoint_config(
            ckpt, label, name, num_classes=num_classes, image_size=image_size, **overrides
        )
    elif name is None:
        raise ConfigError(
            "create_model: no model name; fix: give one of list_models(), or weights=PATH of an "
            "efficientdet checkpoint (it carries its model)"
        )
    else:
        cfg = get_model_config(name, num_classes=num_classes, image_size=image_size, **overrides)
    model = EfficientDet(cfg, grad_checkpointing=grad_checkpointing)
    if coco:
        path, entry = fetch_pretrained(cfg.name)
        load_weights(model, path, source=entry.source)
    elif ckpt is not None:
        load_weights(model, ckpt, name=label, class_names=class_names)
    return model


def create_backbone(
    name: str, num_classes: int = 1000, weights: str | os.PathLike | None = None, **kwargs
) -> EfficientNet:
    """EfficientNet B0-B7 / Lite0-Lite4 in classifier form (``forward(x) -> logits``)."""
    net = EfficientNet(name, num_classes=num_classes, **kwargs)
    if weights is not None:
        load_weights(net, weights)
    return net


def load_model(
    path: str | os.PathLike | dict, label: str | None = None
) -> tuple[EfficientDet, dict]:
    """Rebuild a model from our checkpoint (a path, or the dict read from the file ``label``
    names in messages); returns (model in eval mode, checkpoint dict)."""
    ckpt = read_checkpoint(path) if not isinstance(path, dict) else path
    label = label or (os.fspath(path) if not isinstance(path, dict) else "checkpoint")
    model = EfficientDet(validate_checkpoint(ckpt, label))
    load_weights(model, ckpt, source="efficientdet", name=label)
    return model.eval(), ckpt
