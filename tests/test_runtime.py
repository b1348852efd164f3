"""runtime: the allocator setting (repeated large allocations stop page-faulting) and device names."""

import os
import subprocess
import sys
import textwrap

import pytest

BLOCK_PAGES = (64 << 20) // 4096  # one 64 MiB float32 tensor

# a "step" that allocates and frees three large tensors, like a forward/backward pass
SCRIPT = textwrap.dedent("""
    import resource
    import torch
    import efficientdet
    applied = efficientdet.keep_freed_memory()
    x = torch.ones(16 << 20)
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = x * 2; z = y + x; w = torch.cat([y, z]); del y, z, w
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, sum(faults[10:]))
""")


def faults_in_last_ten_steps(default_malloc: bool) -> tuple[bool, int]:
    env = {**os.environ, "EFFICIENTDET_DEFAULT_MALLOC": "1" if default_malloc else "0"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)
def test_keep_freed_memory_stops_page_faults_of_repeated_steps():
    applied, kept = faults_in_last_ten_steps(default_malloc=False)
    assert applied
    # the opt-out keeps glibc's default: every block over 32 MiB is unmapped on free and
    # faulted in again, 4 blocks (256 MiB) per step
    applied, default = faults_in_last_ten_steps(default_malloc=True)
    assert not applied
    assert default > 10 * 3 * BLOCK_PAGES, f"only {default} page faults with the default allocator"
    # kept memory is reused: a small fraction of those (a little heap growth from fragmentation,
    # or the kernel reclaiming idle pages under memory pressure, may fault some pages in)
    assert kept < default / 4, (
        f"{kept} page faults in 10 steps that reuse 256 MiB (default allocator: {default})"
    )


def test_resolve_device_names_and_one_line_errors():
    import torch

    from efficientdet.errors import ConfigError
    from efficientdet.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    expected_auto = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto") == expected_auto
    with pytest.raises(
        ConfigError, match="'gpu7': not a device; fix: give cpu, cuda, cuda:N or auto"
    ):
        resolve_device("gpu7")
    if torch.cuda.is_available():
        assert resolve_device("cuda", local_rank=0) == resolve_device("0") == torch.device("cuda:0")
    else:
        for name in ("cuda", "1", "cuda:1"):
            with pytest.raises(
                ConfigError, match="CUDA is not available here; fix: use --device cpu"
            ):
                resolve_device(name)
