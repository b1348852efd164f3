"""Optimizer with weight decay on weights only, and the per-iteration warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: ``"decay"`` (ndim > 1: conv/linear weights, with
    ``weight_decay``) and ``"no_decay"`` (ndim <= 1: norm weights/biases and all biases, 0).
    Frozen parameters (``requires_grad=False``) are left out; empty groups are dropped."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float = 0.08,
    weight_decay: float = 4e-5,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """SGD (momentum, official EfficientDet recipe) or AdamW (betas ``(momentum, 0.999)``)
    over :func:`param_groups`."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ConfigError(f"lr={lr}: need a positive learning rate")
    if weight_decay < 0:
        raise ConfigError(f"weight_decay={weight_decay}: need 0 or more")
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ConfigError(
            "no trainable parameters: every parameter is frozen; unfreeze some layers"
        )
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))


class WarmupCosine:
    """LR factor at iteration ``step``: linear from ``warmup_start_factor`` to 1 over
    ``warmup_steps``, then cosine from 1 to ``min_lr_ratio`` at ``total_steps`` (held after).

        step < W:  f = s + (1 - s) * step / W
        step >= W: f = r + (1 - r) * 0.5 * (1 + cos(pi * min(1, (step - W) / (T - W))))

    A plain callable object, so ``LambdaLR.state_dict`` stores its settings as plain types.
    """

    def __init__(
        self, total_steps: int, warmup_steps: int, warmup_start_factor: float, min_lr_ratio: float
    ) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        w, s, r = self.warmup_steps, self.warmup_start_factor, self.min_lr_ratio
        if step < w:
            return s + (1.0 - s) * step / w
        span = max(1, self.total_steps - w)
        progress = min(1.0, (step - w) / span)
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    warmup_start_factor: float = 0.1,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration :class:`WarmupCosine` schedule: call ``scheduler.step()`` after every
    ``optimizer.step()``; lr after k steps = base_lr * f(k)."""
    if total_steps < 1:
        raise ConfigError(f"total_steps={total_steps}: need at least 1 iteration")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(
            f"warmup_steps={warmup_steps}: need 0 <= warmup <= total steps ({total_steps})"
        )
    if (
        not 0 < warmup_start_factor < math.inf
    ):  # above 1: the official warm-up from 0.008 to a smaller peak
        raise ConfigError(
            f"warmup_start_factor={warmup_start_factor}: need a positive finite value"
        )
    if not 0 <= min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio={min_lr_ratio}: need 0 <= value <= 1")
    schedule = WarmupCosine(total_steps, warmup_steps, warmup_start_factor, min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
