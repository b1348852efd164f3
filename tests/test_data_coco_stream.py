"""The streamed COCO reader: top-level values one at a time, annotations in checked batches.

Truth: the standard library's ``json.loads`` for the stream reader (same values, same error
text at the same line/column/char with any block size), and boxes, labels and problems
computed by hand from the document for the batched annotation checks.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import orjson
import pytest

from efficientdet.data import coco, jsonstream
from efficientdet.data.jsonstream import top_level_items
from efficientdet.errors import DataError

from .data_factory import write_image, write_json

DOCUMENTS = [
    '{"a": 1, "images": [1, {"x": [1, 2]}, "s"], "b": {"c": null}}',
    '{"images": []}',
    "{}",
    "[1, 2]",
    '{\n"images": [\n1.5e3,\n 2, NaN, -Infinity]\n,\n"z": 12345678901234567890}',
    '{"a":1,}',
    '{"a" 1}',
    '{"a":1 "b":2}',
    '{"images":[1 2]}',
    '{"a":1} x',
    "",
    '{"images":[1,]}',
    '{"images":[}',
    '{"images":[1,2',
    '{"a":"x\ny"}',
    '{"images":\n\n  [\n {"q": tru}]}',
    '{"images": [{"s": "\\u00fc\\ud800"}]}',
]


# element-by-element, and in blocks by json itself and by orjson (the fastjson extra, in `test`)
BULK = {"none": None, "json": json.loads, "orjson": orjson.loads}

TRICKY = (
    "["
    + ", ".join(
        [
            '{"s": "}, {", "t": "},"}',
            '{"n": {"a": [{"b": 1}, {"c": 2}]}, "u": "\\u00fc"}',
            '{"x": NaN}',
            '{"id": 12345678901234567890123}',
            '{"id": -9223372036854775809}',
            '{"v": 1E400}',
            "3",
            '"}"',
            '{"s": "\\ud800"}',
            "[]",
            '{"k": 1, "k": 2}',
        ]
        * 3
    )
    + "]"
)
DOCUMENTS.append('{"images": ' + TRICKY + "}")
DOCUMENTS.append('{"images": ' + TRICKY[:-40] + "}")


def _read(text: str, block: int):
    out = {}
    for key, value in top_level_items(io.StringIO(text), {"images"}, block):
        out[key] = (
            value
            if isinstance(value, (list, dict, str, int, float)) or value is None
            else list(value)
        )
    return out.get("", out) if "" in out else out


@pytest.mark.parametrize("bulk", BULK)
@pytest.mark.parametrize("text", DOCUMENTS)
def test_stream_reads_what_json_loads_reads_with_any_block_size(monkeypatch, text, bulk) -> None:
    monkeypatch.setattr(jsonstream, "bulk_loads", BULK[bulk])
    try:
        want = repr(json.loads(text))
    except json.JSONDecodeError as exc:
        want = f"error {exc}"
    for block in (1, 2, 3, 7, 50, 1 << 16):
        try:
            got = repr(_read(text, block))
        except json.JSONDecodeError as exc:
            got = f"error {exc}"
        assert got == want, (block, got, want)


def test_plain_elements_are_decoded_in_blocks(monkeypatch) -> None:
    calls = []

    def loads(text: bytes):
        calls.append(len(text))
        return orjson.loads(text)

    monkeypatch.setattr(jsonstream, "bulk_loads", loads)
    elements = [{"id": i, "bbox": [i, 2.5, 3, 4], "segmentation": [[1.25] * 8]} for i in range(500)]
    text = json.dumps({"annotations": elements, "z": 1})
    got = {k: list(v) if k == "annotations" else v for k, v in top_level_items(
        io.StringIO(text), {"annotations"}, block=4096
    )}  # fmt: skip
    assert got == {"annotations": elements, "z": 1}
    assert 1 < len(calls) < 100  # blocks of many elements, not one call per element


def test_skipped_polygons_decode_as_none_and_nothing_else_changes(monkeypatch) -> None:
    """``skip_polygons``: polygon segmentations (any spacing, exponents, negative numbers,
    several rings) come back as None from the fast path; RLE segmentations, a "segmentation"
    text inside a string and every other value are json's."""
    monkeypatch.setattr(jsonstream, "bulk_loads", orjson.loads)
    elements = [
        {"id": i, "bbox": [i, -2.5e-3, 3, 4], "segmentation": [[1.25, -3e2] * 4, [7, 8, 9, 10]]}
        for i in range(300)
    ]
    elements[7]["segmentation"] = {"counts": [1, 2, 3], "size": [4, 5]}  # RLE: kept
    elements[9]["note"] = '"segmentation": [[1, 2]]'  # looks like one, inside a string: kept
    text = json.dumps({"annotations": elements}, indent=1)  # spaces and newlines in polygons
    stream = top_level_items(io.StringIO(text), {"annotations"}, 1 << 16, {"annotations"})
    got = {k: list(v) for k, v in stream}["annotations"]
    want = [{**e, "segmentation": None} if i != 7 else e for i, e in enumerate(elements)]
    assert got == want
    # without skip_polygons: json's values
    stream = top_level_items(io.StringIO(text), {"annotations"}, 1 << 16)
    assert {k: list(v) for k, v in stream}["annotations"] == elements


