"""Writing annotated video that plays in a browser, with the best encoder installed.

Encoders, in order of preference (:data:`ENCODERS`):

* ``h264-ffmpeg``: H.264 (libx264, yuv420p, ``+faststart``) in MP4 through the ffmpeg binary of
  the optional ``imageio-ffmpeg`` package (``pip install 'efficientdet[video]'``); plays everywhere.
* ``h264-opencv``: H.264 in MP4 through OpenCV, where its FFmpeg has an H.264 encoder (the
  PyPI opencv-python-headless wheels do not).
* ``vp9-opencv``: VP9 in WebM through OpenCV (the PyPI wheels have it): plays in browsers;
  the file is ``.webm``.
* ``mpeg4-opencv``: MPEG-4 Part 2 (``mp4v``) in MP4: plays in desktop players, not in most
  browsers; used only when nothing else is there, with a warning.

:class:`VideoWriter` takes RGB frames, writes to a temporary name in the output folder and
renames it when closed (:func:`efficientdet.fileio.temporary_path`); ``codec`` /
``browser_playable`` / ``path`` say what was written, ``note`` why a fallback was used.
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from ..errors import OutputError
from ..fileio import temporary_path

if TYPE_CHECKING:
    import cv2

ENCODERS = ("h264-ffmpeg", "h264-opencv", "vp9-opencv", "mpeg4-opencv")
# encoder: (container suffix, OpenCV fourcc or None, codec name for people, plays in browsers)
_SPEC = {
    "h264-ffmpeg": (".mp4", None, "H.264 (MP4)", True),
    "h264-opencv": (".mp4", "avc1", "H.264 (MP4)", True),
    "vp9-opencv": (".webm", "VP90", "VP9 (WebM)", True),
    "mpeg4-opencv": (".mp4", "mp4v", "MPEG-4 Part 2 (MP4)", False),
}
INSTALL_HINT = "pip install 'efficientdet[video]' (imageio-ffmpeg) for H.264 MP4"


@lru_cache(maxsize=1)
def ffmpeg_with_x264() -> str | None:
    """Path of imageio-ffmpeg's ffmpeg when it is installed and has libx264, else None."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        encoders = subprocess.run(
            [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return None
    return exe if "libx264" in encoders else None


def _opencv_writer(
    path: Path, fourcc: str, fps: float, size: tuple[int, int]
) -> cv2.VideoWriter | None:
    """An opened cv2.VideoWriter, or None when this OpenCV cannot encode ``fourcc``."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # silence FFmpeg's own probing messages
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
    if writer.isOpened():
        return writer
    writer.release()
    return None


def _frame_count(path: Path) -> int:
    """Frames OpenCV reads back from a written video (-1 when it does not open)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
    finally:
        cap.release()


class VideoWriter:
    """``VideoWriter(path, fps, (w, h))``; ``write(rgb (h, w, 3) uint8)`` per frame; ``close()``.

    ``path``'s suffix is replaced by the encoder's container (``.mp4`` / ``.webm``).
    ``encoders``: the order to try (default :data:`ENCODERS`). Frames of another size are
    resized to the first frame's. A writer that fails raises :class:`OutputError` (one line);
    use it as a context manager so a failure leaves no partial file.
    """

    _stdin: IO[bytes]  # ffmpeg's pipes, set with _proc
    _stderr: IO[bytes]

    def __init__(
        self, path: str | os.PathLike, fps: float, size: tuple[int, int], encoders=ENCODERS
    ):
        self.fps, self.size = float(fps), (int(size[0]), int(size[1]))
        self.frames = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._cv: cv2.VideoWriter | None = None
        skipped = []
        for name in encoders:
            suffix, _fourcc, codec, playable = _SPEC[name]
            target = Path(path).with_suffix(suffix)
            ctx = temporary_path(target)
            tmp = ctx.__enter__()
            opened = self._open(name, tmp)
            if opened:
                self.encoder, self.codec, self.browser_playable, self.path = (
                    name,
                    codec,
                    playable,
                    target,
                )
                self._ctx, self._tmp = ctx, tmp
                break
            ctx.__exit__(RuntimeError, RuntimeError("unused"), None)  # removes the temporary file
            skipped.append(name)
        else:
            raise OutputError(
                f"{path}: no video encoder available (OpenCV cannot write mp4v here); "
                f"fix: {INSTALL_HINT}, or use --no-save"
            )
        self.note = ""
        if skipped and "h264-ffmpeg" in skipped:
            self.note = f"H.264 needs imageio-ffmpeg; {INSTALL_HINT}"
        if not self.browser_playable:
            self.note = (
                f"{self.codec} plays in desktop players but not in most browsers; {INSTALL_HINT}"
            )

    def _open(self, name: str, tmp: Path) -> bool:
        if name == "h264-ffmpeg":
            exe = ffmpeg_with_x264()
            if exe is None:
                return False
            w, h = self.size
            cmd = [
                exe,
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-s",
                f"{w}x{h}",
                "-r",
                f"{self.fps:.6g}",
                "-i",
                "-",
                "-an",
                "-vf",
                "pad=ceil(iw/2)*2:ceil(ih/2)*2",  # yuv420p needs even sides
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-preset",
                "veryfast",
                "-crf",
                "23",
                "-movflags",
                "+faststart",
                "-f",
                "mp4",
                str(tmp),
            ]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            assert proc.stdin is not None and proc.stderr is not None  # both are PIPE
            self._proc, self._stdin, self._stderr = proc, proc.stdin, proc.stderr
            return True
        fourcc = _SPEC[name][1]
        assert fourcc is not None  # every encoder but h264-ffmpeg is OpenCV's
        self._cv = _opencv_writer(tmp, fourcc, self.fps, self.size)
        return self._cv is not None

    def write(self, rgb: np.ndarray) -> None:
        """Append one (h, w, 3) uint8 RGB frame."""
        frame = np.asarray(rgb, dtype=np.uint8)
        if (frame.shape[1], frame.shape[0]) != self.size:
            from PIL import Image

            frame = np.asarray(Image.fromarray(frame).resize(self.size))
        if self._proc is not None:
            try:
                self._stdin.write(np.ascontiguousarray(frame).tobytes())
            except (BrokenPipeError, OSError):
                self._fail()
        else:
            assert self._cv is not None  # __init__ opened one of the two
            self._cv.write(np.ascontiguousarray(frame[:, :, ::-1]))
        self.frames += 1

    def _fail(self):
        message = ""
        if self._proc is not None:
            if not self._stdin.closed:
                self._stdin.close()
            self._proc.wait()
            lines = (self._stderr.read() or b"").decode(errors="replace").strip().splitlines()
            message = lines[-1] if lines else f"exit status {self._proc.returncode}"
        error = OutputError(
            f"{self.path}: ffmpeg could not write the video ({message}); "
            "fix: free disk space or pick another --out"
        )
        self.abort()
        raise error from None

    def close(self) -> Path:
        """Finish the file and move it to ``path``; returns ``path``."""
        if self._proc is not None:
            self._stdin.close()
            if self._proc.wait() != 0:
                self._fail()
            self._stderr.close()
            self._proc = None
        if self._cv is not None:
            self._cv.release()
            self._cv = None
            if (
                _frame_count(self._tmp) != self.frames
            ):  # OpenCV reports no write errors (a full disk, say)
                self.abort()
                raise OutputError(
                    f"{self.path}: the video did not read back with its {self.frames} frames "
                    "(disk full?); fix: free disk space or pick another --out"
                )
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Stop and remove the temporary file; ``path`` is left as it was."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._cv is not None:
            self._cv.release()
            self._cv = None
        self._ctx.__exit__(
            RuntimeError, RuntimeError("aborted"), None
        )  # removes the temporary file

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
