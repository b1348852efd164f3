"""Training events and callbacks: the exact event order of a tiny run and of a resumed one,
each built-in callback (checkpoints, results.csv, plots, early stopping, debug views), and a
callback that raises (one line naming it and the event, last.pt saved, resume continues).

Tiny settings: efficientdet_lite0 at 64x64, 8 training / 4 validation images, batch 4
(2 steps per epoch), 2 epochs, workers 0. The drawing module ``engine/debug_views.py`` is
replaced by a recording stub (its own tests are elsewhere): these tests check the wiring.
"""

from __future__ import annotations

import csv
import shlex
import sys
import types
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from PIL import Image

import efficientdet as ed
from efficientdet import cli
from efficientdet.data import load_dataset
from efficientdet.data.synth import write_synthetic_dataset
from efficientdet.engine import loop
from efficientdet.engine.callbacks import CSV_COLUMNS, Callback, EarlyStopping, StepInfo
from efficientdet.engine.debug_views import pick_debug_images as real_pick_debug_images
from efficientdet.engine.evaluator import STAT_NAMES
from efficientdet.engine.trainer import train
from efficientdet.errors import CallbackError
from efficientdet.weights.checkpoint import read_checkpoint

from .data_factory import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder(Callback):
    """Records every event with the arguments that identify it."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.steps: list[StepInfo] = []
        self.metrics: list[dict] = []
        self.images: dict[str, np.ndarray] = {}

    def on_train_start(self, trainer) -> None:
        self.events.append(("train_start",))

    def on_epoch_start(self, trainer, epoch) -> None:
        self.events.append(("epoch_start", epoch))

    def on_step_end(self, trainer, step) -> None:
        self.events.append(("step_end", step.epoch, step.step, step.global_step))
        self.steps.append(step)

    def on_validation_end(self, trainer, epoch, metrics) -> None:
        self.events.append(("validation_end", epoch))
        self.metrics.append(dict(metrics))

    def on_epoch_end(self, trainer, row) -> None:
        self.events.append(("epoch_end", row["epoch"]))

    def on_checkpoint_saved(self, trainer, paths) -> None:
        self.events.append(("checkpoint_saved", tuple(p.name for p in paths)))
        assert all(p.is_file() for p in paths)

    def on_image(self, trainer, name, image, step) -> None:
        self.events.append(("image", name, step))
        self.images[name] = image

    def on_exception(self, trainer, error) -> None:
        self.events.append(("exception", type(error).__name__))

    def on_train_end(self, trainer, result) -> None:
        self.events.append(("train_end", result.stopped))


class Boom(Callback):
    """Raises ValueError at global step ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_step_end(self, trainer, step) -> None:
        if step.global_step == self.n:
            raise ValueError("boom")


def stub_debug_views(calls: dict) -> types.ModuleType:
    """A stand-in for efficientdet.engine.debug_views with its documented signatures."""
    module = types.ModuleType("efficientdet.engine.debug_views")

    def render_training_batch(images, targets, mean, std, class_names, max_images=16):
        calls.setdefault("train", []).append((images.clone(), list(targets), mean, std))
        return np.full((images.shape[2], images.shape[3] * images.shape[0], 3), 7, np.uint8)

    def render_predictions(images, predictions, truths, class_names):
        calls.setdefault("val", []).append((images, predictions, truths, list(class_names)))
        return np.concatenate(images, axis=1)

    def save_view(array, path):
        from efficientdet.fileio import write_via_temp

        write_via_temp(path, lambda tmp: Image.fromarray(array).save(tmp))
        return Path(path)

    def pick_debug_images(records_or_dataset, count=4):
        picks = real_pick_debug_images(records_or_dataset, count)
        calls.setdefault("pick", []).append(picks)
        return picks

    for fn in (render_training_batch, render_predictions, save_view, pick_debug_images):
        setattr(module, fn.__name__, fn)
    return module


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(
        root / "data", num_train=8, num_val=4, seed=3, size=96, progress=False
    )


