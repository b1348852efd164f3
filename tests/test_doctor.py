"""Dataset doctor: each problem found, counted and explained; anchor fit against hand-computed IoUs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from efficientdet.analysis.anchor_fit import measure_anchor_fit
from efficientdet.analysis.doctor import check_dataset, quick_summary
from efficientdet.cli import main as cli_main
from efficientdet.config import AnchorConfig, get_model_config, parse_image_size
from efficientdet.data.records import DetectionData, ImageRecord
from efficientdet.data.spec import load_dataset
from efficientdet.engine import train_cli

from .data_factory import write_corrupt, write_image, write_json, write_yaml


def _coco(tmp_path, images, annotations, categories, name="train.json"):
    return write_json(
        tmp_path / name, {"images": images, "annotations": annotations, "categories": categories}
    )


def test_anchor_fit_matches_hand_computed_ious():
    # One level, one 32x32 anchor per 8-px cell of a 64x64 input; centres at 4, 12, 20, ...
    cfg = AnchorConfig(
        min_level=3, max_level=3, num_scales=1, aspect_ratios=((1.0, 1.0),), anchor_scale=4.0
    )
    boxes = [
        [4, 4, 36, 36],  # exactly the anchor centred at (20, 20): IoU 1
        [
            12,
            12,
            28,
            28,
        ],  # 16x16 inside a 32x32 anchor: IoU 256 / 1024 = 0.25 -> no positive anchor
        [8, 4, 40, 36],  # shifted 4 px: IoU 896 / 1152 = 0.78 with the anchor at x 4..36
    ]
    record = ImageRecord(
        "unused.jpg", 64, 64, np.array(boxes, dtype=np.float32), np.zeros(3), image_id=1
    )
    data = DetectionData([record], ["thing"], [1])
    fit = measure_anchor_fit(data, cfg, (64, 64))
    assert fit.num_boxes == 3 and fit.fit == pytest.approx(2 / 3)
    # COCO buckets by area: 16x16 is small, 32x32 is medium (area >= 32**2)
    assert fit.by_size == {"small": (0.0, 1), "medium": (1.0, 2)}


def test_each_problem_found_counted_and_explained(tmp_path):
    for i in range(4):
        write_image(tmp_path / "images" / f"{i}.jpg", 100, 80)
    write_corrupt(tmp_path / "images" / "bad.jpg")
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in range(4)]
    images += [
        {"id": 10, "file_name": "bad.jpg", "width": 100, "height": 80},  # unreadable
        {"id": 11, "file_name": "absent.jpg", "width": 100, "height": 80},  # missing
        {"id": 0, "file_name": "0.jpg", "width": 100, "height": 80},  # duplicate id
    ]
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    anns = [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"id": 2, "image_id": 0, "category_id": 2, "bbox": [50, 20, 30, 30]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 20]},  # zero width
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [200, 10, 10, 10]},  # outside
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 5, 5]},  # NaN
        {"id": 6, "image_id": 2, "category_id": 0, "bbox": [5, 5, 30, 30]},  # id 0: not a class
        {"id": 7, "image_id": 99, "category_id": 1, "bbox": [5, 5, 30, 30]},  # no such image
    ]
    path = _coco(tmp_path, images, anns, categories)
    report = check_dataset(path, model="lite0", search=False)
    problems = next(iter(report.splits.values())).report
    for kind, n in [
        ("corrupt_image", 1),
        ("missing_image", 1),
        ("duplicate_image_id", 1),
        ("bad_box_size", 1),
        ("box_outside", 1),
        ("nan_box", 1),
        ("unknown_category", 1),
        ("orphan_annotation", 1),
    ]:
        assert problems.count(kind) == n, kind
    text = report.table()
    assert "bad.jpg" in text and "absent.jpg" in text and "dropped box" in text
    assert any("category_id 0" in f and "0-based" in f for f in report.findings)
    assert any("bird" in f and "no boxes" in f for f in report.findings)
    assert report.histogram == {"cat": 1, "dog": 1, "bird": 0}
    # 7 listed: duplicate id, unreadable and missing skipped; of the 4 used, images 1-3 keep no box
    assert "images: 4 used of 7 listed (3 without boxes)" in text


def test_yolo_off_by_one_class_count_is_explained(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", 100, 100)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.1 0.1\n")
    yaml = write_yaml(
        tmp_path / "data.yaml",
        "format: yolo\nnames: [a, b]\ntrain:\n  images: images\n  annotations: labels\n",
    )
    report = check_dataset(yaml, model="lite0", splits=("train",), search=False)
    assert any("class 2 with only 2 names" in f and "off-by-one" in f for f in report.findings)


def _tiny_box_dataset(tmp_path):
    """512x512 images with 6-12 px objects: too small for D0's 32-px smallest anchor."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(6):
        write_image(tmp_path / "images" / f"{i}.png", 512, 512)
        images.append({"id": i, "file_name": f"{i}.png", "width": 512, "height": 512})
        for _ in range(8):
            side = float(rng.uniform(6, 12))
            x, y = rng.uniform(0, 480, size=2)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [float(x), float(y), side, side],
                }
            )
    return _coco(tmp_path, images, anns, [{"id": 1, "name": "speck"}])


