"""Running a group of processes (torchrun and its workers) from a test."""

from __future__ import annotations

import os
import subprocess

import pytest


def run_process_group(cmd: list[str], env: dict[str, str], timeout: float, what: str) -> str:
    """Run ``cmd`` in its own session; on timeout kill the whole group (torchrun and every
    worker) and fail the test; assert exit status 0. Returns stdout."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{what} timed out\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:] + stdout[-2000:]
    return stdout
