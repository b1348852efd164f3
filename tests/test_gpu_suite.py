"""benchmarks/gpu_suite.sh on a machine without a GPU: the dry run writes its JSON and log, and
the real run refuses with one clear line (the GPU run itself: BENCHMARKS.md, "GPU")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SUITE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_real_run_without_cuda_is_one_clear_error(tmp_path):
    proc = _run("--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: ")
        and "fix: " in lines[0]
        and "--dry-run" in lines[0]
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dry_run_records_every_job(tmp_path):
    out = tmp_path / "suite"
    proc = _run(
        "--dry-run", "--no-peer", "--stages", "env", "infer", "--out", str(out), "--repeats", "1"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["dry_run"] is True and set(report["stages"]) == {"env", "infer"}
    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["cuda_available"] is False
    jobs = report["stages"]["infer"]["jobs"]
    ours = [j for j in jobs if j["job"].startswith("ours infer efficientdet_d0@128 b1 ")]
    assert ours and ours[0]["status"] == "ok"
    result = ours[0]["result"]
    assert (
        result["batch"] == 1
        and result["end_to_end"]["runs"] == 1
        and result["end_to_end"]["median_ms"] > 0
    )
    # every job is in the JSON: measured, failed, or "not run" with its reason
    assert all(j["status"] in ("ok", "failed", "timeout", "not run") for j in jobs)
    assert all(j.get("reason") for j in jobs if j["status"] == "not run")
    assert any(j["job"].startswith("effdet infer") and j["reason"] == "--no-peer" for j in jobs)
    log = (out / "gpu_suite.log").read_text()
    assert "gpu_bench.py infer --model efficientdet_d0" in log and "done in" in log
    assert not list(out.glob("*.tmp*"))
