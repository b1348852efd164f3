"""Memory guard: refuse a model size / image size / batch that cannot fit, before allocating it.

``estimate_memory(cfg, batch, train=...)`` is analytic: it walks the network's layers as the
config describes them (EfficientNet stages, BiFPN nodes, heads; ``bifpn.feature_sizes`` for
the map sizes) and counts the elements of every feature map a step creates, per image:

- training (forward + backward): the maps autograd keeps for backward, i.e. about all of them,
  plus the loss's per-anchor tensors; times ``TRAIN_FACTOR``, plus gradients and optimizer
  state (2x the parameters);
- inference (forward only): the largest working set of one block (its input, expanded and
  output maps) plus the pyramid features held at once; times ``INFER_FACTOR``.

The two factors are calibrated against measured peak RSS (``benchmarks/bench_memory_guard.py``
prints estimate, measurement and their ratio for Lite0 and D0 at a few small sizes).
``check_memory`` compares the estimate with the memory available (``MemAvailable`` of
/proc/meminfo, capped by a cgroup limit; on CUDA the device's free memory) and raises a
one-line ``ResourceError`` naming both and what to change. ``EFFICIENTDET_NO_MEMORY_GUARD=1``
turns the refusal off.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig
from .errors import ResourceError

# Calibrated by benchmarks/bench_memory_guard.py (Lite0 and D0 at 128-384, batch 2, 2-core AMD EPYC):
# measured peak RSS growth ~ factor x analytic bytes + OVERHEAD; the estimates land at 0.8-1.3x
# of the measurements there.
TRAIN_FACTOR = 1.45
INFER_FACTOR = 2.3
CHECKPOINTED_FACTOR = (
    2.1  # the same for the --grad-checkpointing count (stage boundaries + one stage)
)
LOSS_TENSORS_PER_OUTPUT = (
    6  # sigmoid, focal weights, targets, ... per class/box output of each anchor
)
BYTES = 4  # float32
OVERHEAD = 40_000_000  # bytes a first step costs whatever the size (kernel caches, scratch)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a step needs (``needed``) and what the device has free (``available``, None: unknown)."""

    needed: int
    available: int | None
    where: str


def _levels(image_size: tuple[int, int], max_level: int) -> list[int]:
    """Pixels of the maps at strides 2**1 .. 2**max_level (ceil-halving, as the network pads)."""
    from .nn.bifpn import feature_sizes

    return [h * w for h, w in feature_sizes(image_size, 1, max_level)]


def _count(cfg: ModelConfig, image_size: tuple[int, int]) -> dict:
    """Element counts per image: ``all`` (every map of a training step), ``peak`` (the largest
    inference working set) and ``checkpointed`` (what --grad-checkpointing keeps plus one stage)."""
    from .nn.efficientnet import B0_STAGES, BACKBONES, round_channels

    max_level = cfg.max_level
    pixels = _levels(image_size, max(max_level, 5))
    at = lambda level: pixels[level - 1]  # noqa: E731 - pixels at stride 2**level
    width, depth, _, _ = BACKBONES[cfg.backbone]
    lite = "lite" in cfg.backbone
    se = not lite
    stem = 32 if lite else round_channels(32, width)
    stage_sums, boundaries, peak = [3 * stem * at(1)], [stem * at(1)], 0
    in_ch, level = stem, 1
    for i, spec in enumerate(B0_STAGES):
        n = (
            spec.repeats
            if lite and i in (0, len(B0_STAGES) - 1)
            else math.ceil(spec.repeats * depth)
        )
        out_ch, total = round_channels(spec.channels, width), 0
        for b in range(n):
            out_level = level + (1 if spec.stride == 2 and b == 0 else 0)
            skip = out_ch * at(out_level) if (in_ch == out_ch and out_level == level) else 0
            if spec.block == "ds":  # dw conv, bn, act (+ SE scale), pw conv, bn (+ residual)
                block = (3 + se) * in_ch * at(out_level) + 2 * out_ch * at(out_level) + skip
                live = in_ch * at(level) + 2 * in_ch * at(out_level) + out_ch * at(out_level)
            else:  # expand conv, bn, act; dw conv, bn, act (+ SE scale); pwl conv, bn (+ residual)
                mid = in_ch * spec.expand
                block = (
                    3 * mid * at(level)
                    + (3 + se) * mid * at(out_level)
                    + 2 * out_ch * at(out_level)
                    + skip
                )
                live = (
                    in_ch * at(level)
                    + 2 * mid * at(level)
                    + 2 * mid * at(out_level)
                    + out_ch * at(out_level)
                )
            total += block
            peak = max(peak, live)
            in_ch, level = out_ch, out_level
        stage_sums.append(total)
        boundaries.append(out_ch * at(level))

    from .nn.bifpn import bifpn_nodes

    c, levels = cfg.fpn_channels, range(cfg.min_level, max_level + 1)
    pyramid = sum(c * at(lv) for lv in levels)
    extra = sum(3 * c * at(lv) for lv in levels if lv > 5)  # P6.. made by conv/bn + pooling
    laterals = sum(
        2 * c * at(lv) for lv in range(cfg.min_level, 6)
    )  # channel reductions of the taps
    cell = 0
    for node in bifpn_nodes(cfg.min_level, max_level):
        n_in = len(node.inputs)
        cell += (
            (2 * n_in + 6) * c * at(node.level)
        )  # resampled inputs, weighted sum, act, sep conv, bn
    fpn = extra + laterals + cfg.fpn_repeats * cell
    a = cfg.anchors.num_anchors
    outputs = sum(a * (cfg.num_classes + 4) * at(lv) for lv in levels)
    heads = (
        2 * cfg.head_repeats * 4 * pyramid + 2 * pyramid + outputs
    )  # sep conv, bn, act per repeat; predict
    loss = LOSS_TENSORS_PER_OUTPUT * outputs
    everything = sum(stage_sums) + fpn + heads + loss
    checkpointed = (
        sum(boundaries)
        + (cfg.fpn_repeats + 1) * pyramid
        + heads
        + loss
        + max(max(stage_sums), cell)
    )
    infer = max(peak, 3 * pyramid) + pyramid + outputs
    anchors = (
        4 * outputs // (cfg.num_classes + 4)
    )  # (x1, y1, x2, y2) per anchor, once for the batch
    return {"all": everything, "peak": infer, "checkpointed": checkpointed, "anchors": anchors}