@pytest.fixture(scope="module")
def run(synth, tmp_path_factory):
    """One 2-epoch run with a Recorder and the debug views stub (predictions every epoch)."""
    calls: dict = {}
    patch = pytest.MonkeyPatch()
    patch.setitem(sys.modules, "efficientdet.engine.debug_views", stub_debug_views(calls))
    try:
        rec = Recorder()
        cfg = tiny_train_config(
            synth, tmp_path_factory.mktemp("runs") / "run", debug_interval=1, debug_batches=2
        )
        result = train(cfg, callbacks=[rec])
    finally:
        patch.undo()
    return cfg, result, rec, calls


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_event_order_of_a_run(run):
    _, result, rec, _ = run
    saved = [
        ("last.pt", "best.pt"),
        ("last.pt", "best.pt") if result.best_epoch == 2 else ("last.pt",),
    ]
    assert rec.events == [
        ("train_start",),
        ("epoch_start", 0),
        ("image", "train_batch_0", 1),  # DebugViews (a built-in) runs before user callbacks
        ("step_end", 0, 1, 1),
        ("image", "train_batch_1", 2),
        ("step_end", 0, 2, 2),
        ("validation_end", 0),
        ("checkpoint_saved", saved[0]),  # inside epoch end, before later callbacks
        ("image", "val_epoch_1", 2),
        ("epoch_end", 1),
        ("epoch_start", 1),
        ("step_end", 1, 1, 3),
        ("step_end", 1, 2, 4),
        ("validation_end", 1),
        ("checkpoint_saved", saved[1]),
        ("image", "val_epoch_2", 4),
        ("epoch_end", 2),
        ("train_end", "completed"),
    ]


@pytest.mark.slow
def test_step_and_validation_events_carry_what_results_csv_shows(run):
    _, result, rec, _ = run
    rows = read_csv(result.run_dir / "results.csv")
    for epoch, row in enumerate(rows):
        steps = [s for s in rec.steps if s.epoch == epoch]
        for key, column in (("loss", "train_loss"), ("class_loss", "class_loss")):
            mean = sum(s.losses[key] for s in steps) / len(steps)
            assert mean == pytest.approx(float(row[column]), abs=2e-6)
        assert steps[-1].lr == pytest.approx(float(row["lr"]), rel=1e-12)
        assert rec.metrics[epoch]["mAP"] == pytest.approx(float(row["mAP"]), abs=1e-6)
        assert set(rec.metrics[epoch]) == set(STAT_NAMES)  # all 12 COCO numbers
    first = rec.steps[0]
    assert first.images.shape == (4, 3, 64, 64) and len(first.targets) == 4
    assert first.time_s > 0


@pytest.mark.slow
def test_builtin_checkpoints_csv_and_plots(run):
    _, result, _, _ = run
    run_dir = result.run_dir
    last = read_checkpoint(run_dir / "last.pt")
    assert last["train_state"]["epoch"] == 2 and last["train_state"]["global_step"] == 4
    best = read_checkpoint(run_dir / "best.pt")
    assert best["train_state"]["best_epoch"] == result.best_epoch
    rows = read_csv(run_dir / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0]) == list(CSV_COLUMNS)
    for row, hist in zip(rows, result.history, strict=True):
        assert float(row["train_loss"]) == hist["train_loss"]
    for name in ("results.png", "pr_curves.png"):
        with Image.open(run_dir / name) as im:
            im.load()
            assert im.width > 400 and im.height > 200
            assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 10  # drawn, not blank


@pytest.mark.slow
def test_debug_views_get_the_batches_and_the_fixed_validation_images(run, synth):
    _, result, rec, calls = run
    assert sorted(p.name for p in (result.run_dir / "debug").iterdir()) == [
        "train_batch_0.png",
        "train_batch_1.png",
        "val_epoch_1.png",
        "val_epoch_2.png",
    ]
    with Image.open(result.run_dir / "debug" / "val_epoch_2.png") as im:
        assert np.array_equal(np.asarray(im), rec.images["val_epoch_2"])  # the emitted image
    assert len(calls["train"]) == 2
    images, targets, mean, _ = calls["train"][0]
    assert images.shape == (4, 3, 64, 64) and len(targets) == 4
    assert tuple(mean) == tuple(ed.get_model_config("efficientdet_lite0").mean)
    # the same validation images both times, picked once: the 4 with boxes, letterboxed to 64x64
    assert calls["pick"] == [[0, 1, 2, 3]]
    val = load_dataset(synth, split="val")
    (imgs1, preds1, truths1, names), (imgs2, _, _, _) = calls["val"]
    assert names == list(val.class_names)
    assert len(imgs1) == 4 and all(i.shape == (64, 64, 3) and i.dtype == np.uint8 for i in imgs1)
    assert all(np.array_equal(a, b) for a, b in zip(imgs1, imgs2, strict=True))
    with_boxes = [r for r in val.records if (~r.ignore).any()][:4]
    for record, truth in zip(with_boxes, truths1, strict=True):
        scale = min(64 / record.height, 64 / record.width)
        boxes = torch.as_tensor(record.boxes[~record.ignore] * scale).float()
        assert torch.allclose(truth["boxes"], boxes, atol=1e-3)
        assert truth["labels"].tolist() == record.labels[~record.ignore].tolist()
    assert all(set(p) >= {"boxes", "scores", "labels"} for p in preds1)
    assert all(bool((p["boxes"] >= 0).all() and (p["boxes"] <= 64).all()) for p in preds1)
    assert all(bool((p["scores"] >= 0.25).all()) for p in preds1)  # low scores not drawn


