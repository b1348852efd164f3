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


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """``jpeg`` with an APP1 segment holding ``payload`` right after its SOI marker."""
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _big_endian_exif(orientation: int) -> bytes:
    entry = (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big")
    entry += orientation.to_bytes(2, "big") + b"\0\0"
    return b"Exif\0\0MM\0*" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + entry + b"\0" * 4


def test_jpeg_header_reader_gives_what_pil_gives(tmp_path) -> None:
    import io

    from PIL import Image

    from efficientdet.data.records import jpeg_size, read_image_size

    def encode(image: Image.Image, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=kw.pop("format", "JPEG"), **kw)
        return buf.getvalue()

    base = Image.new("RGB", (37, 21), (10, 200, 30))
    cases: dict[str, tuple[bytes, bool]] = {}  # name -> (file bytes, read without PIL)
    for k in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = k
        cases[f"exif{k}"] = (encode(base, exif=exif.tobytes()), True)
        cases[f"exif{k}-mm"] = (_with_app1(encode(base), _big_endian_exif(k)), True)
    cases["plain"] = (encode(base), True)
    big_exif = Image.Exif()
    big_exif[0x0112], big_exif[0x010E] = 6, "x" * 30000  # orientation past the first read
    cases["big-exif"] = (encode(base, exif=big_exif.tobytes()), True)
    cases["big-comment"] = (encode(base, comment=b"c" * 60000, icc_profile=bytes(40000)), True)
    cases["progressive-gray"] = (encode(base.convert("L"), progressive=True, comment=b"hi"), True)
    xmp = b'http://ns.adobe.com/xap/1.0/\0<x:xmpmeta tiff:Orientation="6"/>'
    cases["xmp"] = (_with_app1(encode(base), xmp), False)
    cases["png"] = (encode(base, format="PNG"), False)
    for name, (data, fast) in cases.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        with Image.open(path) as image:
            w, h = image.size
            want = (h, w) if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)
        assert read_image_size(path) == want, name
        assert (jpeg_size(path) == want) if fast else (jpeg_size(path) is None), name
    assert read_image_size(tmp_path / "exif6.jpg") == (21, 37)  # the rule, not just agreement
    assert read_image_size(tmp_path / "big-exif.jpg") == (21, 37)
    assert read_image_size(tmp_path / "xmp.jpg") == (21, 37)
