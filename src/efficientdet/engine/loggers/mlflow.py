"""MLflow logger: one MLflow run per ``train`` call.

Store: ``MLFLOW_TRACKING_URI`` when set, else a SQLite store in the run folder,
``sqlite:///RUN/mlflow.db`` with artifacts in ``RUN/mlartifacts``
(``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``). With ``MLFLOW_TRACKING_URI``, a new
experiment gets the store's own default artifact location (for a local SQLite store that is
MLflow's ``./mlruns`` in the working folder; for a tracking server, its artifact root). Experiment:
``MLFLOW_EXPERIMENT_NAME`` or ``efficientdet``; run name: the run folder's name.

Resume: a resumed run is a new MLflow run of the same experiment, tagged
``efficientdet.resumed_at_step``; its metrics go on along the same x (global step, epoch). The
default store records the experiment's artifact folder as an absolute path: when that is not
this run folder's ``mlartifacts`` (the folder was moved or copied), the run goes to the
experiment ``NAME (RUN)`` of the same store, with artifacts here (one warning line), so nothing
is written outside the run folder. A ``MLFLOW_TRACKING_URI`` store's layout is left alone.

Params: the full TrainConfig (values as text). Metrics: ``train/loss``, ``train/class_loss``,
``train/box_loss``, ``train/lr`` per step (x = global step; sent in batches), ``epoch/<column>``
per epoch for every number of the results.csv row and ``val/<metric>`` for every COCO metric
(x = epoch, 1-based). Artifacts at the end: ``best.pt`` (``last.pt`` when the run has no
best), ``results.csv``, ``metrics.json``, ``results.png``, ``pr_curves.png``; the debug views
under ``debug/``.

``MLFLOW_TRACKING_URI`` is opened when the logger is created, before the run folder exists: a
store that cannot be reached, written or read stops the run with one line, exit 2, and nothing
made. One that fails later (disk full, server gone) switches the logger off with one warning
and training goes on (:class:`~efficientdet.engine.callbacks.Logger`); the MLflow run then ends
as FAILED: at once, or when training ends if the store did not take it then (a full disk may
have room again); a store that never takes it leaves the run RUNNING. A run that training
ends with an error is FAILED (Ctrl+C: KILLED), its buffered metrics sent first. MLflow's own
INFO lines ("Creating initial MLflow database tables...") are hidden with ``--quiet`` and
shown otherwise (they report a change to a store).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def _quiet_mlflow(quiet: bool) -> Iterator[None]:
    """With ``quiet`` (``--quiet``), MLflow's and alembic's own INFO lines ("Creating initial
    MLflow database tables...") are not printed: their loggers at WARNING, restored after."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")] if quiet else []
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class MLflowLogger(Logger):
    """Sends params, metrics and artifacts of the run to MLflow (rank 0 only)."""

    def __init__(self, client_class: Any, tracking_uri: str | None, quiet: bool = False) -> None:
        self.client_class = client_class
        self.tracking_uri = tracking_uri  # None: the run folder's SQLite store
        self.quiet = quiet
        self.client: Any = None
        self.run_id: str | None = None
        self.pending: list[Any] = []
        self._store: tuple[Any, str] | None = None  # (client, experiment id) opened by create

    @classmethod
    def create(cls, cfg: TrainConfig) -> MLflowLogger:
        """Checks the package and, on rank 0, opens ``MLFLOW_TRACKING_URI`` now, before the run
        folder exists: a store that cannot be used stops the run with nothing made."""
        client_class = _client_class()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        logger = cls(client_class, uri, quiet=not cfg.progress)
        if uri is not None:
            check_writable(uri)
            if int(os.environ.get("RANK", "0")) == 0:
                logger._store = logger._open(uri, None)[:2]
        return logger

    def _open(self, uri: str, run_dir: Path | None) -> tuple[Any, str, str | None]:
        """(client, experiment id, warning line or None) of the store ``uri``. ``run_dir``:
        the run folder of the default store, whose experiment keeps its artifacts in
        ``RUN/mlartifacts``; an experiment there whose artifacts are elsewhere (the folder was
        moved or copied) is left as it is and the run goes to ``NAME (RUN)``, made here."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        warning = None
        try:
            with _quiet_mlflow(self.quiet):
                client = self.client_class(tracking_uri=uri)
                experiment = client.get_experiment_by_name(name)
                location = None if run_dir is None else (run_dir / "mlartifacts").as_uri()
                moved_away = experiment is not None and experiment.artifact_location != location
                if run_dir is not None and moved_away:
                    moved = f"{name} ({run_dir})"
                    warning = (
                        f"warning: {run_dir / 'mlflow.db'}: MLflow experiment '{name}' keeps its "
                        f"artifacts in {experiment.artifact_location}, outside this run folder (it "
                        f"was moved or copied); this run logs to experiment '{moved}', artifacts "
                        f"in {location}"
                    )
                    name, experiment = moved, client.get_experiment_by_name(moved)
                if experiment is not None:
                    return client, experiment.experiment_id, warning
                return client, client.create_experiment(name, artifact_location=location), warning
        except Exception as exc:  # the store cannot be reached or written
            raise self._store_error(uri, exc) from None

    @staticmethod
    def _store_error(uri: str, exc: Exception) -> OutputError:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return OutputError(
            f"MLflow tracking URI {uri}: {first}; fix: check MLFLOW_TRACKING_URI "
            "(or unset it: a store in the run folder)"
        )

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        from mlflow.entities import Param

        run_dir = trainer.run_dir.resolve()
        uri = self.tracking_uri or f"sqlite:///{run_dir / 'mlflow.db'}"
        self.destination = uri
        client, experiment_id, warning = (
            (*self._store, None) if self._store else self._open(uri, run_dir)
        )
        if warning:
            trainer.log(warning)
        try:
            tags = {"efficientdet.run_dir": str(run_dir)}
            if trainer.cfg.resume:
                tags["efficientdet.resumed_at_step"] = str(trainer.global_step)
            run = client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
        except Exception as exc:
            raise self._store_error(uri, exc) from None
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
        """Send the buffered metrics, then end the MLflow run as ``status``; when sending fails
        the run is still ended, as FAILED (best effort), and the error raised. The client is
        kept until the end is recorded: a later ``on_exception`` tries again."""
        try:
            self._flush()
        except Exception:
            with contextlib.suppress(Exception):  # not left RUNNING for ever, if the store takes it
                self._terminate("FAILED")
            raise
        self._terminate(status)

    def _terminate(self, status: str) -> None:
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