def test_a_callback_class_instead_of_an_instance_is_one_line(tmp_path):
    cfg = tiny_train_config(tmp_path / "data.yaml", tmp_path / "out")
    with pytest.raises(CallbackError) as info:
        train(cfg, callbacks=[Recorder])
    assert str(info.value) == "callbacks: Recorder is a class; fix: pass an instance, Recorder()"
    assert not (tmp_path / "out").exists()


class FakeTrainer:
    def __init__(self, epoch: int, best_epoch: int) -> None:
        self.epoch, self.best_epoch, self.best_map = epoch, best_epoch, 0.5
        self.stopped: str | None = None
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def stop(self, reason: str) -> None:
        self.stopped = reason


@pytest.mark.parametrize(
    ("patience", "epoch", "best_epoch", "mAP", "stops"),
    [
        (3, 5, 2, 0.4, True),  # 3 validated epochs without a better mAP
        (3, 4, 2, 0.4, False),  # only 2
        (3, 6, 2, None, False),  # not validated this epoch: no decision
        (None, 9, 1, 0.4, False),  # no patience: never
    ],
)
def test_early_stopping_callback(patience, epoch, best_epoch, mAP, stops):
    trainer = FakeTrainer(epoch, best_epoch)
    EarlyStopping(patience).on_epoch_end(cast(Any, trainer), {"epoch": epoch, "mAP": mAP})
    assert (trainer.stopped == "early_stopping") is stops
    if stops:
        assert trainer.lines == [
            f"early stopping: no better val mAP for {epoch - best_epoch} epochs (best 0.5000 at epoch {best_epoch})"
        ]


@pytest.mark.slow
def test_a_raising_callback_stops_with_one_line_and_last_pt_then_resume_continues(synth, tmp_path):
    out = tmp_path / "boom run"  # a space: the printed command must still paste as is
    rec = Recorder()
    cfg = tiny_train_config(synth, out, debug_batches=0, debug_interval=0)
    with pytest.raises(CallbackError) as info:
        train(cfg, callbacks=[Boom(3), rec])
    message = str(info.value)
    assert message.startswith("callback Boom.on_step_end (epoch 2, step 1): ValueError: boom; ")
    prefix, hint = message.rsplit("continue with: ", 1)
    assert prefix.endswith("fix: correct the callback, then ")
    assert shlex.split(hint) == ["efficientdet", "train", "--resume", str(out)]
    assert "\n" not in message
    assert rec.events[-1] == ("exception", "CallbackError")
    last = read_checkpoint(out / "last.pt")["train_state"]
    assert (last["epoch"], last["step_in_epoch"], last["global_step"]) == (1, 1, 3)  # step 3 kept

    resumed = Recorder()
    result = train(dataclasses_replace(cfg, resume=str(out)), callbacks=[resumed])
    assert result.stopped == "completed" and result.epochs_completed == 2
    assert resumed.events[:4] == [
        ("train_start",),
        ("epoch_start", 1),
        ("step_end", 1, 2, 4),  # the resumed run picks up at step 2 of epoch 2
        ("validation_end", 1),
    ]
    assert resumed.events[-2:] == [("epoch_end", 2), ("train_end", "completed")]


def dataclasses_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


@pytest.mark.slow
def test_a_raising_callback_ends_the_cli_with_exit_2(synth, tmp_path, capfd, monkeypatch):
    builtins = loop.builtin_callbacks
    monkeypatch.setattr(loop, "builtin_callbacks", lambda cfg: [*builtins(cfg), Boom(1)])
    out = tmp_path / "cli"
    argv = ["train", "--data", str(synth), "--model", "efficientdet_lite0", "--image-size", "64"]
    argv += ["--epochs", "1", "--batch", "4", "--workers", "0", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "error: callback Boom.on_step_end (epoch 1, step 1): ValueError: boom;"
    )
    assert "Traceback" not in "\n".join(err)
    assert read_checkpoint(out / "last.pt")["train_state"]["global_step"] == 1
