"""The memory guard (efficientdet.resources): refuses impossible sizes at once, without
allocating; accepts normal ones; its estimate is within a factor of 2 of measured peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import efficientdet as ed
from efficientdet import cli, resources
from efficientdet.config import get_model_config
from efficientdet.errors import ResourceError

STATED_FACTOR = (
    2.0  # the estimate is within this factor of measured peak RSS growth (calibration: 0.78-1.27)
)


def _rss(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("MemAvailable")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from efficientdet.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synth") / "data",
        num_train=4,
        num_val=2,
        seed=1,
        size=64,
        progress=False,
    )


def test_train_refuses_image_size_100000_at_once_without_allocating(synth, tmp_path, capsys):
    args = [
        "train",
        "--data",
        str(synth),
        "--model",
        "lite0",
        "--image-size",
        "100000",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    ]
    import efficientdet.data
    import efficientdet.engine.train_cli  # noqa: F401 - time the run, not the first import of its modules

    base = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    t0 = time.process_time()  # CPU time: the refusal does no work (wall time varies with load)
    code = cli.main(args)
    elapsed = time.process_time() - t0
    grown = _rss("VmHWM") - base
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    line = err[0]
    assert line.startswith(
        "error: efficientdet_lite0 at 100000x100000, batch 8: training (forward + backward) needs about "
    )
    assert " TB of memory, " in line and "is available (" in line  # the estimate is terabytes
    assert line.endswith("fix: a smaller --image-size or --batch, or --grad-checkpointing")
    assert elapsed < 2.0, elapsed
    assert grown < 300e6, grown  # a 100000x100000 batch alone would be 960 GB


def test_detector_refuses_before_making_its_anchors(monkeypatch):
    from efficientdet.detection.anchors import AnchorGenerator

    def no_anchors(*args, **kwargs):
        raise AssertionError("anchors made before the memory check")

    monkeypatch.setattr(AnchorGenerator, "__call__", no_anchors)
    t0 = time.process_time()
    with pytest.raises(ResourceError) as info:
        ed.Detector.from_name("lite0", weights="none", image_size=100000)
    assert time.process_time() - t0 < 2.0
    message = str(info.value)
    assert (
        "\n" not in message
        and "inference needs about" in message
        and "--grad-checkpointing" not in message
    )


def test_normal_sizes_are_accepted_and_scale_with_pixels_and_batch():
    model = ed.create_model("lite0", num_classes=6, image_size=320)
    fit = resources.check_memory(model, 8, train=True)
    assert fit.available is not None and 0 < fit.needed < fit.available
    assert (
        abs(fit.available - _mem_available()) < 0.2 * _mem_available()
        or fit.where != "MemAvailable"
    )
    cfg = get_model_config("d0", num_classes=6, image_size=512)
    small, big = (
        resources.estimate_memory(cfg.replace(image_size=s), 4, train=True) for s in (512, 1024)
    )
    assert 3.5 < big / small < 4.1  # activations grow with the pixels
    one, four = (resources.estimate_memory(cfg, b, train=False) for b in (1, 4))
    assert 2.0 < four / one <= 4.0
    checkpointed = resources.estimate_memory(cfg, 4, train=True, grad_checkpointing=True)
    assert checkpointed < small


def test_refusal_compares_with_the_available_memory(monkeypatch):
    cfg = get_model_config("lite0", num_classes=3, image_size=256)
    needed = resources.estimate_memory(cfg, 2, train=True)
    monkeypatch.setattr(
        resources, "available_memory", lambda device="cpu": (needed - 1, "MemAvailable")
    )
    with pytest.raises(
        ResourceError,
        match=r"efficientdet_lite0 at 256x256, batch 2: .* is available \(MemAvailable\)",
    ):
        resources.check_memory(cfg, 2, train=True)
    monkeypatch.setattr(
        resources, "available_memory", lambda device="cpu": (needed, "MemAvailable")
    )
    assert resources.check_memory(cfg, 2, train=True).needed == needed
    monkeypatch.setenv("EFFICIENTDET_NO_MEMORY_GUARD", "1")
    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": (1, "MemAvailable"))
    assert resources.check_memory(cfg, 2, train=True).available == 1


@pytest.mark.slow
@pytest.mark.parametrize("size, train", [(160, True), (320, True), (320, False)])
def test_estimate_is_within_the_stated_factor_of_measured_peak_rss(size, train):
    code = (
        "import json, torch\n"
        "from efficientdet.config import get_model_config\n"
        "from efficientdet.resources import estimate_memory, measure_step_memory\n"
        "torch.set_num_threads(1)\n"
        f"cfg = get_model_config('lite0', num_classes=6, image_size={size})\n"
        f"m = measure_step_memory(cfg, 2, train={train})\n"
        f"print(json.dumps({{'measured': m, 'estimate': estimate_memory(cfg, 2, train={train})}}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = r["estimate"] / r["measured"]
    assert 1 / STATED_FACTOR < ratio < STATED_FACTOR, r


@pytest.mark.parametrize("command", ["val", "predict"])
def test_val_and_predict_refuse_image_size_100000(synth, tmp_path, capsys, command):
    from efficientdet.data.synth import CLASS_NAMES
    from efficientdet.factory import save_model_dict

    weights = tmp_path / "model.pt"
    torch.save(
        save_model_dict(
            ed.create_model("lite0", num_classes=len(CLASS_NAMES), image_size=64), CLASS_NAMES
        ),
        weights,
    )
    image = sorted((synth.parent / "images").iterdir())[0]
    extra = (
        ["--data", str(synth)]
        if command == "val"
        else ["--source", str(image), "--out", str(tmp_path / "pred")]
    )
    code = cli.main([command, "--weights", str(weights), "--image-size", "100000", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert (
        err[0].startswith("error: efficientdet_lite0 at 100000x100000, batch ")
        and "inference needs about" in err[0]
    )
    assert err[0].endswith("fix: a smaller --image-size or --batch")
