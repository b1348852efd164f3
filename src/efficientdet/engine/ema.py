"""Exponential moving average of model weights (evaluated and shipped instead of the raw weights).

Decay with warm-up: after ``n`` updates (``n`` counts this one, so the first update has n=1)

    d(n) = decay * (1 - exp(-n / warmup_steps))        (warmup_steps > 0)
    d(n) = decay                                        (warmup_steps == 0)

and every floating-point parameter and buffer becomes ``ema = d * ema + (1 - d) * model``;
integer buffers (BatchNorm's ``num_batches_tracked``) are copied. The ramp (as in
YOLOv5/timm's ``ModelEmaV3``) lets early averages follow the fast-moving weights instead of
remembering the random initialisation: d is 0.63 * decay at ``n = warmup_steps`` and within
0.7% of ``decay`` after ``5 * warmup_steps``. It plays the role of TensorFlow's
``min(decay, (1 + n) / (10 + n))`` (used by the official EfficientDet) with a tunable length.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import ConfigError


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel/DataParallel and ``torch.compile``."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class ModelEMA:
    """EMA of ``model``'s state. ``.module`` is a deep copy in eval mode with
    ``requires_grad=False``, on the model's device at construction (move it with ``ema.module.to``);
    ``.updates`` counts :meth:`update` calls."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup_steps: int = 2000) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"ema decay={decay}: need 0 <= decay < 1 (e.g. 0.9998)")
        if warmup_steps < 0:
            raise ConfigError(f"ema warmup_steps={warmup_steps}: need 0 or more")
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.updates = 0
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, n: int) -> float:
        """The decay used by the ``n``-th update (n >= 1)."""
        if self.warmup_steps == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-n / self.warmup_steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: ``ema = d * ema + (1 - d) * model`` over the state dicts."""
        self.updates += 1
        d = self.decay_at(self.updates)
        src = unwrap_model(model).state_dict()
        for name, ema_v in self.module.state_dict().items():
            v = src[name].detach()
            if ema_v.dtype.is_floating_point:
                # lerp: ema + (1 - d) * (v - ema), exact when v == ema (frozen weights stay bit-identical)
                ema_v.lerp_(v.to(device=ema_v.device, dtype=ema_v.dtype), 1.0 - d)
            else:
                ema_v.copy_(v)  # copy_ moves across devices

    def state_dict(self) -> dict:
        """``{"module": state_dict, "updates": int, "decay": float, "warmup_steps": int}``."""
        return {
            "module": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
            "updates": self.updates,
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore weights and the update count (decay settings stay those of the constructor)."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