def test_suggested_settings_raise_fit_on_tiny_boxes(tmp_path):
    path = _tiny_box_dataset(tmp_path)
    report = check_dataset(path, model="efficientdet_d0")
    assert report.fit.fit < 0.2
    assert report.suggestion is not None and report.suggestion.fit > report.fit.fit + 0.3
    # the printed options, parsed by `efficientdet train` itself, give the fit the search promised
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["--data", str(path), *report.suggestion.train_options().split()])
    cfg = get_model_config(
        "d0",
        image_size=parse_image_size(args.image_size),
        anchor_scale=args.anchor_scale,
        num_scales=args.num_scales,
        aspect_ratios=train_cli.parse_aspect_ratios(args.aspect_ratios),
    )
    applied = measure_anchor_fit(load_dataset(path), cfg.anchors, cfg.image_size)
    assert applied.fit == pytest.approx(report.suggestion.fit) and applied.fit > report.fit.fit


def test_cli_writes_table_json_and_plot_into_a_new_folder(tmp_path, capsys, monkeypatch):
    path = _tiny_box_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checks").mkdir(parents=True)
    (tmp_path / "checks" / "box_sizes.png").write_text("the user's file")
    out_json = tmp_path / "report.json"
    assert (
        cli_main(
            [
                "data",
                "check",
                str(path),
                "--model",
                "d0",
                "--json",
                str(out_json),
                "--out",
                "checks",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert "anchor fit:" in printed and "--anchor-scale" in printed
    assert "reading train.json" in captured.err and "anchor search" in captured.err  # progress bars
    doc = json.loads(out_json.read_text())
    assert (
        doc["anchor_fit"]["num_boxes"] == 48 and doc["suggestion"]["fit"] > doc["anchor_fit"]["fit"]
    )
    # the folder that held a file is left alone: the outputs go to a new numbered folder
    assert (tmp_path / "checks" / "box_sizes.png").read_text() == "the user's file"
    assert (tmp_path / "checks2" / "box_sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "checks2" / "report.json").read_text()) == doc
    # without --out: a new numbered folder under runs/check
    assert cli_main(["data", "check", str(path), "--model", "d0", "--no-plot", "--quiet"]) == 0
    assert json.loads((tmp_path / "runs" / "check" / "1" / "report.json").read_text()) == doc
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == []
    )  # nothing in the current folder


def test_no_usable_image_is_fatal(tmp_path, capsys):
    path = _coco(
        tmp_path,
        [{"id": 1, "file_name": "gone.jpg", "width": 10, "height": 10}],
        [],
        [{"id": 1, "name": "a"}],
    )
    assert (
        cli_main(["data", "check", str(path), "--no-plot", "--out", str(tmp_path / "check")]) == 2
    )
    err = capsys.readouterr().err
    assert "no usable images" in err and err.count("\n") == 1


def test_an_image_info_json_is_counted_and_said_to_have_no_annotations(tmp_path, capsys):
    """A test-dev style file (images and categories, no 'annotations' key): its images are
    counted, it is said to have no annotations (val's detections-only output applies), and
    nothing about boxes, classes or anchors is reported of it; exit 0."""
    images = []
    for i in range(3):
        write_image(tmp_path / "images" / f"t{i}.jpg", 64, 48)
        images.append({"id": 10 + i, "file_name": f"t{i}.jpg", "width": 64, "height": 48})
    path = write_json(
        tmp_path / "image_info.json",
        {"images": images, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]},
    )
    out = tmp_path / "check"
    assert cli_main(["data", "check", str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:] == [
        "  images: 3 used of 3 listed (3 without boxes)   boxes: 0 used of 0 listed",
        "  no problems found",
        f"[train] {path}: no annotations (3 images; an image_info file, as COCO test-dev ships): "
        "no boxes or classes to check; what applies is detections only: efficientdet val "
        f"--weights W --data {path} writes results.json for an evaluation server (no metrics)",
        f"JSON report: {out / 'report.json'}",
    ]
    doc = json.loads((out / "report.json").read_text())
    assert doc["splits"]["train"]["annotated"] is False
    assert doc["splits"]["train"]["stats"]["images_used"] == 3 and doc["findings"] == []
    assert not (out / "box_sizes.png").exists()  # no box to plot


def test_quick_summary_reports_fit_and_findings(tmp_path):
    data = load_dataset(_tiny_box_dataset(tmp_path))
    text = quick_summary(data, get_model_config("d0"))
    assert "anchor fit:" in text and "data check" in text


def test_fast_anchor_fit_equals_iou_against_every_anchor():
    """The nearest-centre shortcut gives each box the same best IoU as box_iou over the whole grid."""
    import torch

    from efficientdet.analysis.anchor_fit import best_anchor_iou
    from efficientdet.detection.anchors import AnchorGenerator
    from efficientdet.detection.boxes import box_iou

    rng = np.random.default_rng(3)
    for hw, scale in [
        ((128, 96), 4.0),
        ((100, 130), 2.5),
    ]:  # sizes that do not divide by the strides too
        cfg = AnchorConfig(anchor_scale=scale)
        xy = rng.uniform(-10, 120, size=(300, 2))
        wh = np.exp(rng.uniform(np.log(1), np.log(150), size=(300, 2)))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        brute = (
            box_iou(
                torch.as_tensor(boxes, dtype=torch.float64),
                AnchorGenerator(cfg)(hw, dtype=torch.float64),
            )
            .amax(dim=1)
            .numpy()
        )
        np.testing.assert_allclose(best_anchor_iou(boxes, cfg, hw), brute, rtol=1e-9, atol=1e-12)


def test_anchor_fit_at_a_huge_input_size_uses_little_memory():
    """Found by trying: data check --image-size 100000 built every anchor (12500 x 12500 cells on
    P3: tens of GB) and was killed by the OOM killer with no message. The fit now needs only the
    grid's row/column centres: same hand-computed IoUs as at 64x64, a few MB."""
    import tracemalloc

    from efficientdet.analysis.anchor_fit import best_anchor_iou

    cfg = AnchorConfig(
        min_level=3, max_level=3, num_scales=1, aspect_ratios=((1.0, 1.0),), anchor_scale=4.0
    )
    boxes = np.array(
        [[4, 4, 36, 36], [12, 12, 28, 28], [8, 4, 40, 36]], dtype=np.float64
    )  # as in the 64x64 test
    tracemalloc.start()
    try:
        got = best_anchor_iou(
            boxes, cfg, (100000, 100000)
        )  # stride 8 exactly: the same grid near the boxes
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(got, [1.0, 256 / 1024, 896 / 1152], rtol=1e-12)
    assert peak < 20e6, peak  # the full P3 grid alone would be 12500**2 * 4 * 8 bytes = 5 GB


def test_fixed_image_size_is_kept_and_ratios_come_from_the_menu(tmp_path):
    from efficientdet.analysis.anchor_fit import RATIO_SETS

    path = _tiny_box_dataset(tmp_path)
    report = check_dataset(
        path, model="efficientdet_d0", image_size=parse_image_size("512"), progress=False
    )
    assert report.suggestion is not None and report.suggestion.image_size == (512, 512)
    assert "--image-size 512 " in report.suggestion.train_options()
    assert report.suggestion.aspect_ratios in RATIO_SETS
    assert report.suggestion.fit >= report.fit.fit + 0.02
    text = report.table()
    assert f"from {report.fit.fit:.1%} to {report.suggestion.fit:.1%}" in text


def test_no_suggestion_when_nothing_raises_the_fit(tmp_path):
    """Boxes of exactly the model's anchors: 100% fit, nothing to propose."""
    write_image(tmp_path / "images" / "a.png", 64, 64)
    # lite0 at 64x64: P3 stride 8, anchor scale 3 -> 24x24 anchor centred at (12, 12)
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 24, 24]}]
    path = _coco(
        tmp_path,
        [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        anns,
        [{"id": 1, "name": "sq"}],
    )
    report = check_dataset(path, model="efficientdet_lite0", image_size=(64, 64), progress=False)
    assert report.fit.fit == 1.0 and report.suggestion is None


def _small_box_coco(tmp_path, n_small, n_big):
    """One 640x640 image; boxes of 8 px (1.6 px at a 128 input: under 2, dropped) and 64 px."""
    write_image(tmp_path / "images" / "big.png", 640, 640)
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [10 + 20 * i, 10, 8, 8]}
        for i in range(n_small)
    ]
    anns += [
        {"id": 100 + i, "image_id": 1, "category_id": 1, "bbox": [10 + 70 * i, 300, 64, 64]}
        for i in range(n_big)
    ]
    return _coco(
        tmp_path,
        [{"id": 1, "file_name": "big.png", "width": 640, "height": 640}],
        anns,
        [{"id": 1, "name": "a"}],
    )


