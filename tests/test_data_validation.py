"""The validation layer: every wrong type/value in COCO/VOC/YOLO/YAML becomes a counted problem
(or a one-line DataError) naming its file; an Ultralytics data.yaml loads unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from efficientdet.data import load_dataset
from efficientdet.errors import DataError

from .data_factory import write_image, write_json, write_voc_xml, write_yaml


def _labels(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def ultralytics(tmp_path):
    """A dataset as Ultralytics lays it out: datasets/mini/{images,labels}/{train,val}, the YAML
    elsewhere with a relative 'path', names as an {index: name} dict, an empty test, a download URL."""
    root = tmp_path / "datasets" / "mini"
    write_image(root / "images" / "train" / "a.jpg", 200, 100)
    write_image(root / "images" / "train" / "b.png", 50, 50)  # background (no label file)
    write_image(root / "images" / "val" / "c.jpg", 100, 100)
    _labels(root / "labels" / "train" / "a.txt", "1 0.5 0.5 0.2 0.4\n0 0.25 0.25 0.1 0.1\n")
    _labels(root / "labels" / "val" / "c.txt", "0 0.5 0.5 0.5 0.5\n")
    yaml = write_yaml(
        tmp_path / "cfg" / "mini.yaml",
        "# Ultralytics YOLO, AGPL-3.0 license\n"
        "path: ../datasets/mini\ntrain: images/train\nval: images/val\ntest:\n\n"
        "names:\n  0: person\n  1: car\n\n"
        "download: https://example.com/mini.zip\n",
    )
    return yaml, root


def test_ultralytics_yaml_loads_unchanged(ultralytics):
    yaml, root = ultralytics
    train = load_dataset(yaml, "train")
    assert (
        train.format == "yolo"
        and train.class_names == ["person", "car"]
        and train.category_ids == [0, 1]
    )
    assert [r.file_name for r in train.records] == ["a.jpg", "b.png"]
    a = train.records[0]
    # cx 0.5 cy 0.5 w 0.2 h 0.4 of 200x100 -> x 80..120, y 30..70; class 0 at (50, 25), 20x10 px
    np.testing.assert_allclose(a.boxes, [[80, 30, 120, 70], [40, 20, 60, 30]], atol=1e-4)
    assert a.labels.tolist() == [1, 0] and a.annotation_file == str(
        root / "labels" / "train" / "a.txt"
    )
    assert train.report.ok and train.report.stats["images_without_boxes"] == 1
    val = load_dataset(yaml, "val", class_names=train.class_names, category_ids=train.category_ids)
    np.testing.assert_allclose(val.records[0].boxes, [[25, 25, 75, 75]], atol=1e-4)
    with pytest.raises(
        DataError, match="no 'test' split"
    ):  # 'test:' left empty, as Ultralytics writes it
        load_dataset(yaml, "test")


def test_ultralytics_list_of_folders_txt_lists_and_names_list(ultralytics, tmp_path):
    _, root = ultralytics
    write_image(root / "images" / "extra" / "d.jpg", 100, 100)
    _labels(root / "labels" / "extra" / "d.txt", "1 0.5 0.5 1 1\n")
    (root / "val.txt").write_text("./images/val/c.jpg\nimages/extra/d.jpg\n\n")
    yaml = write_yaml(
        root / "data.yaml",
        "path: .\ntrain: [images/train, images/extra]\nval: val.txt\nnc: 2\nnames: [person, car]\n",
    )
    train = load_dataset(yaml, "train")
    assert [r.file_name for r in train.records] == ["a.jpg", "b.png", "d.jpg"]
    val = load_dataset(yaml, "val")
    assert [r.file_name for r in val.records] == ["./images/val/c.jpg", "images/extra/d.jpg"]
    np.testing.assert_allclose(val.records[1].boxes, [[0, 0, 100, 100]])
    assert val.records[1].labels.tolist() == [1] and val.report.ok
    write_yaml(root / "bad.yaml", "train: images/train\nnc: 3\nnames: [person, car]\n")
    with pytest.raises(DataError, match=r"bad\.yaml: nc: nc 3 but 2 names; fix:"):
        load_dataset(root / "bad.yaml")


def test_orphan_and_misplaced_label_files_are_reported(ultralytics):
    yaml, root = ultralytics
    _labels(root / "labels" / "train" / "gone.txt", "0 0.5 0.5 0.1 0.1\n")  # no image gone.*
    _labels(
        root / "images" / "train" / "b.txt", "0 0.5 0.5 0.1 0.1\n"
    )  # b's labels in the image folder
    report = load_dataset(yaml, "train").report
    (orphan,) = report.of_kind("orphan_label")
    assert (
        orphan.file == str(root / "labels" / "train" / "gone.txt")
        and orphan.action == "ignored file"
    )
    (misplaced,) = report.of_kind("misplaced_label")
    assert (
        misplaced.file == str(root / "images" / "train" / "b.txt")
        and misplaced.item == "image b.png"
    )
    assert str(root / "labels" / "train" / "b.txt") in misplaced.message


def test_ultralytics_without_any_label_file_is_reported(ultralytics):
    """Found by trying: a dataset whose labels folder is missing (or misplaced) read as all
    background with 'no problems found', and trained on zero boxes."""
    import shutil

    yaml, root = ultralytics
    shutil.rmtree(root / "labels")
    data = load_dataset(yaml, "train")
    assert [len(r.boxes) for r in data.records] == [0, 0]  # kept, as background
    (problem,) = data.report.of_kind("empty_annotations")
    assert problem.file == str(root / "labels" / "train")
    assert (
        f"no label file for any of the 2 images (looked for e.g. {root / 'labels' / 'train' / 'a.txt'})"
        in problem.message
    )
    assert not data.report.ok


def test_a_split_with_some_labels_is_not_flagged(ultralytics):
    yaml, _ = ultralytics  # b.png has no label file: an ordinary background image
    assert load_dataset(yaml, "train").report.of_kind("empty_annotations") == []


@pytest.mark.parametrize(
    "token, kind",
    [
        ("nan", "bad_annotation"),
        ("inf", "bad_annotation"),
        ("-inf", "bad_annotation"),
        ("1.5", "bad_annotation"),
        ("x", "bad_annotation"),
        ("2", "unknown_category"),
        ("-1", "unknown_category"),
        ("1e30", "unknown_category"),
    ],
)
def test_yolo_bad_class_tokens_are_reported_with_the_file(tmp_path, token, kind):
    write_image(tmp_path / "images" / "p.png", 20, 20)
    _labels(tmp_path / "labels" / "p.txt", f"{token} 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.5 0.5\n")
    data = load_dataset(write_yaml(tmp_path / "y.yaml", "names: [a, b]\ntrain: images\n"))
    (p,) = data.report.problems
    assert (p.kind, p.file, p.item, p.value) == (
        kind,
        str(tmp_path / "labels" / "p.txt"),
        "line 1 (image p.png)",
        token,
    )
    assert len(data.records[0].boxes) == 1


def test_non_utf8_label_file_skips_its_image(tmp_path):
    write_image(tmp_path / "images" / "p.png", 20, 20)
    write_image(tmp_path / "images" / "q.png", 20, 20)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "p.txt").write_bytes(b"0 0.5 0.5 \xff\xfe 0.2\n")
    data = load_dataset(write_yaml(tmp_path / "y.yaml", "names: [a]\ntrain: images\n"))
    (p,) = data.report.problems
    assert (
        p.kind == "unreadable_annotations" and p.file.endswith("p.txt") and "image p.png" in p.item
    )
    assert [r.file_name for r in data.records] == ["q.png"]


@pytest.mark.parametrize(
    "entry, expect",
    [
        ({"id": "img_one", "file_name": "a.png"}, "id: expected an integer, got 'img_one' (str)"),
        ({"id": None, "file_name": "a.png"}, "id: expected an integer, got null"),
        ({"id": 1.5, "file_name": "a.png"}, "id: expected an integer, got 1.5 (float)"),
        ({"id": [1], "file_name": "a.png"}, "id: expected an integer, got [1] (list)"),
        ({"id": 1, "file_name": 5}, "file_name: expected a non-empty string, got 5 (int)"),
        ({"id": 1, "file_name": None}, "file_name: expected a non-empty string, got null"),
        (
            {"id": 1, "file_name": ["a.png"]},
            "file_name: expected a non-empty string, got ['a.png'] (list)",
        ),
        ({"id": 1, "file_name": "../secret.png"}, "leaves the image folder"),
        ({"id": 1, "file_name": "/etc/passwd"}, "leaves the image folder"),
        ("a.png", "expected an object"),
    ],
)
def test_coco_image_entries_of_the_wrong_type_are_reported(tmp_path, entry, expect):
    write_image(tmp_path / "images" / "a.png", 20, 20)
    write_image(tmp_path / "images" / "b.png", 20, 20)
    images = [entry, {"id": 2, "file_name": "b.png", "width": 20, "height": 20}]
    path = write_json(
        tmp_path / "t.json",
        {"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]},
    )
    data = load_dataset(path)
    (p,) = data.report.of_kind("bad_image_entry")
    assert (
        p.file == str(path)
        and p.item == "images[0]"
        and expect in p.message
        and p.action == "skipped image"
    )
    assert [r.file_name for r in data.records] == ["b.png"]


def test_coco_annotations_of_the_wrong_type_name_the_image_file(tmp_path):
    write_image(tmp_path / "images" / "a.png", 100, 100)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": "no"},
        {"id": 2, "image_id": 1, "category_id": "1", "bbox": [1, 1, 10, 10]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, "1", 10, 10]},
        {"id": 4, "image_id": "1", "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": {"x": 1}},
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 1},
        "not an annotation",
    ]
    path = write_json(
        tmp_path / "t.json",
        {
            "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "x"}],
        },
    )
    data = load_dataset(path)
    (crowd,) = data.report.of_kind("bad_iscrowd")
    assert crowd.item == "annotation id 1 (image id 1, a.png)" and crowd.value == "no"
    bad = data.report.of_kind("bad_annotation")
    assert [p.item for p in bad] == [
        "annotation id 2 (image id 1, a.png)",
        "annotation id 3 (image id 1, a.png)",
        "annotation id 4",
        "annotation id 5 (image id 1, a.png)",
        "annotation id 6",
    ]
    assert "category_id: expected an integer, got '1' (str)" in bad[0].message
    (rec,) = data.records
    assert rec.ignore.tolist() == [False, True]  # 'no' is not read as crowd; 1 is


@pytest.mark.parametrize(
    "cats, expect",
    [
        (
            [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}],
            "category id 1 is used by both 'cat' and 'dog'",
        ),
        (
            [{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}],
            "category name 'cat' is used by ids 1 and 2",
        ),
    ],
)
def test_duplicate_category_ids_or_names_are_refused(tmp_path, cats, expect):
    write_image(tmp_path / "images" / "a.png", 20, 20)
    path = write_json(
        tmp_path / "t.json",
        {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": cats},
    )
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(path) in str(err.value) and expect in str(err.value) and "fix:" in str(err.value)


def test_size_mismatch_is_reported_when_loading(tmp_path):
    write_image(tmp_path / "images" / "a.png", 120, 80)
    coco = write_json(
        tmp_path / "t.json",
        {
            "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}],
            "annotations": [],
            "categories": [{"id": 1, "name": "x"}],
        },
    )
    (p,) = load_dataset(coco).report.of_kind("size_mismatch")
    assert (
        p.file == str(coco)
        and p.item == "image id 1 (a.png)"
        and "100x80" in p.message
        and "120x80" in p.message
    )
    write_voc_xml(tmp_path / "xml" / "a.xml", "a.png", 60, 80, [("x", 1, 1, 10, 10, 0)])
    voc = write_yaml(
        tmp_path / "voc.yaml", "format: voc\ntrain: {images: images, annotations: xml}\n"
    )
    (p,) = load_dataset(voc).report.of_kind("size_mismatch")
    assert p.file == str(tmp_path / "xml" / "a.xml") and "60x80" in p.message


@pytest.mark.parametrize(
    "text, expect",
    [
        (
            "format: coco\ntrain: {images: 5, annotations: t.json}\n",
            "train.images: expected a path, got 5 (int)",
        ),
        (
            "format: coco\npath: 123\ntrain: {images: i, annotations: t.json}\n",
            "path: expected a folder, got 123 (int)",
        ),
        ("format: 7\ntrain: i\n", "format: 7 (int) is not a dataset format"),
        ("names: {a: 1}\ntrain: i\n", "names: keys must be class indices"),
        ("names: [a, [b]]\ntrain: i\n", "names: class 1: expected a name"),
        ("names: [a, a]\ntrain: i\n", "names: class name 'a' appears twice"),
        (
            "names: [a]\ntrain: {images: [i, 3]}\n",
            "train.images: expected a path or a list of paths, got 3 (int)",
        ),
        ("names: [a]\nnc: many\ntrain: i\n", "nc: expected an integer"),
        ("- just\n- a list\n", "expected a mapping"),
        ("train: [unclosed\n", "invalid YAML"),
    ],
)
def test_yaml_values_of_the_wrong_type_are_one_line_errors(tmp_path, text, expect):
    path = write_yaml(tmp_path / "d.yaml", text)
    with pytest.raises(DataError) as err:
        load_dataset(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and expect in msg and "fix:" in msg and "\n" not in msg


def test_non_utf8_yaml_is_a_one_line_error(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_bytes("names: [caf\u00e9]\ntrain: images\n".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"d\.yaml: byte 11: not UTF-8 text; fix: save the YAML as UTF-8"
    ):
        load_dataset(path)


def test_roboflow_export_with_dotdot_splits_loads(tmp_path):
    """Roboflow writes data.yaml beside train/ and valid/ but names them '../train/images'."""
    write_image(tmp_path / "train" / "images" / "a.jpg", 40, 40)
    _labels(tmp_path / "train" / "labels" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    write_image(tmp_path / "valid" / "images" / "b.jpg", 40, 40)
    yaml = write_yaml(
        tmp_path / "data.yaml",
        "train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['cell']\n",
    )
    data = load_dataset(yaml, "train")
    np.testing.assert_allclose(data.records[0].boxes, [[10, 10, 30, 30]])
    assert data.report.ok and len(load_dataset(yaml, "val")) == 1


def test_size_mismatch_found_at_read_is_not_reported_again_at_load(tmp_path):
    from efficientdet.data import DetectionDataset

    write_image(tmp_path / "images" / "a.png", 120, 80)
    write_image(tmp_path / "images" / "b.png", 50, 50)
    coco = write_json(
        tmp_path / "t.json",
        {
            "images": [
                {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                {"id": 2, "file_name": "b.png", "width": 50, "height": 50},
            ],
            "annotations": [],
            "categories": [{"id": 1, "name": "x"}],
        },
    )
    data = load_dataset(coco)
    ds = DetectionDataset(data, (64, 64), (0, 0, 0), (1, 1, 1))
    for i in range(len(ds)):
        ds[i]
    assert data.report.count("size_mismatch") == 1 and ds.load_report().count("size_mismatch") == 0
    # a record built by hand (no reader) still gets the load-time check
    ds = DetectionDataset(data.records, (64, 64), (0, 0, 0), (1, 1, 1))
    ds[0]
    (p,) = ds.load_report().of_kind("size_mismatch")
    assert p.item == "image id 1 (a.png)"
