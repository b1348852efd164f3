"""Writing files safely: the one home of "temporary name, then rename".

Every file the library writes (checkpoints, JSON/CSV results, plots, exported models,
annotated images) goes through :func:`atomic_write` or one of its shorthands:

- the data goes to a hidden temporary file in the destination folder
  (``.NAME.<random>.tmp``), is flushed and fsynced, then ``os.replace``-d over ``NAME``;
- a crash or kill at any point leaves either the old file or the new one, never a
  truncated file; a failed write (exception) removes the temporary file;
- an ``OSError`` (disk full, read-only folder, a path under a file...) becomes an
  :class:`OutputError`: one line naming the path and the fix;
- the file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask),
  not the owner-only 0600 of a temporary file.

Temporary files of a killed process can remain; :func:`remove_stale_temporaries` deletes
the ones in a folder (callers run it where they own the folder, e.g. a run folder they hold
the lock of).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputError

TEMP_SUFFIX = ".tmp"


def _io_fix(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return "free disk space or write elsewhere (--out)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "pick a folder you can write to (--out)"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a parent of this path is a file: pick another --out"
    return "check the path, free space and permissions"


def _umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races with threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_temporary(path: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """``mkstemp`` in ``path``'s folder, with the permissions of a plainly created file."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except OSError:
        pass  # a filesystem without permissions (e.g. FAT): its default is all there is
    return fd, tmp


def output_error(path: str | os.PathLike, exc: OSError, what: str = "cannot write") -> OutputError:
    """The one-line OutputError for an OSError met while writing ``path``."""
    return OutputError(f"{path}: {what} ({exc.strerror or exc}); fix: {_io_fix(exc)}")


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p folder``, with an OutputError (one line) when it cannot be created."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file sits where the folder should be
        raise output_error(folder, exc, "is a file, not a folder") from None
    except OSError as exc:
        raise output_error(folder, exc, "cannot create the folder") from None
    return folder


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (POSIX); skipped where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "wb",
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """``with atomic_write(path, "w") as f: ...``: write ``path`` all or nothing.

    ``mode`` is "w" (text, UTF-8 unless ``encoding``) or "wb". The parent folder is created
    when missing. On success the temporary file replaces ``path``; on any exception it is
    removed and ``path`` is untouched. OSErrors become :class:`OutputError`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode {mode!r}: use 'w' or 'wb'")
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = _new_temporary(path, f".{path.name}.", TEMP_SUFFIX)
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        f: IO[Any] = (
            os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
            if mode == "w"
            else os.fdopen(fd, "wb")
        )
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def temporary_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with temporary_path(path) as tmp: ...``: for writers that need a file *name* and may
    write over a long time (``torch.onnx.export``, an ffmpeg process, a video stream): they
    write ``tmp``, a temporary file in the same folder with the same suffix, which replaces
    ``path`` when the block ends without an exception. Same guarantees as :func:`atomic_write`."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp_name = _new_temporary(path, f".{path.stem}.", f"{TEMP_SUFFIX}{path.suffix}")
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise
    fsync_dir(path.parent)


def write_via_temp(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """``writer(tmp_path)`` writes a temporary file that then replaces ``path`` (:func:`temporary_path`)."""
    with temporary_path(path) as tmp:
        writer(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Atomically write ``obj`` as JSON (UTF-8) to ``path``."""
    write_text(path, json.dumps(obj, indent=indent))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp[.ext]``) that killed writers left in
    ``folder``; returns the removed paths. Only call it on a folder this process owns."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and TEMP_SUFFIX in p.name and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
