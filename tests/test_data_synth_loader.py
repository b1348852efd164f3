"""Synthetic generator (determinism, content, CLI) and the multi-worker loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.data import (
    DetectionDataset,
    ImageRecord,
    create_loader,
    load_dataset,
    write_synthetic_dataset,
)
from efficientdet.data.synth import CATEGORY_IDS, CLASS_NAMES
from efficientdet.errors import DataError

MEAN, STD = (100.0, 110.0, 120.0), (50.0, 50.0, 50.0)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root / "a", 40, 4, seed=0, size=160, progress=False)
    write_synthetic_dataset(root / "b", 40, 4, seed=0, size=160, progress=False)
    write_synthetic_dataset(root / "c", 40, 4, seed=1, size=160, progress=False)
    return root


def test_synth_deterministic_per_seed(synth):
    a, b, c = (_files(synth / k) for k in "abc")
    assert len(a) == 40 + 4 + 3 + 1  # images, train.json, val.json, data.yaml, the synth marker
    assert a == b
    assert a.keys() == c.keys()
    assert a["train.json"] != c["train.json"]
    assert sum(a[k] != c[k] for k in a if k.endswith(".jpg")) == 44


def test_synth_content(synth):
    doc = json.loads((synth / "a" / "train.json").read_text())
    assert [c["id"] for c in doc["categories"]] == CATEGORY_IDS == [1, 3, 7, 10, 15, 22]
    sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    with_boxes = {a["image_id"] for a in doc["annotations"]}
    assert 0 < len(sizes) - len(with_boxes) < len(sizes) // 2  # some empty images, a minority
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        W, H = sizes[ann["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
        assert ann["category_id"] in CATEGORY_IDS
    for im in doc["images"][:5]:  # the JSON sizes are the files' sizes
        with Image.open(synth / "a" / "images" / im["file_name"]) as img:
            assert img.size == (im["width"], im["height"])
    data = load_dataset(synth / "a" / "data.yaml", "val")
    assert data.class_names == CLASS_NAMES and data.category_ids == CATEGORY_IDS
    assert data.report.ok


def test_synth_boxes_tight_to_shape(synth):
    """A box's border rows/columns differ from just outside: the shape colour reaches every side."""
    doc = json.loads((synth / "a" / "train.json").read_text())
    by_image: dict[int, list] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    checked = 0
    for image_id, boxes in by_image.items():
        if len(boxes) != 1 or min(boxes[0][2:]) < 20:
            continue  # a lone, not tiny object: nothing else touches its box
        with Image.open(synth / "a" / "images" / names[image_id]) as img:
            px = np.asarray(img.convert("RGB")).astype(float)
        x, y, w, h = boxes[0]
        inside = px[y : y + h, x : x + w]
        centre = px[y + h // 2, x + w // 2]

        # every box side touches pixels of the object colour (within JPEG error)
        def colour_of(a: np.ndarray, centre: np.ndarray = centre) -> np.ndarray:
            return np.abs(a - centre).sum(-1) < 60

        if not colour_of(inside).any():
            continue  # ring: the centre is the hole
        assert colour_of(inside[0]).any() and colour_of(inside[-1]).any()
        assert colour_of(inside[:, 0]).any() and colour_of(inside[:, -1]).any()
        checked += 1
    assert checked >= 3


def test_synth_cli(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "efficientdet",
            "data",
            "synth",
            "--out",
            str(out),
            "--images",
            "8",
            "--seed",
            "0",
            "--size",
            "128",
            "--val-images",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "images").glob("*.jpg"))) == 10
    assert len(load_dataset(out / "data.yaml", "train")) == 8


