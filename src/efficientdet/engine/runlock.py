"""One training run per run folder: ``RUN_DIR/.lock``, held while the run writes there.

The lock is an exclusive ``flock`` on ``RUN_DIR/.lock`` (the file holds the owner's pid and
host, for the message). The kernel drops it when its process dies, however it dies, so the
lock of a killed run is stale by construction and the next run (or ``--resume``) takes it
over; a second run while the first is alive - with ``--exist-ok`` in the same ``--out``, or a
``--resume`` of a run still going - is refused with one line. Only the holder may clean the
folder (:func:`efficientdet.fileio.remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

from ..errors import OutputError
from ..fileio import output_error

LOCK_NAME = ".lock"


class RunLock:
    """``lock = RunLock(run_dir).acquire()`` ... ``lock.release()`` (the folder must exist).
    ``resume``: the folder is a ``--resume`` of the user's run, so the fixes cannot be another --out."""

    def __init__(self, run_dir: str | os.PathLike, resume: bool = False) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.resume = resume
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        folder = self.path.parent
        for _ in range(5):  # retried when the holder removed the file between our open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if self.resume and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise OutputError(
                        f"{self.path}: cannot create the run lock ({exc.strerror}); fix: make {folder} "
                        "writable, or copy it somewhere writable and resume the copy"
                    ) from None
                raise output_error(self.path, exc, "cannot create the run lock") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise OutputError(
                    f"{folder}: another training run ({owner}) is writing to this folder; "
                    f"fix: wait for it to finish{'' if self.resume else ', or give another --out'}"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            self.fd = fd
            return self
        raise OutputError(
            f"{self.path}: could not take the run lock; fix: retry"
            f"{'' if self.resume else ', or give another --out'}"
        )

    def release(self) -> None:
        """Remove the lock file and drop the lock (safe to call twice)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def _read_owner(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "pid unknown"
