"""Checkpoints: atomic write survives a crash mid-write, weights_only loading, RNG round trip;
the format's checksum and one-line messages for every kind of bad file; the last/best
transaction; the run lock; the divergence guard's arithmetic."""

from __future__ import annotations

import os
import random
import re

import numpy as np
import pytest
import torch

from efficientdet.engine import checkpoint as ckpt_mod
from efficientdet.engine.checkpoint import load_checkpoint, restore_best, rng_state, set_rng_state
from efficientdet.engine.guard import DivergenceGuard
from efficientdet.engine.runlock import RunLock
from efficientdet.errors import OutputError, WeightsError
from efficientdet.factory import load_model
from efficientdet.weights.checkpoint import read_checkpoint
from efficientdet.weights.checkpoint import write_checkpoint as save_checkpoint


def _payload(value: float) -> dict:
    return {
        "format": "efficientdet",
        "version": 1,
        "model": {"w": torch.full((3,), value)},
        "train_state": {"epoch": 2, "best_map": 0.5, "rng": rng_state()},
        "args": {"lr": 0.1},
    }


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
    with pytest.raises(OutputError, match=r"last\.pt: cannot write .No space left"):
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
    assert str(info.value).startswith(f"{bad}: not a complete checkpoint (the file is cut short")
    assert "\n" not in str(info.value)
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
        return (
            random.random(),
            random.gauss(0, 1),
            np.random.rand(3).tolist(),
            np.random.standard_normal(),
            torch.rand(4).tolist(),
            torch.randint(0, 1000, (3,)).tolist(),
        )

    expected = draw()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert draw() != expected
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert draw() == expected


# ----------------------------------------------------------------------------- format


def one_line_error(path) -> str:
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and "; fix: " in message, message
    assert "weights_only=False" not in message
    return message


def test_checksum_is_stored_and_checked_and_legacy_files_still_load(tmp_path):
    path = tmp_path / "a.pt"
    returned = save_checkpoint(path, _payload(1.0))
    raw = torch.load(path, weights_only=True)
    assert (
        raw["checksum"] == returned and returned.startswith("sha256:") and len(returned) == 7 + 64
    )
    legacy = tmp_path / "legacy.pt"
    torch.save(_payload(1.0), legacy)  # a plain torch.save (no checksum): still read
    assert torch.equal(read_checkpoint(legacy)["model"]["w"], torch.ones(3))
    raw["model"]["w"][0] = (
        5.0  # content changed, zip rebuilt by torch.save: only the sha256 can tell
    )
    torch.save(raw, tmp_path / "edited.pt")
    assert "checksum mismatch: the file is corrupted" in one_line_error(tmp_path / "edited.pt")


def test_every_flipped_byte_is_refused_in_one_line(tmp_path):
    """Flips in tensors, the pickle, zip headers, the magic bytes or the end records: all one
    'checksum mismatch' line (or, in padding and unused header fields, the intact content)."""
    path = tmp_path / "a.pt"
    save_checkpoint(
        path, {**_payload(1.0), "model": {"w": torch.arange(4096, dtype=torch.float32)}}
    )
    data = path.read_bytes()
    rng = random.Random(0)
    positions = rng.sample(range(len(data)), 200)
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        (tmp_path / "bad.pt").write_bytes(bytes(bad))
        try:
            obj = read_checkpoint(tmp_path / "bad.pt")
        except WeightsError as exc:
            assert str(exc).startswith(
                f"{tmp_path / 'bad.pt'}: checksum mismatch: the file is corrupted; fix: "
            )
            assert "\n" not in str(exc)
            continue
        # a flip the zip format ignores (padding, unused header fields): the content is intact
        assert torch.equal(obj["model"]["w"], torch.arange(4096, dtype=torch.float32)), pos


