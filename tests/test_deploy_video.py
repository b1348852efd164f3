"""Annotated video: H.264 MP4 by default (imageio-ffmpeg), each fallback codec, all-or-nothing files,
and predict on a video; every file re-decoded with OpenCV, its codec read back from the stream."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from efficientdet.cli import main
from efficientdet.deploy.video import ENCODERS, VideoWriter, ffmpeg_with_x264
from efficientdet.errors import OutputError
from efficientdet.factory import create_model, save_model_dict

COLORS = [
    (200, 30, 30),
    (30, 200, 30),
    (30, 30, 200),
    (220, 220, 40),
    (128, 128, 128),
    (20, 20, 20),
]


def _decode(path) -> tuple[str, list[np.ndarray]]:
    """(fourcc as OpenCV reports the stream's codec, RGB frames) of a video file."""
    cap = cv2.VideoCapture(str(path))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[:, :, ::-1])
    cap.release()
    return fourcc.to_bytes(4, "little").decode("latin-1").lower(), frames


def _write(path, encoders, size=(64, 48)):
    with VideoWriter(path, 10, size, encoders=encoders) as writer:
        for color in COLORS:
            writer.write(np.broadcast_to(np.array(color, np.uint8), (size[1], size[0], 3)))
    return writer


@pytest.mark.parametrize(
    "encoders, suffix, fourccs, playable",
    [
        (("h264-ffmpeg",), ".mp4", ("avc1", "h264"), True),
        (("vp9-opencv",), ".webm", ("vp90", "vp09"), True),
        (("mpeg4-opencv",), ".mp4", ("fmp4", "mp4v"), False),
    ],
)
def test_each_encoder_writes_a_video_opencv_decodes(tmp_path, encoders, suffix, fourccs, playable):
    if encoders == ("h264-ffmpeg",):
        assert (
            ffmpeg_with_x264() is not None
        )  # imageio-ffmpeg is in the test extra: H.264 must be there
    writer = _write(tmp_path / "clip.mp4", encoders)
    assert writer.path == tmp_path / f"clip{suffix}" and writer.browser_playable is playable
    assert [p.name for p in tmp_path.iterdir()] == [
        writer.path.name
    ]  # the temporary file was renamed
    fourcc, frames = _decode(writer.path)
    assert fourcc in fourccs and len(frames) == len(COLORS)
    for frame, color in zip(
        frames, COLORS, strict=True
    ):  # lossy, but a flat colour survives within a few levels
        assert frame.shape == (48, 64, 3)
        assert np.abs(frame.reshape(-1, 3).mean(0) - np.array(color)).max() < 8
    assert ("browsers" in writer.note) is (not playable)


def test_default_is_h264_mp4_and_odd_sizes_are_padded(tmp_path):
    writer = _write(tmp_path / "odd.avi", encoders=ENCODERS, size=(65, 47))
    assert writer.codec == "H.264 (MP4)" and writer.path.suffix == ".mp4" and writer.note == ""
    fourcc, frames = _decode(writer.path)
    assert fourcc in ("avc1", "h264") and len(frames) == len(COLORS)
    assert frames[0].shape == (48, 66, 3)  # 4:2:0 needs even sides: one pixel of padding
    assert np.abs(frames[0][:47, :65].reshape(-1, 3).mean(0) - np.array(COLORS[0])).max() < 8


def test_a_failed_write_leaves_no_file(small_fs):
    folder = small_fs(64 * 1024)  # far too small for 60 frames of noise
    rs = np.random.RandomState(0)
    with pytest.raises(OutputError, match="fix:") as info:
        with VideoWriter(folder / "big.mp4", 10, (320, 240)) as writer:
            for _ in range(60):
                writer.write(rs.randint(0, 256, (240, 320, 3), dtype=np.uint8))
    assert len(str(info.value).splitlines()) == 1
    assert list(folder.iterdir()) == []


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=2, image_size=64).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(save_model_dict(model, ["a", "b"]), path)
    return path


def test_predict_writes_a_browser_playable_video_and_never_the_input(ckpt, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    source = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    rs = np.random.RandomState(1)
    for _ in range(4):
        source.write(rs.randint(0, 256, (64, 96, 3), dtype=np.uint8))
    source.release()
    original = video.read_bytes()
    # --out is the folder of the input: refused in one line, nothing written
    assert (
        main(
            [
                "predict",
                "--weights",
                str(ckpt),
                "--source",
                str(video),
                "--out",
                str(tmp_path),
                "--conf",
                "0.5",
            ]
        )
        == 2
    )
    assert "holds the source" in capsys.readouterr().err
    assert video.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.mp4"
    ]
    out = tmp_path / "annotated"
    assert (
        main(
            [
                "predict",
                "--weights",
                str(ckpt),
                "--source",
                str(video),
                "--out",
                str(out),
                "--conf",
                "0.5",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "4 frames" in printed and "H.264 (MP4)" in printed
    assert video.read_bytes() == original
    fourcc, frames = _decode(out / "clip.mp4")
    assert fourcc in ("avc1", "h264") and len(frames) == 4 and frames[0].shape == (64, 96, 3)
    assert {r["image_id"] for r in json.loads((out / "predictions.json").read_text())} <= {
        1,
        2,
        3,
        4,
    }
