"""Access to the effdet reference fixtures (see tests/fixtures/EFFDET_REFERENCE.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_NAMES = ("effdet_d0_256", "effdet_lite0_192x320")


@lru_cache(maxsize=None)
def load_reference(name: str) -> dict:
    """The recorded effdet outputs; treat as read-only."""
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def reference_state_dict(ref: dict) -> dict[str, torch.Tensor]:
    """The fixture's float16 weights cast to float32 (exact: they were rounded to float16)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in ref["state_dict_fp16"].items()}
