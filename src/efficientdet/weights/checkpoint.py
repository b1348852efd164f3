"""The checkpoint format: the one home of how our ``.pt`` files are written, read and checked.

Every command reads weights files through :func:`read_checkpoint` (val, predict, export,
``train --weights`` / ``--resume``, ``load_weights``), so the same bad file gives the same
one-line ``WeightsError`` everywhere. It lives under ``weights/`` because ``factory`` (which
rebuilds models) and ``engine`` (which trains them) both sit above it; it imports only
``config``, ``errors`` and ``fileio``.

Layout (version 1; a ``torch.save``-d dict of tensors and plain types)::

    {"format": "efficientdet", "version": 1,
     "model": state_dict to ship (the EMA weights when training with EMA),
     "config": config_to_dict(ModelConfig), "class_names": [...], "category_ids": [...] | None,
     "checksum": "sha256:<hex>"          # written by write_checkpoint; optional on read
     ...sections added by the trainer: "train_state", "args", "metrics"}

``checksum`` is the SHA-256 of the content (every other key, tensors by dtype, shape and raw
bytes, plain values by type and repr; see :func:`content_checksum`). Files written with a
plain ``torch.save(save_model_dict(model), path)`` have none and are still read. On read,
a ``.pt`` zip archive is first checked against the CRC-32 of each member (catches a flipped
byte anywhere in the stored data, in any torch file), then the stored checksum is compared.

Files are written through :func:`efficientdet.fileio.atomic_write` (temporary name, then
rename) and never hold non-finite floating tensors: :func:`write_checkpoint` refuses them.

Test hooks, for fault-injection tests of what a kill leaves behind:
``EFFICIENTDET_FAULT_EXIT_AFTER=NAME[:N]`` makes the process ``os._exit(86)`` right after the
N-th (default first) write of a checkpoint named NAME; ``EFFICIENTDET_FAULT_EXIT_DURING=NAME[:N]``
in the middle of it (the temporary file written, not yet renamed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, TypeGuard

import torch

from ..config import AnchorConfig, ModelConfig
from ..errors import WeightsError
from ..fileio import atomic_write

FORMAT = "efficientdet"
CHECKPOINT_VERSION = 1
FAULT_ENV = {"after": "EFFICIENTDET_FAULT_EXIT_AFTER", "during": "EFFICIENTDET_FAULT_EXIT_DURING"}
FAULT_EXIT_CODE = 86
_FIX_CORRUPT = (
    "use an intact copy (a run's last.pt and best.pt are separate files: to go on from best.pt, "
    "train with --weights best.pt)"
)
_CORRUPT = f"checksum mismatch: the file is corrupted; fix: {_FIX_CORRUPT}"


# ----------------------------------------------------------------------------- model section


def config_to_dict(cfg: ModelConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict) -> ModelConfig:
    data = dict(data)
    data["anchors"] = AnchorConfig(**data["anchors"])
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in data.items() if k in known})


def save_model_dict(
    model, class_names: list[str] | None = None, category_ids: list[int] | None = None
) -> dict:
    """The model section of a checkpoint (``model``: an EfficientDet), as plain types."""
    num_classes = model.config.num_classes
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise WeightsError(f"{len(names)} class names for a {num_classes}-class model")
    return {
        "format": FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config_to_dict(model.config),
        "class_names": names,
        "category_ids": list(category_ids) if category_ids is not None else None,
    }


def is_our_checkpoint(obj: Any) -> TypeGuard[dict]:
    """A dict in our checkpoint format (:func:`save_model_dict`)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def validate_checkpoint(ckpt: Any, label: str) -> ModelConfig:
    """Check that ``ckpt`` is one of our checkpoints, usable by this library; returns its
    ModelConfig. Raises a one-line WeightsError naming what is missing."""
    if not is_our_checkpoint(ckpt):
        raise WeightsError(
            f"{label}: not an efficientdet checkpoint (no 'format': 'efficientdet'); fix: for effdet or "
            "other weights use --model NAME --weights PATH (create_model(NAME, weights=PATH))"
        )
    version = ckpt.get("version")
    if not isinstance(version, int) or version < 1:
        raise WeightsError(
            f"{label}: bad checkpoint version {version!r}; fix: give a file saved by efficientdet"
        )
    if version > CHECKPOINT_VERSION:
        raise WeightsError(
            f"{label}: checkpoint version {version} is newer than this library reads "
            f"({CHECKPOINT_VERSION}); fix: upgrade efficientdet"
        )
    model_state(ckpt, label)
    try:
        cfg = config_from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError) as exc:
        what = (
            "has no model config"
            if "config" not in ckpt
            else f"has an unusable model config ({exc.__class__.__name__}: {exc})"
        )
        raise WeightsError(
            f"{label}: {what}; fix: give a checkpoint written by efficientdet train or "
            "save_model_dict"
        ) from None
    names = ckpt.get("class_names")
    if names is not None and (
        not isinstance(names, (list, tuple)) or len(names) != cfg.num_classes
    ):
        raise WeightsError(
            f"{label}: class_names do not match the model's {cfg.num_classes} classes; "
            "fix: give a checkpoint written by efficientdet train or save_model_dict"
        )
    return cfg


