"""Dataset doctor: each problem found, counted and explained; anchor fit against hand-computed IoUs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from efficientdet.cli import main as cli_main
from efficientdet.config import AnchorConfig, get_model_config, parse_image_size
from efficientdet.data.doctor import check_dataset, measure_anchor_fit, quick_summary
from efficientdet.data.records import DetectionData, ImageRecord
from efficientdet.data.spec import load_dataset
from efficientdet.engine import train_cli

from .data_factory import write_corrupt, write_image, write_json, write_yaml


def _coco(tmp_path, images, annotations, categories, name="train.json"):
    return write_json(tmp_path / name, {"images": images, "annotations": annotations, "categories": categories})


def test_anchor_fit_matches_hand_computed_ious():
    # One level, one 32x32 anchor per 8-px cell of a 64x64 input; centres at 4, 12, 20, ...
    cfg = AnchorConfig(min_level=3, max_level=3, num_scales=1, aspect_ratios=((1.0, 1.0),), anchor_scale=4.0)
    boxes = [
        [4, 4, 36, 36],    # exactly the anchor centred at (20, 20): IoU 1
        [12, 12, 28, 28],  # 16x16 inside a 32x32 anchor: IoU 256 / 1024 = 0.25 -> no positive anchor
        [8, 4, 40, 36],    # shifted 4 px: IoU 896 / 1152 = 0.78 with the anchor at x 4..36
    ]
    record = ImageRecord("unused.jpg", 64, 64, np.array(boxes, dtype=np.float32), np.zeros(3), image_id=1)
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
        {"id": 10, "file_name": "bad.jpg", "width": 100, "height": 80},      # unreadable
        {"id": 11, "file_name": "absent.jpg", "width": 100, "height": 80},   # missing
        {"id": 0, "file_name": "0.jpg", "width": 100, "height": 80},         # duplicate id
    ]
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    anns = [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"id": 2, "image_id": 0, "category_id": 2, "bbox": [50, 20, 30, 30]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 20]},      # zero width
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [200, 10, 10, 10]},    # outside
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 5, 5]},  # NaN
        {"id": 6, "image_id": 2, "category_id": 0, "bbox": [5, 5, 30, 30]},       # id 0: not a class
        {"id": 7, "image_id": 99, "category_id": 1, "bbox": [5, 5, 30, 30]},      # no such image
    ]
    path = _coco(tmp_path, images, anns, categories)
    report = check_dataset(path, model="lite0", search=False)
    problems = next(iter(report.splits.values())).report
    for kind, n in [("corrupt_image", 1), ("missing_image", 1), ("duplicate_image_id", 1), ("bad_box_size", 1),
                    ("box_outside", 1), ("nan_box", 1), ("unknown_category", 1), ("orphan_annotation", 1)]:
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
    yaml = write_yaml(tmp_path / "data.yaml", "format: yolo\nnames: [a, b]\ntrain:\n  images: images\n  annotations: labels\n")
    report = check_dataset(yaml, model="lite0", splits=("train",), search=False)
    assert any("class 2 with only 2 names" in f and "off-by-one" in f for f in report.findings)


def _tiny_box_dataset(tmp_path):
    """512x512 images with 6-12 px objects: too small for D0's 32-px smallest anchor."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(6):
        write_image(tmp_path / "images" / f"{i}.png", 512, 512)
        images.append({"id": i, "file_name": f"{i}.png", "width": 512, "height": 512})
        for j in range(8):
            side = float(rng.uniform(6, 12))
            x, y = rng.uniform(0, 480, size=2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [float(x), float(y), side, side]})
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
    cfg = get_model_config("d0", image_size=parse_image_size(args.image_size), anchor_scale=args.anchor_scale,
                           num_scales=args.num_scales, aspect_ratios=train_cli.parse_aspect_ratios(args.aspect_ratios))
    applied = measure_anchor_fit(load_dataset(path), cfg.anchors, cfg.image_size)
    assert applied.fit == pytest.approx(report.suggestion.fit) and applied.fit > report.fit.fit


def test_cli_writes_table_json_and_plot_into_a_new_folder(tmp_path, capsys, monkeypatch):
    path = _tiny_box_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "check").mkdir(parents=True)
    (tmp_path / "runs" / "check" / "box_sizes.png").write_text("the user's file")
    out_json = tmp_path / "report.json"
    assert cli_main(["data", "check", str(path), "--model", "d0", "--json", str(out_json), "--out", "runs/check"]) == 0
    printed = capsys.readouterr().out
    assert "anchor fit:" in printed and "--anchor-scale" in printed
    doc = json.loads(out_json.read_text())
    assert doc["anchor_fit"]["num_boxes"] == 48 and doc["suggestion"]["fit"] > doc["anchor_fit"]["fit"]
    # the folder that held a file is left alone: the outputs go to a new numbered folder
    assert (tmp_path / "runs" / "check" / "box_sizes.png").read_text() == "the user's file"
    assert (tmp_path / "runs" / "check2" / "box_sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "runs" / "check2" / "report.json").read_text()) == doc
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == []  # nothing in the current folder


def test_no_usable_image_is_fatal(tmp_path, capsys):
    path = _coco(tmp_path, [{"id": 1, "file_name": "gone.jpg", "width": 10, "height": 10}], [], [{"id": 1, "name": "a"}])
    assert cli_main(["data", "check", str(path), "--no-plot", "--out", str(tmp_path / "check")]) == 2
    err = capsys.readouterr().err
    assert "no usable images" in err and err.count("\n") == 1


def test_quick_summary_reports_fit_and_findings(tmp_path):
    data = load_dataset(_tiny_box_dataset(tmp_path))
    text = quick_summary(data, get_model_config("d0"))
    assert "anchor fit:" in text and "data check" in text
