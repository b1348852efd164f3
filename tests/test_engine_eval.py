"""Evaluator: COCO metrics against pycocotools run directly and hand-computed values,
evaluate() end to end on synthetic data, and the ``val`` CLI."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdet.cli import main as cli_main
from efficientdet.data import DetectionData, ImageRecord, load_dataset, write_synthetic_dataset
from efficientdet.data.synth import CATEGORY_IDS, CLASS_NAMES
from efficientdet.engine.evaluator import STAT_NAMES, coco_metrics, evaluate, write_results_json
from efficientdet.errors import DataError
from efficientdet.factory import create_model, save_model_dict


def _pycoco_stats(gt: dict, dets: list, tmp_path: Path, cat_ids=None) -> np.ndarray:
    """COCOeval('bbox') run the standard way: gt from a JSON file, detections via loadRes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_file = tmp_path / "gt_independent.json"
    gt_file.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(dets)))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _gt(
    boxes_by_image: dict[int, list[tuple[int, list[float], int]]],
    categories=((3, "cat"), (7, "dog")),
) -> dict:
    """{image_id: [(category_id, [x, y, w, h], iscrowd), ...]} -> COCO gt dict (200x200 images)."""
    images, anns = [], []
    for image_id, boxes in boxes_by_image.items():
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 200, "height": 200})
        for cid, bbox, crowd in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cid,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": crowd,
                }
            )
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": n} for c, n in categories],
    }


def _det(image_id, cid, bbox, score):
    return {"image_id": image_id, "category_id": cid, "bbox": bbox, "score": score}


# ------------------------------------------------------------------ hand-computed cases
GT_SIMPLE = {
    10: [(3, [10, 10, 50, 50], 0), (7, [100, 100, 60, 40], 0)],
    20: [(3, [0, 0, 120, 100], 0)],
}


def test_perfect_detections_score_one():
    dets = [_det(i, c, b, 0.9) for i, boxes in GT_SIMPLE.items() for c, b, _ in boxes]
    stats, per_class = coco_metrics(_gt(GT_SIMPLE), dets)
    assert (
        stats["mAP"] == pytest.approx(1.0)
        and stats["AP50"] == pytest.approx(1.0)
        and stats["AP75"] == pytest.approx(1.0)
    )
    assert stats["AR100"] == pytest.approx(1.0)
    assert stats["AP_small"] == -1  # no gt below 32x32 px: pycocotools' "not applicable"
    assert [(c["class"], c["category_id"], c["AP"], c["num_gt"]) for c in per_class] == [
        ("cat", 3, pytest.approx(1.0), 2),
        ("dog", 7, pytest.approx(1.0), 1),
    ]


def test_one_class_missed_halves_the_mean():
    dets = [_det(i, c, b, 0.9) for i, boxes in GT_SIMPLE.items() for c, b, _ in boxes if c == 3]
    stats, per_class = coco_metrics(_gt(GT_SIMPLE), dets)
    assert per_class[0]["AP"] == pytest.approx(1.0) and per_class[1]["AP"] == 0.0
    assert stats["mAP"] == pytest.approx(0.5)
    # no detections at all: zeros where there is gt
    stats, per_class = coco_metrics(_gt(GT_SIMPLE), [])
    assert stats["mAP"] == 0.0 and all(c["AP"] == 0.0 for c in per_class)


def test_iou_062_counts_at_ap50_not_ap75():
    gt = _gt({1: [(7, [0, 0, 100, 100], 0)]})
    # IoU = (100 * 62) / (100 * 100) = 0.62: matched at thresholds .50, .55, .60 only -> AP = 3/10
    stats, per_class = coco_metrics(gt, [_det(1, 7, [0, 0, 100, 62], 0.8)])
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(0.0)
    assert stats["mAP"] == pytest.approx(0.3)
    dog = next(c for c in per_class if c["category_id"] == 7)
    assert dog["AP"] == pytest.approx(0.3) and dog["AP50"] == pytest.approx(1.0)
    cat = next(c for c in per_class if c["category_id"] == 3)
    assert cat["AP"] == -1 and cat["num_gt"] == 0  # a class without gt is "not applicable"


def test_false_positive_ranked_first_halves_precision():
    gt = _gt({1: [(3, [0, 0, 100, 100], 0)]})
    # a wrong box scored above the right one: precision 1/2 at recall 1 -> AP 0.5 at every IoU
    dets = [_det(1, 3, [150, 150, 40, 40], 0.9), _det(1, 3, [0, 0, 100, 100], 0.5)]
    stats, _ = coco_metrics(gt, dets)
    assert (
        stats["mAP"] == pytest.approx(0.5)
        and stats["AR1"] == 0.0
        and stats["AR10"] == pytest.approx(1.0)
    )