def test_synth_never_overwrites_a_users_files(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.json").write_text("my annotations")
    with pytest.raises(
        DataError,
        match=r"train\.json: exists and was not written by 'data synth'; fix: pick a new --out",
    ):
        write_synthetic_dataset(tmp_path / "mine", 2, 1, seed=0, size=64, progress=False)
    assert (tmp_path / "mine" / "train.json").read_text() == "my annotations"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["train.json"]
    # its own earlier output may be rewritten (e.g. the demo after an interrupted synth)
    write_synthetic_dataset(tmp_path / "ours", 2, 1, seed=0, size=64, progress=False)
    write_synthetic_dataset(tmp_path / "ours", 2, 1, seed=1, size=64, progress=False)
    assert len(load_dataset(tmp_path / "ours" / "data.yaml", "train")) == 2


def test_loader_two_workers_yields_correct_batches(tmp_path):
    records = []
    for i in range(5):  # image i: 100 x (50 + 10 i), one box [10, 10, 30, 20]
        h = 50 + 10 * i
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (100, h), (i * 40, 0, 0)).save(path)
        records.append(
            ImageRecord(str(path), 100, h, [[10, 10, 30, 20]], [i % 2], image_id=100 + i)
        )
    ds = DetectionDataset(records, (64, 64), MEAN, STD, train=False, class_names=["a", "b"])
    loader = create_loader(ds, batch_size=2, shuffle=False, num_workers=2, seed=0)
    for _epoch in range(2):  # persistent workers serve a second epoch
        batches = list(loader)
        assert [tuple(b[0].shape) for b in batches] == [
            (2, 3, 64, 64),
            (2, 3, 64, 64),
            (1, 3, 64, 64),
        ]
        targets = [t for _, ts in batches for t in ts]
        assert [t["image_id"] for t in targets] == [100, 101, 102, 103, 104]
        for i, t in enumerate(targets):
            scale = min(64 / (50 + 10 * i), 64 / 100)  # = 0.64 for every image here
            assert t["scale"] == pytest.approx(scale)
            np.testing.assert_allclose(
                t["boxes"].numpy(), [[10 * scale, 10 * scale, 30 * scale, 20 * scale]], rtol=1e-6
            )
            assert t["labels"].tolist() == [i % 2] and t["original_size"] == (50 + 10 * i, 100)
        red = torch.cat([b[0][:, 0, 0, 0] for b in batches]) * STD[0] + MEAN[0]
        np.testing.assert_allclose(red.numpy(), [0, 40, 80, 120, 160], atol=1e-4)
    shuffled = create_loader(ds, batch_size=5, shuffle=True, num_workers=0, seed=7)
    order1 = [t["image_id"] for t in next(iter(shuffled))[1]]
    order2 = [
        t["image_id"]
        for t in next(iter(create_loader(ds, batch_size=5, shuffle=True, num_workers=0, seed=7)))[1]
    ]
    assert order1 == order2 and sorted(order1) == [100, 101, 102, 103, 104]


# Run in a fresh interpreter: numpy.random must not be imported yet (numpy >= 2 imports it
# lazily), and nothing else may have frozen the GC.
_FORK_PROBE = """
import gc, json, sys
import torch
from efficientdet.data.loader import create_loader
assert "numpy.random" not in sys.modules and gc.get_freeze_count() == 0

class Probe:
    def __len__(self):
        return 2

    def __getitem__(self, i):  # runs in the worker
        return torch.zeros(1), [gc.get_freeze_count(), id(sys.modules["numpy.random"])]

seen = [t for _, ts in create_loader(Probe(), 1, shuffle=False, num_workers=1) for t in ts]
parent = sys.modules.get("numpy.random")
print(json.dumps({"worker": seen, "parent": id(parent) if parent else None,
                  "parent_frozen": gc.get_freeze_count()}))
"""


def test_loader_forks_workers_with_numpy_random_imported_and_gc_frozen():
    """What keeps a forked worker from copying the parent's pages (issue #11 item 8): the worker
    finds the parent's own numpy.random module (imported before the fork, not once per worker)
    and the inherited objects frozen out of its GC; the parent's GC is unfrozen afterwards."""
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_PROBE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["parent"] is not None
    for frozen, numpy_random in out["worker"]:
        assert frozen > 0  # the objects the worker inherited are in the permanent generation
        assert numpy_random == out["parent"]  # the same module object: inherited, not imported
    assert out["parent_frozen"] == 0
