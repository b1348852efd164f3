"""Training events and callbacks: the :class:`Callback` base and the built-in callbacks.

The loop (:mod:`efficientdet.engine.loop`) emits these events, in this order, on every
process (``trainer.is_main`` is True on rank 0 only; the built-ins write files there only)::

    on_train_start(trainer)                   after setup (data, model, run folder), before the
                                              first step; also when a run is resumed
    on_epoch_start(trainer, epoch)            epoch: 0-based index of the epoch about to run (a
                                              resumed run starts inside it: trainer.step_in_epoch)
    on_step_end(trainer, step: StepInfo)      after every applied optimizer step (a step the
                                              divergence guard rolled back emits nothing)
    on_validation_end(trainer, epoch, metrics)  metrics: every COCO number (mAP, AP50, AP75,
                                              APs, ..., AR100, ...) as floats
    on_epoch_end(trainer, row)                row: the epoch's results.csv row (CSV_COLUMNS);
                                              trainer.epoch already counts it
    on_checkpoint_saved(trainer, paths)       paths: [last.pt] or [last.pt, best.pt], written as
                                              one transaction (during epoch end, by Checkpoints,
                                              before any later callback's on_epoch_end)
    on_image(trainer, name, image, step)      a debug view: image (H, W, 3) uint8 RGB, name like
                                              "train_batch_0" / "val_predictions", step the
                                              global step it belongs to
    on_exception(trainer, error)              the run stops with ``error`` (KeyboardInterrupt
                                              included); last.pt is saved first where it is safe
    on_train_end(trainer, result)             result: the TrainResult (also after Ctrl+C)

A callback that raises stops the run: :class:`~efficientdet.errors.CallbackError` names the
callback and the event, and last.pt is saved so that ``--resume`` continues where it stopped.
A :class:`Logger` (a monitoring side channel: TensorBoard, MLflow) is the exception once the run
has started: when it raises (disk full, tracking store gone), it is switched off with one
warning line and training goes on; the end of the run says so again.

Built-ins (always on; :func:`builtin_callbacks`): :class:`Checkpoints` (last.pt/best.pt),
:class:`CSVLog` (results.csv), :class:`Plots` (results.png, pr_curves.png), :class:`EarlyStopping`
(``--patience``), :class:`DebugViews` (``RUN/debug/*.png``, sent as image events).
"""

from __future__ import annotations

import contextlib
import csv
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CallbackError, EfficientDetError

if TYPE_CHECKING:
    from .config import TrainResult
    from .loop import Trainer

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
EVENTS = (
    "on_train_start",
    "on_epoch_start",
    "on_step_end",
    "on_validation_end",
    "on_epoch_end",
    "on_checkpoint_saved",
    "on_image",
    "on_exception",
    "on_train_end",
)


def resume_command(run_dir: Path) -> str:
    """The shell command that continues the run in ``run_dir``, quoted so that it pastes as is
    (a folder name with spaces or quotes stays one argument)."""
    return f"efficientdet train --resume {shlex.quote(str(run_dir))}"


@dataclass
class StepInfo:
    """One applied training step. ``epoch`` 0-based; ``step`` the steps done in this epoch
    (1 after its first); ``global_step`` over the run; ``losses`` loss/class_loss/box_loss
    (averaged over processes); ``lr`` after the step's scheduler update; ``images`` (B, 3, H, W)
    normalised float tensor and ``targets`` (boxes xyxy input pixels, labels 0-based) of this
    process's batch as the loader gave it (references: do not modify); ``time_s`` the step time."""

    epoch: int
    step: int
    global_step: int
    losses: dict[str, float]
    lr: float
    images: Any = None
    targets: list[dict] = field(default_factory=list)
    time_s: float = 0.0


class Callback:
    """Base class: override the events you need (see the module docstring); all are no-ops.

    ``trainer`` (:class:`efficientdet.engine.loop.Trainer`) gives ``cfg``, ``run_dir``,
    ``epoch`` (completed epochs), ``global_step``, ``history`` (results.csv rows), ``model``,
    ``eval_model()``, ``is_main``, ``log(message)`` and ``stop(reason)``.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """After setup, before the first step (a resumed run too)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """``epoch``: 0-based index of the epoch about to run."""

    def on_step_end(self, trainer: Trainer, step: StepInfo) -> None:
        """After every applied optimizer step."""

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After validating epoch ``epoch`` (0-based); ``metrics``: every COCO number."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """``row``: the epoch's results.csv row (keys CSV_COLUMNS; None where not measured)."""

    def on_checkpoint_saved(self, trainer: Trainer, paths: list[Path]) -> None:
        """``paths``: last.pt, and best.pt when this epoch is the best so far."""

    def on_image(self, trainer: Trainer, name: str, image: np.ndarray, step: int) -> None:
        """A debug view: ``image`` (H, W, 3) uint8 RGB."""

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """The run stops with ``error``; raise nothing here (it would be logged and ignored)."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        """The run is over; ``result.stopped`` says how."""


class Logger(Callback):
    """A monitoring side channel (the ``--logger`` callbacks; yours too): losing it must not
    cost a long run. When one of its events raises after ``on_train_start``, the run goes on
    without it: one warning line naming it and ``destination``, then its ``on_exception``
    (to release what it holds) and no more events; the end of the run repeats the warning and
    calls that ``on_exception`` once more (what the store refused then, it may take now: make
    it safe to call twice). A
    failure in ``on_train_start`` stops the run as any callback's does (nothing is trained yet)."""

    destination = ""  # where it writes (a folder, a tracking URI), named in its messages