def _doc(tmp_path, order: tuple[str, ...]) -> tuple[dict, dict]:
    """Two 40x30 images (+1 missing), 11 annotations with one problem each of several kinds."""
    write_image(tmp_path / "images" / "a.png", 40, 30)
    write_image(tmp_path / "images" / "b.png", 40, 30)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4]},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0.5, 0, 10, 10], "iscrowd": 1, "area": 50},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20]},  # clipped to 40x30
        {"id": 4, "image_id": 1, "category_id": 4, "bbox": [1, 1, 2, 2]},  # unknown category
        {"id": 5, "image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 2]},  # orphan
        {"id": 6, "image_id": 2, "category_id": 7, "bbox": [1, 1, "2", 2]},  # bad bbox
        {"id": 7, "image_id": 3, "category_id": 7, "bbox": [1, 1, 2, 2]},  # its image is missing
        {"id": 8, "image_id": 2, "category_id": 7, "bbox": [5, 5, -1, 2]},  # empty box
        {"id": 9, "image_id": 2, "category_id": 3, "bbox": [2, 3, 4, 5], "area": True},
        {"id": 10, "image_id": 1, "category_id": 7, "bbox": [4, 4, 4, 4], "iscrowd": 2},
        {"id": 11, "image_id": 2, "category_id": 7, "bbox": [0, 0, 40, 30], "area": 1e400},
    ]  # fmt: skip
    parts = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "c.png", "width": 40, "height": 30},
        ],
        "annotations": anns,
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    text = "{" + ", ".join(f'"{k}": {json.dumps(parts[k])}' for k in order) + "}"
    (tmp_path / "train.json").write_text(text)
    return parts, {
        # image id -> (xyxy boxes, labels (three=0, seven=1), ignore, areas)
        1: (  # a bad iscrowd is reported and read as 0
            [[1, 2, 4, 6], [30, 20, 40, 30], [4, 4, 8, 8]],
            [1, 0, 1],
            [0, 0, 0],
            [math.nan] * 3,
        ),
        2: (
            [[0.5, 0, 10.5, 10], [2, 3, 6, 8], [0, 0, 40, 30]],
            [0, 0, 1],
            [1, 0, 0],
            [50, math.nan, math.nan],
        ),
    }


