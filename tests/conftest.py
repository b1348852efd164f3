"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest
import torch

# Test modules import onnxruntime directly (not through the library's require(), which keeps its
# telemetry off): its documented switch, read once at import, keeps the suite from writing a
# device id under ~/.cache/Microsoft (tests that check the library's own switch clear it).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for modules of many tiny model runs: on a shared 2-core machine,
    2-thread OpenMP regions stall whenever another process holds a core (results are the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bench_common():
    """benchmarks/common.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"
    spec = importlib.util.spec_from_file_location("bench_common", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mount_tmpfs(target, options: str) -> None:
    """Mount a tmpfs at ``target`` (root; the suite runs as root in CI)."""
    import subprocess

    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def small_fs(tmp_path):
    """A real filesystem of ``size`` bytes (tmpfs): ``small_fs(65536) -> Path``, for disk-full tests.
    Writing past the size fails with ENOSPC exactly as a full disk does."""
    import subprocess

    mounts = []

    def make(size: int, readonly: bool = False):
        target = tmp_path / f"fs{len(mounts)}"
        target.mkdir()
        _mount_tmpfs(target, f"size={int(size)}" + (",ro" if readonly else ""))
        mounts.append(target)
        return target

    yield make
    for target in reversed(mounts):
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


@pytest.fixture
def readonly_dir(small_fs):
    """A read-only folder (a tmpfs mounted ro: permission bits do not stop root)."""
    return small_fs(1 << 20, readonly=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``tensorflow`` need TensorFlow and those marked ``tflite`` the [tflite] extra;
    each lives in its own environment (``make test-automl``, ``make test-tflite``, both run by CI):
    without it they are deselected, and counted in pytest's summary ("N deselected"), never
    skipped in silence."""
    import importlib.util

    for marker, module in (("tensorflow", "tensorflow"), ("tflite", "litert_torch")):
        if importlib.util.find_spec(module) is not None:
            continue
        deselected = [item for item in items if item.get_closest_marker(marker)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]