def estimate_memory(
    cfg: ModelConfig,
    batch: int,
    *,
    train: bool,
    grad_checkpointing: bool = False,
    num_params: int = 0,
) -> int:
    """Bytes of memory one step of ``cfg`` at ``cfg.image_size`` with ``batch`` images needs on
    top of the model's weights (training: forward+backward, gradients, optimizer state)."""
    counts = _count(cfg, cfg.image_size)
    fixed = OVERHEAD + BYTES * counts["anchors"]
    if not train:
        return int(fixed + INFER_FACTOR * BYTES * batch * counts["peak"])
    if grad_checkpointing:
        activations = CHECKPOINTED_FACTOR * counts["checkpointed"]
    else:
        activations = TRAIN_FACTOR * counts["all"]
    return int(fixed + BYTES * batch * activations + 2 * BYTES * num_params)


def _cgroup_free() -> int | None:
    """Free memory under a cgroup v2 limit (containers), None when unlimited or not readable."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_memory(device="cpu") -> tuple[int | None, str]:
    """(bytes free, where): CUDA free device memory, else MemAvailable (capped by a cgroup limit)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                limit = _cgroup_free()
                if limit is not None and limit < free:
                    return limit, "free under this container's memory limit"
                return free, "MemAvailable"
    except (OSError, ValueError, IndexError):
        pass
    return None, "unknown"


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} PB"


def check_memory(
    model,
    batch: int,
    *,
    train: bool,
    device="cpu",
    grad_checkpointing: bool = False,
    image_size: tuple[int, int] | None = None,
) -> MemoryEstimate:
    """Refuse (ResourceError) a step that needs more memory than ``device`` has free.

    ``model``: an EfficientDet (its parameters count too) or a ModelConfig; ``image_size``
    (H, W) overrides the config's. Returns the estimate when it fits (or the memory is unknown).
    """
    cfg: ModelConfig = getattr(model, "config", model)
    if image_size is not None and tuple(image_size) != cfg.image_size:
        cfg = cfg.replace(image_size=tuple(image_size))
    num_params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
    needed = estimate_memory(
        cfg, batch, train=train, grad_checkpointing=grad_checkpointing, num_params=num_params
    )
    available, where = available_memory(device)
    result = MemoryEstimate(needed, available, where)
    if (
        available is None
        or needed <= available
        or os.environ.get("EFFICIENTDET_NO_MEMORY_GUARD") == "1"
    ):
        return result
    h, w = cfg.image_size
    step = "training (forward + backward)" if train else "inference"
    fixes = "a smaller --image-size or --batch" + (
        "" if not train or grad_checkpointing else ", or --grad-checkpointing"
    )
    raise ResourceError(
        f"{cfg.name} at {h}x{w}, batch {batch}: {step} needs about {format_bytes(needed)} of memory, "
        f"{format_bytes(available)} is available ({where}); fix: {fixes}"
    )


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


def measure_step_memory(
    cfg: ModelConfig, batch: int, *, train: bool, grad_checkpointing: bool = False, steps: int = 2
) -> int:
    """Measured counterpart of ``estimate_memory`` (Linux, CPU): the growth of this process's
    peak RSS over ``steps`` real steps (training: forward, loss, backward, SGD step) after the
    model, optimizer and input batch exist. Run it in a fresh process per measurement."""
    import torch

    from .config import LossConfig
    from .detection.loss import DetectionLoss
    from .nn.model import EfficientDet
    from .runtime import keep_freed_memory

    keep_freed_memory()  # as the CLI commands run
    torch.manual_seed(0)
    model = EfficientDet(cfg, grad_checkpointing=grad_checkpointing)
    h, w = cfg.image_size
    images = torch.randn(batch, 3, h, w)
    box = torch.tensor([[0.1 * w, 0.1 * h, 0.6 * w, 0.5 * h]])
    targets = [{"boxes": box, "labels": torch.tensor([i % cfg.num_classes])} for i in range(batch)]
    loss_fn = DetectionLoss(cfg.anchors, LossConfig(), cfg.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train(train)
    base = _proc_status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    for _ in range(steps):
        if train:
            class_out, box_out = model(images)
            loss_fn(class_out, box_out, targets, cfg.image_size)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
        else:
            with torch.no_grad():
                model(images)
    return _proc_status_bytes("VmHWM") - base
