"""MLflow logger: one MLflow run per ``train`` call (a resumed run starts a new one, tagged).

Store: ``MLFLOW_TRACKING_URI`` when set, else a SQLite store in the run folder,
``sqlite:///RUN/mlflow.db`` with artifacts in ``RUN/mlartifacts``
(``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``). With ``MLFLOW_TRACKING_URI``, a new
experiment gets the store's own default artifact location (for a local SQLite store that is
MLflow's ``./mlruns`` in the working folder). Experiment:
``MLFLOW_EXPERIMENT_NAME`` or ``efficientdet``; run name: the run folder's name.

Params: the full TrainConfig (values as text). Metrics: ``train/loss``, ``train/class_loss``,
``train/box_loss``, ``train/lr`` per step (x = global step; sent in batches), ``epoch/<column>``
per epoch for every number of the results.csv row and ``val/<metric>`` for every COCO metric
(x = epoch, 1-based). Artifacts at the end: ``best.pt`` (``last.pt`` when the run has no
best), ``results.csv``, ``metrics.json``, ``results.png``, ``pr_curves.png``; the debug views
under ``debug/``.

A store that cannot be reached or written when the run starts stops it (one line, exit 2); one
that fails later (disk full, server gone) switches the logger off with one warning and training
goes on (:class:`~efficientdet.engine.callbacks.Logger`); the MLflow run then ends as FAILED
when the store takes that last call.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np

from ...errors import ConfigError, OutputError
from ..callbacks import Logger, StepInfo

if TYPE_CHECKING:
    from ..config import TrainConfig, TrainResult
    from ..loop import Trainer

FLUSH_EVERY = 200  # buffered step metrics sent at the latest after this many values
EXPERIMENT = "efficientdet"
ARTIFACTS = ("best.pt", "results.csv", "metrics.json", "results.png", "pr_curves.png")


def _client_class() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(
            "--logger mlflow needs the mlflow package; fix: pip install 'efficientdet[mlflow]' "
            "(or drop --logger mlflow)"
        ) from None
    return MlflowClient


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local tracking URI writes (``sqlite:///x.db`` -> x.db, ``file:x`` or
    a plain path -> x); None for a server (http, https, databricks, ...)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        return Path(unquote(uri[len("sqlite:///") :])) if uri.startswith("sqlite:///") else None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive)
        return Path(uri)
    return None


def check_writable(uri: str) -> None:
    """Refuse (OutputError, one line) a local tracking URI that cannot be written: its path or
    the nearest existing folder above it is not a writable folder. Creates nothing."""
    path = local_store_path(uri)
    if path is None:
        return
    fix = "fix: set MLFLOW_TRACKING_URI to a place you can write to (or unset it: the run folder)"
    target = path.parent if uri.startswith("sqlite:") else path
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"MLFLOW_TRACKING_URI={uri}: {probe} is a file, not a folder; {fix}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"MLFLOW_TRACKING_URI={uri}: {probe} is not writable; {fix}")


class MLflowLogger(Logger):
    """Sends params, metrics and artifacts of the run to MLflow (rank 0 only)."""

    def __init__(self, client_class: Any, tracking_uri: str | None) -> None:
        self.client_class = client_class
        self.tracking_uri = tracking_uri  # None: the run folder's SQLite store
        self.client: Any = None
        self.run_id: str | None = None
        self.pending: list[Any] = []

    @classmethod
    def create(cls, cfg: TrainConfig) -> MLflowLogger:
        client_class = _client_class()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        if uri is not None:
            check_writable(uri)
        return cls(client_class, uri)

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        from mlflow.entities import Param

        run_dir = trainer.run_dir.resolve()
        uri = self.tracking_uri or f"sqlite:///{run_dir / 'mlflow.db'}"
        self.destination = uri
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        try:
            client = self.client_class(tracking_uri=uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:
                location = None if self.tracking_uri else (run_dir / "mlartifacts").as_uri()
                experiment_id = client.create_experiment(name, artifact_location=location)
            tags = {"efficientdet.run_dir": str(run_dir)}
            if trainer.cfg.resume:
                tags["efficientdet.resumed_at_step"] = str(trainer.global_step)
            run = client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
        except Exception as exc:  # the store cannot be reached or written
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise OutputError(
                f"MLflow tracking URI {uri}: {first}; fix: check MLFLOW_TRACKING_URI "
                "(or unset it: a store in the run folder)"
            ) from None
        self.client, self.run_id = client, run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(trainer.cfg.to_dict().items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[i : i + 100])

    def _metric(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self.pending.append(Metric(key, float(value), int(time.time() * 1000), int(step)))

    def _flush(self) -> None:
        while self.pending and self.client is not None:
            batch, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch)

    def on_step_end(self, trainer: Trainer, step: StepInfo) -> None:
        if self.client is None:
            return
        for key in ("loss", "class_loss", "box_loss"):
            self._metric(f"train/{key}", step.losses[key], step.global_step)
        self._metric("train/lr", step.lr, step.global_step)
        if len(self.pending) >= FLUSH_EVERY:
            self._flush()

    def on_validation_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.client is not None:
            for key, value in metrics.items():
                self._metric(f"val/{key}", value, epoch + 1)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.client is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self._metric(f"epoch/{key}", value, row["epoch"])
        self._flush()

    def on_image(self, trainer: Trainer, name: str, image: np.ndarray, step: int) -> None:
        if self.client is not None:
            self.client.log_image(self.run_id, image, artifact_file=f"debug/{name}.png")

    def _end(self, status: str) -> None:
        self._flush()
        self.client.set_terminated(self.run_id, status)
        self.client = None

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if self.client is not None:
            self._end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        if self.client is None:
            return
        names = list(ARTIFACTS)
        if result.best_checkpoint is None:
            names[0] = "last.pt"
        for name in names:
            path = trainer.run_dir / name
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self._end("KILLED" if result.stopped == "interrupted" else "FINISHED")
