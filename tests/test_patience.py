"""``--patience``: early stopping on validation mAP.

The validation mAP is made deterministic by replacing the evaluation the trainer calls
(``efficientdet.engine.evaluator.evaluate``) with one that returns a scripted sequence; the
training itself is real but tiny (efficientdet_lite0 at 64x64, 4 training images, one step per
epoch, no EMA, no plots).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from efficientdet.data.synth import write_synthetic_dataset
from efficientdet.engine import evaluator
from efficientdet.engine.evaluator import STAT_NAMES, EvalResult
from efficientdet.engine.trainer import TrainConfig, train
from efficientdet.errors import ConfigError

from .data_factory import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(
        root / "data", num_train=4, num_val=2, seed=5, size=64, progress=False
    )


def tiny(data, out, **kw):
    return tiny_train_config(data, out, ema=False, plots=False, **kw)  # best.pt holds the raw model


def script_map(monkeypatch, maps: list[float]) -> list[float]:
    """Make each validation return the next mAP of ``maps``; returns the list of mAPs served."""
    served: list[float] = []

    def fake_evaluate(model, data, *args, **kwargs) -> EvalResult:
        value = maps[len(served)]  # an IndexError here means more validations than scripted
        served.append(value)
        stats = {name: 0.0 for name in STAT_NAMES}
        stats["mAP"], stats["AP50"] = value, min(1.0, 2 * value)
        return EvalResult(stats=stats, num_images=len(data.records))

    monkeypatch.setattr(evaluator, "evaluate", fake_evaluate)
    return served


class Snapshots:
    """The weights best.pt would hold (the eval model's) at the end of every epoch."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict] = {}

    def on_epoch_end(self, trainer, row) -> None:
        model = trainer.eval_model()
        self.by_epoch[row["epoch"]] = {
            k: v.detach().cpu().clone() for k, v in model.state_dict().items()
        }


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stops_after_patience_epochs_without_better_map(synth, tmp_path, monkeypatch):
    served = script_map(monkeypatch, [0.1, 0.3, 0.2, 0.25, 0.29, 0.5, 0.6, 0.7])
    snaps = Snapshots()
    out = tmp_path / "run"
    result = train(tiny(synth, out, epochs=8, patience=3), callbacks=[snaps])

    # best at epoch 2 (0.3); epochs 3, 4, 5 do not beat it -> stop after epoch 5, 0.5 never seen
    assert served == [0.1, 0.3, 0.2, 0.25, 0.29]
    assert result.stopped == "early_stopping" and result.epochs_completed == 5
    assert result.best_epoch == 2 and result.best_map == pytest.approx(0.3)
    rows = read_csv(out / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [float(r["mAP"]) for r in rows] == pytest.approx([0.1, 0.3, 0.2, 0.25, 0.29])

    message = "early stopping: no better val mAP for 3 epochs (best 0.3000 at epoch 2)"
    assert message in (out / "train.log").read_text()  # quiet (progress=False): not printed

    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert last["train_state"]["epoch"] == 5
    assert last["train_state"]["best_epoch"] == 2 and last["train_state"][
        "best_map"
    ] == pytest.approx(0.3)
    assert same_weights(last["model"], snaps.by_epoch[5])

    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert best["train_state"] == {"epoch": 2, "best_map": pytest.approx(0.3), "best_epoch": 2}
    assert best["metrics"]["mAP"] == pytest.approx(0.3)
    assert same_weights(best["model"], snaps.by_epoch[2])
    assert not same_weights(best["model"], snaps.by_epoch[5])  # the weights did move after epoch 2
    assert result.best_checkpoint == out / "best.pt" and result.last_checkpoint == out / "last.pt"
    assert result.metrics["mAP"] == pytest.approx(
        0.3
    )  # metrics.json / TrainResult: the best epoch's


def test_no_patience_never_stops_early(synth, tmp_path, monkeypatch):
    served = script_map(monkeypatch, [0.5, 0.4, 0.3, 0.2, 0.1])  # only worse after epoch 1
    result = train(tiny(synth, tmp_path / "run", epochs=5, patience=None))
    assert result.stopped == "completed" and result.epochs_completed == 5 and len(served) == 5
    assert result.best_epoch == 1 and result.best_map == pytest.approx(0.5)
    assert len(read_csv(tmp_path / "run" / "results.csv")) == 5


def test_patience_zero_is_refused():
    # 0 is not "off": leave patience out (None) to never stop early
    with pytest.raises(ConfigError, match="patience=0"):
        TrainConfig(data="d.yaml", patience=0)
