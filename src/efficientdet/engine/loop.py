"""The training loop: ``Trainer(cfg, callbacks).fit() -> TrainResult``, emitting the events of
:mod:`efficientdet.engine.callbacks` (results.csv, plots, checkpoints and early stopping are
built-in callbacks on them).

The run folder and its files: :mod:`efficientdet.engine.trainer`.
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

import dataclasses
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig, NMSConfig
from ..errors import DataError, TrainingDiverged
from ..run_dirs import make_run_dir
from ..runtime import resolve_device
from . import distributed as dist_utils
from .builders import (
    amp_dtype_for,
    build_loss,
    build_model,
    build_optimization,
    build_train_dataset,
    has_boxes,
    load_train_val,
    print_data_summary,
    set_train_mode,
    use_channels_last,
)
from .callbacks import Events, StepInfo, builtin_callbacks, resume_command
from .config import RESUME_OVERRIDABLE, TrainConfig, TrainResult
from .runlock import RunLock

# predictions drawn in the debug views: score >= predict's default --conf (all of an untrained
# model's low-score boxes would cover the images)
DEBUG_VIEW_CONF = 0.25


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

    ``callbacks``: :class:`~efficientdet.engine.callbacks.Callback` objects (or any object with
    some of its methods), called after the built-ins and the ``cfg.loggers``;
    ``trainer.epoch``/``trainer.step_in_epoch``/``trainer.global_step`` count completed work.
    """

    run_dir: Path  # set by setup()

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> None:
        from .checkpoint import find_checkpoint, load_checkpoint
        from .loggers import create_loggers

        self.resume_ckpt: dict | None = None
        if cfg.resume:
            ckpt_path = find_checkpoint(cfg.resume)

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
        self._log_file: IO[str] | None = None
        self._early_log: list[str] | None = []  # lines printed before the run folder exists
        self._lock: RunLock | None = None
        self._snapshot: dict | None = None
        self._unsaved = False  # steps done since the last commit
        self._stop_reason: str | None = None  # set by stop() (early stopping)
        self.epoch_improved = False  # the epoch just ended has the best val mAP so far
        # the validation images of the debug views: (their indices, their dataset items)
        self._debug_items: tuple[list[int], list] = ([], [])
        self.dist = dist_utils.DistInfo()  # single process until setup()
        loggers = create_loggers(cfg)  # checked now: before any work (package, tracking URI)
        self.callbacks = [*builtin_callbacks(cfg), *loggers, *callbacks]
        self.events = Events(self, self.callbacks)

    # ------------------------------------------------------------------ for callbacks

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0; the only one without DDP)."""
        return self.dist.is_main

    @property
    def unsaved(self) -> bool:
        """Steps were applied since last.pt was written."""
        return self._unsaved

    def has_run_dir(self) -> bool:
        """The run folder exists (setup made it)."""
        run_dir = getattr(self, "run_dir", None)
        return run_dir is not None and run_dir.is_dir()

    def stop(self, reason: str) -> None:
        """End the run after the current epoch's events; ``reason`` becomes TrainResult.stopped."""
        self._stop_reason = reason

    def position(self) -> str:
        """Where the run is, for messages: "epoch E, step S" (1-based: S steps of epoch E done),
        or "the end of epoch E" between epochs."""
        if self.step_in_epoch == 0 and self.epoch > 0:
            return f"the end of epoch {self.epoch}"
        return f"epoch {self.epoch + 1}, step {self.step_in_epoch}"

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

    def log(self, message: str, always: bool = False) -> None:
        """Print on rank 0 (above the progress bar) and append to train.log. Quiet
        (``cfg.progress`` False) prints only warnings (lines that start with ``warning:``) and
        what must ``always`` show: the reports of skipped or repaired data items, and the run's
        last line (where its files are, or how to resume it)."""
        if not self.dist.is_main:
            return
        from tqdm import tqdm

        if self.cfg.progress or always or message.startswith("warning:"):
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
        if self.resume_ckpt is not None:
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
        data_problems = bool(self.train_data.report.problems or self.val_data.report.problems)
        print_data_summary(  # shown even with --quiet when items were skipped or repaired
            self.train_data,
            self.val_data,
            self.model_cfg,
            log=lambda text: self.log(text, always=data_problems),
        )

        self.train_set = build_train_dataset(cfg, self.train_data, self.model_cfg)

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

        self.loss_fn = build_loss(cfg, self.model_cfg)

        # optimisation
        self.steps_per_epoch = len(self._make_loader(0))
        self.lr, self.optimizer, self.scheduler, warmup = build_optimization(
            cfg,
            model,
            self.steps_per_epoch,
            cfg.epochs * self.steps_per_epoch,
            cfg.batch_size * self.dist.world_size,
        )
        cfg.lr = self.lr  # the resolved values go to args.yaml (a resumed run keeps them)
        cfg.image_size = cfg.image_size or list(self.model_cfg.image_size)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.params = [p for p in model.parameters() if p.requires_grad]

        from .guard import DivergenceGuard

        self.guard = DivergenceGuard(cfg.max_bad_steps)
        self.val_has_boxes = has_boxes(self.val_data)
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
            f"recipe {cfg.recipe}: optimizer {cfg.optimizer} lr {self.lr:g} (batch {cfg.batch_size} x {self.dist.world_size}), "
            f"{self.steps_per_epoch} steps/epoch, warm-up {warmup} steps then cosine; "
            f"EMA {f'decay {cfg.ema_decay:g}' if cfg.ema else 'off'}; run folder {self.run_dir}"
        )

    def _open_run_folder(self) -> None:
        """Create the run folder (only now that the run can start), take its lock, remove
        temporary files of killed runs, start train.log with the lines printed so far, write
        args.yaml (a fresh run) or bring best.pt in line with last.pt (a resumed one)."""
        cfg = self.cfg
        if self.dist.is_main:
            from ..fileio import make_dirs, remove_stale_temporaries, write_text

            existed = self.run_dir.is_dir()
            make_dirs(self.run_dir)
            self._lock = RunLock(self.run_dir, resume=bool(cfg.resume)).acquire()
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
        losses = self.loss_fn(class_out, box_out, targets, self.model_cfg.image_size)
        # normalised by all ranks' positives: the step of one big batch
        return dist_utils.normalize_over_ranks(losses)

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
        assert snap is not None  # taken before the first step
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(snap["ema"])
        if self.scaler is not None:
            self.scaler.load_state_dict(snap["scaler"])
        sched = self.scheduler
        sched.base_lrs = [b * LR_FACTOR for b in sched.base_lrs]
        for group, base, fn in zip(
            self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True
        ):
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
        """The weights that ship (EMA when on, else the raw model)."""
        return self.ema.module if self.ema is not None else self.model

    def predict_debug_images(
        self, indices: Sequence[int]
    ) -> tuple[list[np.ndarray], list[dict], list[dict]]:
        """The validation images ``indices`` (of ``val_data.records``; loaded once and kept
        while the same indices are asked for), letterboxed to the model input, as
        (images (H, W, 3) uint8 RGB, predictions of :meth:`eval_model` (``boxes`` (D, 4) xyxy
        input pixels, ``scores``, ``labels`` 0-based), ground truths (``boxes``, ``labels``)).
        Empty lists off rank 0."""
        if not self.is_main:
            return [], [], []
        from ..data import DetectionDataset
        from ..detection.postprocess import postprocess

        m = self.model_cfg
        if self._debug_items[0] != list(indices):
            dataset = DetectionDataset(self.val_data, m.image_size, m.mean, m.std, train=False)
            self._debug_items = (list(indices), [dataset[i] for i in indices])
        items = self._debug_items[1]
        if not items:
            return [], [], []
        batch = torch.stack([x for x, _ in items])  # (N, 3, H, W) normalised
        model = self.eval_model()
        was_training = model.training
        model.eval()
        x = batch.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.no_grad(),
            torch.autocast(
                self.device.type,
                dtype=self.amp_dtype or torch.float32,
                enabled=self.amp_dtype is not None,
            ),
        ):
            class_out, box_out = model(x)
        if was_training:
            set_train_mode(model, self.cfg.freeze, self.cfg.freeze_bn)
        anchors = self.loss_fn.anchors(m.image_size, device=self.device)
        dets = postprocess(
            [c.float() for c in class_out],
            [b.float() for b in box_out],
            anchors,
            NMSConfig(score_threshold=DEBUG_VIEW_CONF),
            m.image_size,
        )
        mean = torch.tensor(m.mean).reshape(1, 3, 1, 1)
        std = torch.tensor(m.std).reshape(1, 3, 1, 1)
        pixels = (batch * std + mean).round().clamp(0, 255).to(torch.uint8)  # (N, 3, H, W)
        images = [np.ascontiguousarray(p.permute(1, 2, 0).numpy()) for p in pixels]
        predictions = [{k: v.detach().cpu() for k, v in d.items()} for d in dets]
        truths = [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in items]
        return images, predictions, truths

    def _evaluate_model(self, model: nn.Module, progress: bool):
        """COCO evaluation of ``model`` on the val split with the run's settings -> EvalResult."""
        from .evaluator import evaluate

        return evaluate(
            model,
            self.val_data,
            self.model_cfg.image_size,
            NMSConfig(),
            batch_size=self.cfg.eval_batch_size or self.cfg.batch_size,
            num_workers=self.cfg.workers,
            device=self.device,
            amp_dtype=self.amp_dtype,
            progress=progress,
        )

    def _evaluate(self):
        """Rank 0 evaluates the EMA (or raw) model on the whole val split; stats go to every rank."""
        result = None
        stats: dict = {}
        if self.dist.is_main:
            model = self.eval_model()
            was_training = model.training
            model.eval()
            result = self._evaluate_model(model, progress=self.cfg.progress)
            if was_training:
                set_train_mode(model, self.cfg.freeze, self.cfg.freeze_bn)
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
                if new_best and self.best_payload is not None:  # the same weights: share the
                    # tensors (stored once in last.pt)
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

    def commit_epoch(self) -> list[Path]:
        """At an epoch's end (every process: the RNG states are gathered): commit last.pt, and
        best.pt when the epoch is the best so far. Returns the paths written (rank 0; [] elsewhere)."""
        rngs = dist_utils.all_gather_object(_rng_for_gather())
        path = self.save_last(rngs, new_best=self.epoch_improved)
        if not self.is_main:
            return []
        return [path, self.run_dir / "best.pt"] if self.epoch_improved else [path]

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
        set_train_mode(self.model, cfg.freeze, cfg.freeze_bn)
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
        emit = self.events.emit
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
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(
                    loss=f"{sums['loss'] / sums['steps']:.4f}",
                    lr=f"{lr:.2e}",
                    img_s=f"{n_images / dt:.1f}",
                    refresh=False,
                )
                emit(
                    "on_step_end",
                    StepInfo(
                        epoch, self.step_in_epoch, self.global_step, out, lr, images, targets, dt
                    ),
                )
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
            self.events.release_switched_off()  # a logger's full store may have room by now
            self.close()

    def _fit(self) -> TrainResult:
        stopped = "completed"
        self._take_snapshot()  # what a divergence in the first steps rolls back to
        try:
            self.events.emit("on_train_start")
            while self.epoch < self.cfg.epochs:
                self._epoch()
                if self._stop_reason is not None:
                    stopped = self._stop_reason
                    break
        except KeyboardInterrupt as exc:
            stopped = "interrupted"
            self.events.exception(exc)  # Checkpoints saves last.pt, CSVLog writes results.csv
            if self.is_main:
                self.log(
                    f"\ninterrupted at epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch}: "
                    f"state saved to {self.run_dir / 'last.pt'}; continue with: {resume_command(self.run_dir)}",
                    always=True,
                )
        except BaseException as exc:
            self.events.exception(exc)
            raise
        return self._finish(stopped)

    def _epoch(self) -> None:
        """One epoch: steps, validation, bookkeeping, then the epoch-end events (checkpoints,
        results.csv, plots, early stopping, ...)."""
        cfg = self.cfg
        epoch = self.epoch
        self.events.emit("on_epoch_start", epoch)
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
            self.events.emit("on_validation_end", epoch, dict(stats))
        row = {
            "epoch": epoch + 1,
            "train_loss": round(sums["loss"] / steps, 6) if steps else None,  # None: no step
            "class_loss": round(sums["class_loss"] / steps, 6) if steps else None,
            "box_loss": round(sums["box_loss"] / steps, 6) if steps else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "mAP": round(stats["mAP"], 6) if do_val else None,
            "AP50": round(stats["AP50"], 6) if do_val else None,
            "epoch_time_s": round(sums["time"], 2),
            "val_time_s": val_time,
            "images_per_s": round(sums["images"] / sums["time"], 2) if sums["time"] > 0 else None,
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
            self.epoch_improved = improved
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
        if epoch == 0 and self.is_main:
            report = self.train_set.load_report()
            if report.problems:
                self.log(  # with --quiet too, unless only augmentation dropped tiny boxes
                    report.summary(title="problems met while loading training images"),
                    always=any(p.kind != "box_too_small" for p in report.problems),
                )
        self.events.emit("on_epoch_end", row)

    def _finish(self, stopped: str) -> TrainResult:
        best_path = self.run_dir / "best.pt"
        eval_result = self.best_eval
        metrics = dict(self.last_metrics)
        if self.dist.is_main and stopped != "interrupted":
            if (
                eval_result is None and self.best_payload is not None and best_path.exists()
            ):  # best epoch before a resume: evaluate it again
                from ..factory import load_model

                model, _ = load_model(best_path)
                eval_result = self._evaluate_model(model.to(self.device), progress=False)
            if eval_result is not None:
                from ..fileio import write_json

                metrics = _plain(dict(eval_result.stats))
                write_json(self.run_dir / "metrics.json", _plain(eval_result.to_dict()))
                self.log(
                    f"best weights (epoch {self.best_epoch}) on the validation split:\n{eval_result.table()}"
                )
        result = TrainResult(
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
        try:
            self.events.emit("on_train_end", result)  # Plots draws pr_curves.png
        except BaseException as exc:
            self.events.exception(exc)
            raise
        for line in self.events.switched_off:  # warned when it happened; again at the end
            self.log(f"warning: logger {line}: its record of this run stops there")
        if self.is_main and stopped != "interrupted":
            self.log(
                f"results in {self.run_dir}: {', '.join(self._result_files(best_path))}",
                always=True,
            )
        return result

    def _result_files(self, best_path: Path) -> list[str]:
        """The files of this run for the final message: only those that exist."""
        files = []
        if self.best_payload is not None and best_path.exists():
            files.append(f"best.pt (mAP {self.best_map:.4f}, epoch {self.best_epoch})")
        elif not self.val_has_boxes:
            files.append("no best.pt (the validation split has no boxes; use last.pt)")
        files += [
            n
            for n in (
                "last.pt",
                "results.csv",
                "metrics.json",
                "results.png",
                "pr_curves.png",
                "debug",
            )
            if (self.run_dir / n).exists()
        ]
        return files


def _rng_for_gather() -> dict:
    from .checkpoint import rng_state

    return rng_state()
