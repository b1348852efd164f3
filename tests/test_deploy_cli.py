"""CLI: predict on a folder with a corrupt image, on a generated video, on an ONNX file; results JSON
in pycocotools; one-line errors with exit code 2; export and bench commands."""

from __future__ import annotations

import json
import os
import warnings

# as efficientdet.deploy.sources does before its first capture (this module uses OpenCV earlier)
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet import create_model
from efficientdet.cli import main
from efficientdet.factory import save_model_dict

from .faults import fail_on_call

NAMES = ["cat", "dog", "bird"]
CATEGORY_IDS = [10, 20, 30]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small 3-class Lite0 checkpoint (random weights) at 128x128."""
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, image_size=128).eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    torch.save(save_model_dict(model, NAMES, CATEGORY_IDS), path)
    return path


def _write_images(folder, names, seed=0):
    rs = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(rs.randint(0, 256, (60 + 10 * i, 90, 3), dtype=np.uint8)).save(
            folder / name
        )


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_predict_folder_skips_a_corrupt_image_and_writes_coco_results(ckpt, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    src = tmp_path / "imgs"
    _write_images(src, ["000001.png", "000002.jpg", "000004.png"])
    (src / "000003.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--weights",
            str(ckpt),
            "--source",
            str(src),
            "--out",
            str(out),
            "--conf",
            "0.001",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "000003.jpg" in captured.err and "skipped" in captured.err
    assert "3 images (1 unreadable, skipped)" in captured.out and "detections" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [
        "000001.png",
        "000002.jpg",
        "000004.png",
        "predictions.json",
    ]
    assert Image.open(out / "000002.jpg").size == (90, 70)  # annotated at the original size

    results = json.loads((out / "predictions.json").read_text())
    assert results and {r["image_id"] for r in results} == {1, 2, 4}
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    first = results[0]
    assert (
        set(first) >= {"image_id", "file_name", "category_id", "bbox", "score"}
        and len(first["bbox"]) == 4
    )
    assert all(0 <= r["bbox"][0] and r["bbox"][0] + r["bbox"][2] <= 90.01 for r in results)
    gt = {
        "images": [
            {"id": i, "file_name": f"{i:06d}.png", "height": 60, "width": 90} for i in (1, 2, 3, 4)
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 20,
                "bbox": [10, 10, 30, 20],
                "area": 600,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, NAMES, strict=True)],
    }
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = COCO(str(gt_path))
        dets = coco.loadRes(str(out / "predictions.json"))
        ev = COCOeval(coco, dets, "bbox")
        ev.evaluate()
        ev.accumulate()
    capsys.readouterr()


def test_predict_folder_names_what_it_does_not_read(ckpt, tmp_path, capfd):
    """Found by trying: a folder's videos, other files and subfolders were left out without a word."""
    src = tmp_path / "mixed"
    _write_images(src, ["a.png"])
    _write_images(src / "sub", ["b.png", "c.png"])
    (src / "notes.txt").write_text("x")
    (src / "clip.mp4").write_bytes(b"\0" * 10)
    (src / ".DS_Store").write_bytes(b"\0")  # hidden files are not news
    assert (
        main(
            [
                "predict",
                "--weights",
                str(ckpt),
                "--source",
                str(src),
                "--out",
                str(tmp_path / "out"),
                "--quiet",
                "--no-save",
                "--conf",
                "0.01",
            ]
        )
        == 0
    )
    err = capfd.readouterr().err
    assert (
        f"note: {src}: not read (1 .mp4, 1 .txt, 1 subfolder): a folder's images only, not recursive"
        in err
    )
    assert {
        d["file_name"] for d in json.loads((tmp_path / "out" / "predictions.json").read_text())
    } == {"a.png"}


def test_predict_interrupted_keeps_the_detections_done(ckpt, tmp_path, capfd):
    """Found by trying: Ctrl+C during predict on a folder left annotated images but no
    predictions.json. Now the detections of the images done are written, the message says how
    many, and the exit status is 130."""
    from efficientdet.deploy import predict_cli

    src = tmp_path / "imgs"
    _write_images(src, ["000001.png", "000002.png", "000003.png"])
    full, out = tmp_path / "full", tmp_path / "cut"
    predict = ["predict", "--weights", str(ckpt), "--source", str(src), "--conf", "0.01", "--quiet"]
    assert main([*predict, "--out", str(full), "--no-save"]) == 0
    capfd.readouterr()
    with fail_on_call(predict_cli, "_process", 2, KeyboardInterrupt()):  # Ctrl+C on image 2
        assert main([*predict, "--out", str(out)]) == 130
    err = capfd.readouterr().err
    assert (
        f"interrupted after 1 of 3 images (0 skipped); their detections are in {out / 'predictions.json'}"
        in err
    )
    kept = json.loads((out / "predictions.json").read_text())
    expected = [
        d
        for d in json.loads((full / "predictions.json").read_text())
        if d["file_name"] == "000001.png"
    ]
    assert expected and {d["file_name"] for d in kept} == {"000001.png"}

    def key(d):
        return (d["category_id"], d["score"], *d["bbox"])

    for a, b in zip(sorted(kept, key=key), sorted(expected, key=key), strict=True):
        assert a["category_id"] == b["category_id"] and a["score"] == pytest.approx(
            b["score"], abs=1e-4
        )
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.05)
    assert sorted(p.name for p in out.iterdir()) == ["000001.png", "predictions.json"]


