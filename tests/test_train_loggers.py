"""``--logger tensorboard mlflow``: what a run logged, read back with TensorBoard's own event
reader (EventAccumulator) and MLflow's client, compared with results.csv and the files of the
run; the bad inputs (package missing, unwritable tracking URI): one line, exit 2, before
any training work (no run folder); and a logger whose disk fills up mid-run (a real full
filesystem, tmpfs): switched off with one warning, the run goes on to its end.

Tiny settings: efficientdet_lite0 at 64x64, 8 training / 4 validation images, batch 4
(2 steps per epoch), 2 epochs, workers 0.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from efficientdet import cli
from efficientdet.data.synth import write_synthetic_dataset
from efficientdet.engine.callbacks import Callback
from efficientdet.engine.evaluator import STAT_NAMES
from efficientdet.engine.trainer import TrainConfig, train
from efficientdet.weights.checkpoint import read_checkpoint

from .data_factory import tiny_train_config
from .test_train import InterruptAt
from .test_train_callbacks import stub_debug_views

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(
        root / "data", num_train=8, num_val=4, seed=3, size=96, progress=False
    )


@pytest.fixture(scope="module")
def logged(synth, tmp_path_factory):
    """A 2-epoch run with both loggers, the default MLflow store and the debug views stub."""
    patch = pytest.MonkeyPatch()
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    patch.setitem(sys.modules, "efficientdet.engine.debug_views", stub_debug_views({}))
    try:
        out = tmp_path_factory.mktemp("runs") / "logged"
        cfg = tiny_train_config(
            synth, out, loggers=["tensorboard", "mlflow"], debug_batches=1, debug_interval=2
        )
        result = train(cfg)
    finally:
        patch.undo()
    with open(result.run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return cfg, result, rows


def mlflow_run(store: str):
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("efficientdet")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_tensorboard_scalars_and_images_equal_the_run(logged):
    _, result, rows = logged
    acc = EventAccumulator(
        str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}
    )
    acc.Reload()
    tags = acc.Tags()
    for column in ("train_loss", "class_loss", "box_loss", "lr", "mAP", "AP50"):
        events = acc.Scalars(f"epoch/{column}")
        assert [e.step for e in events] == [1, 2]
        want = [float(r[column]) for r in rows]
        assert [e.value for e in events] == pytest.approx(want, rel=1e-6, abs=1e-7)  # float32
    for name in STAT_NAMES:  # every COCO metric, per validated epoch
        assert [e.step for e in acc.Scalars(f"val/{name}")] == [1, 2]
    assert [e.value for e in acc.Scalars("val/mAP")] == pytest.approx(
        [float(r["mAP"]) for r in rows], abs=1e-6
    )
    for key in ("train/loss", "train/class_loss", "train/box_loss", "train/lr"):
        assert [e.step for e in acc.Scalars(key)] == [1, 2, 3, 4]
    step_losses = [e.value for e in acc.Scalars("train/loss")]
    for epoch, row in enumerate(rows):  # the epoch's loss is the mean of its steps
        mean = np.mean(step_losses[2 * epoch : 2 * epoch + 2])
        assert mean == pytest.approx(float(row["train_loss"]), abs=1e-5)
    assert sorted(tags["images"]) == ["debug/train_batch_0", "debug/val_epoch_2"]
    image = acc.Images("debug/train_batch_0")[0]
    assert (image.width, image.height) == (64 * 4, 64)  # the stub's batch strip


@pytest.mark.slow
def test_mlflow_params_metrics_and_artifacts_equal_the_run(logged, tmp_path):
    cfg, result, rows = logged
    run_dir = result.run_dir
    assert not (run_dir / "mlruns").exists()
    client, run = mlflow_run(f"sqlite:///{run_dir / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params == {k: str(v) for k, v in cfg.to_dict().items()}
    for column in ("train_loss", "box_loss", "lr", "mAP"):
        history = client.get_metric_history(run.info.run_id, f"epoch/{column}")
        assert sorted((m.step, m.value) for m in history) == [
            (i + 1, pytest.approx(float(r[column]), rel=1e-9, abs=1e-12))
            for i, r in enumerate(rows)
        ]
    steps = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in steps) == [1, 2, 3, 4]
    val = client.get_metric_history(run.info.run_id, "val/AP50")
    assert [m.value for m in sorted(val, key=lambda m: m.step)] == pytest.approx(
        [float(r["AP50"]) for r in rows], abs=1e-6
    )
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.pt", "results.csv", "metrics.json", "results.png", "pr_curves.png"} <= listed
    assert {a.path for a in client.list_artifacts(run.info.run_id, "debug")} == {
        "debug/train_batch_0.png",
        "debug/val_epoch_2.png",
    }
    for name in ("best.pt", "results.csv"):
        local = client.download_artifacts(run.info.run_id, name, str(tmp_path))
        assert Path(local).read_bytes() == (run_dir / name).read_bytes()


@pytest.mark.slow
def test_mlflow_tracking_uri_is_honoured(synth, tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'elsewhere' / 'tracking.db'}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root of a SQLite store: ./mlruns
    cfg = tiny_train_config(
        synth, tmp_path / "run", epochs=1, loggers=["mlflow"], debug_batches=0, debug_interval=0
    )
    result = train(cfg)
    assert not (result.run_dir / "mlflow.db").exists()
    client, run = mlflow_run(store)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "epoch/train_loss")
    assert [m.value for m in history] == [result.history[0]["train_loss"]]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "best.pt" in artifacts and (tmp_path / "mlruns").is_dir()


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # three tiny runs: interrupted, resumed in a copy, resumed in place
def test_a_copied_run_folder_resumed_keeps_mlflow_inside_it(synth, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    first, copy = tmp_path / "t1", tmp_path / "copied" / "t1"
    cfg = tiny_train_config(synth, first, loggers=["mlflow"], debug_batches=0, debug_interval=0)
    assert train(cfg, callbacks=[InterruptAt(3)]).stopped == "interrupted"
    shutil.copytree(first, copy)
    before = folder_state(first)
    capsys.readouterr()

    result = train(TrainConfig(resume=str(copy), progress=False))
    assert result.stopped == "completed"
    assert folder_state(first) == before  # nothing written to the folder it was copied from
    moved = f"efficientdet ({copy})"
    assert capsys.readouterr().out.splitlines()[0] == (
        f"warning: {copy / 'mlflow.db'}: MLflow experiment 'efficientdet' keeps its artifacts in "
        f"{(first / 'mlartifacts').as_uri()}, outside this run folder (it was moved or copied); "
        f"this run logs to experiment '{moved}', artifacts in {(copy / 'mlartifacts').as_uri()}"
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(moved)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.artifact_uri.startswith((copy / "mlartifacts").as_uri() + "/")
    assert run.data.tags["efficientdet.resumed_at_step"] == "3"
    local = client.download_artifacts(run.info.run_id, "best.pt", str(tmp_path))
    assert Path(local).read_bytes() == (copy / "best.pt").read_bytes()

    # resumed where it was made: a second MLflow run of the same experiment, no warning
    train(TrainConfig(resume=str(first), progress=False))
    assert "warning" not in capsys.readouterr().out
    client = MlflowClient(tracking_uri=f"sqlite:///{first / 'mlflow.db'}")
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "efficientdet"]
    runs = client.search_runs([client.get_experiment_by_name("efficientdet").experiment_id])
    assert sorted(r.data.tags.get("efficientdet.resumed_at_step", "-") for r in runs) == ["-", "3"]


@pytest.mark.slow
def test_quiet_hides_mlflow_own_info_lines(synth, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    levels = [logging.getLogger(n).level for n in ("mlflow", "alembic")]
    cfg = tiny_train_config(
        synth, tmp_path / "run", epochs=1, loggers=["mlflow"], debug_batches=0, debug_interval=0
    )
    assert not cfg.progress  # --quiet
    capfd.readouterr()
    result = train(cfg)
    printed = capfd.readouterr()
    assert "INFO" not in printed.out + printed.err  # "INFO mlflow.store.db.utils: Creating ..."
    (line,) = printed.out.splitlines()  # quiet: the run's last line only
    assert line.startswith(f"results in {result.run_dir}: best.pt")
    assert [logging.getLogger(n).level for n in ("mlflow", "alembic")] == levels  # restored


def test_a_tracking_uri_that_is_no_store_is_refused_with_no_run_folder(
    synth, tmp_path, monkeypatch, capfd
):
    not_a_db = tmp_path / "notes.json"
    not_a_db.write_text('{"a": 1}\n')
    uri = f"sqlite:///{not_a_db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data", str(synth), "--image-size", "64", "--logger", "mlflow"]
    for _ in range(2):  # the same command again: still no numbered folder claimed
        assert cli.main(argv) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert err == [
            f"error: MLflow tracking URI {uri}: (sqlite3.DatabaseError) file is not a database; "
            "fix: check MLFLOW_TRACKING_URI (or unset it: a store in the run folder)"
        ]
        assert not (tmp_path / "runs").exists()
    assert not_a_db.read_text() == '{"a": 1}\n'


def run_cli_blocking(modules: list[str], argv: list[str], env: dict | None = None):
    """``efficientdet train`` in a fresh process where importing ``modules`` fails."""
    code = (
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    sys.modules[name] = None  # import -> ImportError\n"
        "from efficientdet import cli\n"
        f"sys.exit(cli.main({argv!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("logger", "blocked"),
    [
        ("tensorboard", ["tensorboard", "torch.utils.tensorboard"]),
        ("mlflow", ["mlflow", "mlflow.tracking"]),
    ],
)
def test_a_missing_logger_package_names_its_extra(synth, tmp_path, logger, blocked):
    out = tmp_path / "run"
    argv = ["train", "--data", str(synth), "--image-size", "64", "--out", str(out)]
    proc = run_cli_blocking(blocked, [*argv, "--logger", logger])
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err[-1] == (
        f"error: --logger {logger} needs the {logger} package; fix: pip install "
        f"'efficientdet[{logger}]' (or drop --logger {logger})"
    )
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # refused before any work


def test_an_unwritable_tracking_uri_is_refused_before_work(synth, tmp_path, readonly_dir, capfd):
    out = tmp_path / "run"
    uri = f"sqlite:///{readonly_dir / 'sub' / 'mlflow.db'}"
    argv = ["train", "--data", str(synth), "--image-size", "64", "--out", str(out)]
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        code = cli.main([*argv, "--logger", "mlflow"])
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: MLFLOW_TRACKING_URI={uri}: {readonly_dir} is not writable; fix: set "
        "MLFLOW_TRACKING_URI to a place you can write to (or unset it: the run folder)"
    )
    assert not out.exists()


class FillDisk(Callback):
    """Fills the filesystem of ``folder`` after global step ``n`` (a disk full mid-run)."""

    def __init__(self, folder: Path, n: int) -> None:
        self.folder, self.n = folder, n

    def on_step_end(self, trainer, step) -> None:
        if step.global_step != self.n:
            return
        with pytest.raises(OSError) as info, open(self.folder / "filler", "wb") as f:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        assert info.value.errno == errno.ENOSPC


def assert_run_complete(result, epochs: int = 2) -> None:
    """The run went on to its end with every file of its own: last.pt, best.pt, results.csv."""
    assert result.stopped == "completed" and result.epochs_completed == epochs
    state = read_checkpoint(result.run_dir / "last.pt")["train_state"]
    assert (state["epoch"], state["global_step"]) == (epochs, 2 * epochs)
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    with open(result.run_dir / "results.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, epochs + 1))


def switched_off_lines(printed: str, name: str) -> list[str]:
    return [line for line in printed.splitlines() if f"logger {name}" in line]


@pytest.mark.slow
def test_a_tensorboard_write_error_switches_it_off_and_the_run_goes_on(
    synth, tmp_path, monkeypatch, capsys
):
    # the event writer's flush fails as on a full disk (a real full tmpfs would not do: the
    # few bytes of a tiny run fit in the page the event file already holds)
    def disk_full(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(SummaryWriter, "flush", disk_full)
    out = tmp_path / "run"
    cfg = tiny_train_config(synth, out, loggers=["tensorboard"], debug_batches=0, debug_interval=0)
    capsys.readouterr()
    result = train(cfg)
    assert_run_complete(result)
    where = (
        f"logger TensorBoardLogger ({out / 'tensorboard'}) failed in on_epoch_end at the end of "
        "epoch 1 (OSError: [Errno 28] No space left on device)"
    )
    printed = capsys.readouterr().out
    assert switched_off_lines(printed, "TensorBoardLogger") == [
        f"warning: {where}; it is switched off and training goes on (checkpoints and "
        "results.csv are not affected)",
        f"warning: {where}: its record of this run stops there",
    ]
    assert printed.splitlines()[-1].startswith(f"results in {out}: best.pt")
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()  # closing the writer wrote what it held: the record ends with epoch 1
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [1]


@pytest.mark.slow
def test_a_full_mlflow_store_switches_it_off_and_the_run_goes_on(
    synth, tmp_path, small_fs, capsys, monkeypatch
):
    store = small_fs(4 << 20)  # room for MLflow's tables; filled after the first step
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    cfg = tiny_train_config(synth, out, loggers=["mlflow"], debug_batches=0, debug_interval=0)
    capsys.readouterr()
    result = train(cfg, callbacks=[FillDisk(store, n=1)])
    assert_run_complete(result)
    # the step metrics wait in a buffer: the first write after the disk filled is epoch 1's
    where = (
        f"logger MLflowLogger ({uri}) failed in on_epoch_end at the end of epoch 1 "
        "(OperationalError: database or disk is full)"
    )
    assert switched_off_lines(capsys.readouterr().out, "MLflowLogger") == [
        f"warning: {where}; it is switched off and training goes on (checkpoints and "
        "results.csv are not affected)",
        f"warning: {where}: its record of this run stops there",
    ]
    assert where in (out / "train.log").read_text()
    (store / "filler").unlink()  # what the store kept: the run as it started, no metric
    _, run = mlflow_run(uri)
    assert run.data.params == {k: str(v) for k, v in cfg.to_dict().items()}
    assert run.data.metrics == {}


class FreeDisk(Callback):
    """Deletes the filler of :class:`FillDisk` when epoch ``epoch`` (0-based) starts."""

    def __init__(self, folder: Path, epoch: int) -> None:
        self.folder, self.epoch = folder, epoch

    def on_epoch_start(self, trainer, epoch) -> None:
        if epoch == self.epoch:
            (self.folder / "filler").unlink()


@pytest.mark.slow
def test_a_switched_off_mlflow_run_ends_failed_once_the_store_takes_it(
    synth, tmp_path, small_fs, capsys, monkeypatch
):
    """Found by trying: the store full when the logger was switched off, the MLflow run stayed
    RUNNING for ever. Its end is tried again when training ends (the disk has room by then)."""
    store = small_fs(4 << 20)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    cfg = tiny_train_config(
        synth, tmp_path / "run", loggers=["mlflow"], debug_batches=0, debug_interval=0
    )
    result = train(cfg, callbacks=[FillDisk(store, n=1), FreeDisk(store, epoch=1)])
    assert_run_complete(result)
    assert len(switched_off_lines(capsys.readouterr().out, "MLflowLogger")) == 2
    _, run = mlflow_run(uri)
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.data.metrics == {}  # nothing sent after the switch-off


class Boom(Callback):
    def on_step_end(self, trainer, step) -> None:
        if step.global_step == 1:
            raise RuntimeError("boom")


@pytest.mark.slow
def test_an_mlflow_run_ended_by_an_error_ends_failed_with_what_was_logged(
    synth, tmp_path, monkeypatch
):
    from efficientdet.errors import CallbackError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "run"
    cfg = tiny_train_config(synth, out, loggers=["mlflow"], debug_batches=0, debug_interval=0)
    with pytest.raises(CallbackError):
        train(cfg, callbacks=[Boom()])
    client, run = mlflow_run(f"sqlite:///{out / 'mlflow.db'}")
    assert run.info.status == "FAILED" and run.info.end_time is not None
    # the step's metrics, buffered when the error came, were sent before the run ended
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1]