def test_what_a_wrong_file_is_is_said_in_one_line(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x03onnx")
    assert "an ONNX model, not a PyTorch checkpoint; fix: " in one_line_error(onnx)
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    assert "a text file, not a PyTorch checkpoint" in one_line_error(text)
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty file" in one_line_error(tmp_path / "empty.pt")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    assert "not a PyTorch checkpoint (unknown file type)" in one_line_error(tmp_path / "noise.pt")
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    assert "a TorchScript model, not a checkpoint" in one_line_error(scripted)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": random.Random(0)}, unsafe)
    assert "refused to unpickle" in one_line_error(unsafe)


def test_our_tag_without_config_is_a_one_line_error_not_a_keyerror(tmp_path):
    path = tmp_path / "tagged.pt"
    save_checkpoint(path, _payload(1.0))  # format tag, model section, no config
    with pytest.raises(WeightsError, match=r"tagged.pt: has no model config; fix: "):
        load_model(path)
    save_checkpoint(path, {"format": "efficientdet", "version": 1})
    with pytest.raises(WeightsError, match=r"has no 'model' state_dict of tensors"):
        load_model(path)
    save_checkpoint(path, {**_payload(1.0), "version": 99})
    with pytest.raises(
        WeightsError, match=r"version 99 is newer than this library reads \(1\); fix: upgrade"
    ):
        load_model(path)
    with pytest.raises(
        WeightsError,
        match=re.escape("holds no training state (best.pt?); fix: resume from the run's last.pt"),
    ):
        load_checkpoint(_tagged_with_config(tmp_path), training=True)


def test_predict_and_export_name_the_file_of_a_bad_checkpoint(tmp_path, capfd):
    """Found by trying: predict/export said 'error: checkpoint: checkpoint version 99 ...' without
    the file (Detector validated the dict it had read); now every command names it."""
    from PIL import Image

    from efficientdet.cli import main

    path = tmp_path / "from the future.pt"
    save_checkpoint(path, {**read_checkpoint(_tagged_with_config(tmp_path)), "version": 99})
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    for argv in (
        ["predict", "--source", str(tmp_path / "a.png"), "--out", str(tmp_path / "p")],
        ["export", "--out", str(tmp_path / "e")],
    ):
        assert main([*argv, "--weights", str(path), "--quiet"]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert err == [
            f"error: {path}: checkpoint version 99 is newer than this library reads (1); fix: upgrade efficientdet"
        ]


def _tagged_with_config(tmp_path):
    from efficientdet.factory import create_model, save_model_dict

    path = tmp_path / "best.pt"
    save_checkpoint(path, save_model_dict(create_model("lite0", num_classes=2, image_size=64)))
    return path


def test_nonfinite_weights_are_never_written(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(1.0))
    bad = _payload(1.0)
    bad["train_state"]["ema"] = {"module": {"fpn.w": torch.tensor([1.0, float("inf")])}}
    with pytest.raises(
        WeightsError, match=r"last.pt: not written: train_state.ema.module.fpn.w holds NaN/inf"
    ):
        save_checkpoint(path, bad)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3)) and os.listdir(
        tmp_path
    ) == ["last.pt"]


# ----------------------------------------------------------------------------- transaction, lock, guard


def test_restore_best_rewrites_a_missing_or_stale_best(tmp_path):
    best = {**_payload(3.0), "train_state": {"epoch": 4, "best_map": 0.25, "best_epoch": 4}}
    lines = []
    restore_best(tmp_path, best, lines.append)  # missing
    assert (
        len(lines) == 1
        and "best.pt: was missing" in lines[0]
        and "(epoch 4, mAP 0.2500)" in lines[0]
    )
    assert torch.equal(read_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.full((3,), 3.0))
    restore_best(tmp_path, best, lines.append)  # current: untouched
    assert len(lines) == 1
    save_checkpoint(tmp_path / "best.pt", _payload(1.0))  # an older best
    restore_best(tmp_path, best, lines.append)
    assert "from another moment than last.pt" in lines[1]
    assert torch.equal(read_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.full((3,), 3.0))


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    import subprocess
    import sys

    first = RunLock(tmp_path).acquire()
    with pytest.raises(
        OutputError,
        match=rf"another training run \(pid {os.getpid()} on .*\) is writing to this folder",
    ):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / ".lock").exists()
    # a process that took the lock and died without releasing it (SIGKILL: no cleanup ran)
    code = (
        "import os, signal, sys; from efficientdet.engine.runlock import RunLock; "
        "RunLock(sys.argv[1]).acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True)
    assert proc.returncode == -9 and (tmp_path / ".lock").read_text().startswith("pid ")
    lock = RunLock(tmp_path).acquire()  # stale: taken over
    assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} ")
    lock.release()


def test_divergence_guard_arithmetic():
    g = DivergenceGuard(max_rollbacks=2)
    assert g.check_loss(float("nan")) == "non-finite loss (nan)"
    assert g.wants_snapshot(2.0)  # no snapshot yet
    g.snapshot_taken()
    g.accept(2.0, 1.0)
    g.accept(4.0, 3.0)  # means: 0.9 * 2 + 0.1 * 4 = 2.2; 0.9 * 1 + 0.1 * 3 = 1.2
    assert g.loss_mean == pytest.approx(2.2) and g.grad_mean == pytest.approx(1.2)
    assert g.check_loss(44.0) is None  # 20 x 2.2 = 44: not over
    assert g.check_loss(44.1) == "loss 44.1 is over 20x its running mean 2.2"
    assert g.check_grad(120.0) is None and "gradient norm 121" in g.check_grad(121.0)
    assert g.check_grad(float("inf")) == "non-finite gradient norm (inf)"
    assert not g.rolled_back() and not g.rolled_back() and g.rolled_back()  # the 3rd of max 2 stops
