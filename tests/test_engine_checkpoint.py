"""Checkpoints: atomic write survives a crash mid-write, weights_only loading, RNG round trip."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from efficientdet.engine import checkpoint as ckpt_mod
from efficientdet.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from efficientdet.errors import OutputError, WeightsError


def _payload(value: float) -> dict:
    return {"format": "efficientdet", "version": 1, "model": {"w": torch.full((3,), value)},
            "train_state": {"epoch": 2, "best_map": 0.5, "rng": rng_state()}, "args": {"lr": 0.1}}


def test_save_load_weights_only(tmp_path):
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, _payload(1.0))
    # independent check: plain torch.load with weights_only=True reads it
    raw = torch.load(path, weights_only=True)
    assert torch.equal(raw["model"]["w"], torch.ones(3))
    assert raw["train_state"]["epoch"] == 2
    assert load_checkpoint(path)["args"] == {"lr": 0.1}
    assert sorted(os.listdir(path.parent)) == ["last.pt"]


def test_crash_in_torch_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(1.0))

    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial bytes")  # something half-written first
        raise KeyboardInterrupt  # a kill / Ctrl-C mid-write

    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _payload(2.0))
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_crash_at_replace_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(1.0))

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.os, "replace", failing_replace)
    with pytest.raises(OutputError, match="last.pt: cannot write .No space left"):
        save_checkpoint(path, _payload(2.0))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_truncated_and_missing_files_are_one_line_errors(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(1.0))
    data = path.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as info:
        load_checkpoint(bad)
    assert "bad.pt" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(WeightsError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_round_trip_through_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    random.gauss(0, 1)
    state = rng_state()
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": state})

    def draw():
        return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
                torch.rand(4).tolist(), torch.randint(0, 1000, (3,)).tolist())

    expected = draw()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert draw() != expected
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert draw() == expected
