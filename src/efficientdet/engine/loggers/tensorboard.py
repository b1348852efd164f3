"""TensorBoard logger: event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN``).

Scalars: ``train/loss``, ``train/class_loss``, ``train/box_loss``, ``train/lr`` per step
(x = global step); ``epoch/<column>`` per epoch for every number of the results.csv row
(x = epoch, 1-based); ``val/<metric>`` for every COCO metric (x = epoch). Images: the debug
views (``debug/<name>``). Event files are append-only streams (TensorBoard reads them while
they grow), so they are written in place rather than through a temporary file. A write that
fails mid-run (disk full) switches the logger off with one warning; training goes on
(:class:`~efficientdet.engine.callbacks.Logger`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ConfigError
from ..callbacks import Logger, StepInfo

if TYPE_CHECKING:
    from ..config import TrainConfig, TrainResult
    from ..loop import Trainer

STEP_KEYS = ("loss", "class_loss", "box_loss")


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--logger tensorboard needs the tensorboard package; fix: pip install "
            "'efficientdet[tensorboard]' (or drop --logger tensorboard)"
        ) from None
    return SummaryWriter


class TensorBoardLogger(Logger):
    """Writes the run's scalars and debug images as TensorBoard events (rank 0 only)."""

    def __init__(self, writer_class: Any) -> None:
        self.writer_class = writer_class
        self.writer: Any = None

    @classmethod
    def create(cls, cfg: TrainConfig) -> TensorBoardLogger:
        return cls(_summary_writer())

    def log_dir(self, trainer: Trainer) -> Path:
        return trainer.run_dir / "tensorboard"

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.is_main:
            from ...fileio import make_dirs

            self.destination = str(self.log_dir(trainer))
            self.writer = self.writer_class(str(make_dirs(self.log_dir(trainer))))

    def on_step_end(self, trainer: Trainer, step: StepInfo) -> None:
        if self.writer is None:
            return
        for key in STEP_KEYS:
            self.writer.add_scalar(f"train/{key}", step.losses[key], step.global_step)
        self.writer.add_scalar("train/lr", step.lr, step.global_step)

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"val/{key}", float(value), epoch + 1)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"epoch/{key}", float(value), row["epoch"])
        self.writer.flush()

    def on_image(self, trainer: Trainer, name: str, image: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(f"debug/{name}", image, step, dataformats="HWC")

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._close()

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        self._close()
