"""RecordTable: records held in flat arrays read back as the ImageRecords they were made from."""

from __future__ import annotations

import numpy as np
import pytest

from efficientdet.data.records import DetectionData, ImageRecord, RecordTable


def _records() -> list[ImageRecord]:
    return [
        ImageRecord("imgs/a.jpg", 640, 480, [[1, 2, 30, 40], [5, 6, 7, 8]], [2, 0], image_id=7,
                    ignore=[False, True], areas=[100.0, np.nan], annotation_file="x.json"),
        ImageRecord("imgs/ü b.png", 10, 20, np.zeros((0, 4)), [], image_id=-3),
        ImageRecord("imgs/\udcff.jpg", 3, 4, [[0, 0, 1, 1]], [1], image_id=2**40,
                    file_name="sub/odd.jpg", annotation_file="labels/odd.txt"),
    ]  # fmt: skip


def _same(a: ImageRecord, b: ImageRecord) -> None:
    assert (a.path, a.width, a.height, a.image_id, a.file_name, a.annotation_file) == (
        b.path, b.width, b.height, b.image_id, b.file_name, b.annotation_file,
    )  # fmt: skip
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.ignore, b.ignore)
    np.testing.assert_array_equal(a.areas, b.areas)  # NaN == NaN here


def test_table_reads_back_every_field_of_every_record() -> None:
    records = _records()
    table = RecordTable.from_records(records)
    assert len(table) == 3
    for got, want in zip(table, records, strict=True):
        _same(got, want)
    _same(table[-1], records[2])
    assert [r.image_id for r in table[1:]] == [-3, 2**40]
    assert table.box_counts().tolist() == [2, 0, 1]
    assert table[1].boxes.shape == (0, 4) and table[1].labels.dtype == np.int64
    with pytest.raises(IndexError):
        table[3]
    with pytest.raises(IndexError):
        table[-4]


def test_views_cannot_change_the_shared_records() -> None:
    table = RecordTable.from_records(_records())
    record = table[0]
    with pytest.raises(ValueError, match="read-only"):
        record.boxes[0, 0] = 99
    assert np.shares_memory(record.boxes, table.boxes)  # a view, not a copy per access
    assert table[0].boxes[0, 0] == 1


def test_detection_data_holds_any_record_list_as_a_table() -> None:
    data = DetectionData(_records(), ["a", "b", "c"], [1, 2, 3])
    assert isinstance(data.records, RecordTable) and len(data) == 3
    assert sorted(r.file_name for r in data.records) == ["a.jpg", "sub/odd.jpg", "ü b.png"]
    empty = DetectionData([], ["a"], [1])
    assert len(empty.records) == 0 and list(empty.records) == []