def model_state(ckpt: dict, label: str) -> dict[str, torch.Tensor]:
    """The ``model`` section (a state_dict) of our checkpoint, or a one-line WeightsError."""
    state = ckpt.get("model")
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise WeightsError(
            f"{label}: has no 'model' state_dict of tensors; fix: give a checkpoint written by "
            "efficientdet train or save_model_dict"
        )
    return state


# ----------------------------------------------------------------------------- checksum


def content_checksum(payload: dict) -> str:
    """``"sha256:<hex>"`` over ``payload`` without its ``checksum`` key: dict keys sorted,
    tensors hashed by dtype, shape and raw bytes, plain values by type and repr."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "checksum"})
    return "sha256:" + h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for item in obj:
            _feed(h, item)
    elif obj is None or isinstance(obj, (str, int, float, bool, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(
            f"checkpoint content of type {type(obj).__name__} is not a tensor or plain type"
        )


def nonfinite_tensor(obj) -> str | None:
    """The key path (``train_state.model.fpn...``) of the first floating tensor in ``obj``
    holding NaN/inf, else None (one fused pass over all tensors; per tensor only on failure)."""
    floats: list[tuple[str, torch.Tensor]] = []
    _floating(obj, "", floats)
    if not floats:
        return None
    groups: dict[
        tuple, list[torch.Tensor]
    ] = {}  # foreach kernels take one device and dtype at a time
    for _, t in floats:
        groups.setdefault((t.device, t.dtype), []).append(t.detach())
    # max |x| per tensor: NaN/inf propagate, finite values cannot overflow
    peaks = [
        p.float().cpu()
        for group in groups.values()
        for p in torch._foreach_norm(group, float("inf"))
    ]
    if bool(torch.isfinite(torch.stack(peaks)).all()):
        return None
    return next(where for where, t in floats if not bool(torch.isfinite(t).all()))


def _floating(obj, where: str, out: list) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel():
            out.append((where or "tensor", obj))
        return
    items = (
        obj.items()
        if isinstance(obj, dict)
        else enumerate(obj)
        if isinstance(obj, (list, tuple))
        else ()
    )
    for key, value in items:
        _floating(value, f"{where}.{key}" if where else str(key), out)


# ----------------------------------------------------------------------------- write


def write_checkpoint(path: str | os.PathLike, payload: dict) -> str:
    """Write ``payload`` (a dict of tensors and plain types) to ``path`` with its content
    checksum, all or nothing; returns the checksum. Refuses (WeightsError, nothing written,
    the previous file kept) a payload holding non-finite floating tensors; an OSError (disk
    full, read-only folder) becomes a one-line OutputError."""
    bad = nonfinite_tensor(payload)
    if bad:
        raise WeightsError(
            f"{path}: not written: {bad} holds NaN/inf values (the previous file is kept); "
            "fix: lower --lr or keep --clip-grad on"
        )
    payload = {**payload, "checksum": content_checksum(payload)}
    name = Path(path).name
    with atomic_write(path, "wb") as f:
        try:
            torch.save(payload, f)
        except (
            RuntimeError
        ) as exc:  # torch's zip writer hides a failed write (disk full) behind its own error
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise
        _fault_point("during", name)
    _fault_point("after", name)
    return payload["checksum"]


_fault_counts: dict[tuple[str, str], int] = {}


def _fault_point(when: str, name: str) -> None:
    spec = os.environ.get(FAULT_ENV[when])
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _fault_counts[when, name] = _fault_counts.get((when, name), 0) + 1
    if _fault_counts[when, name] == int(nth or 1):
        os._exit(FAULT_EXIT_CODE)


# ----------------------------------------------------------------------------- read


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a weights file with ``torch.load(weights_only=True)`` onto the CPU, after checking
    its integrity (zip CRC-32 of every member; our stored checksum when present).

    Any file a user can give (missing, empty, truncated, corrupted, an ONNX or TorchScript
    model, a text file, a pickle of Python objects) ends in one line
    ``<path>: <what it is>; fix: <what to do>`` (WeightsError).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file; fix: check the path")
    kind = _sniff(path)
    if kind is not None:
        raise WeightsError(f"{path}: {kind}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path}: refused to unpickle: it holds Python objects other than tensors and plain types, which could "
            "run code when loaded; fix: save plain weights instead: torch.save(model.state_dict(), PATH)"
        ) from None
    except Exception as exc:
        if _is_zip(
            path
        ):  # a complete zip whose members passed their CRCs: damaged where no CRC looks
            raise WeightsError(f"{path}: {_CORRUPT}") from None
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__}); "
            f"fix: {_FIX_CORRUPT}"
        ) from None
    if isinstance(obj, dict) and "checksum" in obj:
        try:
            ok = content_checksum(obj) == obj["checksum"]
        except TypeError:
            ok = False
        if not ok:
            raise WeightsError(f"{path}: {_CORRUPT}")
    return obj


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _zip_is_complete(path: Path) -> bool:
    """The zip's central directory or its end record is at the end (the file was not cut short)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
    return b"PK\x05\x06" in tail or b"PK\x01\x02" in tail


