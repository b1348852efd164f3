"""Readers: COCO, VOC, YOLO and the YAML spec give hand-computed boxes, labels, names and ids."""

from __future__ import annotations

import numpy as np
import pytest

from efficientdet.data import detections_to_coco, load_dataset, records_to_coco
from efficientdet.errors import DataError

from .data_factory import write_image, write_json, write_voc_xml, write_yaml


@pytest.fixture
def coco_dir(tmp_path):
    write_image(tmp_path / "images" / "a.png", 100, 80)
    write_image(tmp_path / "images" / "b.png", 60, 40)
    doc = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 5, "file_name": "b.png", "width": 60, "height": 40},
        ],
        "categories": [
            {"id": 3, "name": "dog"},
            {"id": 1, "name": "cat"},
            {"id": 90, "name": "zebra"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 90, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5.5, 6], "iscrowd": 0},
            {"id": 12, "image_id": 5, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": 1},
        ],
    }
    write_json(tmp_path / "train.json", doc)
    return tmp_path


def test_coco_reader_maps_ids_and_boxes(coco_dir):
    data = load_dataset(coco_dir / "train.json")  # images/ next to the JSON is found
    assert data.class_names == ["cat", "dog", "zebra"]  # categories sorted by id 1, 3, 90
    assert data.category_ids == [1, 3, 90]
    a, b = sorted(data.records, key=lambda r: r.image_id)
    assert (a.image_id, a.width, a.height) == (1, 100, 80)
    np.testing.assert_array_equal(a.boxes, np.array([[10, 20, 40, 60], [0, 0, 5.5, 6]], np.float32))
    np.testing.assert_array_equal(a.labels, [2, 0])
    np.testing.assert_array_equal(a.ignore, [False, False])
    np.testing.assert_array_equal(b.boxes, np.array([[1, 2, 4, 6]], np.float32))
    np.testing.assert_array_equal(b.labels, [1])
    np.testing.assert_array_equal(b.ignore, [True])  # iscrowd kept as ignore
    assert data.report.ok
    assert data.to_category_id(2) == 90 and data.to_label(90) == 2


def test_coco_round_trip(coco_dir):
    data = load_dataset(coco_dir / "train.json", images=coco_dir / "images")
    gt = records_to_coco(data)
    got = sorted(
        (a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in gt["annotations"]
    )
    assert got == [(1, 1, [0, 0, 5.5, 6], 0), (1, 90, [10, 20, 30, 40], 0), (5, 3, [1, 2, 3, 4], 1)]
    assert {c["id"]: c["name"] for c in gt["categories"]} == {1: "cat", 3: "dog", 90: "zebra"}
    dets = detections_to_coco(
        7, [[10, 20, 40, 60], [1, 1, 2, 3]], [0.9, 0.5], [2, 0], data.category_ids
    )
    assert dets == [
        {"image_id": 7, "category_id": 90, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [1.0, 1.0, 1.0, 2.0], "score": 0.5},
    ]


def test_coco_yaml_and_imposed_classes(coco_dir):
    write_yaml(
        coco_dir / "data.yaml",
        "format: coco\ntrain: {images: images, annotations: train.json}\n"
        "val: {images: images, annotations: train.json}\n",
    )
    train = load_dataset(coco_dir / "data.yaml", "train")
    val = load_dataset(
        coco_dir / "data.yaml",
        "val",
        class_names=train.class_names,
        category_ids=train.category_ids,
    )
    assert val.category_ids == [1, 3, 90]
    write_yaml(
        coco_dir / "bad.yaml",
        "format: coco\nnames: [x, y, z]\ntrain: {images: images, annotations: train.json}\n",
    )
    with pytest.raises(DataError, match=r"bad\.yaml|train\.json"):
        load_dataset(coco_dir / "bad.yaml")
    with pytest.raises(DataError, match="no 'val' split"):
        load_dataset(coco_dir / "bad.yaml", "val")


def test_voc_reader_one_based_coords_difficult_and_names(tmp_path):
    write_image(tmp_path / "JPEGImages" / "v1.jpg", 50, 40)
    write_image(tmp_path / "JPEGImages" / "v2.jpg", 30, 30)
    write_voc_xml(
        tmp_path / "Annotations" / "v1.xml",
        "v1.jpg",
        50,
        40,
        [("dog", 1, 1, 10, 20, 0), ("cat", 5, 6, 15, 16, 1)],
    )
    write_voc_xml(
        tmp_path / "Annotations" / "v2.xml", "v2.jpg", 30, 30, [("bird", 2, 3, 30, 30, 0)]
    )
    write_yaml(
        tmp_path / "voc.yaml",
        "format: voc\ntrain: {images: JPEGImages, annotations: Annotations}\n",
    )
    data = load_dataset(tmp_path / "voc.yaml")
    assert data.class_names == ["bird", "cat", "dog"]  # collected, sorted
    assert data.category_ids == [1, 2, 3]
    v1, v2 = data.records
    # 1-based inclusive -> 0-based edges: x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax
    np.testing.assert_array_equal(v1.boxes, np.array([[0, 0, 10, 20], [4, 5, 15, 16]], np.float32))
    np.testing.assert_array_equal(v1.labels, [2, 1])
    np.testing.assert_array_equal(v1.ignore, [False, True])  # difficult
    np.testing.assert_array_equal(v2.boxes, np.array([[1, 2, 30, 30]], np.float32))
    assert (v1.width, v1.height) == (50, 40)

    # names from the YAML: an object of another class is reported and dropped
    write_yaml(
        tmp_path / "voc2.yaml",
        "format: voc\nnames: [dog, cat]\ntrain: {images: JPEGImages, annotations: Annotations}\n",
    )
    data = load_dataset(tmp_path / "voc2.yaml")
    assert data.class_names == ["dog", "cat"]
    np.testing.assert_array_equal(data.records[0].labels, [0, 1])
    (p,) = data.report.of_kind("unknown_category")
    assert p.file.endswith("v2.xml") and "bird" in p.message


def test_yolo_reader_normalised_to_pixels(tmp_path):
    write_image(tmp_path / "images" / "train" / "p.png", 200, 100)
    write_image(tmp_path / "images" / "train" / "q.png", 64, 64)  # no label file: background
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "p.txt").write_text(
        "1 0.5 0.5 0.2 0.4\n0 0.25 0.75 0.1 0.2\n\n"
    )
    write_yaml(
        tmp_path / "y.yaml", "format: yolo\nnames: {0: apple, 1: pear}\ntrain: images/train\n"
    )
    data = load_dataset(tmp_path / "y.yaml")
    assert data.class_names == ["apple", "pear"] and data.category_ids == [0, 1]
    p, q = data.records
    # x = (cx -+ w/2) * 200, y = (cy -+ h/2) * 100
    np.testing.assert_allclose(p.boxes, [[80, 30, 120, 70], [40, 65, 60, 85]], atol=1e-4)
    np.testing.assert_array_equal(p.labels, [1, 0])
    assert len(q.boxes) == 0 and data.report.stats["images_without_boxes"] == 1
    assert data.report.ok


