"""Test-dev style output: ``val`` on a split without annotations (a COCO image_info JSON, a
folder of images) and ``predict --save-json`` write COCO results that pycocotools' ``loadRes``
reads against the image_info file, with the dataset's category ids, and boxes (xywh, original
pixels) equal to what our Detector finds on each image; asking for metrics there is one error line."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from efficientdet.cli import main
from efficientdet.data import load_dataset, write_synthetic_dataset
from efficientdet.data.synth import CATEGORY_IDS, CLASS_NAMES
from efficientdet.errors import DataError
from efficientdet.factory import create_model, save_model_dict

from .matching import assert_same_detections

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL_IDS = [101, 102, 103, 104, 105, 106]  # the checkpoint's own ids: not the dataset's
CONF, MAX_DET = "0.001", "5"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint, image_info JSON, image folder, {image id: file name}) of a synthetic split."""
    root = tmp_path_factory.mktemp("testdev")
    data_yaml = write_synthetic_dataset(root / "shapes", 1, 3, seed=5, size=96, progress=False)
    val = json.loads((data_yaml.parent / "val.json").read_text())
    assert val["annotations"]
    info = {k: v for k, v in val.items() if k != "annotations"}  # as COCO test-dev ships it
    info_path = root / "image_info_test.json"
    info_path.write_text(json.dumps(info))
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=len(CLASS_NAMES), image_size=64).eval()
    ckpt = root / "small.pt"
    torch.save(save_model_dict(model, CLASS_NAMES, MODEL_IDS), ckpt)
    names = {int(i["id"]): i["file_name"] for i in info["images"]}
    return ckpt, info_path, data_yaml.parent / "images", names


def _run(*words: str) -> int:
    return main([*words, "--conf", CONF, "--max-det", MAX_DET, "--device", "cpu", "--quiet"])


def _as_detections(results: list[dict], category_ids: list[int]) -> dict[int, SimpleNamespace]:
    """COCO results -> {image id: boxes (D, 4) xyxy, scores, labels (0-based)}."""
    by_image: dict[int, list] = {}
    for d in results:
        x, y, w, h = d["bbox"]
        by_image.setdefault(d["image_id"], []).append(
            ([x, y, x + w, y + h], d["score"], category_ids.index(d["category_id"]))
        )
    return {
        i: SimpleNamespace(
            boxes=torch.tensor([r[0] for r in rows], dtype=torch.float64),
            scores=torch.tensor([r[1] for r in rows], dtype=torch.float64),
            labels=torch.tensor([r[2] for r in rows]),
        )
        for i, rows in by_image.items()
    }


def _check_against_detector(results, category_ids, ckpt, files: dict[int, Path]) -> None:
    from efficientdet.deploy.detector import Detector

    detector = Detector(str(ckpt), conf=float(CONF), max_det=int(MAX_DET), device="cpu")
    ours = _as_detections(results, category_ids)
    assert set(ours) == set(files)
    for image_id, path in files.items():
        det = detector(str(path))
        theirs = SimpleNamespace(
            boxes=det.boxes.double(), scores=det.scores.double(), labels=det.labels
        )
        assert_same_detections(
            ours[image_id], theirs, conf=float(CONF), max_det=int(MAX_DET), box_tol=0.05
        )


def _load_res(info_path: Path, results_path: Path):
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(info_path))
        return gt, gt.loadRes(str(results_path))


def test_val_on_an_image_info_json_writes_server_ready_results(setup, tmp_path, capsys):
    ckpt, info_path, images, names = setup
    out = tmp_path / "val"
    rc = _run(
        "val",
        "--weights",
        str(ckpt),
        "--data",
        str(info_path),
        "--images",
        str(images),
        "--out",
        str(out),
        "--workers",
        "0",
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert f"no metrics computed: {info_path} has no annotations (3 images" in printed
    assert "problems" not in printed  # a missing annotations key is not a dataset problem
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # no metrics files
    results = json.loads((out / "results.json").read_text())
    gt, dt = _load_res(info_path, out / "results.json")
    assert set(dt.getImgIds()) == set(gt.getImgIds()) == set(names)
    assert {d["category_id"] for d in results} <= set(CATEGORY_IDS)  # the dataset's, with gaps
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in results)
    _check_against_detector(results, CATEGORY_IDS, ckpt, {i: images / n for i, n in names.items()})


