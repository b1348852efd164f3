"""Run folders: every command writes to a new numbered folder; an --out that is or holds an input
(source images, dataset, weights) is refused with one line; annotated images never replace a
source file; soft-NMS reaches the library from the command line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet import create_model
from efficientdet.cli import main
from efficientdet.factory import save_model_dict
from efficientdet.run_dirs import make_run_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 3-class Lite0 checkpoint (random weights) at 64x64."""
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, image_size=64).eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    torch.save(save_model_dict(model, NAMES), path)
    return path


def _photos(folder: Path, names=("a.jpg", "b.png")) -> dict[str, str]:
    """Random photos; returns {name: sha256 of the bytes}."""
    folder.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(0)
    for i, name in enumerate(names):
        Image.fromarray(rs.randint(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(folder / name)
    return _digests(folder)


def _digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error_line(capfd) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "fix:" in err[0], err
    return err[0]


def test_make_run_dir_numbers_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        make_run_dir(None, command="predict") == Path("runs/predict/1")
        and Path("runs/predict/1").is_dir()
    )
    assert make_run_dir(None, command="predict") == Path("runs/predict/2")
    (tmp_path / "runs/predict/7").mkdir()
    assert make_run_dir(None, command="predict") == Path(
        "runs/predict/8"
    )  # above every existing number
    assert make_run_dir("runs/val", command="val") == Path(
        "runs/val/1"
    )  # the default folders always hold runs
    assert make_run_dir("runs/train", True) == Path("runs/train/1")  # TrainConfig.out's default
    mine = tmp_path / "mine"
    assert make_run_dir(mine) == mine  # does not exist yet
    mine.mkdir()
    assert make_run_dir(mine) == mine  # empty
    (mine / "predictions.json").write_text("[]")
    assert make_run_dir(mine) == Path(f"{mine}2")  # holds a run: a number is added
    Path(f"{mine}2").mkdir()
    assert make_run_dir(mine) == Path(f"{mine}3")
    assert make_run_dir(mine, exist_ok=True) == mine


def test_an_out_that_is_a_file_is_refused(ckpt, tmp_path, capfd):
    """Found by trying: train --out notes.txt trained into a new folder 'notes.txt2'."""
    from efficientdet.data.synth import write_synthetic_dataset

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", 1, 1, seed=0, size=64, progress=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for argv in (
        [
            "train",
            "--data",
            str(data_yaml),
            "--model",
            "lite0",
            "--image-size",
            "64",
            "--epochs",
            "1",
        ],
        ["data", "synth", "--images", "1"],
        ["export", "--weights", str(ckpt)],
    ):
        assert main([*argv, "--out", str(notes), "--quiet"]) == 2, argv
        assert (
            _error_line(capfd)
            == f"error: {notes}: --out names a file, not a folder; fix: give --out a new or empty folder"
        )
    assert notes.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt",
        "shapes",
    ]


def test_predict_twice_writes_two_numbered_runs(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _photos(tmp_path / "first", ["a.jpg"])
    _photos(tmp_path / "second", ["z.png"])
    assert (
        main(["predict", "--weights", str(ckpt), "--source", "first", "--conf", "0.01", "--quiet"])
        == 0
    )
    assert (
        main(["predict", "--weights", str(ckpt), "--source", "second", "--conf", "0.01", "--quiet"])
        == 0
    )
    runs = tmp_path / "runs" / "predict"
    assert sorted(p.name for p in runs.iterdir()) == ["1", "2"]
    assert sorted(p.name for p in (runs / "1").iterdir()) == ["a.jpg", "predictions.json"]
    assert sorted(p.name for p in (runs / "2").iterdir()) == [
        "predictions.json",
        "z.png",
    ]  # no old image beside it
    assert {r["file_name"] for r in json.loads((runs / "2" / "predictions.json").read_text())} <= {
        "z.png"
    }
    assert "runs/predict/2" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["the folder", "its parent", "an image"])
def test_predict_refuses_an_out_that_holds_the_source(ckpt, tmp_path, capfd, where):
    photos = tmp_path / "album" / "photos"
    before = _photos(photos)
    source = photos / "a.jpg" if where == "an image" else photos
    out = {"the folder": photos, "its parent": photos.parent, "an image": photos}[where]
    for extra in ([], ["--exist-ok"]):
        rc = main(
            [
                "predict",
                "--weights",
                str(ckpt),
                "--source",
                str(source),
                "--out",
                str(out),
                "--conf",
                "0.01",
                *extra,
            ]
        )
        assert rc == 2
        line = _error_line(capfd)
        assert str(out) in line and "holds the source" in line
    assert _digests(photos) == before  # the originals are untouched, nothing added


def test_val_train_and_export_refuse_an_out_that_holds_their_inputs(ckpt, tmp_path, capfd):
    from efficientdet.data.synth import write_synthetic_dataset

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", 1, 1, seed=0, size=64, progress=False)
    before = _digests(data_yaml.parent)
    rc = main(
        [
            "val",
            "--weights",
            str(ckpt),
            "--data",
            str(data_yaml),
            "--out",
            str(data_yaml.parent),
            "--quiet",
        ]
    )
    assert rc == 2 and "holds the dataset" in _error_line(capfd)
    assert _digests(data_yaml.parent) == before
    rc = main(
        [
            "train",
            "--data",
            str(data_yaml),
            "--out",
            str(data_yaml.parent),
            "--image-size",
            "64",
            "--quiet",
        ]
    )
    assert rc == 2 and "holds the dataset" in _error_line(capfd)
    assert _digests(data_yaml.parent) == before
    rc = main(
        ["export", "--weights", str(ckpt), "--out", str(ckpt.parent), "--exist-ok", "--quiet"]
    )
    assert rc == 2 and "holds the weights file" in _error_line(capfd)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["small.pt"]


