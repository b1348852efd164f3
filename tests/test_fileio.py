"""fileio: all-or-nothing writes, one-line errors on real full / read-only filesystems."""

from __future__ import annotations

import json
import os

import pytest

from efficientdet.errors import OutputError
from efficientdet.fileio import (
    atomic_write,
    remove_stale_temporaries,
    write_json,
    write_text,
    write_via_temp,
)


def test_atomic_write_replaces_only_when_complete(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("new half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left
    write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}


def test_full_disk_gives_one_line_and_keeps_the_old_file(small_fs):
    folder = small_fs(64 * 1024)
    path = folder / "out.bin"
    with atomic_write(path) as f:
        f.write(b"ok")
    with pytest.raises(OutputError) as info:
        with atomic_write(path) as f:
            f.write(os.urandom(256 * 1024))
    message = str(info.value)
    assert (
        str(path) in message
        and "No space left" in message
        and "fix:" in message
        and "\n" not in message
    )
    assert path.read_bytes() == b"ok"
    assert sorted(p.name for p in folder.iterdir()) == ["out.bin"]


def test_full_disk_with_a_named_writer(small_fs):
    folder = small_fs(64 * 1024)
    with pytest.raises(OutputError, match="No space left"):
        write_via_temp(folder / "model.onnx", lambda tmp: tmp.write_bytes(os.urandom(256 * 1024)))
    assert list(folder.iterdir()) == []


def test_read_only_folder_and_path_under_a_file(readonly_dir, tmp_path):
    with pytest.raises(OutputError, match="Read-only file system"):
        write_text(readonly_dir / "x.json", "{}")
    (tmp_path / "file").write_text("I am a file")
    with pytest.raises(OutputError, match="is a file"):
        write_text(tmp_path / "file" / "sub" / "x.json", "{}")


def test_remove_stale_temporaries_keeps_user_files(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"partial")
    (tmp_path / ".model.x1.tmp.onnx").write_bytes(b"partial")
    (tmp_path / "last.pt").write_bytes(b"keep")
    (tmp_path / ".hidden").write_bytes(b"keep")
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "last.pt"]


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    """Found by trying: results, checkpoints and annotated images came out 0600 (mkstemp's
    owner-only mode), unreadable to the group/others who can read files written with open()."""
    import os
    import stat

    from efficientdet.fileio import write_text, write_via_temp

    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        write_text(tmp_path / "a.json", "{}")
        write_via_temp(tmp_path / "b.mp4", lambda tmp: tmp.write_bytes(b"x"))
        os.umask(0o077)
        write_text(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert mode == {"plain.txt": 0o644, "a.json": 0o644, "b.mp4": 0o644, "private.json": 0o600}