def test_asking_for_metrics_on_a_split_without_annotations_is_one_error_line(
    setup, tmp_path, capfd
):
    from efficientdet.engine.evaluator import evaluate

    ckpt, info_path, images, _ = setup
    out = tmp_path / "val"
    rc = main(
        [
            "val",
            "--weights",
            str(ckpt),
            "--data",
            str(info_path),
            "--images",
            str(images),
            "--out",
            str(out),
            "--require-metrics",
        ]
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"error: {info_path}: no annotations to compute metrics against (no 'annotations' in it)"
    )
    assert "fix: " in err[0] and not out.exists()
    # the Python API asks for metrics by default: the same refusal, before any work
    data = load_dataset(info_path, images=images)
    assert not data.annotated and all(len(r.boxes) == 0 for r in data.records)
    model = create_model("efficientdet_lite0", num_classes=len(CLASS_NAMES), image_size=64)
    with pytest.raises(DataError, match="no annotations to compute metrics against"):
        evaluate(model, data, progress=False)
    result = evaluate(model, data, progress=False, require_metrics=False)
    assert not result.scored and result.stats == {} and result.num_images == 3
    # nor can it be trained on (it read as all background before, in silence)
    from efficientdet.data import DetectionDataset

    with pytest.raises(DataError, match="no annotations to train on"):
        DetectionDataset(data, (64, 64), (127,) * 3, (128,) * 3, train=True)
    assert len(DetectionDataset(data, (64, 64), (127,) * 3, (128,) * 3)) == 3  # eval: fine


def test_val_on_a_folder_of_images_uses_ids_from_file_names(setup, tmp_path, capsys):
    ckpt, _, images, names = setup
    first, second = sorted(names.values())[:2]
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(images / first, folder / first)  # val_000000.jpg: id from the name's CRC-32
    shutil.copy(images / second, folder / "000000000042.jpg")  # a COCO-style name: its number
    (folder / "notes.txt").write_text("not an image")
    shutil.copy(images / second, folder / "42.png")  # id 42 again: reported and skipped
    out = tmp_path / "val"
    rc = _run(
        "val", "--weights", str(ckpt), "--data", str(folder), "--out", str(out), "--workers", "0"
    )
    printed = capsys.readouterr().out
    assert rc == 0 and "no metrics computed" in printed
    assert "1 entry that is not an image" in printed  # the .txt is counted, not read
    assert "42.png and 000000000042.jpg both give image id 42" in printed
    crc_id = zlib.crc32(first.encode("utf-8")) & 0x7FFFFFFF
    results = json.loads((out / "results.json").read_text())
    assert {d["image_id"] for d in results} == {crc_id, 42}
    assert {d["category_id"] for d in results} <= set(MODEL_IDS)  # a folder: the model's ids
    info = {
        "images": [
            {"id": crc_id, "file_name": first, "width": 96, "height": 96},
            {"id": 42, "file_name": "000000000042.jpg", "width": 96, "height": 96},
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(MODEL_IDS, CLASS_NAMES, strict=True)],
    }
    (tmp_path / "info.json").write_text(json.dumps(info))
    _load_res(tmp_path / "info.json", out / "results.json")
    _check_against_detector(
        results, MODEL_IDS, ckpt, {crc_id: folder / first, 42: folder / "000000000042.jpg"}
    )


@pytest.mark.slow  # three predict runs: about 5-10 s on 2 shared cores
def test_predict_save_json_matches_val_and_takes_ids_from_the_dataset(setup, tmp_path, capfd):
    ckpt, info_path, images, names = setup
    src = tmp_path / "test_images"
    src.mkdir()
    for n in names.values():
        shutil.copy(images / n, src / n)
    out = tmp_path / "pred"
    words = ["predict", "--weights", str(ckpt), "--source", str(src), "--no-save", "--save-json"]
    assert _run(*words, "--data", str(info_path), "--out", str(out)) == 0
    assert "results.json (COCO results format" in capfd.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in results)
    _, dt = _load_res(info_path, out / "results.json")
    assert set(dt.getImgIds()) == set(names)
    assert {d["category_id"] for d in results} <= set(CATEGORY_IDS)
    _check_against_detector(results, CATEGORY_IDS, ckpt, {i: src / n for i, n in names.items()})
    # predictions.json: the same detections, with the file names
    listed = json.loads((out / "predictions.json").read_text())
    assert [{k: v for k, v in d.items() if k != "file_name"} for d in listed] == results
    assert all(names[d["image_id"]] == d["file_name"] for d in listed)

    # without --data: ids from the file names, the checkpoint's category ids
    out2 = tmp_path / "pred2"
    assert _run(*words, "--out", str(out2)) == 0
    plain = json.loads((out2 / "results.json").read_text())
    crc = {zlib.crc32(n.encode("utf-8")) & 0x7FFFFFFF: i for i, n in names.items()}
    assert {d["image_id"] for d in plain} == set(crc)
    assert {d["category_id"] for d in plain} <= set(MODEL_IDS)
    remapped = [
        {
            **d,
            "image_id": crc[d["image_id"]],
            "category_id": CATEGORY_IDS[MODEL_IDS.index(d["category_id"])],
        }
        for d in plain
    ]
    assert remapped == results

    # an image the dataset does not list: refused before any work, one line
    (src / "holiday.jpg").write_bytes((images / names[min(names)]).read_bytes())
    out3 = tmp_path / "pred3"
    assert _run(*words, "--data", str(info_path), "--out", str(out3)) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: {info_path}: holiday.jpg is not in its images"
    )
    assert "fix: " in err[0] and not out3.exists()
