"""Load weights from the layouts users hold: ours, effdet's, EfficientNet-PyTorch's, google/automl's.

``load_weights`` never loads part of a checkpoint in silence: the only keys it skips are the
class prediction layer when the classes differ (fine-tuning), and a classifier's head
when loading it as a detection backbone, and it says so. Anything else that does not match
raises ``WeightsError`` counting the missing, unexpected and mismatched keys. Our checkpoint
must also agree with the model on image size and anchors (it carries them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import WeightsError
from .checkpoint import is_our_checkpoint, model_state, read_checkpoint
from .convert import from_efficientnet_pytorch, is_efficientnet_pytorch, unwrap_state_dict

log = logging.getLogger("efficientdet")

SOURCES = ("auto", "efficientdet", "effdet", "efficientnet-pytorch", "automl")
CLASS_HEAD_KEYS = ("class_net.predict.conv_pw.weight", "class_net.predict.conv_pw.bias")
CLASSIFIER_PREFIXES = ("conv_head.", "bn2.", "classifier.")


@dataclass
class LoadReport:
    """What ``load_weights`` did: keys loaded, and keys skipped on purpose with the reason."""

    source: str
    loaded: int
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def detect_source(obj: dict) -> str:
    if is_our_checkpoint(obj):
        return "efficientdet"
    state = unwrap_state_dict(obj)
    return "efficientnet-pytorch" if is_efficientnet_pytorch(state) else "effdet"


def load_weights(
    model: nn.Module,
    weights,
    source: str = "auto",
    *,
    name: str | None = None,
    class_names: list[str] | None = None,
) -> LoadReport:
    """Load ``weights`` (a path or a dict) into ``model`` (an EfficientDet or an EfficientNet).

    ``source``: "auto" (detect), "efficientdet" (our checkpoint), "effdet" (rwightman's files or any
    state_dict in our layout), "efficientnet-pytorch" (lukemelas layout; into an EfficientNet, or
    into an EfficientDet's backbone), "automl" (a google/automl TF checkpoint or Keras .h5 file, or
    a dict {official variable name: array}; never detected, see ``weights/automl.py``).

    Our checkpoint into an EfficientDet: its image size and anchors must be the model's
    (WeightsError naming both otherwise). ``class_names`` (the model's classes, in order): the
    checkpoint's class layer is reordered to them when they are its names in another order, and
    left at the prior (a new class head, with a note) when the names differ.
    """
    if source not in SOURCES:
        raise WeightsError(f"source={source!r}: choose one of {', '.join(SOURCES)}")
    label = name or (
        os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else "state_dict"
    )
    if source == "automl":
        return _load_automl(model, weights, label)
    obj = read_checkpoint(weights) if isinstance(weights, (str, os.PathLike)) else weights
    if not isinstance(obj, dict):
        raise WeightsError(f"{label}: expected a dict of tensors, got {type(obj).__name__}")
    if source == "auto":
        source = detect_source(obj)
    if source == "efficientdet":
        if not is_our_checkpoint(obj):
            raise WeightsError(
                f"{label}: not an efficientdet checkpoint (no 'format': 'efficientdet'); use source='effdet' for plain state_dicts"
            )
        state = model_state(obj, label)
        config = getattr(model, "config", None)
        if config is not None and "config" in obj:
            _check_same_layout(obj["config"], config, label)
    else:
        state = unwrap_state_dict(obj)
    if not state:
        raise WeightsError(f"{label}: holds no tensors; is it a weights file?")

    target = model
    backbone = getattr(model, "backbone", None)
    if source == "efficientnet-pytorch":
        target = backbone if backbone is not None else model
        state = from_efficientnet_pytorch(state, target)
    elif backbone is not None and not any(
        k.startswith(("backbone.", "fpn.", "class_net.", "box_net.")) for k in state
    ):
        target = (
            backbone  # a classifier checkpoint in our/timm layout loaded as the detection backbone
        )
    notes: list[str] = []
    skip: tuple[str, ...] | set[str] = ()
    if source == "efficientdet" and class_names is not None and obj.get("class_names") is not None:
        state, notes, skip = _map_class_head(
            state, list(obj["class_names"]), list(class_names), label
        )
    report = _load_matching(target, state, label, source, skip=skip)
    report.notes[:0] = notes
    if target is not model:
        report.notes.append("loaded into the backbone only")
    for note in report.notes:
        log.warning("%s: %s", label, note)
    return report


def _check_same_layout(saved: dict, config, label: str) -> None:
    """Our checkpoint's image size and anchors (a ``config_to_dict``) against a model's ModelConfig."""
    saved_anchors = saved.get("anchors", {})
    pairs = [
        ("image_size", tuple(saved.get("image_size", config.image_size)), tuple(config.image_size))
    ]
    for key, value in saved_anchors.items():
        mine = getattr(config.anchors, key)
        theirs = (
            tuple(tuple(float(v) for v in r) for r in value) if key == "aspect_ratios" else value
        )
        pairs.append((key, theirs, mine))
    for key, theirs, mine in pairs:
        if theirs != mine:
            raise WeightsError(
                f"{label}: the checkpoint's {key} {theirs} differs from this model's {mine}; fix: build the model "
                "from the checkpoint, which carries its image size and anchors: create_model(weights=PATH) or load_model(PATH)"
            )


def _map_class_head(
    state: dict, saved: list[str], names: list[str], label: str
) -> tuple[dict, list[str], tuple]:
    """Our class layer (output channel ``a * K + k``: anchor a, class k) for the classes ``names``:
    (state, notes, keys to skip). Same names in another order: rows permuted; other names: skipped."""
    if saved == names:
        return state, [], ()
    if sorted(saved) != sorted(names) or len(set(names)) != len(names):
        note = (
            f"classes {names} differ from the checkpoint's {saved}: the class prediction layer starts anew "
            "(a new class head is trained)"
        )
        return state, [note], CLASS_HEAD_KEYS
    order = torch.tensor([saved.index(n) for n in names])
    state = dict(state)
    for key in CLASS_HEAD_KEYS:
        value = state[key]
        per_anchor = value.reshape(-1, len(saved), *value.shape[1:])  # (A*K, ...) -> (A, K, ...)
        state[key] = per_anchor[:, order].reshape(value.shape)
    return state, [f"classes mapped by name from the checkpoint's order {saved} to {names}"], ()


def _load_automl(model: nn.Module, weights, label: str) -> LoadReport:
    """source="automl": read (TensorFlow) and map by name (``weights/automl.py``), then load as any other."""
    from .automl import from_automl, read_automl_checkpoint

    variables, notes = (
        read_automl_checkpoint(weights)
        if isinstance(weights, (str, os.PathLike))
        else (weights, [])
    )
    state, unexpected, ignored = from_automl(variables, model)
    if not state:
        raise WeightsError(
            f"{label}: no google/automl EfficientDet variables for this model; fix: is it a google/automl checkpoint?"
        )
    report = _load_matching(
        model, {**state, **{n: torch.zeros(0) for n in unexpected}}, label, "automl"
    )
    if ignored:
        notes.append(
            f"ignored {ignored} variables that are not network weights (optimizer slots, step counters)"
        )
    report.notes = notes + report.notes
    for note in report.notes:
        log.warning("%s: %s", label, note)
    return report


def _load_matching(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    label: str,
    source: str,
    skip: Collection[str] = (),
) -> LoadReport:
    """Load the keys of ``state`` that fit ``module``; ``skip``: keys left as they are on purpose."""
    expected = module.state_dict()
    features_only = getattr(module, "features_only", False)
    state = {k: v for k, v in state.items() if k not in skip}
    missing = [
        k
        for k in expected
        if k not in state and k not in skip and not k.endswith("num_batches_tracked")
    ]
    unexpected: list[str] = []
    mismatched: list[str] = []
    skipped: list[str] = []
    ignored: list[str] = []
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            if features_only and key.startswith(CLASSIFIER_PREFIXES):
                ignored.append(key)
            elif not key.endswith("num_batches_tracked"):
                unexpected.append(key)
            continue
        if value.shape != expected[key].shape:
            (skipped if key in CLASS_HEAD_KEYS else mismatched).append(key)
            continue
        to_load[key] = value.to(expected[key].dtype)
    if missing or unexpected or mismatched:
        examples = (missing + unexpected + mismatched)[:3]
        raise WeightsError(
            f"{label}: does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} mismatched keys, e.g. {', '.join(examples)}); fix: give the model these weights were made for "
            "(--model), or a checkpoint of this model"
        )
    module.load_state_dict(to_load, strict=False)
    report = LoadReport(
        source=source, loaded=len(to_load), skipped=skipped + [k for k in skip if k in expected]
    )
    if skipped:
        shape = tuple(state[CLASS_HEAD_KEYS[1]].shape) if CLASS_HEAD_KEYS[1] in state else "?"
        report.notes.append(
            f"skipped the class prediction layer ({', '.join(skipped)}): checkpoint has {shape} outputs, "
            f"model has {tuple(expected[CLASS_HEAD_KEYS[1]].shape)}; it starts from the prior"
        )
    if ignored:
        report.notes.append(
            f"ignored {len(ignored)} classifier-head keys (conv_head, bn2, classifier) not used by a detection backbone"
        )
    return report