@pytest.mark.parametrize("bulk", BULK)
@pytest.mark.parametrize("batch", [1, 3, 1000])
@pytest.mark.parametrize(
    "order", [("images", "annotations", "categories"), ("categories", "annotations", "images")]
)
def test_batched_annotations_give_hand_computed_records_and_every_problem(
    tmp_path, monkeypatch, batch, order, bulk
) -> None:
    monkeypatch.setattr(coco, "BATCH", batch)
    monkeypatch.setattr(jsonstream, "bulk_loads", BULK[bulk])
    _, want = _doc(tmp_path, order)
    data = coco.read_coco(tmp_path / "train.json")
    assert data.class_names == ["three", "seven"]
    assert [r.image_id for r in data.records] == [1, 2]
    for r in data.records:
        boxes, labels, ignore, areas = want[r.image_id]
        np.testing.assert_allclose(r.boxes, boxes)
        assert r.labels.tolist() == labels and r.ignore.tolist() == [bool(v) for v in ignore]
        np.testing.assert_allclose(r.areas, areas)
    found = {(p.kind, p.item) for p in data.report.problems}
    assert found == {
        ("missing_image", "image id 3 (c.png)"),
        ("box_clipped", "annotation id 3 (image id 1, a.png)"),
        ("unknown_category", "annotation id 4 (image id 1, a.png)"),
        ("orphan_annotation", "annotation id 5 (image id 9)"),
        ("bad_annotation", "annotation id 6 (image id 2, b.png)"),
        ("bad_box_size", "annotation id 8 (image id 2, b.png)"),
        ("bad_iscrowd", "annotation id 10 (image id 1, a.png)"),
    }
    assert all(p.file == str(tmp_path / "train.json") for p in data.report.problems)
    assert data.report.stats["boxes_listed"] == 11 and data.report.stats["boxes_used"] == 6


def test_a_repeated_annotation_list_is_refused(tmp_path) -> None:
    write_image(tmp_path / "images" / "a.png", 40, 30)
    images = '[{"id": 1, "file_name": "a.png"}]'
    (tmp_path / "x.json").write_text(
        f'{{"images": {images}, "annotations": [], "annotations": [], "categories": []}}'
    )
    with pytest.raises(DataError, match="'annotations' appears twice; fix: merge"):
        coco.read_coco(tmp_path / "x.json")


def test_an_id_past_64_bits_is_a_reported_entry_not_a_crash(tmp_path) -> None:
    write_image(tmp_path / "images" / "a.png", 40, 30)
    doc = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2**64, "file_name": "a.png"}],
        "annotations": [{"id": 2**70, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}],
        "categories": [{"id": 1, "name": "x"}, {"id": -(2**63) - 1, "name": "y"}],
    }
    write_json(tmp_path / "x.json", doc)
    data = coco.read_coco(tmp_path / "x.json")
    assert [(p.kind, p.item) for p in data.report.problems] == [
        ("bad_image_entry", "images[1]"),
        ("bad_category", "categories[1]"),
    ]
    assert data.records[0].labels.tolist() == [0] and data.class_names == ["x"]


def test_image_paths_are_joined_as_pathlib_joins_them() -> None:
    from pathlib import Path

    names = ["a.jpg", "x/y.jpg", "./a.jpg", "x//y.jpg", "x/./y.jpg", "x/", "x/.", ".", "ü\\b.png"]
    for folder in ["images", "/data/images", ".", "/", "../up"]:
        for name in names:
            assert coco._image_path(folder, name) == str(Path(folder) / name), (folder, name)


def test_annotations_that_are_not_a_list_are_reported(tmp_path) -> None:
    write_image(tmp_path / "images" / "a.png", 40, 30)
    for value in ["true", "{}", "3"]:
        (tmp_path / "x.json").write_text(
            '{"images": [{"id": 1, "file_name": "a.png"}], "annotations": '
            + value
            + ', "categories": [{"id": 1, "name": "a"}]}'
        )
        data = coco.read_coco(tmp_path / "x.json")
        kinds = [(p.kind, p.item) for p in data.report.problems]
        assert ("bad_annotation", "annotations") in kinds, value