def callback_name(callback: object) -> str:
    return type(callback).__name__


def _positional_count(method: Any) -> int | None:
    """How many positional arguments ``method`` takes (None: any number)."""
    import inspect

    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class Events:
    """Dispatches events to callbacks in order. An exception in a callback becomes one
    CallbackError naming the callback and the event (user-facing errors pass unchanged), except
    in a :class:`Logger` after ``on_train_start``: that logger is switched off (one warning;
    ``switched_off`` keeps the line for the end of the run). ``on_exception`` never raises (a
    failing handler is logged). A method written for the earlier hooks,
    ``on_step_end(self, trainer)``, gets only the arguments it takes."""

    def __init__(self, trainer: Trainer, callbacks: Sequence[object]) -> None:
        for cb in callbacks:
            if isinstance(cb, type):
                raise CallbackError(
                    f"callbacks: {cb.__name__} is a class; fix: pass an instance, {cb.__name__}()"
                )
        self.trainer = trainer
        self.callbacks = list(callbacks)
        self._arity: dict[tuple[int, str], int | None] = {}
        self.switched_off: list[str] = []  # per failed logger: what failed, where and why
        self._off: list[tuple[Logger, Exception]] = []  # the failed loggers and their errors

    def emit(self, event: str, *args: Any) -> None:
        for cb in list(self.callbacks):
            if cb not in self.callbacks:  # a logger switched off by an event emitted inside
                continue  # this one (on_checkpoint_saved, on_image)
            method = getattr(cb, event, None)
            if method is None:
                continue
            key = (id(cb), event)
            if key not in self._arity:
                self._arity[key] = _positional_count(method)
            n = self._arity[key]
            try:
                method(self.trainer, *(args if n is None else args[: max(0, n - 1)]))
            except Exception as exc:
                if isinstance(cb, Logger) and event != "on_train_start":
                    self._switch_off(cb, event, exc)
                    continue
                if isinstance(exc, EfficientDetError):
                    raise
                where = self.trainer.position()
                raise CallbackError(
                    f"callback {callback_name(cb)}.{event} ({where}): {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else 'no message'}; the run stopped "
                    f"with its state saved in {self.trainer.run_dir / 'last.pt'}; fix: correct the "
                    f"callback, then continue with: {resume_command(self.trainer.run_dir)}"
                ) from exc

    def _switch_off(self, logger: Logger, event: str, error: Exception) -> None:
        """Drop ``logger`` from the run after ``error`` in ``event``: warn once, let it release
        what it holds (its on_exception), send it no more events."""
        self.callbacks.remove(logger)
        self._off.append((logger, error))
        name = callback_name(logger) + (f" ({logger.destination})" if logger.destination else "")
        root: BaseException = error  # the first cause says most (a client library wraps a
        while root.__cause__ is not None:  # full disk in its own errors)
            root = root.__cause__
        why = f"{type(root).__name__}: {str(root).splitlines()[0] if str(root) else 'no message'}"
        line = f"{name} failed in {event} at {self.trainer.position()} ({why})"
        self.switched_off.append(line)
        self.trainer.log(
            f"warning: logger {line}; it is switched off and training goes on (checkpoints and "
            "results.csv are not affected)"
        )
        # closing a failed store may fail again (the disk is still full): nothing more to say
        with contextlib.suppress(Exception):
            logger.on_exception(self.trainer, error)

    def release_switched_off(self) -> None:
        """At the end of the run, each switched-off logger's ``on_exception`` once more, for
        what it could not release when it failed (an MLflow run still to be ended); never raises."""
        for logger, error in self._off:
            with contextlib.suppress(Exception):
                logger.on_exception(self.trainer, error)

    def exception(self, error: BaseException) -> None:
        for cb in self.callbacks:
            method = getattr(cb, "on_exception", None)
            if method is None:
                continue
            try:
                method(self.trainer, error)
            except Exception as exc:
                self.trainer.log(
                    f"warning: callback {callback_name(cb)}.on_exception failed too "
                    f"({type(exc).__name__}: {exc})"
                )


# ----------------------------------------------------------------------------- built-ins