def test_matches_pycocotools_run_independently(tmp_path):
    rng = np.random.default_rng(0)
    gt_boxes = {
        5: [(3, [10, 10, 40, 30], 0), (7, [60, 60, 80, 90], 0), (11, [5, 120, 20, 20], 0)],
        9: [(7, [0, 0, 150, 150], 0), (7, [20, 20, 30, 30], 1)],  # one crowd box
        12: [],  # an image without gt
        30: [(11, [100, 10, 90, 60], 0), (3, [30, 140, 12, 18], 0)],
    }
    cats = ((3, "cat"), (7, "dog"), (11, "bird"))
    gt = _gt(gt_boxes, cats)
    dets = []
    for image_id, boxes in gt_boxes.items():
        for cid, (x, y, w, h), _ in boxes:  # jittered true positives
            j = rng.uniform(-0.2, 0.2, 4) * [w, h, w, h]
            dets.append(
                _det(
                    image_id,
                    cid,
                    [x + j[0], y + j[1], w + j[2], h + j[3]],
                    float(rng.uniform(0.3, 1)),
                )
            )
        for _ in range(4):  # false positives, some with the wrong class
            x, y = rng.uniform(0, 150, 2)
            dets.append(
                _det(
                    image_id,
                    int(rng.choice([3, 7, 11])),
                    [x, y, *rng.uniform(5, 50, 2)],
                    float(rng.uniform(0, 1)),
                )
            )
    stats, per_class = coco_metrics(gt, dets)
    expected = _pycoco_stats(gt, dets, tmp_path)
    assert [stats[n] for n in STAT_NAMES] == pytest.approx(list(expected), abs=1e-12)
    assert 0.05 < stats["mAP"] < 0.95  # a non-trivial case
    for c in per_class:  # per-class AP == COCOeval restricted to that one category
        alone = _pycoco_stats(gt, dets, tmp_path, cat_ids=[c["category_id"]])
        assert c["AP"] == pytest.approx(alone[0], abs=1e-12) and c["AP50"] == pytest.approx(
            alone[1], abs=1e-12
        )
    assert [c["num_gt"] for c in per_class] == [2, 2, 2]  # the crowd box is not counted


