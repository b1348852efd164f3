"""Process-group helpers for multi-process training (``torchrun --nproc_per_node N ...``).

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``;
:func:`init_distributed` reads them and starts the process group (on CUDA: NCCL for CUDA
tensors and gloo for the CPU ones the trainer reduces, its losses and flags; gloo on CPU). A plain ``python -m efficientdet train`` is a world of one and every helper here is a
no-op for it, so the trainer calls them unconditionally.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..detection.loss import LOSS_KEYS
from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True when started by torchrun (or another launcher) with WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device, timeout_minutes: float = 120.0) -> DistInfo:
    """Join the process group described by the torchrun environment variables.

    Returns a one-process ``DistInfo`` when not launched distributed. On CUDA each process
    uses ``cuda:LOCAL_RANK`` (set by the caller through ``device``); the backend is
    :func:`backend_for` ``device``. An already initialised group is reused.
    """
    if not launched_distributed():
        return DistInfo()
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = backend_for(device)
    if not dist.is_available():
        raise ConfigError(
            "WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run a single process"
        )
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes)
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=dist.get_backend())


def backend_for(device: torch.device) -> str:
    """The process-group backend for training on ``device``: ``"cpu:gloo,cuda:nccl"`` on CUDA
    (an NCCL-only group refuses CPU tensors: "No backend type associated with device type
    cpu"), ``"gloo"`` otherwise."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def cleanup() -> None:
    """Leave the process group (safe to call when none was started)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op in a world of one); returns ``tensor``."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (plain picklable objects)."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def global_normalizer_factor(num_positives: float, device: torch.device | str = "cpu") -> float:
    """The factor that turns this rank's loss, divided by its own ``num_positives + 1`` (see
    :mod:`efficientdet.detection.loss`), into one divided by ``(P + 1) / world``, ``P`` the
    positives of all ranks (an all-reduce; 1.0 in a world of one).

    DDP averages the gradients over ranks, so with this factor every step follows the gradient
    of the whole batch's loss over ``P + 1``: the step one process takes with the total batch.
    Without it, a rank with few positive anchors would weigh its images more. ``device``: where
    the all-reduced count lives (CUDA under an NCCL-only group, as Lightning starts on GPUs)."""
    if not is_active():
        return 1.0
    total = all_reduce_sum(torch.tensor([float(num_positives)], dtype=torch.float64, device=device))
    return (float(num_positives) + 1.0) * dist.get_world_size() / (float(total[0]) + 1.0)


def normalize_over_ranks(losses: dict) -> dict:
    """``losses`` (a DetectionLoss output) with its :data:`LOSS_KEYS` scaled by
    :func:`global_normalizer_factor` of its ``num_positives``: one all-reduce per step, which
    every rank must make (the trainer and the Lightning adapter call this on every step).
    ``losses`` itself in a world of one."""
    if not is_active():
        return losses
    factor = global_normalizer_factor(losses["num_positives"], losses["loss"].device)
    return {k: v * factor if k in LOSS_KEYS else v for k, v in losses.items()}


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not is_active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
