"""The benchmark scripts' ``--json`` reports (benchmarks/common.py's write_json): a write that
fails half-way (a full disk, Ctrl+C) keeps the report that was there and leaves no temporary
file; the next complete write replaces it."""

from __future__ import annotations

import json
import os

import pytest

from efficientdet.errors import OutputError

OLD = {"run": 1, "median_ms": 12.5}
BIG = {"run": 2, "times_ms": [11.125] * 10_000}  # ~80 KB of JSON


def _assert_old_report_then_replaced(bench_common, path) -> None:
    assert json.loads(path.read_text()) == OLD
    assert os.listdir(path.parent) == [path.name]  # no .report.json.*.tmp left
    bench_common.write_json(path, {"run": 3})
    assert json.loads(path.read_text()) == {"run": 3}
    assert os.listdir(path.parent) == [path.name]


def test_a_full_disk_keeps_the_previous_report(bench_common, small_fs):
    path = small_fs(16384) / "report.json"  # a real 16 KiB filesystem: BIG fills it mid-write
    bench_common.write_json(path, OLD)
    with pytest.raises(OutputError, match=r"report\.json: cannot write \(No space left"):
        bench_common.write_json(path, BIG)
    _assert_old_report_then_replaced(bench_common, path)


def test_ctrl_c_half_way_keeps_the_previous_report(bench_common, tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    bench_common.write_json(path, OLD)
    real_fdopen, sizes = os.fdopen, []

    def fdopen(fd, *args, **kwargs):  # the file gets half of its first write, then Ctrl+C
        f = real_fdopen(fd, *args, **kwargs)
        real_write = f.write

        def write(data):
            real_write(data[: len(data) // 2])
            f.flush()
            sizes.append(os.fstat(fd).st_size)
            raise KeyboardInterrupt

        f.write = write
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(KeyboardInterrupt):
        bench_common.write_json(path, BIG)
    monkeypatch.undo()
    assert len(sizes) == 1 and sizes[0] > 0  # interrupted with bytes already on disk
    _assert_old_report_then_replaced(bench_common, path)