# ------------------------------------------------------------------ evaluate() end to end
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsynth")
    return write_synthetic_dataset(root, 1, 4, seed=3, size=160, progress=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("efficientdet_lite0", num_classes=len(CLASS_NAMES), image_size=(128, 128))


def _val_json(synth: Path) -> dict:
    """The dataset's own val.json, untouched (its ``area`` is the shape's, not the box's)."""
    return json.loads((synth.parent / "val.json").read_text())


def test_evaluate_end_to_end(synth, model, tmp_path):
    from efficientdet.config import NMSConfig

    data = load_dataset(synth, split="val")
    model.train()
    result = evaluate(
        model, data, (128, 128), NMSConfig(max_detections=20), batch_size=3, progress=False
    )
    assert model.training  # mode restored
    assert result.num_images == 4 and len(result.detections) == 4 * 20
    assert {d["category_id"] for d in result.detections} <= set(CATEGORY_IDS)
    assert {d["image_id"] for d in result.detections} == {r.image_id for r in data.records}
    for d in result.detections:  # xywh inside the 160x160 original image
        x, y, w, h = d["bbox"]
        assert (
            x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= 160 + 1e-3 and y + h <= 160 + 1e-3
        )
    # the written results load in pycocotools and score the same against the dataset's own JSON
    path = tmp_path / "results.json"
    write_results_json(path, result.detections)
    dets = json.loads(path.read_text())
    expected = _pycoco_stats(_val_json(synth), dets, tmp_path)
    assert [result.stats[n] for n in STAT_NAMES] == pytest.approx(list(expected), abs=1e-12)
    assert [c["category_id"] for c in result.per_class] == CATEGORY_IDS
    text = result.table()
    assert "mAP" in text and "ring" in text
    assert json.loads(json.dumps(result.to_dict()))["num_images"] == 4


def test_eval_result_carries_cocoeval_precision(synth, model):
    """EvalResult.precision is COCOeval's precision array (pycocotools run the standard way on the
    dataset's own JSON), and the PR-curve plot reads it instead of re-running COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from efficientdet.config import NMSConfig
    from efficientdet.engine.plots import coco_precision

    data = load_dataset(synth, split="val")
    result = evaluate(
        model, data, (128, 128), NMSConfig(max_detections=100), batch_size=4, progress=False
    )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(synth.parent / "val.json"))
        ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(result.detections))), "bbox")
        ev.evaluate()
        ev.accumulate()
    assert result.precision.shape == (10, 101, len(CLASS_NAMES), 4, 3)
    np.testing.assert_allclose(result.precision, ev.eval["precision"], atol=1e-12)
    assert (result.precision > 0).any()
    assert coco_precision(result, data) is result.precision


class OracleModel(torch.nn.Module):
    """Stands in for EfficientDet: box deltas 0 (boxes = anchors), one confident class logit
    at P3 cell (row 5, col 6), anchor 0 (scale 1, ratio 1:1), class ``k``; records its inputs."""

    def __init__(self, config, k: int):
        super().__init__()
        self.config, self.k = config, k
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.inputs = []

    def forward(self, images):
        self.inputs.append(images.clone())
        n, num_k, a = images.shape[0], self.config.num_classes, self.config.anchors.num_anchors
        cls, box = [], []
        sizes, (h, w) = [], images.shape[-2:]
        for level in range(1, self.config.max_level + 1):
            h, w = (h + 1) // 2, (w + 1) // 2  # ceil-halving: 64, 32, 16 (P3), 8, ...
            if level >= 3:
                sizes.append((h, w))
        for fh, fw in sizes:
            cls.append(torch.full((n, a * num_k, fh, fw), -20.0))
            box.append(torch.zeros(n, a * 4, fh, fw))
        cls[0][:, 0 * num_k + self.k, 5, 6] = 5.0
        return cls, box


def test_evaluate_maps_boxes_and_labels_back(synth):
    from efficientdet.config import NMSConfig, get_model_config

    cfg = get_model_config(
        "efficientdet_lite0", num_classes=len(CLASS_NAMES), image_size=(128, 128)
    )
    oracle = OracleModel(cfg, k=4)
    data = load_dataset(synth, split="val")
    result = evaluate(
        oracle, data, (128, 128), NMSConfig(score_threshold=0.5), batch_size=3, progress=False
    )
    # P3 at 128 px: stride 8, centre (6*8 + 4, 5*8 + 4) = (52, 44), lite0 anchor 3 * 8 = 24 px wide
    # -> [40, 32, 64, 56] in the model input; letterbox scale 128/160 = 0.8 -> [50, 40, 80, 70]
    assert len(result.detections) == 4
    for d in result.detections:
        assert d["category_id"] == CATEGORY_IDS[4] == 15
        assert d["bbox"] == pytest.approx([50.0, 40.0, 30.0, 30.0], abs=1e-4)
        assert d["score"] == pytest.approx(1 / (1 + np.exp(-5.0)), rel=1e-6)
    assert sorted(d["image_id"] for d in result.detections) == sorted(
        r.image_id for r in data.records
    )
    x = torch.cat(oracle.inputs)
    assert x.shape == (4, 3, 128, 128)
    # lite: (x - 127) / 128, inputs in [-1, 1]
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6


def test_evaluate_images_without_gt_and_empty_set(synth, model):
    data = load_dataset(synth, split="val")
    r0 = data.records[0]
    background = ImageRecord(
        path=r0.path,
        width=r0.width,
        height=r0.height,
        boxes=np.zeros((0, 4)),
        labels=np.zeros(0),
        image_id=r0.image_id,
    )
    bg = DetectionData([background], data.class_names, data.category_ids)
    result = evaluate(model, bg, (128, 128), batch_size=2, progress=False)
    assert (
        result.stats["mAP"] == -1 and len(result.detections) > 0
    )  # nothing to score, detections still listed
    empty = DetectionData([], data.class_names, data.category_ids, source="empty.json")
    with pytest.raises(DataError, match=r"empty\.json: no images"):
        evaluate(model, empty, (128, 128), progress=False)


# ------------------------------------------------------------------ val CLI
def test_val_cli(synth, model, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    torch.save(save_model_dict(model, CLASS_NAMES, CATEGORY_IDS), ckpt)
    out = tmp_path / "val"
    rc = cli_main(
        [
            "val",
            "--weights",
            str(ckpt),
            "--data",
            str(synth),
            "--out",
            str(out),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--image-size",
            "128",
            "--max-det",
            "10",
            "--quiet",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "triangle" in printed
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 4 * 10 and {d["category_id"] for d in results} <= set(CATEGORY_IDS)
    metrics = json.loads((out / "metrics.json").read_text())
    expected = _pycoco_stats(_val_json(synth), results, tmp_path)
    assert [metrics["stats"][n] for n in STAT_NAMES] == pytest.approx(list(expected), abs=1e-12)
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in rows] == CLASS_NAMES and [
        int(r["category_id"]) for r in rows
    ] == CATEGORY_IDS


def test_val_cli_class_names_mismatch(synth, model, tmp_path, capsys):
    ckpt = tmp_path / "other.pt"
    names = ["a", "b", "c", "d", "e", "f"]
    torch.save(save_model_dict(model, names), ckpt)
    rc = cli_main(
        [
            "val",
            "--weights",
            str(ckpt),
            "--data",
            str(synth),
            "--out",
            str(tmp_path / "v"),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "class names" in err and "other.pt" in err
    assert not (tmp_path / "v").exists()


# ------------------------------------------------------------------ exported files
@pytest.mark.slow
def test_val_on_exported_files_gives_the_checkpoints_metrics(synth, model, tmp_path, capsys):
    """``val --weights`` on an ONNX export (raw outputs, fixed batch 1) scores through the same
    evaluator: the same detections per image (order-insensitive, float rounding)
    and the checkpoint's 12 COCO numbers; each results.json rescored by pycocotools directly.
    The ground truth is the checkpoint's own 3 strongest detections per image (a random model
    scores 0 on the real labels), so its mAP is high and a shifted box or score would show."""
    from efficientdet.config import NMSConfig
    from efficientdet.deploy.detector import Detections
    from efficientdet.deploy.export import export_onnx

    from .matching import assert_same_detections

    ckpt = tmp_path / "model.pt"
    torch.save(save_model_dict(model, CLASS_NAMES, CATEGORY_IDS), ckpt)
    # TorchScript and ONNX with NMS inside are scored the same way by tests/test_readme.py (the README tour)
    files = {"onnx": export_onnx(model, tmp_path / "m.onnx", CLASS_NAMES, CATEGORY_IDS)}
    own = evaluate(
        model.eval(),
        load_dataset(synth, split="val"),
        (128, 128),
        NMSConfig(max_detections=3),
        progress=False,
    ).detections
    gt = _val_json(synth)
    gt["annotations"] = [
        {
            "id": i + 1,
            "image_id": d["image_id"],
            "category_id": d["category_id"],
            "bbox": d["bbox"],
            "area": d["bbox"][2] * d["bbox"][3],
            "iscrowd": 0,
        }
        for i, d in enumerate(own)
    ]
    (tmp_path / "pseudo.json").write_text(json.dumps(gt))
    data_yaml = tmp_path / "pseudo.yaml"
    data_yaml.write_text(
        f"format: coco\npath: {synth.parent}\nval: {{images: images, annotations: {tmp_path / 'pseudo.json'}}}\n"
    )

    def val(weights, out):
        rc = cli_main(
            [
                "val",
                "--weights",
                str(weights),
                "--data",
                str(data_yaml),
                "--out",
                str(out),
                "--workers",
                "0",
                "--batch",
                "3",
                "--max-det",
                "10",
                "--quiet",
            ]
        )
        assert rc == 0
        return json.loads((out / "metrics.json").read_text())["stats"], json.loads(
            (out / "results.json").read_text()
        )

    def per_image(results):
        by_image = {}
        for d in results:
            x, y, w, h = d["bbox"]
            by_image.setdefault(d["image_id"], []).append(
                ([x, y, x + w, y + h], d["score"], d["category_id"])
            )
        return {
            i: Detections(
                torch.tensor([r[0] for r in rows]),
                torch.tensor([r[1] for r in rows]),
                torch.tensor([r[2] for r in rows]),
                [],
                (160, 160),
            )
            for i, rows in by_image.items()
        }

    expected_stats, expected = val(ckpt, tmp_path / "val_ckpt")
    assert len(expected) == 4 * 10 and expected_stats["mAP"] > 0.8
    for kind, path in files.items():
        stats, results = val(path, tmp_path / f"val_{kind}")
        got, want = per_image(results), per_image(expected)
        assert got.keys() == want.keys(), kind
        for image_id in want:
            assert_same_detections(
                want[image_id], got[image_id], score_tol=1e-4, box_tol=0.02, max_det=10
            )
        assert [stats[n] for n in STAT_NAMES] == pytest.approx(
            [expected_stats[n] for n in STAT_NAMES], abs=2e-3
        ), kind
        assert [stats[n] for n in STAT_NAMES] == pytest.approx(
            list(_pycoco_stats(gt, results, tmp_path)), abs=1e-12
        ), kind
    capsys.readouterr()
    rc = cli_main(
        [
            "val",
            "--weights",
            str(files["onnx"]),
            "--data",
            str(data_yaml),
            "--image-size",
            "256",
            "--out",
            str(tmp_path / "v"),
            "--workers",
            "0",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "m.onnx" in err and "image size" in err