class Checkpoints(Callback):
    """last.pt after every epoch (and best.pt when the epoch is the best by val mAP), as one
    transaction (:mod:`efficientdet.engine.checkpoint`); on Ctrl+C or a failing callback,
    last.pt with the steps done since (a run that diverged keeps its last good last.pt)."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        paths = trainer.commit_epoch()
        if paths:
            trainer.events.emit("on_checkpoint_saved", paths)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if isinstance(error, (KeyboardInterrupt, CallbackError)) and trainer.has_run_dir():
            path = trainer.run_dir / "last.pt"
            if trainer.unsaved or not path.exists():
                trainer.save_last(None)


class CSVLog(Callback):
    """results.csv: one row per epoch (CSV_COLUMNS), rewritten atomically after each epoch."""

    def _write(self, trainer: Trainer) -> None:
        if not trainer.is_main or not trainer.has_run_dir():
            return
        from ..fileio import atomic_write

        with atomic_write(trainer.run_dir / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in trainer.history:
                writer.writerow(
                    {k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS}
                )

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self._write(trainer)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._write(trainer)


class Plots(Callback):
    """results.png (loss and mAP curves) after each epoch; pr_curves.png (precision/recall per
    class of the best weights) at the end. A plot that cannot be drawn is a logged warning."""

    def _draw(self, trainer: Trainer, name: str, draw: Any) -> None:
        from ..fileio import write_via_temp

        try:
            write_via_temp(trainer.run_dir / name, draw)
        except Exception as exc:
            trainer.log(f"warning: could not draw {name} ({exc})")

    def _history(self, trainer: Trainer) -> None:
        if trainer.is_main and trainer.cfg.plots and trainer.history:
            from .plots import plot_history

            self._draw(trainer, "results.png", lambda p: plot_history(trainer.history, p))

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self._history(trainer)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if trainer.has_run_dir():
            self._history(trainer)

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        if not (trainer.is_main and trainer.cfg.plots and result.eval_result is not None):
            return
        from .plots import plot_pr_curves

        self._draw(
            trainer,
            "pr_curves.png",
            lambda p: plot_pr_curves(result.eval_result, trainer.val_data, p),
        )


class EarlyStopping(Callback):
    """Stops the run after ``patience`` validated epochs without a better val mAP."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if not self.patience or row.get("mAP") is None:
            return
        waited = trainer.epoch - trainer.best_epoch
        if waited >= self.patience:
            trainer.log(
                f"early stopping: no better val mAP for {waited} epochs "
                f"(best {trainer.best_map:.4f} at epoch {trainer.best_epoch})"
            )
            trainer.stop("early_stopping")


class DebugViews(Callback):
    """What the model sees and predicts, as PNGs in ``RUN/debug/`` and image events.

    * ``train_batch_{i}.png``: the first ``batches`` training batches of the run (after
      augmentation; boxes and class names drawn);
    * ``val_epoch_{e}.png``: every ``interval`` epochs (and after the last), the EMA/eval
      model's predictions (score >= 0.25) vs the ground truth on ``count`` validation images,
      the same each time (``debug_views.pick_debug_images``: spread over those with boxes).

    Drawing is :mod:`efficientdet.engine.debug_views`.
    """

    def __init__(self, batches: int = 2, interval: int = 5, count: int = 4) -> None:
        self.batches, self.interval, self.count = batches, interval, count
        self.done = 0
        self.views: Any = None
        self.picks: list[int] | None = None  # the validation images shown, chosen once

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.is_main and (self.batches or self.interval):
            import importlib

            # the drawing module, looked up when a run starts (tests put a recording one in its place)
            self.views = importlib.import_module("efficientdet.engine.debug_views")
            self.done = min(self.batches, trainer.global_step)  # resumed: drawn before

    def _save(self, trainer: Trainer, name: str, image: np.ndarray, step: int) -> None:
        from ..fileio import make_dirs

        folder = make_dirs(trainer.run_dir / "debug")
        self.views.save_view(image, folder / f"{name}.png")
        trainer.events.emit("on_image", name, image, step)

    def on_step_end(self, trainer: Trainer, step: StepInfo) -> None:
        if self.views is None or self.done >= self.batches or step.images is None:
            return
        m = trainer.model_cfg
        image = self.views.render_training_batch(
            step.images, step.targets, m.mean, m.std, trainer.train_data.class_names
        )
        self._save(trainer, f"train_batch_{self.done}", image, step.global_step)
        self.done += 1

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.views is None or not self.interval:
            return
        if trainer.epoch % self.interval and trainer.epoch != trainer.cfg.epochs:
            return
        if self.picks is None:
            self.picks = self.views.pick_debug_images(trainer.val_data, self.count)
        images, predictions, truths = trainer.predict_debug_images(self.picks)
        if not images:
            return
        image = self.views.render_predictions(
            images, predictions, truths, trainer.train_data.class_names
        )
        self._save(trainer, f"val_epoch_{trainer.epoch}", image, trainer.global_step)


def builtin_callbacks(cfg: Any) -> list[Callback]:
    """The built-ins of a run, in order: checkpoints first (a later callback's on_epoch_end
    sees last.pt written), then results.csv, plots, early stopping, debug views."""
    return [
        Checkpoints(),
        CSVLog(),
        Plots(),
        EarlyStopping(cfg.patience),
        DebugViews(cfg.debug_batches, cfg.debug_interval),
    ]
