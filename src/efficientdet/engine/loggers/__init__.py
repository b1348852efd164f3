"""Logger callbacks (each an optional extra), chosen with ``--logger tensorboard mlflow``
(``TrainConfig.loggers``; several at once):

* ``tensorboard`` (:mod:`.tensorboard`, ``pip install 'efficientdet[tensorboard]'``): event
  files in ``RUN/tensorboard``;
* ``mlflow`` (:mod:`.mlflow`, ``pip install 'efficientdet[mlflow]'``): a run in
  ``MLFLOW_TRACKING_URI``, else in a SQLite store in the run folder (``RUN/mlflow.db``,
  artifacts in ``RUN/mlartifacts``).

:func:`create_loggers` checks every chosen logger before any training work starts (package
installed, a tracking URI's store opened): a problem is one ConfigError/OutputError line, and
no run folder is made. Each is a :class:`~efficientdet.engine.callbacks.Logger`: one that fails
once the run has started (disk full, store gone) is switched off with one warning line, and
training goes on.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..callbacks import Callback
    from ..config import TrainConfig

# name -> (module, class) of its callback; the names are config.LOGGER_NAMES
LOGGERS = {
    "tensorboard": ("efficientdet.engine.loggers.tensorboard", "TensorBoardLogger"),
    "mlflow": ("efficientdet.engine.loggers.mlflow", "MLflowLogger"),
}


def create_loggers(cfg: TrainConfig) -> list[Callback]:
    """The logger callbacks of ``cfg.loggers``, in order, each checked (``Logger.create``)."""
    loggers = []
    for name in cfg.loggers:
        module_name, class_name = LOGGERS[name]
        cls = getattr(importlib.import_module(module_name), class_name)
        loggers.append(cls.create(cfg))
    return loggers
