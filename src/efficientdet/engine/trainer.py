"""Training: ``train(TrainConfig(...), callbacks=[...]) -> TrainResult``.

The pieces, one job each: :mod:`~efficientdet.engine.config` (TrainConfig, the one source of
truth of the options), :mod:`~efficientdet.engine.builders` (model, data, loss, optimizer and
schedule), :mod:`~efficientdet.engine.loop` (the loop, emitting events),
:mod:`~efficientdet.engine.callbacks` (the Callback base and the built-ins: checkpoints,
results.csv, plots, early stopping, debug views), :mod:`~efficientdet.engine.loggers`
(TensorBoard, MLflow) and :mod:`~efficientdet.engine.checkpoint` (last.pt/best.pt, resume).
This module is the facade: :func:`train`, and the names that used to live here.

One run = one folder (``out``)::

    args.yaml      the TrainConfig of the run (plain YAML)
    results.csv    one row per epoch: epoch, train_loss, class_loss, box_loss, lr, mAP, AP50,
                   epoch_time_s, val_time_s, images_per_s, skipped_steps
    last.pt        full state after every epoch (and on Ctrl+C): resume with --resume RUN_DIR
    best.pt        the weights of the best validation mAP (no optimizer state); not written when
                   the validation split has no boxes (no mAP to choose by): use last.pt
    results.png    loss and mAP curves;  pr_curves.png  precision/recall per class (at the end)
    metrics.json   COCO metrics of the best weights;  train.log  the printed lines
    debug/         train_batch_*.png, val_epoch_*.png (--debug-batches, --debug-interval)
    tensorboard/   with --logger tensorboard;  mlflow.db mlartifacts/  with --logger mlflow
    .lock          held while the run writes here (:mod:`efficientdet.engine.runlock`)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import TrainingDiverged  # noqa: F401  (re-exported: its old home)
from ..run_dirs import make_run_dir  # noqa: F401  (re-exported: one numbering rule)
from . import distributed as dist_utils
from .builders import (  # noqa: F401  (re-exported)
    IMAGENET_BACKBONES,
    adopt_checkpoint_settings,
    amp_dtype_for,
    build_model,
    default_lr,
    frozen_parts,
    imagenet_backbone_path,
    load_train_val,
    print_data_summary,
    resolve_model_config,
    set_train_mode,
    use_channels_last,
)
from .callbacks import CSV_COLUMNS, Callback, StepInfo  # noqa: F401  (re-exported)
from .checkpoint import find_checkpoint  # noqa: F401  (re-exported)
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
from .loop import Trainer


def train(cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Run training per ``cfg`` (a fresh run, or ``cfg.resume`` = a run folder to continue).

    ``callbacks``: :class:`~efficientdet.engine.callbacks.Callback` instances, called after the
    built-ins and the ``cfg.loggers`` on every event (see :mod:`efficientdet.engine.callbacks`).
    """
    trainer = Trainer(cfg, callbacks)
    try:
        return trainer.fit()
    finally:
        trainer.close()
        dist_utils.cleanup()
