"""Fault injection for training: kills at any point (also between the two checkpoint writes),
Ctrl+C in the middle of a step, corrupted checkpoints, a full disk, two runs in one folder,
divergence, a validation split without boxes.

The truth each test checks against is independent of the code under test: an uninterrupted
run (weights compared bit for bit; same thread count, workers 0), the exit status and stderr of
the command, the files re-read from disk, hand-computed values.
Tiny settings: efficientdet_lite0 at 64x64, 8 training / 4 validation images, batch 4.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet import cli
from efficientdet.data.synth import write_synthetic_dataset
from efficientdet.detection.loss import DetectionLoss
from efficientdet.engine.trainer import TrainConfig, Trainer, train
from efficientdet.errors import OutputError, WeightsError
from efficientdet.weights.checkpoint import read_checkpoint

from .data_factory import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the CLI spelling of tiny_train_config(..., plots=False)
TINY_ARGS = [
    "--model",
    "lite0",
    "--image-size",
    "64",
    "--epochs",
    "2",
    "--batch",
    "4",
    "--lr",
    "0.01",
    "--workers",
    "0",
    "--ema-warmup",
    "2",
    "--seed",
    "0",
    "--quiet",
    "--no-plots",
]
FAULT_EXIT = (
    86  # efficientdet.weights.checkpoint.FAULT_EXIT_CODE, spelled out: the test's own truth
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(
        root / "data", num_train=8, num_val=4, seed=3, size=96, progress=False
    )


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory) -> Path:
    """The uninterrupted run every faulted run must end up equal to."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    result = train(tiny_train_config(synth, out, plots=False))
    assert result.stopped == "completed" and (out / "best.pt").is_file()
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_run(a_dir: Path, b_dir: Path) -> None:
    """last.pt (shipped and raw weights, optimizer, epoch) and best.pt of two runs are equal bit for bit."""
    a, b = load(a_dir / "last.pt"), load(b_dir / "last.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"last.pt model {k}"
    for k, v in a["train_state"]["model"].items():
        assert torch.equal(v, b["train_state"]["model"][k]), f"last.pt raw {k}"
    mom_a, mom_b = a["train_state"]["optimizer"]["state"], b["train_state"]["optimizer"]["state"]
    assert all(torch.equal(mom_a[i]["momentum_buffer"], mom_b[i]["momentum_buffer"]) for i in mom_a)
    assert a["train_state"]["epoch"] == b["train_state"]["epoch"] == 2
    best_a, best_b = load(a_dir / "best.pt"), load(b_dir / "best.pt")
    assert best_a["train_state"] == best_b["train_state"]
    for k, v in best_a["model"].items():
        assert torch.equal(v, best_b["model"][k]), f"best.pt model {k}"


def run_cli_subprocess(
    synth: Path, out: Path, env: dict | None = None, kill_after_s: float | None = None
):
    """``efficientdet train`` (tiny settings) in a child process; returns (exit code, stdout + stderr)."""
    cmd = [
        sys.executable,
        "-m",
        "efficientdet",
        "train",
        "--data",
        str(synth),
        *TINY_ARGS,
        "--out",
        str(out),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env
    )
    if kill_after_s is not None:
        deadline = time.monotonic() + 300
        while (
            not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(kill_after_s)
        proc.send_signal(signal.SIGKILL)
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"training subprocess timed out\n{output[-3000:]}")
    return proc.returncode, output


def resume(out: Path) -> str:
    """Resume the run in ``out`` to its end (quiet); returns its train.log (every line)."""
    result = train(TrainConfig(resume=str(out), progress=False))
    assert result.stopped == "completed" and result.epochs_completed == 2
    return (out / "train.log").read_text()


def one_error_line(capsys) -> str:
    """The one error line a user sees last (progress lines such as "loading X ..." may precede it)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0] and "Traceback" not in "\n".join(err), err
    return errors[0]


# ----------------------------------------------------------------------------- kills


@pytest.mark.slow
def test_kill_between_last_and_best_then_resume_equals_straight(synth, straight, tmp_path):
    out = tmp_path / "run"
    code, output = run_cli_subprocess(synth, out, {"EFFICIENTDET_FAULT_EXIT_AFTER": "last.pt:1"})
    assert code == FAULT_EXIT, output[-2000:]
    # killed right after epoch 1's last.pt: its best.pt was never written, the lock is left behind
    assert (out / "last.pt").is_file() and not (out / "best.pt").exists()
    dead_pid = int((out / ".lock").read_text().split()[1])  # "pid N on HOST"
    with pytest.raises(ProcessLookupError):
        os.kill(dead_pid, 0)
    printed = resume(out)
    assert (
        f"{out / 'best.pt'}: was missing" in printed
        and "rewritten from last.pt (epoch 1" in printed
    )
    assert_same_run(straight, out)
    assert not (out / ".lock").exists()  # released at the end (the dead run's lock was taken over)


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_then_resume_equals_straight(synth, straight, tmp_path):
    out = tmp_path / "run"
    code, output = run_cli_subprocess(synth, out, {"EFFICIENTDET_FAULT_EXIT_DURING": "last.pt:2"})
    assert code == FAULT_EXIT, output[-2000:]
    temps = [p.name for p in out.iterdir() if p.name.startswith(".last.pt.")]
    assert len(temps) == 1  # the half-written epoch-2 checkpoint
    assert load(out / "last.pt")["train_state"]["epoch"] == 1  # the previous one is intact
    printed = resume(out)
    assert f"removed 1 temporary file(s) left by a killed run ({temps[0]})" in printed
    assert_same_run(straight, out)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_equals_straight(synth, straight, tmp_path):
    """SIGKILL at a random moment after the first checkpoint (mid-step, mid-write, in validation...):
    whatever the moment, the resumed run must equal the straight one."""
    out = tmp_path / "run"
    delay = random.uniform(0.0, 2.0)
    print(f"SIGKILL {delay:.2f} s after the first last.pt")  # shown when the test fails
    code, output = run_cli_subprocess(synth, out, kill_after_s=delay)
    assert code in (-signal.SIGKILL, 0), output[-2000:]
    read_checkpoint(
        out / "last.pt"
    )  # whatever the moment, last.pt is complete and its checksum right
    resume(out)
    assert_same_run(straight, out)


class SigintInStep:
    """Deliver a real SIGINT in the middle of training step ``n``: inside the loss, after the
    model's forward pass has already moved the BatchNorm running statistics."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def install(self, monkeypatch) -> None:
        original = DetectionLoss.forward

        def forward(loss_self, *args, **kwargs):
            self.calls += 1
            if self.calls == self.n:
                os.kill(os.getpid(), signal.SIGINT)
            return original(loss_self, *args, **kwargs)

        monkeypatch.setattr(DetectionLoss, "forward", forward)


@pytest.mark.slow
def test_ctrl_c_mid_step_then_resume_equals_straight(synth, straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    SigintInStep(3).install(monkeypatch)  # step 1 of epoch 2
    first = train(tiny_train_config(synth, out, plots=False))
    monkeypatch.undo()
    assert first.stopped == "interrupted"
    ts = load(out / "last.pt")["train_state"]
    assert (ts["epoch"], ts["step_in_epoch"]) == (
        1,
        1,
    )  # the interrupted step was completed, then saved
    resume(out)
    assert_same_run(straight, out)


# ----------------------------------------------------------------------------- corrupted files


def flip_byte_in_a_tensor(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` with one bit flipped in the middle of its largest tensor's bytes."""
    with zipfile.ZipFile(src) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(src.read_bytes())
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = (
        info.header_offset + 30 + name_len + extra_len
    )  # the member's stored bytes (uncompressed)
    data[start + info.file_size // 2] ^= 0x10
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """An untrained 6-class Lite0 at 64x64 in our format (as best.pt would hold it)."""
    from efficientdet.factory import create_model
    from efficientdet.weights.checkpoint import save_model_dict, write_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "best.pt"
    write_checkpoint(path, save_model_dict(create_model("lite0", num_classes=6, image_size=64)))
    return path


def test_flipped_byte_is_refused_by_every_command(synth, model_file, tmp_path, capsys):
    bad = tmp_path / "best.pt"
    flip_byte_in_a_tensor(model_file, bad)
    image = next((synth.parent / "images").glob("val_*.jpg"))
    commands = {
        "val": [
            "val",
            "--weights",
            str(bad),
            "--data",
            str(synth),
            "--workers",
            "0",
            "--quiet",
            "--out",
            str(tmp_path / "val"),
        ],
        "predict": [
            "predict",
            "--weights",
            str(bad),
            "--source",
            str(image),
            "--out",
            str(tmp_path / "pred"),
        ],
        "export": [
            "export",
            "--weights",
            str(bad),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
        ],
        "train --weights": [
            "train",
            "--data",
            str(synth),
            *TINY_ARGS,
            "--weights",
            str(bad),
            "--out",
            str(tmp_path / "train"),
        ],
    }
    expected = f"error: {bad}: checksum mismatch: the file is corrupted; fix: "
    for what, argv in commands.items():
        capsys.readouterr()
        assert cli.main(argv) == 2, what
        assert one_error_line(capsys).startswith(expected), what
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt"
    ]  # nothing written by any of them

    run = tmp_path / "resume"
    run.mkdir()
    shutil.copy(bad, run / "last.pt")
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert one_error_line(capsys).startswith(f"error: {run / 'last.pt'}: checksum mismatch")


def test_changed_tensor_with_a_valid_zip_fails_the_stored_checksum(model_file, tmp_path):
    """A file re-saved with one weight changed (zip CRCs right) is caught by the sha256."""
    ckpt = load(model_file)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 10)
    ckpt["model"][key] = ckpt["model"][key].contiguous()  # (saved in channels_last)
    ckpt["model"][key].view(-1)[5] += 1.0
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(
        WeightsError, match=r"edited.pt: checksum mismatch: the file is corrupted; fix: "
    ) as info:
        read_checkpoint(tmp_path / "edited.pt")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- disk full, two runs


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(
    synth, straight, small_fs, capsys
):
    last, best = (straight / "last.pt").stat().st_size, (straight / "best.pt").stat().st_size
    fs = small_fs(
        int(1.5 * last) + best + (1 << 20)
    )  # epoch 1's pair fits; epoch 2's last.pt does not
    out = fs / "run"
    capsys.readouterr()
    assert cli.main(["train", "--data", str(synth), *TINY_ARGS, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert line == (
        f"error: {out / 'last.pt'}: cannot write (No space left on device); "
        "fix: free disk space or write elsewhere (--out)"
    )
    assert load(out / "last.pt")["train_state"]["epoch"] == 1
    read_checkpoint(out / "last.pt")  # complete, checksum right
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_resume_of_a_read_only_run_says_how_to_resume_it(straight, small_fs, capsys):
    """Was "fix: pick a folder you can write to (--out)", but --resume refuses --out."""
    fs = small_fs((straight / "last.pt").stat().st_size + (1 << 20))
    run = fs / "run"
    run.mkdir()
    for name in ("last.pt", "args.yaml"):
        shutil.copy(straight / name, run / name)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True, capture_output=True)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert one_error_line(capsys) == (
        f"error: {run / '.lock'}: cannot create the run lock (Read-only file system); "
        f"fix: make {run} writable, or copy it somewhere writable and resume the copy"
    )


class SecondRunAt:
    """At global step ``n`` of a running run, start two more runs in its folder."""

    def __init__(self, n: int, cfg: TrainConfig, capsys) -> None:
        self.n, self.cfg, self.capsys = n, cfg, capsys
        self.errors: list[str] = []
        self.files_before = self.files_after = None

    def files(self, folder: Path) -> dict:
        return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}

    def on_step_end(self, trainer) -> None:
        if trainer.global_step != self.n:
            return
        self.files_before = self.files(trainer.run_dir)
        with pytest.raises(OutputError) as info:  # a second fresh run with --exist-ok
            Trainer(self.cfg).fit()
        self.errors.append(str(info.value))
        self.capsys.readouterr()
        code = cli.main(["train", "--resume", str(trainer.run_dir)])  # a resume of the running run
        self.errors.append(f"{code} {one_error_line(self.capsys)}")
        self.files_after = self.files(trainer.run_dir)


@pytest.mark.slow
def test_second_run_in_the_same_folder_is_refused(synth, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_train_config(synth, out, plots=False, exist_ok=True)
    second = SecondRunAt(3, cfg, capsys)  # step 1 of epoch 2: last.pt of epoch 1 exists
    result = train(cfg, callbacks=[second])
    assert result.stopped == "completed"
    message = f"{out}: another training run (pid {os.getpid()} on "
    assert second.errors[0].startswith(message) and second.errors[0].endswith(
        ") is writing to this folder; fix: wait for it to finish, or give another --out"
    )
    assert second.errors[1].startswith(f"2 error: {message}") and second.errors[1].endswith(
        ") is writing to this folder; fix: wait for it to finish"
    )  # --resume refuses --out: not offered
    assert (
        "last.pt" in second.files_before and second.files_after == second.files_before
    )  # nothing touched
    assert not (out / ".lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no run2 either


# ----------------------------------------------------------------------------- divergence, no val boxes


@pytest.mark.slow
def test_divergence_rolls_back_and_lowers_lr_and_never_saves_nonfinite(synth, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(synth),
        "--model",
        "lite0",
        "--image-size",
        "64",
        "--epochs",
        "2",
        "--batch",
        "2",
        "--lr",
        "10",
        "--clip-grad",
        "0",
        "--warmup-epochs",
        "0",
        "--workers",
        "0",
        "--quiet",
        "--no-plots",
        "--out",
        str(out),
    ]
    capsys.readouterr()
    code = cli.main(args)
    captured = capsys.readouterr()
    lines = [ln for ln in captured.out.splitlines() if "rolled back to" in ln]
    assert lines, captured.out[-3000:]  # with lr 10 and no clipping the loss explodes at once
    assert all("learning rate lowered 2x to" in ln for ln in lines)
    lrs = [float(ln.split("learning rate lowered 2x to ")[1].split()[0]) for ln in lines]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 10 / 2 + 1e-9
    if code == 2:  # stopped: one clear line
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: training diverged at epoch"), err
    else:
        assert code == 0
    for name in ("last.pt", "best.pt"):
        if (out / name).exists():
            ckpt = read_checkpoint(out / name)
            sections = [ckpt["model"]] + (
                [ckpt["train_state"]["model"]] if "model" in ckpt["train_state"] else []
            )
            assert all(
                torch.isfinite(v).all()
                for s in sections
                for v in s.values()
                if v.is_floating_point()
            ), name
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert rows and all("nan" not in r and "inf" not in r for r in rows)


def test_val_split_without_boxes_writes_no_best_and_says_so(synth, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth.parent, data)
    val = json.loads((data / "val.json").read_text())
    val["annotations"] = []
    (data / "val.json").write_text(json.dumps(val))
    out = tmp_path / "run"
    capsys.readouterr()
    result = train(tiny_train_config(data / synth.name, out, epochs=1, plots=False))
    printed = capsys.readouterr().out
    assert result.stopped == "completed" and result.best_checkpoint is None
    assert not (out / "best.pt").exists() and (out / "last.pt").is_file()
    assert (
        "validation split has no boxes" in printed
        and "best.pt is not written; use last.pt" in printed
    )
    final = [ln for ln in printed.splitlines() if ln.startswith(f"results in {out}:")]
    assert final == [
        f"results in {out}: no best.pt (the validation split has no boxes; use last.pt), last.pt, "
        "results.csv, debug"  # debug/: the first training batches, drawn (engine/debug_views.py)
    ]
    assert sorted(p.name for p in (out / "debug").iterdir()) == [
        "train_batch_0.png",
        "train_batch_1.png",
        "val_epoch_1.png",  # predictions on images without boxes (debug_views.pick_debug_images)
    ]
    with Image.open(out / "debug" / "train_batch_0.png") as im:  # drawn by engine/debug_views
        assert im.mode == "RGB" and len(set(np.asarray(im.convert("L")).ravel().tolist())) > 10