def _sniff(path: Path) -> str | None:
    """What is wrong with ``path`` before unpickling (None: looks like a torch file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise WeightsError(
            f"{path}: cannot read ({exc.strerror}); fix: check the permissions"
        ) from None
    if not head:
        return "empty file; fix: give a complete checkpoint (was the write interrupted?)"
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"onnx" in head.lower()):
        return (
            "an ONNX model, not a PyTorch checkpoint; fix: use the .pt file it was exported from, "
            "or run the ONNX file with predict (efficientdet predict --weights FILE.onnx)"
        )
    if head[:4] != b"PK\x03\x04":
        if _zip_is_complete(path):  # a zip's end records, but not its first bytes
            return _CORRUPT
        if head[:1] == b"\x80":  # torch's legacy (non-zip) format: no CRC to check
            return None
        if _is_text(head):
            return "a text file, not a PyTorch checkpoint; fix: give the .pt file written by efficientdet train"
        return "not a PyTorch checkpoint (unknown file type); fix: give the .pt file written by efficientdet train"
    if not _zip_is_complete(path):
        return f"not a complete checkpoint (the file is cut short: an interrupted copy or write?); fix: {_FIX_CORRUPT}"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return (
                    "a TorchScript model, not a checkpoint; fix: load it with torch.jit.load, or give the "
                    ".pt file written by efficientdet train"
                )
            if not any(
                n.endswith(("data.pkl", "/version", "/byteorder")) or "/data/" in n for n in names
            ):
                return "a zip archive, not a PyTorch checkpoint; fix: give the .pt file written by efficientdet train"
            for info in zf.infolist():
                if info.CRC == 0 and info.file_size:
                    continue  # written without CRC (torch.serialization config): nothing to check
                with zf.open(info) as member:
                    while member.read(1 << 22):
                        pass
    except Exception:
        return _CORRUPT
    return None


def _is_text(head: bytes) -> bool:
    for cut in range(4):  # the 512-byte head may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return all(c.isprintable() or c in "\r\n\t" for c in text)
    return False
