"""Every example in README.md runs as written (issue #13 item 8).

The README's fenced blocks are extracted and run in their order in one temporary folder:

* ```bash blocks: each in one ``bash -euo pipefail`` process, with the venv's ``efficientdet``
  (and ``python``, ``torchrun``) first on PATH; lines ending in ``\\`` are joined by bash itself.
  Not run: the ``make ...`` lines of the quick start (``make demo`` trains for ~10 minutes,
  ``make test`` is this suite; CI runs both itself).
* ```python blocks: executed in this process, in the same folder, so they use the files the bash
  tour made. Not run: the one block whose first line says it needs the network (it downloads the
  COCO weights, which CI cannot reach).
* ```yaml blocks: parsed with yaml.safe_load; the one that describes the tour's dataset must be
  what ``data synth`` wrote, and loads through our loader to the same records.
* blocks without a language are text (the source layout tree); any other language fails the
  test, so a new kind of example cannot slip past unrun.

Then the outputs are checked against independent truth: the files exist and parse (json,
onnxruntime, torch.jit, OpenCV's frame count), counts follow from the commands' options, and the
exported models give the checkpoint's mAP.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
NETWORK_MARK = "# needs the network"
CLASS_NAMES = ["ellipse", "rectangle", "triangle", "star", "cross", "ring"]  # data synth's classes


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block of README.md, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(README.read_text())]


def runnable_bash(code: str) -> tuple[str, list[str]]:
    """The block without its ``make`` lines (run by CI itself), and the lines dropped."""
    kept, dropped = [], []
    for line in code.splitlines():
        (dropped if line.startswith("make ") else kept).append(line)
    return "\n".join(kept) + "\n", dropped


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """Run every README block in order in a fresh folder; returns (folder, {block index: output})."""
    root = tmp_path_factory.mktemp("readme")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_CACHE_HOME"] = str(
        root / ".cache"
    )  # `efficientdet models` caches costs here, not in ~
    outputs: dict[int, object] = {}
    dropped_make: list[str] = []
    skipped_python = []
    before = Path.cwd()
    os.chdir(root)
    try:
        for i, (lang, code) in enumerate(readme_blocks()):
            if lang == "bash":
                script, dropped = runnable_bash(code)
                dropped_make += dropped
                if not script.strip():
                    continue
                proc = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", script],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                assert proc.returncode == 0, (
                    f"README bash block {i} failed ({proc.returncode}):\n{script}\n"
                    f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
                )
                outputs[i] = proc.stdout + proc.stderr
            elif lang == "python":
                if code.startswith(NETWORK_MARK):
                    skipped_python.append(i)
                    continue
                namespace: dict = {}
                exec(compile(code, f"README.md python block {i}", "exec"), namespace)
                outputs[i] = namespace
            elif lang == "yaml":
                import yaml

                outputs[i] = yaml.safe_load(code)
            else:
                assert lang == "", (
                    f"README block {i}: ```{lang} examples are not run by this test; fix: extend it"
                )
    finally:
        os.chdir(before)
    # the documented exceptions, and no others
    assert dropped_make == [
        "make demo    # installs, synthesizes a dataset, trains Lite0 for ~10 minutes, evaluates, predicts",
        "make test    # installs (if needed) and runs the test suite",
    ]
    assert len(skipped_python) == 1
    return root, outputs


def _block_output(outputs, needle: str) -> str:
    """The output of the bash block whose code contains ``needle``."""
    blocks = readme_blocks()
    found = [out for i, out in outputs.items() if blocks[i][0] == "bash" and needle in blocks[i][1]]
    assert len(found) == 1, needle
    return found[0]


def _map(root: Path, run: str) -> dict:
    return json.loads((root / "runs/val" / run / "metrics.json").read_text())["stats"]


def test_dataset_and_check(tour):
    root, outputs = tour
    train = json.loads((root / "data/shapes/train.json").read_text())
    assert len(train["images"]) == 48  # --images 48
    assert [c["name"] for c in sorted(train["categories"], key=lambda c: c["id"])] == CLASS_NAMES
    report = json.loads((root / "runs/check/1/report.json").read_text())
    assert report["model"] == "efficientdet_lite0" and report["image_size"] == [128, 128]
    assert report["splits"]["train"]["stats"]["images_used"] == 48
    assert (root / "runs/check/1/box_sizes.png").stat().st_size > 0
    # the README's reason for the tour's --anchor-scale 2
    suggestion = [
        line
        for line in _block_output(outputs, "data check").splitlines()
        if "suggested settings" in line
    ]
    assert len(suggestion) == 1 and "--anchor-scale 2 " in suggestion[0]


def test_yaml_block_is_the_tour_dataset(tour):
    root, outputs = tour
    from efficientdet.data import load_dataset

    blocks = readme_blocks()
    (described,) = [outputs[i] for i, (lang, _) in enumerate(blocks) if lang == "yaml"]
    import yaml

    written = yaml.safe_load((root / "data/shapes/data.yaml").read_text())
    assert described == written
    copy = root / "data/shapes/readme.yaml"
    copy.write_text(yaml.safe_dump(described))
    for split in ("train", "val"):
        a, b = (
            load_dataset(copy, split=split),
            load_dataset(root / "data/shapes/data.yaml", split=split),
        )
        assert [(r.path, r.boxes.tolist(), r.labels.tolist()) for r in a.records] == [
            (r.path, r.boxes.tolist(), r.labels.tolist()) for r in b.records
        ]
        assert len(a.records) > 0


def test_train_val_and_exports_agree(tour):
    root, _ = tour
    import torch

    ckpt = torch.load(root / "runs/shapes/best.pt", weights_only=True, map_location="cpu")
    assert ckpt["config"]["name"] == "efficientdet_lite0" and tuple(
        ckpt["config"]["image_size"]
    ) == (128, 128)
    assert list(ckpt["class_names"]) == CLASS_NAMES
    rows = (root / "runs/shapes/results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # header + --epochs 4
    torch_stats, onnx_stats, ts_stats = _map(root, "1"), _map(root, "2"), _map(root, "3")
    for stats in (torch_stats, onnx_stats, ts_stats):
        assert isinstance(stats["mAP"], float) and 0.0 <= stats["mAP"] <= 1.0
    # the exported files give the checkpoint's numbers (the ONNX graph drops scores < 0.001)
    assert math.isclose(onnx_stats["mAP"], torch_stats["mAP"], rel_tol=0.05, abs_tol=2e-3)
    assert math.isclose(onnx_stats["AP50"], torch_stats["AP50"], rel_tol=0.05, abs_tol=2e-3)
    assert math.isclose(ts_stats["mAP"], torch_stats["mAP"], rel_tol=0.01, abs_tol=1e-4)

    import onnxruntime as ort

    session = ort.InferenceSession(
        str(root / "runs/export/1/best_nms.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["images", "scales", "original_sizes"]
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.load(
            str(root / "runs/export/2/best.torchscript.pt"), map_location="cpu"
        )
    class_out, box_out = scripted(torch.zeros(1, 3, 128, 128))
    anchors = 9 * (
        16**2 + 8**2 + 4**2 + 2**2 + 1**2
    )  # 9 per cell of P3..P7 at 128 px (strides 8..128)
    assert tuple(class_out.shape) == (1, anchors, 6) and tuple(box_out.shape) == (1, anchors, 4)


def test_predict_images_and_video(tour):
    root, _ = tour
    import cv2

    val_images = sorted((root / "data/shapes/images").glob("val_*.jpg"))
    drawn = sorted(p.name for p in (root / "runs/predict/1").glob("*.jpg"))
    assert drawn == [p.name for p in val_images]
    for run in ("1", "2", "3"):
        assert isinstance(
            json.loads((root / "runs/predict" / run / "predictions.json").read_text()), list
        )
    frames = len(list((root / "data/shapes/images").glob("train_*.jpg")))
    for video in ("clip.mp4", "runs/predict/2/clip.mp4", "runs/predict/3/clip.mp4"):
        cap = cv2.VideoCapture(str(root / video))
        try:
            assert cap.isOpened(), video
            count = 0
            while cap.read()[0]:
                count += 1
        finally:
            cap.release()
        assert count == frames, video


def test_bench_models_version(tour):
    _, outputs = tour
    out = _block_output(outputs, "efficientdet --version")
    import efficientdet

    assert f"efficientdet {efficientdet.__version__}" in out
    table = [line.split()[0] for line in out.splitlines() if line.startswith("efficientdet_")]
    assert (
        "efficientdet_d0" in table
        and "efficientdet_lite0" in table
        and "efficientdet_d1" not in table
    )
    engines = {
        line.split()[0]
        for line in out.splitlines()
        if re.match(r"^(eager|onnxruntime)\s+1\s", line)
    }
    assert engines == {"eager", "onnxruntime"}


def test_finetune_and_torchrun(tour):
    root, _ = tour
    import torch

    base = torch.load(root / "runs/shapes/best.pt", weights_only=True, map_location="cpu")["model"]
    tuned = torch.load(root / "runs/finetune/last.pt", weights_only=True, map_location="cpu")[
        "model"
    ]
    frozen = [k for k in base if k.startswith(("backbone.", "fpn."))]
    assert frozen and all(
        torch.equal(base[k], tuned[k]) for k in frozen
    )  # --freeze backbone+fpn: bit for bit
    heads = [k for k in base if k.startswith("class_net.") and base[k].is_floating_point()]
    assert any(not torch.equal(base[k], tuned[k]) for k in heads)
    ddp = torch.load(root / "runs/ddp/best.pt", weights_only=True, map_location="cpu")
    assert ddp["model"].keys() == base.keys()
    assert not (root / "runs/ddp2").exists()  # only rank 0 wrote a run folder


def test_python_blocks(tour):
    _, outputs = tour
    blocks = readme_blocks()
    (ns,) = [outputs[i] for i, (lang, _) in enumerate(blocks) if lang == "python" and i in outputs]
    assert "efficientdet_lite4" in ns["ed"].list_models()
    # P3..P7 of a 128x128 input: strides 8..128, 9 anchors, 6 classes
    assert [tuple(t.shape) for t in ns["class_outputs"]] == [
        (2, 54, s, s) for s in (16, 8, 4, 2, 1)
    ]
    assert [tuple(t.shape) for t in ns["box_outputs"]] == [(2, 36, s, s) for s in (16, 8, 4, 2, 1)]
    result = ns["result"]
    assert result.boxes.shape == (len(result.scores), 4) and len(result.names) == len(result.scores)
    assert set(result.names) <= set(CLASS_NAMES)
    assert len(ns["results"]) == 2
    assert ns["onnx_detector"].names == CLASS_NAMES
    tuned = ns["tuned"]
    assert tuned.config.name == "efficientdet_lite0" and tuple(tuned.config.image_size) == (
        128,
        128,
    )
    assert tuned.config.num_classes == 6


def test_make_demo_is_what_the_readme_says():
    """The quick start's description of `make demo` (not run here: ~10 minutes) against the
    Makefile and the demo command's defaults."""
    import argparse

    from efficientdet.engine import demo

    text = " ".join(README.read_text().split())  # prose may be re-wrapped
    makefile = (README.parent / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "efficientdet demo" in recipe and "install" in recipe.splitlines()[0]
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.images, args.val_images, args.epochs) == (240, 60, 20)
    assert (
        demo.DEMO_SETTINGS["model"] == "efficientdet_lite0"
        and demo.DEMO_SETTINGS["image_size"] == 256
    )
    assert demo.DEMO_SETTINGS["backbone_weights"] == "imagenet"
    assert (
        "(240 training and 60 validation images), trains Lite0 from its ImageNet backbone at 256x256 for 20 epochs"
        in text
    )
    assert "runs/demo/N" in text
