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
From Python, call them yourself at the start of a training or inference script.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys



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
        raise ConfigError(f"device {name!r}: give cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here; use --device cpu")
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