def test_predict_video_writes_an_annotated_video(ckpt, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    rs = np.random.RandomState(1)
    for _ in range(5):
        writer.write(rs.randint(0, 256, (64, 96, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--weights",
            str(ckpt),
            "--source",
            str(video),
            "--out",
            str(out),
            "--conf",
            "0.001",
            "--classes",
            "dog",
            "2",
        ]
    )
    assert rc == 0
    assert "5 frames" in capsys.readouterr().out
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 5 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96
    cap.release()
    results = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in results} <= {1, 2, 3, 4, 5} and {
        r["category_id"] for r in results
    } <= {20, 30}


def test_export_then_predict_on_the_onnx_file(ckpt, tmp_path, capsys):
    onnx_path = (
        tmp_path / "exported" / "small.onnx"
    )  # --out is a folder; the file is named after the weights
    assert (
        main(
            [
                "export",
                "--weights",
                str(ckpt),
                "--format",
                "onnx",
                "--out",
                str(onnx_path.parent),
                "--dynamic-batch",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "exported efficientdet_lite0" in out and "check vs PyTorch: difference" in out
    src = tmp_path / "imgs"
    _write_images(src, ["a.png", "b.png"])
    res_torch, res_onnx = tmp_path / "pt", tmp_path / "ox"
    common = ["--no-save", "--conf", "0.001", "--max-det", "20"]
    assert (
        main(
            [
                "predict",
                "--weights",
                str(ckpt),
                "--source",
                str(src),
                "--out",
                str(res_torch),
                "--batch",
                "2",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--weights",
                str(onnx_path),
                "--source",
                str(src / "*.png"),
                "--out",
                str(res_onnx),
                *common,
            ]
        )
        == 0
    )
    a = json.loads((res_torch / "predictions.json").read_text())
    b = json.loads((res_onnx / "predictions.json").read_text())
    assert [p.name for p in res_onnx.iterdir()] == ["predictions.json"]  # --no-save
    assert len(a) == len(b) > 0 and [r["category_id"] for r in a] == [r["category_id"] for r in b]
    np.testing.assert_allclose([r["bbox"] for r in a], [r["bbox"] for r in b], atol=0.05)
    ts_path = (
        tmp_path / "exported2" / "small.torchscript.pt"
    )  # exported/ holds a run: a new numbered folder
    assert (
        main(
            [
                "export",
                "--weights",
                str(ckpt),
                "--format",
                "torchscript",
                "--out",
                str(onnx_path.parent),
            ]
        )
        == 0
    )
    assert ts_path.is_file() and "check vs PyTorch: difference" in capsys.readouterr().out


def test_user_errors_are_one_line_with_exit_code_2(ckpt, tmp_path, capfd):
    assert main(["predict", "--weights", str(ckpt), "--source", str(tmp_path / "nowhere")]) == 2
    assert "no such image, folder, video" in _error_line(capfd)

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    assert (
        main(
            [
                "predict",
                "--weights",
                str(ckpt),
                "--source",
                str(broken),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "cannot open this video" in _error_line(capfd)  # one line: FFmpeg's own log is silenced

    _write_images(tmp_path / "imgs", ["a.png"])
    foreign = tmp_path / "effdet.pth"
    torch.save(
        create_model("efficientdet_lite0", num_classes=3, image_size=128).state_dict(), foreign
    )
    assert main(["predict", "--weights", str(foreign), "--source", str(tmp_path / "imgs")]) == 2
    assert "--model NAME --weights" in _error_line(capfd)

    plain = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False
        )
    assert main(["predict", "--weights", str(plain), "--source", str(tmp_path / "imgs")]) == 2
    assert "no efficientdet metadata" in _error_line(capfd)

    assert (
        main(["export", "--weights", str(ckpt), "--format", "torchscript", "--nms-in-graph"]) == 2
    )
    assert "--nms-in-graph" in _error_line(capfd)


def test_bench_with_corrupt_weights_is_a_one_line_error(ckpt, tmp_path, capfd):
    """Found by trying: each engine runs in a child process, and a user error there (a corrupt
    --weights) made bench exit with status 1 and a table of failures; now exit 2 and one line."""
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:1000])  # an interrupted copy
    rc = main(
        [
            "bench",
            "--weights",
            str(broken),
            "--model",
            "lite0",
            "--image-size",
            "64",
            "--engine",
            "eager",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--quiet",
        ]
    )
    assert rc == 2
    line = _error_line(capfd)
    assert line.startswith(f"error: {broken}: not a complete checkpoint") and "; fix: " in line


def test_model_option_never_overrides_our_checkpoint(ckpt, tmp_path, capfd):
    """Found by trying: predict/export --model efficientdet_d0 with a Lite0 checkpoint silently
    ran Lite0, and bench --weights (default --model d0) labelled a Lite0 run 'efficientdet_d0'."""
    _write_images(tmp_path / "imgs", ["a.png"])
    for argv in (
        ["predict", "--source", str(tmp_path / "imgs"), "--out", str(tmp_path / "p")],
        ["export", "--out", str(tmp_path / "e")],
    ):
        assert main([*argv, "--weights", str(ckpt), "--model", "efficientdet_d0", "--quiet"]) == 2
        line = _error_line(capfd)
        assert line.startswith(
            "error: --model efficientdet_d0 conflicts with the checkpoint's efficientdet_lite0"
        )
        assert "fix: drop --model" in line
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--weights",
                str(ckpt),
                "--engine",
                "eager",
                "--parts",
                "network",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--in-process",
                "--quiet",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["model"] == "efficientdet_lite0" and [r["model"] for r in data["results"]] == [
        "efficientdet_lite0"
    ]


def test_bench_prints_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--model",
            "lite0",
            "--image-size",
            "64",
            "--engine",
            "eager",
            "onnxruntime",
            "--batch",
            "1",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--json",
            str(out),
            "--in-process",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "median ms" in text and "p90 ms" in text and "img/s" in text and "peak MB" in text
    data = json.loads(out.read_text())
    assert data["model"] == "efficientdet_lite0" and data["threads"] == 1
    rows = {(r["engine"], r["part"]) for r in data["results"]}
    assert rows == {
        (e, p) for e in ("eager", "onnxruntime") for p in ("network", "end_to_end", "from_image")
    }
    for r in data["results"]:
        assert (
            r["median_ms"] > 0
            and r["p90_ms"] >= r["median_ms"]
            and r["images_per_s"] > 0
            and r["peak_rss_mb"] > 0
        )


BENCH_QUICK = ["--repeats", "1", "--warmup", "0", "--parts", "network", "--quiet"]


def test_bench_of_an_exported_file_has_one_honest_row(tmp_path, capfd):
    """Found by trying: --weights m.onnx --engine eager onnxruntime printed an 'eager' and an
    'onnxruntime' row, both timed in ONNX Runtime, under 'input default'. Now the file's own
    runtime is its one row, with the file's input size; another engine is one line, exit 2."""
    from efficientdet.deploy.export import export_onnx

    onnx_file = tmp_path / "m.onnx"
    model = create_model("efficientdet_lite0", num_classes=3, image_size=64).eval()
    export_onnx(model, onnx_file, NAMES)
    bench = ["bench", "--weights", str(onnx_file), *BENCH_QUICK]
    assert main([*bench, "--engine", "eager", "onnxruntime"]) == 2
    assert _error_line(capfd) == (
        f"error: --engine eager: {onnx_file} is an exported onnx file, which runs in onnxruntime "
        "or tensorrt; fix: drop --engine, or give the checkpoint it came from to compare engines"
    )
    assert main([*bench, "--json", str(tmp_path / "b.json")]) == 0
    out = capfd.readouterr().out
    assert out.startswith("efficientdet_lite0, input 64x64, ")
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [(r["engine"], r["backend"], r["image_size"]) for r in rows] == [
        ("onnxruntime", "onnxruntime", [64, 64])
    ]


def test_bench_engine_without_its_extra_is_one_line(ckpt, tmp_path, monkeypatch, capfd):
    """Found by trying: --engine tflite without litert-torch printed a header 'None, input
    default', a table of one failure and then the same error again. A stand-in litert_torch
    that fails to import plays the missing extra in the engine's process."""
    (tmp_path / "litert_torch").mkdir()
    (tmp_path / "litert_torch" / "__init__.py").write_text("raise ImportError('not installed')\n")
    paths = [str(tmp_path), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    assert main(["bench", "--weights", str(ckpt), "--engine", "tflite", *BENCH_QUICK]) == 2
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "error: exporting to TFLite needs the converter litert-torch, which is not installed; "
        "fix: pip install 'efficientdet[tflite]' (or: make test-tflite, which builds "
        "benchmarks/tflite/.venv)"
    )
