"""Helpers that write tiny datasets (images + annotations) into a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(
    path: Path, width: int, height: int, colour=(128, 128, 128), fmt: str | None = None
) -> Path:
    """A solid-colour image of width x height."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path, format=fmt)
    return path


def write_corrupt(path: Path) -> Path:
    """A file with an image extension that holds no image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all" * 10)
    return path


def write_truncated_jpeg(path: Path, width: int = 64, height: int = 48) -> Path:
    """A JPEG cut in half: the header opens, decoding fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        path, format="JPEG", quality=95
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def write_voc_xml(path: Path, filename: str, width: int, height: int, objects: list[tuple]) -> Path:
    """objects: (name, xmin, ymin, xmax, ymax, difficult)."""
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2, d in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
        f"<depth>3</depth></size>{objs}</annotation>"
    )
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tiny_train_config(data, out, **overrides):
    """A TrainConfig for a run of seconds: Lite0 at 64x64, 2 epochs of batch 4, no workers."""
    from efficientdet.engine.trainer import TrainConfig

    base = dict(
        data=str(data),
        model="efficientdet_lite0",
        image_size=64,
        epochs=2,
        batch_size=4,
        lr=0.01,
        workers=0,
        out=str(out),
        progress=False,
        seed=0,
        ema_warmup_steps=2,
    )
    base.update(overrides)
    return TrainConfig(**base)
