"""Optional PyTorch Lightning adapter (``pip install 'efficientdet[lightning]'``).

    from efficientdet.engine.config import TrainConfig
    from efficientdet.engine.lightning import EfficientDetDataModule, EfficientDetModule
    import lightning as L

    cfg = TrainConfig(data="data.yaml", model="lite0", backbone_weights="imagenet", image_size=320)
    dm = EfficientDetDataModule(cfg)
    module = EfficientDetModule(cfg, dm.class_names, dm.category_ids)
    L.Trainer(**lightning_trainer_kwargs(cfg)).fit(module, dm)
    module.export_checkpoint("model.pt")   # our format: efficientdet.factory.load_model(...)

The TrainConfig is the one source of truth, as for ``efficientdet train``: every option the
trainer honours is honoured here. :func:`lightning_trainer_kwargs` gives the Trainer arguments
it implies (``epochs`` -> ``max_epochs``, ``val_interval`` -> ``check_val_every_n_epoch``,
``amp`` -> ``precision``), and a Trainer that disagrees is refused with one line (ConfigError)
when fitting starts, so nothing is silently ignored; so is one that ends the run or its epochs
early, which the lr schedule over ``epochs`` whole epochs cannot follow (``max_steps``,
``max_time``, ``limit_train_batches`` other than 1.0), one that validates on part of the split
(``limit_val_batches`` other than 1.0 or 0) or inside epochs (``val_check_interval`` other than 1.0: ``patience`` would count
validations), with ``patience`` one whose ``min_steps`` or ``min_epochs`` above 1 holds off the
early stop, and one not on ``device`` when that is set (None or ``"auto"``: the Trainer's choice; a
``fast_dev_run`` smoke test is only checked for that and ``amp``). Pass the Trainer anything else
(devices, callbacks, loggers, ``accumulate_grad_batches``); the memory guard checks the device it
runs on. The module itself adds an EarlyStopping on ``val/mAP`` for ``patience`` (counted in
epochs, as the trainer's), validates after the last epoch too, clips at ``clip_grad`` (unless the
Trainer's ``gradient_clip_val`` says otherwise), scales the default lr with the images per
optimizer step (batch x processes x ``accumulate_grad_batches``), and stops the run with
:class:`efficientdet.errors.TrainingDiverged` at the first non-finite loss or gradient norm
(decided over all ranks, so DDP processes stop together; the step is not applied, the BatchNorm
statistics its forward passes moved included: what is saved or exported after the stop is the last
good step). build_model's notes go to Lightning's log and its warnings to ``warnings``.

The module builds through :mod:`efficientdet.engine.builders` (model, data, loss, optimizer
and warm-up + cosine schedule stepped per optimizer step, ModelEMA, postprocess + COCO metrics);
Lightning runs the loop, devices, precision and logging. Under DDP the losses are normalised by the
positive anchors of all ranks, as the trainer's (:func:`.distributed.normalize_over_ranks`), so
N processes of batch B take the step of one process of batch N x B. Logged: ``train/loss``,
``train/class_loss``, ``train/box_loss``, ``val/mAP``, ``val/AP50`` (COCO, on the EMA weights
when EMA is on).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import cast

import torch

try:
    import lightning as L
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "efficientdet.engine.lightning needs Lightning: pip install 'efficientdet[lightning]'"
    ) from exc

from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..config import NMSConfig
from ..detection.loss import LOSS_KEYS
from ..errors import ConfigError, TrainingDiverged
from ..nn.model import EfficientDet
from ..runtime import resolve_device
from . import distributed as dist_utils
from .builders import (
    amp_dtype_for,
    build_loss,
    build_model,
    build_optimization,
    build_train_dataset,
    check_train_memory,
    has_boxes,
    load_train_val,
    resolve_model_config,
    set_train_mode,
    use_channels_last,
)
from .config import TrainConfig
from .ema import ModelEMA

# TrainConfig.amp -> the Lightning precision that runs it (autocast; the loss in float32)
PRECISION_OF_AMP = {"none": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def _as_config(cfg) -> TrainConfig:
    return cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(dict(cfg))


def lightning_trainer_kwargs(cfg: TrainConfig | dict) -> dict:
    """The ``lightning.Trainer`` arguments ``cfg`` implies: ``max_epochs`` (``epochs``),
    ``check_val_every_n_epoch`` (``val_interval``), ``precision`` (``amp``)."""
    cfg = _as_config(cfg)
    return {
        "max_epochs": cfg.epochs,
        "check_val_every_n_epoch": cfg.val_interval,
        "precision": PRECISION_OF_AMP[cfg.amp],
    }


# why a Trainer option is refused, by the TrainConfig field whose meaning it would change
_WHY_REFUSED = {
    "epochs": "a run is `epochs` whole epochs, which its lr schedule spans",
    "val_interval": "validation comes every `val_interval` epochs, which `patience` counts",
    "patience": "`patience` stops the run when `train` would; a Trainer minimum holds that off",
    "device": "`train` runs where `device` says",
    "val_data": "`val/mAP` is the whole validation split's, as in `train`",
}
# how to change the config instead, where "set TrainConfig FIELD to what you want" does not fit
_CONFIG_FIX = {
    "device": "leave TrainConfig device unset",
    "val_data": "give a smaller TrainConfig val_data split",
}


def _check_trainer(cfg: TrainConfig, trainer) -> None:
    """Refuse a Trainer that would run ``cfg`` otherwise than it says (one line: the option,
    both values, the fix): other epochs, validations, precision or device than ``cfg``
    implies, a limit that ends the run or its epochs early, which the lr schedule (warm-up +
    cosine over ``epochs`` whole passes over the training set) cannot follow, validation inside
    epochs, or (with ``patience``) a minimum that holds off the early stop."""
    root = trainer.strategy.root_device
    amp_dtype_for(cfg.amp, root)  # fp16 needs CUDA, as in the trainer
    have = {
        "max_epochs": trainer.max_epochs,
        "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
        "precision": trainer.precision,
    }
    fields = {"max_epochs": "epochs", "check_val_every_n_epoch": "val_interval", "precision": "amp"}
    # (TrainConfig field, the Trainer it needs, the Trainer's, met, how to fix the Trainer)
    checks: list[tuple[str, str, str, bool, str]] = [
        (fields[arg], f"{arg}={want!r}", f"{arg}={have[arg]!r}", have[arg] == want, "")
        for arg, want in lightning_trainer_kwargs(cfg).items()
    ]
    # max_time is a Timer callback; a user's Timer with a duration stops the run the same way
    timers = [cb.time_remaining() for cb in trainer.callbacks if isinstance(cb, Timer)]
    seconds = next((t for t in timers if t is not None), None)
    # overfit_batches (a Lightning debugging option) sets limit_train_batches: name the one given
    limit_arg = "overfit_batches" if trainer.overfit_batches else "limit_train_batches"
    limit, min_epochs = getattr(trainer, limit_arg), trainer.min_epochs or 0
    interval = getattr(trainer, "val_check_interval", None)  # unset when time-based
    val_limit = trainer.limit_val_batches
    min_steps = trainer.min_steps or 0  # None or -1: none
    limits = [  # (field, the Trainer option to drop, the Trainer the field needs, its, met)
        (
            "epochs",
            "max_steps",
            "max_steps=-1",
            f"max_steps={trainer.max_steps!r}",
            trainer.max_steps == -1,
        ),
        (
            "epochs",
            "max_time (or a Timer with a duration)",
            "max_time=None",
            f"a time limit of {seconds} s",
            seconds is None,
        ),
        (
            "epochs",
            limit_arg,
            "limit_train_batches=1.0",
            f"{limit_arg}={limit!r}",
            limit_arg == "limit_train_batches" and isinstance(limit, float) and limit == 1.0,
        ),
        (
            "val_data",
            "limit_val_batches",
            "limit_val_batches=1.0 (or 0: no validation)",
            f"limit_val_batches={val_limit!r}",
            val_limit == 0 or (isinstance(val_limit, float) and val_limit == 1.0),
        ),
        (
            "val_interval",
            "val_check_interval",
            "val_check_interval=1.0",
            "a time-based val_check_interval"
            if interval is None
            else f"val_check_interval={interval!r}",
            isinstance(interval, float) and interval == 1.0,
        ),
        # with patience: Lightning holds its stop off until these are met (the earliest stop,
        # after epoch 2, is not held off by min_epochs<=1)
        (
            "patience",
            "min_steps",
            "min_steps=None",
            f"min_steps={min_steps!r}",
            not cfg.patience or min_steps <= 0,
        ),
        (
            "patience",
            "min_epochs",
            "min_epochs<=1",
            f"min_epochs={min_epochs!r}",
            not cfg.patience or min_epochs <= 1,
        ),
    ]
    checks += [
        (field, need, has, met, f" without {drop}") for field, drop, need, has, met in limits
    ]
    if trainer.fast_dev_run:  # Lightning's smoke test: one epoch of n batches, no schedule kept
        checks = [check for check in checks if check[0] == "amp"]
    if cfg.device is not None and str(cfg.device) != "auto":  # None, auto: the Trainer's choice
        want = resolve_device(cfg.device, trainer.local_rank)
        same = want.type == root.type and (want.type == "cpu" or want.index == root.index)
        # the root device is per process: decided over all ranks, so every rank stops together
        elsewhere = int(dist_utils.all_reduce_sum(torch.tensor([float(not same)], device=root)))
        world = trainer.world_size
        of = f" ({elsewhere} of {world} processes elsewhere)" if world > 1 else ""
        checks.append(
            (
                "device",
                f"accelerator/devices on {want}",
                f"root device {root}{of}",
                not elsewhere,
                f" with accelerator/devices on {want}",
            )
        )
    for field, need, has, met, trainer_fix in checks:
        if not met:
            why = f" ({_WHY_REFUSED[field]})" if trainer_fix else ""
            cfg_fix = _CONFIG_FIX.get(field, f"set TrainConfig {field} to what you want")
            raise ConfigError(
                f"TrainConfig {field}={getattr(cfg, field)!r} needs Trainer({need}){why}, but the "
                f"Trainer has {has}; fix: L.Trainer(**lightning_trainer_kwargs(cfg), ...)"
                f"{trainer_fix}, or {cfg_fix}"
            )


def _log_build_note(message: str) -> None:
    """build_model's lines, as the trainer shows them: warnings as warnings, notes in the log."""
    if message.startswith("warning: "):
        rank_zero_warn(message.removeprefix("warning: "))
    else:
        rank_zero_info(message)


