"""Outputs written safely: a full disk, a read-only folder or an --out under a file end export,
val and predict with one line naming the path and exit status 2, and leave no partial file
(real tmpfs filesystems from the small_fs / readonly_dir fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# as efficientdet.deploy.sources does before its first capture (this module uses OpenCV earlier)
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet import create_model, fileio
from efficientdet.cli import main
from efficientdet.factory import save_model_dict

from .faults import fail_on_call

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, image_size=64).eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    torch.save(save_model_dict(model, ["ellipse", "rectangle", "triangle"]), path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two 160x160 noise images (PNG of ~75 KB each: more than a 16 KiB filesystem holds)."""
    folder = tmp_path_factory.mktemp("photos")
    rs = np.random.RandomState(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rs.randint(0, 256, (160, 160, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """(dataset YAML, a checkpoint with its classes) for val."""
    from efficientdet.data.synth import CATEGORY_IDS, CLASS_NAMES, write_synthetic_dataset

    root = tmp_path_factory.mktemp("shapes")
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=len(CLASS_NAMES), image_size=64).eval()
    torch.save(save_model_dict(model, CLASS_NAMES, CATEGORY_IDS), root / "shapes.pt")
    return write_synthetic_dataset(
        root / "data", 1, 2, seed=0, size=64, progress=False
    ), root / "shapes.pt"


def _one_error_line(capfd, path) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "fix:" in err[0], err
    assert str(path) in err[0], err
    return err[0]


def _files(folder: Path) -> list[str]:
    """Every file left under ``folder`` (temporaries included: their names start with '.')."""
    return (
        sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if folder.exists()
        else []
    )


def _under_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    return blocker / "out"


# ------------------------------------------------------------------ export
def test_export_on_a_full_disk_leaves_no_partial_onnx(ckpt, small_fs, capfd):
    fs = small_fs(1 << 20)  # the Lite0 ONNX file is ~13 MB
    out = fs / "exported"
    assert main(["export", "--weights", str(ckpt), "--out", str(out), "--quiet"]) == 2
    line = _one_error_line(capfd, out / "small.onnx")
    assert "No space left" in line and "free disk space" in line
    assert _files(fs) == []  # neither a truncated small.onnx nor its temporary file


def test_export_to_a_read_only_folder_or_under_a_file(ckpt, readonly_dir, tmp_path, capfd):
    out = readonly_dir / "exported"
    assert (
        main(
            [
                "export",
                "--weights",
                str(ckpt),
                "--format",
                "torchscript",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "cannot create the folder" in _one_error_line(capfd, out)
    out = _under_a_file(tmp_path)
    assert main(["export", "--weights", str(ckpt), "--out", str(out), "--quiet"]) == 2
    assert "a parent of this path is a file" in _one_error_line(capfd, out)


def test_interrupted_export_removes_the_folder_it_created(ckpt, tmp_path, monkeypatch, capfd):
    """Ctrl+C in the converter (exit 130) or a failed export leaves no empty runs/export/N or new
    --out folder behind; a folder that existed before is kept, and so is one holding a file."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.onnx, "export", interrupted)
    export = ["export", "--weights", str(ckpt), "--quiet"]
    (tmp_path / "runs" / "export" / "1").mkdir(parents=True)  # an earlier export's (empty)
    (tmp_path / "kept").mkdir()
    for out in ([], ["--out", "new/folder"], ["--out", "kept"]):
        assert main([*export, *out]) == 130
        assert capfd.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "kept",
        "new",
        "runs",
        "runs/export",
        "runs/export/1",
    ]
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: 1 / 0)  # a failure, not a user error
    with pytest.raises(ZeroDivisionError):
        main([*export, "--out", "failed"])
    assert not (tmp_path / "failed").exists()


# ------------------------------------------------------------------ val
def test_val_on_a_full_disk_leaves_no_empty_results(shapes, small_fs, capfd):
    data, weights = shapes
    fs = small_fs(4096)  # one page: the ~20 KB of results.json does not fit
    rc = main(
        [
            "val",
            "--weights",
            str(weights),
            "--data",
            str(data),
            "--out",
            str(fs),
            "--exist-ok",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 2
    line = _one_error_line(capfd, fs / "results.json")
    assert "No space left" in line
    assert _files(fs) == []  # no 0-byte results.json


def test_val_to_a_read_only_folder(shapes, readonly_dir, capfd):
    data, weights = shapes
    rc = main(
        [
            "val",
            "--weights",
            str(weights),
            "--data",
            str(data),
            "--out",
            str(readonly_dir),
            "--exist-ok",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 2
    assert "pick a folder you can write to" in _one_error_line(capfd, readonly_dir / "results.json")
    assert _files(readonly_dir) == []


# ------------------------------------------------------------------ predict
def test_val_json_in_a_read_only_folder_is_refused_before_the_work(
    shapes, readonly_dir, tmp_path, capfd
):
    """Found by trying: val --json ro/x.json evaluated the whole split, then failed to write."""
    data_yaml, weights = shapes
    target = readonly_dir / "x.json"
    assert (
        main(
            [
                "val",
                "--weights",
                str(weights),
                "--data",
                str(data_yaml),
                "--out",
                str(tmp_path / "v"),
                "--json",
                str(target),
                "--quiet",
            ]
        )
        == 2
    )
    assert "is read-only" in _one_error_line(capfd, target)
    assert not (tmp_path / "v").exists()  # refused before evaluating (no run folder claimed)


def test_predict_on_a_full_disk_leaves_no_partial_image(ckpt, photos, small_fs, capfd):
    fs = small_fs(16384)
    out = fs / "pred"
    rc = main(
        ["predict", "--weights", str(ckpt), "--source", str(photos), "--out", str(out), "--quiet"]
    )
    assert rc == 2
    line = _one_error_line(capfd, out / "a.png")
    assert "No space left" in line
    assert _files(fs) == []  # no truncated a.png, no temporary file


def test_predict_to_a_read_only_folder_or_under_a_file(ckpt, photos, readonly_dir, tmp_path, capfd):
    out = readonly_dir / "pred"
    assert (
        main(
            [
                "predict",
                "--weights",
                str(ckpt),
                "--source",
                str(photos),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "cannot create the folder" in _one_error_line(capfd, out)
    out = _under_a_file(tmp_path)
    assert (
        main(
            [
                "predict",
                "--weights",
                str(ckpt),
                "--source",
                str(photos),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "a parent of this path is a file" in _one_error_line(capfd, out)


@pytest.mark.slow
def test_predict_read_only_out_as_a_user_sees_it(ckpt, photos, readonly_dir):
    """The installed command in a fresh process: exit status 2, one line on stderr, no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "efficientdet",
            "predict",
            "--weights",
            str(ckpt),
            "--source",
            str(photos),
            "--out",
            str(readonly_dir),
            "--exist-ok",
            "--device",
            "cpu",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
    )
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert (
        len(err) == 1 and err[0].startswith(f"error: {readonly_dir}") and "Read-only" in err[0]
    ), proc.stderr
    assert _files(readonly_dir) == []


def test_predict_video_on_a_full_disk_leaves_no_truncated_video(ckpt, tmp_path, small_fs, capfd):
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 128))
    rs = np.random.RandomState(1)
    for _ in range(6):  # noise compresses badly: ~50 KB a frame
        writer.write(rs.randint(0, 256, (128, 160, 3), dtype=np.uint8))
    writer.release()
    fs = small_fs(32768)
    out = fs / "pred"
    rc = main(
        ["predict", "--weights", str(ckpt), "--source", str(video), "--out", str(out), "--quiet"]
    )
    assert rc == 2
    assert "No space left" in _one_error_line(capfd, out / "clip.mp4")
    assert _files(fs) == []
    # with room, the same run writes a video that reads back with every frame
    out = tmp_path / "ok"
    assert (
        main(
            [
                "predict",
                "--weights",
                str(ckpt),
                "--source",
                str(video),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()


# ------------------------------------------------------------------ run folders of failed runs
def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_failed_or_interrupted_predict_removes_the_folder_it_created(
    ckpt, photos, tmp_path, monkeypatch, capfd
):
    """Ctrl+C (exit 130) or a failed first write (exit 2, one line) leaves no empty
    runs/predict/N or new --out folder; a folder that existed before is kept, and so is one
    holding the detections of the images done before Ctrl+C."""
    import errno

    from efficientdet.deploy import predict_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "predict" / "1").mkdir(parents=True)  # an earlier run's (empty)
    (tmp_path / "kept").mkdir()
    predict = ["predict", "--weights", str(ckpt), "--source", str(photos), "--quiet"]
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    for error, out, status in (
        (KeyboardInterrupt(), [], 130),
        (KeyboardInterrupt(), ["--out", "kept"], 130),
        (full, ["--out", "new/folder"], 2),
        (full, [], 2),
    ):
        with fail_on_call(fileio, "_new_temporary", 1, error):  # the first file written
            assert main([*predict, "--no-save", *out]) == status
        last = capfd.readouterr().err.strip().splitlines()[-1]
        assert last == "interrupted" if status == 130 else "No space left" in last
    assert _tree(tmp_path) == ["kept", "new", "runs", "runs/predict", "runs/predict/1"]

    def interrupted(*args, **kwargs):  # Ctrl+C before the first image is done
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(predict_cli, "_process", interrupted)
        assert main([*predict, "--out", "cut"]) == 130
    assert capfd.readouterr().err.strip().splitlines() == ["interrupted"]
    assert not (tmp_path / "cut").exists()  # no empty predictions.json either
    # Ctrl+C at the first annotated image: the first image's detections are kept
    with fail_on_call(fileio, "_new_temporary", 1, KeyboardInterrupt()):
        assert main(predict) == 130
    assert "interrupted after 1 of 2 images" in capfd.readouterr().err
    assert _tree(tmp_path / "runs" / "predict") == ["1", "2", "2/predictions.json"]


def test_failed_or_interrupted_val_removes_the_folder_it_created(
    shapes, tmp_path, monkeypatch, capfd
):
    """Ctrl+C (exit 130) or a full disk (exit 2, one line) at val's first write leaves no
    empty runs/val/N or new --out folder; a folder that existed before is kept."""
    import errno

    data, weights = shapes
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kept").mkdir()
    val = ["val", "--weights", str(weights), "--data", str(data)]
    val += ["--workers", "0", "--device", "cpu", "--quiet"]
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    for error, out, status in (
        (KeyboardInterrupt(), [], 130),
        (full, ["--out", "new"], 2),
        (KeyboardInterrupt(), ["--out", "kept"], 130),
    ):
        with fail_on_call(fileio, "_new_temporary", 1, error):  # the first file written
            assert main([*val, *out]) == status
        last = capfd.readouterr().err.strip().splitlines()[-1]
        assert last == "interrupted" if status == 130 else "No space left" in last
    assert _tree(tmp_path) == ["kept", "runs", "runs/val"]
