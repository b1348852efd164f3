"""Bad inputs: each problem is reported once with its file and item, counted, and loading goes on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from efficientdet.data import DetectionDataset, create_loader, load_dataset
from efficientdet.errors import DataError

from .data_factory import write_corrupt, write_image, write_json, write_truncated_jpeg, write_yaml

MEAN, STD = (100.0, 110.0, 120.0), (50.0, 50.0, 50.0)


@pytest.fixture
def messy(tmp_path):
    """A COCO split with one of every problem; images 1 and 2 are good."""
    img = tmp_path / "images"
    write_image(img / "good1.png", 100, 80)
    write_image(img / "good2.png", 100, 80)
    write_image(img / "empty.png", 50, 50)
    write_corrupt(img / "corrupt.jpg")
    write_truncated_jpeg(img / "trunc.jpg", 64, 48)
    images = [
        {"id": 1, "file_name": "good1.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "good2.png", "width": 100, "height": 80},
        {"id": 3, "file_name": "nowhere.png", "width": 10, "height": 10},  # missing file
        {"id": 2, "file_name": "empty.png", "width": 50, "height": 50},  # duplicate id
        {"id": 4, "file_name": "empty.png", "width": 50, "height": 50},  # no annotations
        {"id": 5, "file_name": "corrupt.jpg", "width": 64, "height": 48},
        {"id": 6, "file_name": "trunc.jpg", "width": 64, "height": 48},
    ]
    anns = [
        {"id": 100, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20]},  # fine
        {"id": 101, "image_id": 1, "category_id": 7, "bbox": [5, 5, 0, 3]},  # zero width
        {"id": 102, "image_id": 1, "category_id": 7, "bbox": [200, 10, 5, 5]},  # fully outside
        {"id": 103, "image_id": 1, "category_id": 7, "bbox": [90, 10, 20, 10]},  # partly outside
        {"id": 104, "image_id": 1, "category_id": 7, "bbox": [None, 1, 2, 3]},  # NaN (null)
        {"id": 105, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]},  # unknown category
        {"id": 106, "image_id": 777, "category_id": 7, "bbox": [1, 1, 2, 2]},  # no such image
        {"id": 107, "image_id": 2, "category_id": 2, "bbox": [0, 0, 100, 80]},  # fine
        {"id": 108, "image_id": 5, "category_id": 2, "bbox": [1, 1, 10, 10]},
        {"id": 109, "image_id": 6, "category_id": 2, "bbox": [1, 1, 10, 10]},
    ]
    doc = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 2, "name": "a"}, {"id": 7, "name": "b"}],
    }
    path = write_json(tmp_path / "train.json", doc)
    return path


EXPECTED = {  # kind -> (item text, action)
    "missing_image": ("image id 3", "skipped image"),
    "duplicate_image_id": ("image id 2 (empty.png)", "skipped image"),
    "bad_box_size": ("annotation id 101", "dropped box"),
    "box_outside": ("annotation id 102", "dropped box"),
    "box_clipped": ("annotation id 103", "clipped box"),
    "nan_box": ("annotation id 104", "dropped box"),
    "unknown_category": ("annotation id 105", "dropped box"),
    "orphan_annotation": ("annotation id 106", "dropped box"),
}


def test_each_problem_found_once_with_file_and_item(messy):
    data = load_dataset(messy)
    report = data.report
    for kind, (item, action) in EXPECTED.items():
        found = report.of_kind(kind)
        assert len(found) == 1, (kind, [str(p) for p in found])
        assert found[0].file == str(messy) and item in found[0].item and found[0].action == action
        assert str(messy) in str(found[0]) and item in str(found[0])
    assert report.count() == len(EXPECTED)  # corrupt files are not decoded at read time
    by_id = {r.image_id: r for r in data.records}
    assert sorted(by_id) == [1, 2, 4, 5, 6]
    np.testing.assert_array_equal(by_id[1].boxes, [[10, 10, 30, 30], [90, 10, 100, 20]])  # clipped
    np.testing.assert_array_equal(by_id[1].labels, [1, 1])
    assert by_id[2].file_name == "good2.png"  # the first of the duplicates is kept
    assert report.stats["images_listed"] == 7 and report.stats["images_used"] == 5
    assert report.stats["images_without_boxes"] == 1  # image 4: a count, not a problem
    assert report.stats["boxes_listed"] == 10 and report.stats["boxes_used"] == 5

    summary = report.summary()
    assert "box_clipped" in summary and "clipped box" in summary and "5 used of 7" in summary
    d = json.loads(json.dumps(report.to_dict()))
    assert d["counts"]["nan_box"] == 1 and len(d["problems"]) == len(EXPECTED)
    assert {"kind", "file", "item", "message", "action", "fix", "value"} <= set(d["problems"][0])


def test_verify_images_catches_corrupt_and_truncated(messy):
    report = load_dataset(messy, verify_images=True).report
    corrupt = report.of_kind("corrupt_image")
    assert sorted(p.item for p in corrupt) == ["image id 5 (corrupt.jpg)", "image id 6 (trunc.jpg)"]
    assert all(p.action == "skipped image" for p in corrupt)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_image_at_load_time_is_substituted_and_reported_once(messy, num_workers):
    data = load_dataset(messy)
    ds = DetectionDataset(data, (64, 64), MEAN, STD, train=False)
    ids = []
    for _epoch in range(2):
        for _images, targets in create_loader(
            ds, batch_size=2, shuffle=False, num_workers=num_workers
        ):
            ids += [t["image_id"] for t in targets]
    order = [
        r.image_id for r in ds.records
    ]  # [1, 2, 4, 5, 6]: 5 and 6 are bad -> replaced by the next good (1)
    assert order == [1, 2, 4, 5, 6]
    assert ids == [1, 2, 4, 1, 1] * 2
    report = ds.load_report()  # seen from the main process, whatever the workers did
    assert sorted(p.item for p in report.of_kind("corrupt_image")) == [
        "image id 5 (corrupt.jpg)",
        "image id 6 (trunc.jpg)",
    ]
    assert all(p.action == "substituted the next good image" for p in report.problems)


def test_empty_annotation_list_is_reported_and_usable(tmp_path):
    write_image(tmp_path / "images" / "a.png", 20, 20)
    path = write_json(
        tmp_path / "t.json",
        {
            "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
            "annotations": [],
            "categories": [{"id": 1, "name": "x"}],
        },
    )
    data = load_dataset(path)
    (p,) = data.report.problems
    assert p.kind == "empty_annotations" and p.file == str(path)
    assert len(data.records) == 1


def test_no_usable_image_raises_one_line(tmp_path):
    (tmp_path / "images").mkdir()
    path = write_json(
        tmp_path / "t.json",
        {
            "images": [{"id": 1, "file_name": "gone.png", "width": 20, "height": 20}],
            "annotations": [],
            "categories": [{"id": 1, "name": "x"}],
        },
    )
    with pytest.raises(DataError) as err:
        load_dataset(path)
    msg = str(err.value)
    assert str(path) in msg and "fix:" in msg and "1 missing_image" in msg and "\n" not in msg


def test_yolo_bad_lines(tmp_path):
    write_image(tmp_path / "images" / "p.png", 100, 50)
    write_corrupt(tmp_path / "images" / "bad.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "p.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n0 0.5 0.5\n0 nan 0.5 0.1 0.1\n0 0.95 0.5 0.2 0.2\n"
    )
    write_yaml(tmp_path / "y.yaml", "format: yolo\nnames: [a, b]\ntrain: images\n")
    data = load_dataset(tmp_path / "y.yaml")
    label_file = str(tmp_path / "labels" / "p.txt")
    expect = {
        "unknown_category": "line 2",
        "bad_annotation": "line 3",
        "nan_box": "line 4",
        "box_clipped": "line 5",
    }
    for kind, item in expect.items():
        (p,) = data.report.of_kind(kind)
        assert (p.file, p.item) == (label_file, f"{item} (image p.png)")
    (p,) = data.report.of_kind(
        "corrupt_image"
    )  # YOLO reads each header: a corrupt file is found now
    assert p.file.endswith("bad.png")
    (rec,) = data.records
    np.testing.assert_allclose(rec.boxes, [[40, 20, 60, 30], [85, 20, 100, 30]], atol=1e-4)
    assert not math.isnan(float(rec.boxes.sum()))


def test_boxes_dropped_in_training_are_reported_with_their_files(tmp_path):
    """Boxes under min_box_size after scale/crop are dropped by the dataset: each image's count is a
    box_too_small problem naming the annotation file and the image, even with no other problem."""
    write_image(tmp_path / "images" / "a.png", 400, 400)
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [10 + 40 * i, 10, 4, 4]}
        for i in range(5)
    ]
    path = write_json(
        tmp_path / "t.json",
        {
            "images": [{"id": 1, "file_name": "a.png", "width": 400, "height": 400}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "x"}],
        },
    )
    data = load_dataset(path)
    assert data.report.ok
    # 4 px boxes letterboxed 400 -> 64: 0.64 px, under 2 px at any jitter scale up to 2.0
    ds = DetectionDataset(data, (64, 64), MEAN, STD, train=True)
    _image, target = ds[0]
    assert len(target["boxes"]) == 0
    report = ds.load_report()
    (p,) = report.problems
    assert (p.kind, p.file, p.item, p.value) == (
        "box_too_small",
        str(path),
        "image id 1 (a.png)",
        "5",
    )
    assert "5 boxes fell under 2 px" in p.message and report.stats["boxes_dropped_by_augment"] == 5