class EfficientDetDataModule(L.LightningDataModule):
    """Train/val loaders of a TrainConfig's dataset (annotations are read when constructed).

    Batches: ``(images (B, 3, H, W) float32 normalised, [target dict, ...])`` as
    :func:`efficientdet.data.collate` makes them."""

    def __init__(self, cfg: TrainConfig | dict) -> None:
        super().__init__()
        self.cfg = _as_config(cfg)
        self.train_data, self.val_data = load_train_val(self.cfg)
        self.model_cfg = resolve_model_config(self.cfg, self.train_data.num_classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.train_data.class_names)

    @property
    def category_ids(self) -> list[int]:
        return list(self.train_data.category_ids)

    def train_dataloader(self):
        from ..data import create_loader

        ds = build_train_dataset(self.cfg, self.train_data, self.model_cfg)
        return create_loader(
            ds,
            self.cfg.batch_size,
            shuffle=True,
            num_workers=self.cfg.workers,
            seed=self.cfg.seed,
            drop_last=len(ds) >= self.cfg.batch_size,
        )

    def val_dataloader(self):
        """The val loader; none (validation skipped, as the trainer does) when the split has no
        boxes to score (EfficientDetModule says so)."""
        from ..data import DetectionDataset, create_loader

        if not has_boxes(self.val_data):
            return []
        m = self.model_cfg
        return create_loader(
            DetectionDataset(self.val_data, m.image_size, m.mean, m.std, train=False),
            self.cfg.eval_batch_size or self.cfg.batch_size,
            shuffle=False,
            num_workers=self.cfg.workers,
        )


