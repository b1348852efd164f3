"""Checkpoints on disk: atomic save, safe load, and RNG state as plain types.

Layout (see :func:`efficientdet.factory.save_model_dict` for the model section)::

    {"format": "efficientdet", "version": 1,
     "model": state_dict to ship (the EMA weights when EMA is on),
     "config": ..., "class_names": [...], "category_ids": [...],
     "train_state": {"model": raw training weights, "optimizer": ..., "scheduler": ...,
                     "ema": ..., "epoch": int, "scaler": ..., "rng": rng_state(),
                     "best_map": float, ...},
     "args": {...}, "metrics": {...}}

Everything is tensors and plain Python types, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``; nothing in a checkpoint can run code when loaded.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..errors import WeightsError
from ..fileio import atomic_write
from ..weights import read_checkpoint


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`efficientdet.fileio.atomic_write`):
    a crash or kill at any point leaves either the previous file or the new one, never a
    truncated file. An OSError (disk full, read-only folder) becomes a one-line OutputError."""
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises WeightsError (one line) for a missing, truncated or unsafe file, or a file that
    does not hold a dict.
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict; fix: give a file saved by efficientdet")
    return ckpt


def rng_state() -> dict:
    """The RNG states of python ``random``, numpy's global RNG and torch (CPU, and every CUDA
    device when available), as tensors and plain types (loadable with ``weights_only=True``).

    ``{"python": {"version": int, "state": int64 tensor (625,), "gauss": float|None},
    "numpy": {"kind": str, "keys": int64 tensor (624,), "pos": int, "has_gauss": int,
    "cached_gaussian": float}, "torch": uint8 tensor, "cuda": [uint8 tensor, ...]}``
    """
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned; missing parts are left as they are.

    CUDA states are restored only when CUDA is available and the device count matches
    (resuming on other hardware keeps the current CUDA RNG).
    """
    py = state.get("python")
    if py is not None:
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state.get("numpy")
    if npst is not None:
        keys = np.asarray(npst["keys"].tolist(), dtype=np.uint32)
        np.random.set_state((npst["kind"], keys, int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda])
