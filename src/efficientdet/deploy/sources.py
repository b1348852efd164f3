"""What ``efficientdet predict --source S`` reads: an image, a folder, a glob, a video or a webcam.

:func:`open_source` resolves S (one-line ``DataError`` when it is none of these) into a
:class:`Source` whose iteration yields :class:`Frame` items in order. An image that cannot be
decoded yields a frame with ``error`` set (the caller reports it and goes on); a video that
cannot be opened raises at once.
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.records import IMAGE_EXTENSIONS
from ..errors import DataError

VIDEO_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".mov",
    ".mkv",
    ".m4v",
    ".webm",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
)


@dataclass
class Frame:
    """One input: ``image`` is an RGB PIL image (files) or an (H, W, 3) uint8 RGB array (video);
    ``name`` the file name or ``video.mp4#<frame>``; ``path`` the file; ``index`` the frame
    number in a video (else the position in the source); ``error`` set when it could not be read."""

    name: str
    path: str | None
    index: int
    image: object = None
    error: str | None = None


class Source:
    """An ordered set of inputs. ``kind``: image | folder | glob | video | webcam; ``len(source)``
    is the number of frames when known (video frame count may be an estimate), else 0.
    ``not_read``: what a folder holds besides images, {".ext" or "subfolder": count} (not read)."""

    def __init__(self, spec: str, kind: str, paths: list[str] | None = None, capture_target=None):
        self.spec, self.kind, self.paths, self._target = spec, kind, paths or [], capture_target
        self.fps = 30.0
        self.not_read: dict[str, int] = {}
        self.frame_size: tuple[int, int] | None = None  # video (w, h)
        self._count = len(self.paths)
        self._cap = None
        if kind in ("video", "webcam"):
            os.environ.setdefault(
                "OPENCV_FFMPEG_LOGLEVEL", "-8"
            )  # our one-line errors, not FFmpeg's log
            import cv2

            log = getattr(
                getattr(cv2, "utils", None), "logging", None
            )  # OpenCV's own WARN lines (V4L2...)
            level = log.getLogLevel() if log else None
            if log:
                log.setLogLevel(log.LOG_LEVEL_ERROR)
            try:
                cap = cv2.VideoCapture(capture_target)
            finally:
                if log:
                    log.setLogLevel(level)
            if not cap.isOpened():
                cap.release()
                if kind == "webcam":
                    raise DataError(
                        f"webcam {capture_target}: cannot open this camera; fix: check it is connected "
                        "and not in use, or give an image, folder or video file as --source"
                    )
                raise DataError(
                    f"{spec}: cannot open this video (unreadable file or unsupported codec); "
                    "fix: check the file plays, or convert it to mp4 (H.264)"
                )
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and fps > 0 and fps < 1000 else 30.0
            self._count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))) if kind == "video" else 0
            self.frame_size = (
                int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            )
            self._cap = cap

    def __len__(self) -> int:
        return self._count

    @property
    def is_video(self) -> bool:
        return self.kind in ("video", "webcam")

    def __iter__(self) -> Iterator[Frame]:
        if self.is_video:
            yield from self._iter_video()
            return
        from ..data.transforms import load_image

        for i, path in enumerate(self.paths):
            name = os.path.basename(path)
            try:
                image = load_image(path)
            except Exception as exc:
                msg = (
                    str(exc).strip().splitlines()[0][:160]
                    if str(exc).strip()
                    else exc.__class__.__name__
                )
                yield Frame(name, path, i, None, f"{path}: cannot read this image ({msg}); skipped")
                continue
            yield Frame(name, path, i, image)

    def _iter_video(self) -> Iterator[Frame]:
        cap, i = self._cap, 0
        assert cap is not None  # opened in __init__ for kind video / webcam
        stem = os.path.basename(self.spec) if self.kind == "video" else f"webcam{self._target}"
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield Frame(
                    f"{stem}#{i}",
                    self.spec if self.kind == "video" else None,
                    i,
                    np.ascontiguousarray(bgr[:, :, ::-1]),
                )
                i += 1
        finally:
            cap.release()
        if i == 0:
            raise DataError(
                f"{self.spec}: no frame could be decoded from this video; check the file plays"
            )


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def open_source(spec: str | int) -> Source:
    """Resolve ``spec``: a webcam index ("0"), a video file, an image file, a folder (its images,
    sorted, not recursive) or a glob pattern (its image files, sorted)."""
    text = str(spec).strip()
    if text.isdigit():
        return Source(text, "webcam", capture_target=int(text))
    path = Path(text).expanduser()
    if path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        files = sorted(str(p) for p in entries if p.is_file() and _is_image(p.name))
        if not files:
            raise DataError(
                f"{text}: folder holds no images ({', '.join(IMAGE_EXTENSIONS[:5])}, ...); "
                "fix: give a folder of images, or an image, video or glob"
            )
        source = Source(text, "folder", files)
        others = [
            ("subfolder" if p.is_dir() else (p.suffix.lower() or "no extension"))
            for p in entries
            if not (p.is_file() and _is_image(p.name))
        ]
        source.not_read = {kind: others.count(kind) for kind in sorted(set(others))}
        return source
    if path.is_file():
        if text.lower().endswith(VIDEO_EXTENSIONS):
            return Source(text, "video", capture_target=str(path))
        return Source(text, "image", [str(path)])
    if any(c in text for c in "*?["):
        files = sorted(
            p
            for p in globlib.glob(os.path.expanduser(text), recursive=True)
            if os.path.isfile(p) and _is_image(p)
        )
        if not files:
            raise DataError(
                f"{text}: the pattern matches no image files; fix: check the pattern (quote it: 'imgs/*.jpg')"
            )
        return Source(text, "glob", files)
    raise DataError(
        f"{text}: no such image, folder, video, glob match or webcam index; fix: check the --source path"
    )