class EfficientDetModule(L.LightningModule):
    """An EfficientDet with its loss, optimizer, schedule and EMA, for ``lightning.Trainer``.

    ``forward(images)`` returns the raw per-level outputs; ``val_data`` (a DetectionData) is
    the ground truth for ``val/mAP`` (default: the datamodule's ``val_data``). A split with no
    boxes (no annotations: an image_info JSON, a folder) has no mAP: as in the trainer, one
    warning says so and nothing is computed or logged (no -1 for a ModelCheckpoint to rank)."""

    def __init__(
        self,
        cfg: TrainConfig | dict,
        class_names: list[str],
        category_ids: list[int] | None = None,
        val_data=None,
    ) -> None:
        super().__init__()
        self.cfg = _as_config(cfg)
        self.class_names = list(class_names)
        self.category_ids = (
            list(category_ids) if category_ids is not None else list(range(len(self.class_names)))
        )
        self.save_hyperparameters(
            {
                "cfg": self.cfg.to_dict(),
                "class_names": self.class_names,
                "category_ids": self.category_ids,
            }
        )
        self.model = build_model(  # the memory guard runs at setup, on the Trainer's device
            self.cfg,
            len(self.class_names),
            class_names=self.class_names,
            memory_guard=False,
            log=_log_build_note,
        )
        self.loss_fn = build_loss(self.cfg, self.model.config)
        self.val_data = val_data
        self.ema: ModelEMA | None = None
        self._detections: list[dict] = []
        self._scored = True  # the val split has boxes to score (decided in setup)
        self._kept_buffers: list[torch.Tensor] = []  # as the last applied step left them
        self._batch_idx = 0  # the training batch running (for TrainingDiverged's message)

    # -------------------------------------------------------------- training

    def forward(self, images: torch.Tensor):
        return self.model(images)

    def on_fit_start(self) -> None:
        self.channels_last = use_channels_last(self.cfg.channels_last, self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._kept_buffers = [b.detach().clone() for b in self.model.buffers()]
        if self.cfg.ema and self.ema is None:
            self.ema = ModelEMA(self.model, self.cfg.ema_decay, self.cfg.ema_warmup_steps)
            ema_state = getattr(self, "_ema_state", None)
            if ema_state is not None:  # resumed from a Lightning checkpoint
                self.ema.load_state_dict(ema_state)

    def configure_callbacks(self):
        """EarlyStopping on ``val/mAP`` for ``cfg.patience``: the trainer stops at the first
        validation ``patience`` epochs or more after the best; validations come every
        ``val_interval`` epochs, so that is ``ceil(patience / val_interval)`` validations
        without a better mAP. None with no patience or no mAP (a split without boxes)."""
        data = self._val_data()
        if not self.cfg.patience or (data is not None and not has_boxes(data)):
            return []
        patience = math.ceil(self.cfg.patience / self.cfg.val_interval)
        return [
            EarlyStopping("val/mAP", mode="max", patience=patience, check_on_train_epoch_end=False)
        ]

    def on_train_epoch_start(self) -> None:
        set_train_mode(self.model, self.cfg.freeze, self.cfg.freeze_bn)
        # validated every val_interval epochs and after the last, as in the trainer
        last = self.current_epoch + 1 == self.trainer.max_epochs
        self.trainer.check_val_every_n_epoch = 1 if last else self.cfg.val_interval

    def on_train_end(self) -> None:
        self.trainer.check_val_every_n_epoch = self.cfg.val_interval  # as it was given

    def _targets(self, targets):
        return [
            {"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)}
            for t in targets
        ]

    def training_step(self, batch, batch_idx):
        images, targets = batch
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        class_out, box_out = self.model(images)
        losses = self.loss_fn(
            class_out, box_out, self._targets(targets), self.model.config.image_size
        )
        # under DDP: normalised by all ranks' positives, as the trainer does (one big batch)
        losses = dist_utils.normalize_over_ranks(losses)
        self._stop_if_not_finite(losses["loss"], batch_idx)
        n = images.shape[0]
        for key in LOSS_KEYS:
            self.log(
                f"train/{key}",
                losses[key].detach(),
                prog_bar=key == "loss",
                batch_size=n,
                sync_dist=True,
            )
        return losses["loss"]

    def _stop_if_not_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop when the loss of any rank is not finite: the flag is summed over ranks first, so
        every rank raises at the same step (none waits in backward)."""
        self._batch_idx = batch_idx
        bad = dist_utils.all_reduce_sum((~torch.isfinite(loss.detach())).float().reshape(1))
        if not bad.item():
            return
        world = self.trainer.world_size
        where = f" on {int(bad.item())} of {world} processes" if world > 1 else ""
        self._stop(f"non-finite training loss{where} ({float(loss.detach()):g} here)")

    def on_before_optimizer_step(self, optimizer) -> None:
        """Stop before a step whose gradient norm is not finite (its clipped update would be
        NaN), as the trainer refuses it; with fp16 the GradScaler skips such a step itself.
        Under DDP the gradients are already averaged over ranks: every rank stops together."""
        if self.cfg.amp == "fp16":
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if not bool(torch.isfinite(norm)):
            self._stop(f"non-finite gradient norm ({float(norm):g})")

    def _stop(self, what: str) -> None:
        """Raise TrainingDiverged for a step not applied. The buffers its forward passes moved
        (BatchNorm statistics, NaN after NaN activations) are put back first, as the trainer's
        rollback does, so the model saved or exported afterwards is the last good step's."""
        torch._foreach_copy_(list(self.model.buffers()), self._kept_buffers)
        raise TrainingDiverged(
            f"epoch {self.current_epoch + 1} batch {self._batch_idx + 1}: {what}; training "
            "stopped before applying it; fix: lower lr (e.g. a tenth), keep clip_grad on, use "
            "amp='none', or check the data (efficientdet data check)"
        )

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # the buffers a stopped step's forward passes move (all its accumulated batches') go
        # back to these
        torch._foreach_copy_(self._kept_buffers, list(self.model.buffers()))
        if self.ema is not None:  # once per optimizer step (not per accumulated batch)
            self.ema.update(self.model)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip the gradient norm at ``cfg.clip_grad`` (0: off), as the trainer does, unless the
        Trainer's ``gradient_clip_val`` / ``gradient_clip_algorithm`` say otherwise."""
        if gradient_clip_val is None:
            gradient_clip_val = self.cfg.clip_grad or None
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        cfg = self.cfg
        trainer = self.trainer
        total = max(1, int(trainer.estimated_stepping_batches))  # optimizer steps
        steps_per_epoch = max(1, total // max(1, trainer.max_epochs or 1))
        images_per_step = cfg.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        _, optimizer, scheduler, _ = build_optimization(
            cfg, self.model, steps_per_epoch, total, images_per_step
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["efficientdet_ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._ema_state = checkpoint.get("efficientdet_ema")

    # -------------------------------------------------------------- validation

    def eval_model(self) -> EfficientDet:
        """The model validated: the EMA copy when EMA is on, else the trained one."""
        return cast("EfficientDet", self.ema.module if self.ema is not None else self.model)

    def _val_data(self):
        """The ground truth of the val split: ``val_data`` or the datamodule's (None: neither)."""
        if self.val_data is not None:
            return self.val_data
        return getattr(getattr(self._trainer, "datamodule", None), "val_data", None)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            _check_trainer(self.cfg, self.trainer)
            check_train_memory(self.cfg, self.model, self.trainer.strategy.root_device)
        data = self._val_data()
        self._scored = data is None or has_boxes(data)
        if self._scored or stage not in ("fit", "validate"):
            return
        name = data.source or "the validation split"
        why = "no boxes" + ("" if data.annotated else " (no annotations)")
        callbacks = self.trainer.callbacks if stage == "fit" else []  # type: ignore[attr-defined]
        for callback in callbacks:  # one ranking epochs by a val metric has nothing to rank
            monitor = getattr(callback, "monitor", None)
            if isinstance(monitor, str) and monitor.startswith("val/"):
                raise ConfigError(
                    f"{name}: {why}, so no {monitor} for "
                    f"{type(callback).__name__}(monitor={monitor!r}) to rank epochs by; fix: give "
                    "an annotated validation split, or monitor nothing (keep the last weights)"
                )
        rank_zero_warn(
            f"{name}: the validation split has {why}, so there is no mAP to "
            "choose the best epoch by: validation is skipped and val/mAP is not logged; keep the "
            "last weights"
        )

    def on_validation_epoch_start(self) -> None:
        self._detections = []

    def validation_step(self, batch, batch_idx) -> None:
        from .evaluator import batch_detections_to_coco

        if not self._scored:
            return
        images, targets = batch
        model = self.eval_model()
        model.eval()
        cfg = model.config
        class_out, box_out = model(images)
        anchors = self.loss_fn.anchors(
            cfg.image_size, device=images.device
        )  # cached per size and device
        for _, coco_dets in batch_detections_to_coco(
            class_out, box_out, targets, anchors, NMSConfig(), cfg.image_size, self.category_ids
        ):
            self._detections.extend(coco_dets)

    def on_validation_epoch_end(self) -> None:
        from ..data.coco import records_to_coco
        from .evaluator import coco_metrics

        data = self._val_data()
        if data is None or not self._scored:
            return
        detections = [d for part in dist_utils.all_gather_object(self._detections) for d in part]
        if self.trainer.sanity_checking:
            return
        seen: dict[tuple, dict] = {}
        for d in detections:  # a DistributedSampler may repeat images to even out the shards
            seen.setdefault((d["image_id"], d["category_id"], tuple(d["bbox"]), d["score"]), d)
        stats, _ = coco_metrics(records_to_coco(data), list(seen.values()))
        self.log("val/mAP", stats["mAP"], prog_bar=True, rank_zero_only=True)
        self.log("val/AP50", stats["AP50"], rank_zero_only=True)

    # -------------------------------------------------------------- export

    def export_checkpoint(self, path: str | Path) -> Path:
        """Write the (EMA) weights in the library's checkpoint format (``factory.load_model``)."""
        from ..weights.checkpoint import save_model_dict, write_checkpoint

        payload = save_model_dict(self.eval_model(), self.class_names, self.category_ids)
        payload["args"] = dataclasses.asdict(self.cfg)
        trainer = self._trainer
        payload["metrics"] = (
            {k: float(v) for k, v in trainer.callback_metrics.items()}
            if trainer is not None
            else {}
        )
        write_checkpoint(path, payload)
        return Path(path)
