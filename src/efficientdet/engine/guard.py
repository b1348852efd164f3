"""Divergence detection for the training loop (the trainer rolls back; this decides when).

A step is *bad* when its loss or gradient norm is not finite, or when it explodes relative to
a running baseline: loss > ``LOSS_FACTOR`` x the running mean of accepted losses, or gradient
norm (before clipping) > ``GRAD_FACTOR`` x the running mean of accepted norms. The means are
exponential (``BETA``) and start at the first accepted step. A bad step is not applied; the
trainer restores the last snapshot (weights, BatchNorm statistics, optimizer, EMA, taken in
memory at a healthy step at most ``SNAPSHOT_EVERY`` steps earlier) and multiplies the learning
rate by ``LR_FACTOR``. ``max_rollbacks`` rollbacks without a new snapshot in between stop the
run. Snapshots are taken only at steps whose loss is at most ``SNAPSHOT_MAX_RATIO`` x the mean,
so a slow run-away is not saved as "good".
"""

from __future__ import annotations

import math

LOSS_FACTOR = 20.0
GRAD_FACTOR = 100.0
BETA = 0.9
SNAPSHOT_EVERY = 10
SNAPSHOT_MAX_RATIO = 2.0
LR_FACTOR = 0.5


class DivergenceGuard:
    """``check_loss`` / ``check_grad`` return why a step is bad (None: fine); ``accept``
    records a step that was applied. State is plain floats (saved in checkpoints)."""

    def __init__(self, max_rollbacks: int) -> None:
        self.max_rollbacks = max_rollbacks
        self.loss_mean: float | None = None
        self.grad_mean: float | None = None
        self.rollbacks = 0  # since the last snapshot
        self.steps_since_snapshot: int | None = None  # None: no snapshot yet

    def check_loss(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if self.loss_mean is not None and loss > LOSS_FACTOR * self.loss_mean:
            return f"loss {loss:.4g} is over {LOSS_FACTOR:g}x its running mean {self.loss_mean:.4g}"
        return None

    def check_grad(self, grad_norm: float) -> str | None:
        if not math.isfinite(grad_norm):
            return f"non-finite gradient norm ({grad_norm})"
        if self.grad_mean is not None and grad_norm > GRAD_FACTOR * max(self.grad_mean, 1e-12):
            return f"gradient norm {grad_norm:.4g} is over {GRAD_FACTOR:g}x its running mean {self.grad_mean:.4g}"
        return None

    def wants_snapshot(self, loss: float) -> bool:
        """Take a snapshot now (before applying this healthy step)?"""
        if self.steps_since_snapshot is None:
            return True
        healthy = self.loss_mean is None or loss <= SNAPSHOT_MAX_RATIO * self.loss_mean
        return healthy and self.steps_since_snapshot >= SNAPSHOT_EVERY

    def snapshot_taken(self) -> None:
        self.steps_since_snapshot = 0
        self.rollbacks = 0

    def accept(self, loss: float, grad_norm: float | None) -> None:
        self.loss_mean = (
            loss if self.loss_mean is None else BETA * self.loss_mean + (1 - BETA) * loss
        )
        if grad_norm is not None and math.isfinite(grad_norm):
            self.grad_mean = (
                grad_norm
                if self.grad_mean is None
                else BETA * self.grad_mean + (1 - BETA) * grad_norm
            )
        if self.steps_since_snapshot is not None:
            self.steps_since_snapshot += 1

    def rolled_back(self) -> bool:
        """Count a rollback (the weights are the snapshot's again); True when that is one too
        many (stop the run)."""
        self.rollbacks += 1
        self.steps_since_snapshot = 0
        return self.rollbacks > self.max_rollbacks

    def state_dict(self) -> dict:
        return {"loss_mean": self.loss_mean, "grad_mean": self.grad_mean}

    def load_state_dict(self, state: dict) -> None:
        self.loss_mean, self.grad_mean = state.get("loss_mean"), state.get("grad_mean")