def test_yolo_requires_names(tmp_path):
    write_image(tmp_path / "images" / "p.png", 20, 20)
    write_yaml(tmp_path / "y.yaml", "format: yolo\ntrain: images\n")
    with pytest.raises(DataError, match=r"y\.yaml.*names"):
        load_dataset(tmp_path / "y.yaml")


def test_yaml_errors_are_one_line(tmp_path):
    write_yaml(tmp_path / "f.yaml", "format: kitti\ntrain: {images: x, annotations: y}\n")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "f.yaml")
    assert "f.yaml" in str(err.value) and "fix:" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "missing.yaml")


def test_missing_annotation_file_names_the_yaml_and_its_key(tmp_path):
    """Was 'bad/nope.json: COCO annotation file not found': neither the YAML nor the key to edit."""
    write_image(tmp_path / "images" / "p.png", 20, 20)
    write_yaml(
        tmp_path / "d.yaml", "format: coco\nval: {images: images, annotations: bad/nope.json}\n"
    )
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "d.yaml", "val")
    assert str(err.value) == (
        f"{tmp_path / 'd.yaml'}: val.annotations: {tmp_path / 'bad' / 'nope.json'} not found; "
        "fix: set val.annotations to an existing COCO JSON file (relative to the YAML's 'path:' or folder)"
    )


def test_coco_area_travels_to_evaluation_ground_truth(tmp_path):
    """COCO's small/medium/large buckets use each annotation's own 'area' (the segment's), not the
    box area; records_to_coco must hand that on, and fall back to the box area when absent."""
    from efficientdet.data.coco import read_coco, records_to_coco

    write_image(tmp_path / "images" / "a.jpg", 200, 100)
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 5,
                "bbox": [10, 10, 40, 40],
                "area": 900.0,
            },  # 1600 box
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [100, 10, 20, 30]},  # no area given
        ],
        "categories": [{"id": 5, "name": "blob"}],
    }
    write_json(tmp_path / "a.json", doc)
    gt = records_to_coco(read_coco(tmp_path / "a.json", tmp_path / "images"))
    assert [a["area"] for a in gt["annotations"]] == [900.0, 600.0]
