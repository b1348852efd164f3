"""The checkpoints of a run folder: ``last.pt`` + ``best.pt`` written as one transaction,
resume loading, and RNG state as plain types.

The file format (checksum, version, validation) is :mod:`efficientdet.weights.checkpoint`;
the trainer adds these sections to the model section::

    "train_state": {"model": raw training weights, "optimizer": ..., "scheduler": ...,
                    "ema": ..., "scaler": ..., "epoch": int, "step_in_epoch": int, "rng": rng_state(),
                    "best_map": float, "best_epoch": int, "guard": DivergenceGuard state,
                    "best": the whole best.pt payload (without its checksum) | None, ...},
    "args": TrainConfig as a dict, "metrics": {...}

The transaction (:func:`commit`): ``last.pt`` is the commit record and is written first; it
carries the payload of ``best.pt`` (whose weight tensors are the same objects as its own
``model`` when this epoch is the best, so ``torch.save`` stores them once). ``best.pt`` is
written second, only when the best changed. A kill

- while ``last.pt`` is written leaves the previous pair (each file is written atomically);
- between the two writes leaves a new ``last.pt`` and an older (or no) ``best.pt``: the
  resumed run compares the checksum of ``best.pt`` with that of the payload recorded in
  ``last.pt`` and rewrites ``best.pt`` from it (:func:`restore_best`), so both files again
  describe the same moment. The payload is rebuilt bit for bit, so the checksum matches.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, WeightsError
from ..weights.checkpoint import (
    content_checksum,
    read_checkpoint,
    validate_checkpoint,
    write_checkpoint,
)


def find_checkpoint(resume: str | os.PathLike) -> Path:
    """``--resume`` accepts a run folder (uses its last.pt) or a checkpoint file."""
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise ConfigError(
            f"{resume}: no last.pt to resume from; fix: give the run folder of an interrupted run (runs/NAME)"
        )
    return path


def load_checkpoint(path: str | os.PathLike, *, training: bool = False) -> dict:
    """Read and check one of our checkpoints (any bad file: one-line WeightsError).
    ``training``: it must hold the training state needed to resume (a run's ``last.pt``)."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise WeightsError(
            f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict; fix: give a file saved by efficientdet"
        )
    if training:
        validate_checkpoint(ckpt, str(path))
        ts = ckpt.get("train_state")
        if not isinstance(ts, dict) or "args" not in ckpt or "optimizer" not in ts:
            raise WeightsError(
                f"{path}: holds no training state (best.pt?); fix: resume from the run's last.pt"
            )
    return ckpt


def commit(run_dir: Path, last: dict, best: dict | None) -> None:
    """Write ``last.pt`` (which must carry ``train_state["best"]``), then ``best.pt`` when
    ``best`` is given (see the module docstring for what a kill in between leaves)."""
    write_checkpoint(run_dir / "last.pt", last)
    if best is not None:
        write_checkpoint(run_dir / "best.pt", best)


def restore_best(run_dir: Path, best: dict | None, log: Callable[[str], None] = print) -> None:
    """Make ``run_dir/best.pt`` hold ``best`` (the payload recorded in ``last.pt``): rewrite it
    when it is missing, unreadable or from another moment. Nothing to do for ``best`` None."""
    if best is None:
        return
    path = run_dir / "best.pt"
    expected = content_checksum(best)
    why = "missing"
    if path.is_file():
        try:
            current = read_checkpoint(path)
        except WeightsError as exc:
            why = f"unreadable ({str(exc).split(': ', 1)[-1].split(';')[0]})"
        else:
            if isinstance(current, dict) and current.get("checksum") == expected:
                return
            why = "from another moment than last.pt"
    write_checkpoint(path, best)
    ts = best.get("train_state", {})
    log(
        f"{path}: was {why} (a run stopped between the checkpoint writes): rewritten from last.pt "
        f"(epoch {ts.get('best_epoch')}, mAP {ts.get('best_map', float('nan')):.4f})"
    )


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
        "python": {
            "version": int(version),
            "state": torch.tensor(state, dtype=torch.int64),
            "gauss": gauss,
        },
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
        random.setstate(
            (int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"])
        )
    npst = state.get("numpy")
    if npst is not None:
        keys = np.asarray(npst["keys"].tolist(), dtype=np.uint32)
        np.random.set_state(
            (
                npst["kind"],
                keys,
                int(npst["pos"]),
                int(npst["has_gauss"]),
                float(npst["cached_gaussian"]),
            )
        )
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda])
