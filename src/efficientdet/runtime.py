"""Where and how the work runs: the device, and process-wide CPU settings the command line
applies before heavy work.

* :func:`resolve_device`: "auto"/None, "cpu", "cuda", "cuda:N" or "N" -> a torch.device, with
  one-line errors for a bad name or missing CUDA.

* :func:`keep_freed_memory`: glibc ``malloc`` hands every block over 32 MiB straight back to
  the kernel when freed, so a training step that allocates and frees gigabytes of
  activations page-faults all of them in again on the next step (about 1M faults and 2 s of
  kernel time per D0 step at 512x512, batch 4). Keeping freed memory in the heap for reuse
  removes that cost; the price is that the process keeps its peak size until it exits.
* :func:`sleep_idle_openmp_threads`: idle OpenMP threads sleep instead of spinning, which
  matters when data-loading processes share the cores.

Both are opt-out with ``EFFICIENTDET_DEFAULT_MALLOC=1`` / an explicit ``OMP_WAIT_POLICY``.
:func:`prepare_heavy_work` applies both; the command line calls it first thing for every heavy
command. From Python, call it yourself at the start of a training or inference script.

* :func:`precision_warning`: bf16 on a CPU without native bf16 (AVX512-BF16 / AMX) is emulated
  and runs several times slower than fp32; the warning states the measured factor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import time


def resolve_device(name=None, local_rank: int = 0):
    """torch.device for ``name``: None or "auto" -> ``cuda:local_rank`` when CUDA is available,
    else cpu; "N" -> ``cuda:N``; plain "cuda" -> ``cuda:local_rank`` (one GPU per process).
    Raises ConfigError for a name torch does not know or CUDA that is not there."""
    import torch

    from .errors import ConfigError

    if name is None or str(name) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(f"cuda:{name}" if str(name).isdigit() else name)
    except RuntimeError:
        raise ConfigError(
            f"device {name!r}: not a device; fix: give cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here; fix: use --device cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc malloc serve large blocks from its heap and keep freed memory for reuse.

    Sets ``M_MMAP_MAX=0`` (no per-block mmap), ``M_TRIM_THRESHOLD=-1`` (never shrink the heap)
    and ``M_TOP_PAD=64 MiB`` (grow it in large steps). Returns True when applied (glibc
    Linux), False elsewhere or when ``EFFICIENTDET_DEFAULT_MALLOC=1``. Idempotent.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("EFFICIENTDET_DEFAULT_MALLOC") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = ok and mallopt(_M_TRIM_THRESHOLD, -1) == 1  # -1: never trim (mallopt(3))
    ok = ok and mallopt(_M_TOP_PAD, 64 << 20) == 1
    _applied = bool(ok)
    return _applied


def sleep_idle_openmp_threads() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless already set. Only effective before torch loads
    its OpenMP runtime (i.e. before the first parallel op), so the CLI calls it first thing."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def prepare_heavy_work() -> None:
    """The process-wide CPU settings of every heavy command (train, val, predict, bench, export,
    demo, data check): idle OpenMP threads sleep, freed memory is kept for reuse."""
    sleep_idle_openmp_threads()
    keep_freed_memory()


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def measure_bf16_slowdown(repeats: int = 5) -> float:
    """Time of a small 3x3 convolution (1, 32, 56, 56) in bf16 over its time in fp32 on this CPU
    (median of ``repeats``, after a warm-up); measured once per process (about 0.1 s)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 32, 56, 56, generator=g)
    w = torch.randn(32, 32, 3, 3, generator=g)

    def median_s(dtype) -> float:
        xd, wd = x.to(dtype), w.to(dtype)
        times = []
        with torch.inference_mode():
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                torch.nn.functional.conv2d(xd, wd, padding=1)
                if i:  # the first call is the warm-up
                    times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    return median_s(torch.bfloat16) / max(median_s(torch.float32), 1e-9)


def precision_warning(
    precision: str, device, flags: set[str] | None = None, measure=None, threshold: float = 1.5
) -> str | None:
    """A one-line warning when ``precision`` (fp32 / bf16 / fp16) on ``device`` runs slower
    than fp32: bf16/fp16 on a CPU without AVX512-BF16 / AMX (``flags``: the CPU's, default
    :func:`cpu_flags`) measured (``measure()``, default :func:`measure_bf16_slowdown`)
    ``threshold`` times slower or more; else None."""
    if precision == "fp32" or getattr(device, "type", str(device)) != "cpu":
        return None
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in NATIVE_BF16_FLAGS):
        return None
    slowdown = (measure or measure_bf16_slowdown)()
    if slowdown < threshold:
        return None
    return (
        f"warning: {precision} runs {slowdown:.1f}x slower than fp32 on this CPU (no AVX512-BF16/AMX); "
        "use --precision fp32"
    )


def precision_dtype(precision: str | None, device):
    """``--precision`` on ``device`` -> the compute dtype (None for fp32); ConfigError for fp16
    on a CPU (PyTorch has no fast fp16 there)."""
    import torch

    from .errors import ConfigError

    if precision in (None, "fp32"):
        return None
    if precision == "fp16" and getattr(device, "type", str(device)) != "cuda":
        raise ConfigError(
            "--precision fp16 needs a CUDA device; fix: on CPU use --precision bf16 or fp32"
        )
    return torch.bfloat16 if precision == "bf16" else torch.float16


def warn_if_slow_precision(precision: str, device) -> None:
    """Print :func:`precision_warning` to stderr when there is one."""
    message = precision_warning(precision, device)
    if message:
        print(message, file=sys.stderr)