def test_json_never_overwrites_an_input(ckpt, tmp_path, capfd, monkeypatch):
    """--json PATH naming the weights, the dataset YAML or annotations, a source or dataset image,
    or a folder is refused before any work, in one line, and the input's bytes are unchanged
    (found by trying it: val/predict/data check/bench used to write their JSON over it)."""
    from efficientdet.data.synth import write_synthetic_dataset

    monkeypatch.chdir(tmp_path)
    data_yaml = write_synthetic_dataset(tmp_path / "shapes", 1, 1, seed=0, size=64, progress=False)
    photos = tmp_path / "photos"
    _photos(photos)
    inputs = [ckpt, data_yaml.parent, photos]
    before = [_digests(p.parent if p.is_file() else p) for p in inputs]
    image = sorted((data_yaml.parent / "images").iterdir())[0]
    val = ["val", "--weights", str(ckpt), "--data", str(data_yaml), "--quiet"]
    predict = ["predict", "--weights", str(ckpt), "--source", str(photos), "--quiet"]
    cases = [
        (val, ckpt, "would overwrite the weights file"),
        (val, data_yaml.parent / "val.json", "would overwrite the dataset"),
        (val, image, "would overwrite a file in the dataset"),
        (predict, photos / "a.jpg", "would overwrite a file in the source"),
        (predict, ckpt, "would overwrite the weights file"),
        (["data", "check", str(data_yaml), "--quiet"], data_yaml, "would overwrite the dataset"),
        (
            ["bench", "--weights", str(ckpt), "--model", "lite0", "--quiet"],
            ckpt,
            "would overwrite the weights file",
        ),
        (predict, photos, "names a folder"),
    ]
    for argv, target, message in cases:
        assert main([*argv, "--json", str(target)]) == 2, (argv, target)
        line = _error_line(capfd)
        assert message in line and str(target) in line and "--json" in line, line
    assert [_digests(p.parent if p.is_file() else p) for p in inputs] == before
    assert not (tmp_path / "runs").exists()  # refused before claiming a run folder


def test_predict_soft_nms_is_the_library_soft_nms(ckpt, tmp_path):
    """--nms soft gives the detections of the library's Gaussian soft-NMS (NMSConfig method
    'gaussian'), which differ from hard NMS on the same image."""
    from efficientdet import Detector

    photos = tmp_path / "p"
    _photos(photos, ["a.png"])
    common = [
        "--weights",
        str(ckpt),
        "--source",
        str(photos / "a.png"),
        "--conf",
        "0.005",
        "--no-save",
        "--quiet",
    ]
    assert main(["predict", *common, "--out", str(tmp_path / "soft"), "--nms", "soft"]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "hard")]) == 0
    soft = json.loads((tmp_path / "soft" / "predictions.json").read_text())
    hard = json.loads((tmp_path / "hard" / "predictions.json").read_text())

    det = Detector(ckpt, conf=0.005)
    det.nms = dataclasses.replace(det.nms, method="gaussian")
    ref = det(str(photos / "a.png"))
    assert len(soft) == len(ref.scores) > 0
    for k in range(len(NAMES)):  # per class, scores compared order-insensitively
        got = sorted(r["score"] for r in soft if r["category_id"] == k)
        want = sorted(float(s) for s, c in zip(ref.scores, ref.labels, strict=True) if int(c) == k)
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert sorted(r["score"] for r in soft) != sorted(r["score"] for r in hard)


def test_val_soft_nms_is_the_library_soft_nms(tmp_path):
    """val --nms soft evaluates the detections of evaluate() with Gaussian soft-NMS."""
    from efficientdet.config import NMSConfig
    from efficientdet.data import load_dataset
    from efficientdet.data.synth import CATEGORY_IDS, CLASS_NAMES, write_synthetic_dataset
    from efficientdet.engine.evaluator import evaluate

    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=len(CLASS_NAMES), image_size=64).eval()
    weights = tmp_path / "shapes.pt"
    torch.save(save_model_dict(model, CLASS_NAMES, CATEGORY_IDS), weights)
    data_yaml = write_synthetic_dataset(tmp_path / "data", 1, 2, seed=0, size=64, progress=False)
    common = [
        "val",
        "--weights",
        str(weights),
        "--data",
        str(data_yaml),
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
        "--max-det",
        "20",
    ]
    assert main([*common, "--nms", "soft", "--out", str(tmp_path / "soft")]) == 0
    assert main([*common, "--out", str(tmp_path / "hard")]) == 0
    soft = json.loads((tmp_path / "soft" / "results.json").read_text())
    hard = json.loads((tmp_path / "hard" / "results.json").read_text())
    ref = evaluate(
        model,
        load_dataset(data_yaml, split="val"),
        (64, 64),
        NMSConfig(score_threshold=0.0, max_detections=20, method="gaussian"),
        progress=False,
    )
    assert len(soft) == len(ref.detections) > 0
    for image_id in {d["image_id"] for d in soft}:  # per image, scores compared order-insensitively
        np.testing.assert_allclose(
            sorted(d["score"] for d in soft if d["image_id"] == image_id),
            sorted(d["score"] for d in ref.detections if d["image_id"] == image_id),
            atol=1e-5,
        )
    assert sorted(d["score"] for d in soft) != sorted(d["score"] for d in hard)
