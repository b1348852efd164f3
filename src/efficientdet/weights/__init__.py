"""Load weights from the layouts users hold: ours, effdet's, EfficientNet-PyTorch's, google/automl's.

``load_weights`` never loads part of a checkpoint in silence: the only keys it skips are the
class prediction layer when the class count differs (fine-tuning), and a classifier's head
when loading it as a detection backbone, and it says so. Anything else that does not match
raises ``WeightsError`` counting the missing, unexpected and mismatched keys.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
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


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` with one-line errors for a bad path or an unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise WeightsError(
            f"{path}: refused to unpickle code from this file ({first}); re-save it as a plain state_dict "
            "(torch.save(model.state_dict(), path))"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:  # OSError: truncated zip archive
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__}); is the file complete?") from None


def detect_source(obj: dict) -> str:
    if isinstance(obj, dict) and obj.get("format") == "efficientdet":
        return "efficientdet"
    state = unwrap_state_dict(obj)
    return "efficientnet-pytorch" if is_efficientnet_pytorch(state) else "effdet"


def load_weights(model: nn.Module, weights, source: str = "auto", *, name: str | None = None) -> LoadReport:
    """Load ``weights`` (a path or a dict) into ``model`` (an EfficientDet or an EfficientNet).

    ``source``: "auto" (detect), "efficientdet" (our checkpoint), "effdet" (rwightman's files or any
    state_dict in our layout), "efficientnet-pytorch" (lukemelas layout; into an EfficientNet, or
    into an EfficientDet's backbone), "automl" (a google/automl TF checkpoint or Keras .h5 file, or
    a dict {official variable name: array}; never detected, see ``weights/automl.py``).
    """
    if source not in SOURCES:
        raise WeightsError(f"source={source!r}: choose one of {', '.join(SOURCES)}")
    label = name or (os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else "state_dict")
    if source == "automl":
        return _load_automl(model, weights, label)
    obj = read_checkpoint(weights) if isinstance(weights, (str, os.PathLike)) else weights
    if not isinstance(obj, dict):
        raise WeightsError(f"{label}: expected a dict of tensors, got {type(obj).__name__}")
    if source == "auto":
        source = detect_source(obj)
    if source == "efficientdet":
        if obj.get("format") != "efficientdet":
            raise WeightsError(f"{label}: not an efficientdet checkpoint (no 'format': 'efficientdet'); use source='effdet' for plain state_dicts")
        state = obj["model"]
    else:
        state = unwrap_state_dict(obj)
    if not state:
        raise WeightsError(f"{label}: holds no tensors; is it a weights file?")

    target = model
    backbone = getattr(model, "backbone", None)
    if source == "efficientnet-pytorch":
        target = backbone if backbone is not None else model
        state = from_efficientnet_pytorch(state, target)
    elif backbone is not None and not any(k.startswith(("backbone.", "fpn.", "class_net.", "box_net.")) for k in state):
        target = backbone  # a classifier checkpoint in our/timm layout loaded as the detection backbone
    report = _load_matching(target, state, label, source)
    if target is not model:
        report.notes.append("loaded into the backbone only")
    for note in report.notes:
        log.warning("%s: %s", label, note)
    return report


def _load_automl(model: nn.Module, weights, label: str) -> LoadReport:
    """source="automl": read (TensorFlow) and map by name (``weights/automl.py``), then load as any other."""
    from .automl import from_automl, read_automl_checkpoint

    variables, notes = read_automl_checkpoint(weights) if isinstance(weights, (str, os.PathLike)) else (weights, [])
    state, unexpected, ignored = from_automl(variables, model)
    if not state:
        raise WeightsError(f"{label}: no google/automl EfficientDet variables for this model; fix: is it a google/automl checkpoint?")
    report = _load_matching(model, {**state, **{n: torch.zeros(0) for n in unexpected}}, label, "automl")
    if ignored:
        notes.append(f"ignored {ignored} variables that are not network weights (optimizer slots, step counters)")
    report.notes = notes + report.notes
    for note in report.notes:
        log.warning("%s: %s", label, note)
    return report


def _load_matching(module: nn.Module, state: dict[str, torch.Tensor], label: str, source: str) -> LoadReport:
    expected = module.state_dict()
    features_only = getattr(module, "features_only", False)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected, mismatched, skipped, ignored = [], [], [], []
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
            f"{len(mismatched)} mismatched keys, e.g. {', '.join(examples)}); is it for another model or image layout?"
        )
    module.load_state_dict(to_load, strict=False)
    report = LoadReport(source=source, loaded=len(to_load), skipped=skipped)
    if skipped:
        shape = tuple(state[CLASS_HEAD_KEYS[1]].shape) if CLASS_HEAD_KEYS[1] in state else "?"
        report.notes.append(
            f"skipped the class prediction layer ({', '.join(skipped)}): checkpoint has {shape} outputs, "
            f"model has {tuple(expected[CLASS_HEAD_KEYS[1]].shape)}; it starts from the prior"
        )
    if ignored:
        report.notes.append(f"ignored {len(ignored)} classifier-head keys (conv_head, bn2, classifier) not used by a detection backbone")
    return report