def test_too_many_untrainable_boxes_exit_2_with_one_line(tmp_path, capsys):
    path = _small_box_coco(tmp_path, n_small=4, n_big=6)  # 40% too small at 128
    args = [
        "data",
        "check",
        str(path),
        "--model",
        "efficientdet_lite0",
        "--image-size",
        "128",
        "--no-plot",
        "--quiet",
        "--out",
        str(tmp_path / "check"),
    ]
    assert cli_main(args) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert (
        line.startswith("error: ")
        and str(path) in line
        and "4 of 10 boxes (40%)" in line
        and "fix:" in line
    )
    (small,) = {
        p["item"]
        for p in json.loads((tmp_path / "check" / "report.json").read_text())["splits"]["train"][
            "problems"
        ]
        if p["kind"] == "box_too_small"
    }
    assert small == "image big.png"
    assert (
        "box_too_small" in captured.out and "10 px in this image" in captured.out
    )  # 2 px / (128 / 640)
    # the threshold is an option; at the model's own 320 input the 8-px boxes are 4 px and train
    assert cli_main([*args[:-2], "--max-untrainable", "0.5", "--out", str(tmp_path / "c2")]) == 0
    assert (
        cli_main(
            [
                "data",
                "check",
                str(path),
                "--model",
                "efficientdet_lite0",
                "--no-plot",
                "--quiet",
                "--out",
                str(tmp_path / "c3"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli_main([*args[:-2], "--max-untrainable", "25", "--out", str(tmp_path / "c4")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line
        == "error: --max-untrainable 25.0: not a share of boxes; fix: give a value from 0 to 1 (e.g. 0.25)"
    )


def test_train_summary_always_counts_small_boxes(tmp_path):
    data = load_dataset(_small_box_coco(tmp_path, n_small=3, n_big=1))
    text = quick_summary(data, get_model_config("efficientdet_lite0", image_size=(128, 128)))
    assert "boxes too small to train: 3 of 4 (75.0%) are under 2 px at the 128x128 input" in text
    assert "big.png" in text and "10 px in this image" in text
    text = quick_summary(data, get_model_config("efficientdet_lite0", image_size=(640, 640)))
    assert "boxes too small to train: 0 of 4" in text
