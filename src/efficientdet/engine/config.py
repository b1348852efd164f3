"""Training configuration: :class:`TrainConfig` (the one source of truth for every training
option: ``efficientdet train``'s flags are checked against its fields) and :class:`TrainResult`.

A TrainConfig holds plain types only (saved as ``args.yaml`` and in checkpoints) and is
validated when built: a bad value raises a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import LossConfig, resolve_aspect_ratios
from ..errors import ConfigError
from .recipes import DEFAULT_RECIPE, FROM_RECIPE, recipe_table

DEFAULT_MODEL = "efficientdet_d0"
OPTIMIZER_NAMES = ("sgd", "adamw")
AMP_CHOICES = ("none", "bf16", "fp16")
FREEZE_CHOICES = ("none", "backbone", "backbone+fpn")
# Options that may change when resuming (where/how it runs); taken from the resuming config
# when they differ from the TrainConfig defaults, else from the run's saved args. Keep the
# same ``workers`` for a bit-exact continuation (the augmentation streams are per worker).
RESUME_OVERRIDABLE = ("workers", "device", "progress", "plots")
# --logger NAME: the logger callbacks of efficientdet.engine.loggers
LOGGER_NAMES = ("tensorboard", "mlflow")


@dataclass
class TrainConfig:
    """Settings of one training run (all plain types: saved as ``args.yaml`` and in checkpoints).

    Data: ``data`` is a dataset YAML (train/val splits) or a COCO JSON (then ``val_data``, a
    second JSON, is the validation split; without one the training split is used). Model:
    ``model`` a registered name (None: the checkpoint's with ``weights`` = our checkpoint, which
    also sets the image size and anchors; else efficientdet_d0); ``weights`` "coco" | path | None; ``backbone_weights``
    "imagenet" (efficientnet_lite0-lite2) | path | None; ``image_size`` int or [H, W] (model
    default when None); anchor fields override the model's AnchorConfig; ``bn_momentum`` (PyTorch
    convention, model default 0.01 as the official recipe) - 0.1 lets the running statistics of
    the new BiFPN/head batch norms settle within a short run. ``batch_size`` is per
    process. ``lr`` None picks 0.08 * total_batch / 64 for SGD (official scaling) and 1e-3
    for AdamW. ``patience``: stop after that many epochs without a better val mAP (None: never).
    ``max_bad_steps``: divergent steps (each rolled back, halving the learning rate) tolerated
    without healthy progress in between; one more stops the run. ``loggers``: names of
    LOGGER_NAMES (:mod:`efficientdet.engine.loggers`); ``debug_batches`` / ``debug_interval``:
    the debug views (:class:`efficientdet.engine.callbacks.DebugViews`; 0 turns each off).
    ``progress`` False (``--quiet``): no progress bars, and only warnings and the run's last line
    printed (train.log still gets every line; :meth:`efficientdet.engine.loop.Trainer.log`).
    ``recipe`` ("finetune" | "official", :mod:`efficientdet.engine.recipes`) sets every field
    left ``FROM_RECIPE`` when the config is built; a run records the resolved ``lr`` (and the
    model's image size when None) in args.yaml.
    """

    data: str = ""
    model: str | None = (
        None  # None: the model of a --weights checkpoint of ours, else DEFAULT_MODEL
    )
    val_data: str | None = None
    weights: str | None = None
    backbone_weights: str | None = None
    image_size: int | list[int] | None = None
    epochs: int = FROM_RECIPE
    batch_size: int = 8
    lr: float | None = None
    optimizer: str = FROM_RECIPE
    weight_decay: float = FROM_RECIPE
    momentum: float = FROM_RECIPE
    warmup_epochs: float = FROM_RECIPE
    min_lr_ratio: float = FROM_RECIPE
    clip_grad: float = FROM_RECIPE
    ema: bool = FROM_RECIPE
    ema_decay: float = FROM_RECIPE
    ema_warmup_steps: int = FROM_RECIPE
    amp: str = "none"
    channels_last: bool | None = None  # None: on for CPU (1.4x faster there), off elsewhere
    freeze: str = "none"
    anchor_scale: float | None = None
    aspect_ratios: list[list[float]] | None = None
    num_scales: int | None = None
    min_level: int | None = None
    max_level: int | None = None
    bn_momentum: float | None = None
    scale_min: float = FROM_RECIPE
    scale_max: float = FROM_RECIPE
    flip_prob: float = FROM_RECIPE
    box_loss: str = FROM_RECIPE
    assigner: str = FROM_RECIPE
    patience: int | None = None
    val_interval: int = 1
    eval_batch_size: int | None = None
    out: str = "runs/train"
    exist_ok: bool = False
    resume: str | None = None
    grad_checkpointing: bool = False
    seed: int = 0
    workers: int = 2
    device: str | None = None
    max_bad_steps: int = 5
    sync_bn: bool = True
    progress: bool = True
    plots: bool = True
    loggers: list[str] = field(default_factory=list)  # of LOGGER_NAMES, several at once
    debug_batches: int = 2  # first training batches drawn to RUN/debug (0: none)
    debug_interval: int = 5  # predictions vs truth drawn every N epochs (0: never)
    # --- training recipe (engine/recipes.py): ``recipe`` fills every field left FROM_RECIPE
    # (those above too); a value given explicitly wins. Loss settings go to LossConfig.
    recipe: str = DEFAULT_RECIPE
    warmup_lr: float | None = FROM_RECIPE  # lr at warm-up step 0; None: a tenth of the peak
    focal_alpha: float = FROM_RECIPE
    focal_gamma: float = FROM_RECIPE
    label_smoothing: float = FROM_RECIPE
    huber_delta: float = FROM_RECIPE
    box_loss_weight: float = FROM_RECIPE
    freeze_bn: bool = FROM_RECIPE  # every BatchNorm in eval mode (running statistics fixed)

    def __post_init__(self) -> None:
        for name, value in recipe_table(self.recipe).items():
            if getattr(self, name) is FROM_RECIPE:
                setattr(self, name, value)
        self.recipe = self.recipe.lower()
        if isinstance(self.image_size, (tuple, list)):
            self.image_size = [int(v) for v in self.image_size]
        if self.aspect_ratios is not None:
            self.aspect_ratios = [
                list(r) for r in resolve_aspect_ratios(self.aspect_ratios)
            ]  # a set name -> exact pairs
        # (valid?, field, its flag, what is needed, an example value for the fix)
        checks = [
            (self.epochs >= 1, "epochs", "--epochs", "need at least 1", "20"),
            (self.batch_size >= 1, "batch_size", "--batch", "need at least 1", "8"),
            (
                self.optimizer.lower() in OPTIMIZER_NAMES,
                "optimizer",
                "--optimizer",
                f"choose {' or '.join(OPTIMIZER_NAMES)}",
                OPTIMIZER_NAMES[0],
            ),
            (
                self.amp.lower() in AMP_CHOICES,
                "amp",
                "--precision",
                f"choose one of {', '.join(AMP_CHOICES)}",
                "fp32",
            ),
            (
                self.freeze.lower() in FREEZE_CHOICES,
                "freeze",
                "--freeze",
                f"choose one of {', '.join(FREEZE_CHOICES)}",
                "backbone",
            ),
            (self.val_interval >= 1, "val_interval", "--val-interval", "need at least 1", "1"),
            (self.lr is None or self.lr > 0, "lr", "--lr", "need a positive learning rate", "0.08"),
            (
                self.warmup_lr is None or self.warmup_lr > 0,
                "warmup_lr",
                "--warmup-lr",
                "need a positive learning rate",
                "0.008",
            ),
            (self.warmup_epochs >= 0, "warmup_epochs", "--warmup-epochs", "need 0 or more", "1"),
            (
                self.patience is None or self.patience >= 1,
                "patience",
                "--patience",
                "need at least 1 epoch (or leave it out)",
                "10",
            ),
            (self.workers >= 0, "workers", "--workers", "need 0 or more", "4"),
            (
                self.debug_batches >= 0,
                "debug_batches",
                "--debug-batches",
                "need 0 (off) or more",
                "2",
            ),
            (
                self.debug_interval >= 0,
                "debug_interval",
                "--debug-interval",
                "need 0 (off) or more epochs",
                "5",
            ),
            (self.max_bad_steps >= 1, "max_bad_steps", "--max-bad-steps", "need at least 1", "3"),
            (0 <= self.seed < 2**32, "seed", "--seed", "need 0 <= seed < 2**32", "0"),
            (
                self.clip_grad >= 0,
                "clip_grad",
                "--clip-grad",
                "need 0 (off) or a positive norm",
                "10",
            ),
            (
                self.weight_decay is None or self.weight_decay >= 0,
                "weight_decay",
                "--weight-decay",
                "need 0 or more",
                "4e-5",
            ),
            (
                not self.ema or 0 <= self.ema_decay < 1,
                "ema_decay",
                "--ema-decay",
                "need 0 <= decay < 1",
                "0.9998 (0 = off)",
            ),
            (
                self.ema_warmup_steps >= 0,
                "ema_warmup_steps",
                "--ema-warmup",
                "need 0 or more steps",
                "2000",
            ),
        ]
        for ok, name, flag, need, example in checks:
            if not ok:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r}: {need}; fix: e.g. {flag} {example}"
                )
        self.loss_config()  # validates the loss settings
        if isinstance(self.loggers, str):
            self.loggers = [self.loggers]
        self.loggers = [str(name).lower() for name in self.loggers]
        unknown = [name for name in self.loggers if name not in LOGGER_NAMES]
        if unknown:
            raise ConfigError(
                f"logger {unknown[0]!r}: unknown; fix: choose from {', '.join(LOGGER_NAMES)} "
                "(e.g. --logger tensorboard mlflow)"
            )
        self.loggers = list(dict.fromkeys(self.loggers))  # each once, in the given order
        self.optimizer, self.amp, self.freeze = (
            self.optimizer.lower(),
            self.amp.lower(),
            self.freeze.lower(),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def loss_config(self) -> LossConfig:
        """The LossConfig of this run."""
        return LossConfig(
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            label_smoothing=self.label_smoothing,
            box_loss=self.box_loss,
            huber_delta=self.huber_delta,
            box_loss_weight=self.box_loss_weight,
            assigner=self.assigner,
        )

    def model_overrides(self) -> dict:
        """The ModelConfig/AnchorConfig fields this run sets (None = the model's default)."""
        return {
            "image_size": self.image_size,
            "anchor_scale": self.anchor_scale,
            "aspect_ratios": tuple(tuple(r) for r in self.aspect_ratios)
            if self.aspect_ratios
            else None,
            "num_scales": self.num_scales,
            "min_level": self.min_level,
            "max_level": self.max_level,
            "bn_momentum": self.bn_momentum,
        }


@dataclass
class TrainResult:
    """What a run produced. ``stopped``: "completed", "early_stopping" or "interrupted"."""

    run_dir: Path
    epochs_completed: int
    best_map: float
    best_epoch: int
    stopped: str
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    eval_result: Any = None


def cli_option(field: str) -> str:
    """A TrainConfig field as its command-line option (``anchor_scale`` -> ``--anchor-scale``)."""
    return "--" + field.replace("_", "-")
