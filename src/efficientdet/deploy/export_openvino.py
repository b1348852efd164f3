"""OpenVINO IR export: ``efficientdet export --format openvino [--int8 --calib-data D]``.

Writes ``NAME.xml`` (the graph) and ``NAME.bin`` (the weights), converted from the PyTorch
raw-output module (:class:`efficientdet.deploy.export.RawExport`, traced: input ``images``
(N, 3, H, W) float32 normalised, outputs ``class_logits`` (N, A_all, K) and ``box_deltas``
(N, A_all, 4); N fixed at export) with OpenVINO's PyTorch frontend, weights kept in float32. With a
calibration set the model is quantised to int8 by NNCF post-training quantization
(``nncf.quantize``: int8 weights and activations, fake-quantize nodes the CPU plugin runs in
int8).

Metadata: the JSON of :mod:`efficientdet.deploy.metadata` in the IR's ``rt_info`` under
``efficientdet`` (read back by :mod:`efficientdet.deploy.backends.openvino`), with
``precision`` ("fp32" | "int8"), the calibration used and ``weights`` (size and SHA-256 of
the .bin), so a reader refuses an .xml whose .bin is missing or belongs to another export.

All or nothing: both files are written under temporary names in the destination folder; the
.bin is renamed first and the .xml last (the .xml is what readers open). A kill between the
two renames leaves a .bin with no .xml (nothing opens it); a stale .bin next to another .xml
fails the hash check with one clear line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..fileio import fsync_dir, output_error, temporary_path
from .backends.base import openvino_telemetry_off, require
from .calibration import CalibrationSet, check_calibration_set
from .metadata import META_KEY, build_metadata


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bin_path(xml_path: str | os.PathLike) -> Path:
    """The weights file OpenVINO reads for ``xml_path``: same name, ``.bin``."""
    return Path(xml_path).with_suffix(".bin")


def _calibration_items(calibration: CalibrationSet, batch: int) -> tuple[list[Any], int]:
    """(the calibration images as (batch, 3, H, W) float32 arrays, the number of images read);
    the last array is padded by repeating its first image: the IR takes exactly ``batch``."""
    import numpy as np

    items, count = [], 0
    for chunk in calibration.batches(batch):
        count += chunk.shape[0]
        if chunk.shape[0] < batch:
            chunk = np.concatenate([chunk] + [chunk[:1]] * (batch - chunk.shape[0]))
        items.append(chunk)
    return items, count


@openvino_telemetry_off()  # conversion and quantisation restart the telemetry
def export_openvino(
    model: nn.Module,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    *,
    image_size: Any = None,
    batch: int = 1,
    fuse: bool = True,
    calibration: CalibrationSet | None = None,
    verify: Callable[[Path], None] | None = None,
    progress: bool = False,
) -> Path:
    """Write ``model`` (an EfficientDet) as OpenVINO IR ``path`` (.xml) + its .bin; int8 when a
    ``calibration`` set is given. ``verify(tmp_xml)`` runs on the finished temporary pair before
    it is renamed (the parity check: raising leaves no file); ``progress``: NNCF's progress bars
    while it quantises. Returns the .xml path."""
    check_calibration_set(calibration)
    ov = require("openvino", "--format openvino", "openvino")
    nncf = (
        require("nncf", "--format openvino --int8", "openvino") if calibration is not None else None
    )
    from .detector import _default_names
    from .export import RawExport, _prepare

    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ConfigError(f"{path}: an OpenVINO IR is named NAME.xml; fix: use a .xml name")
    model, hw = _prepare(model, image_size, fuse)
    config: Any = model.config
    names = list(class_names) if class_names is not None else _default_names(config.num_classes)
    example = torch.zeros(batch, 3, *hw)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on the static "same" padding
        # traced first: converting the traced graph is several times faster than the module
        traced = torch.jit.trace(RawExport(model).eval(), example, check_trace=False)
        ov_model = ov.convert_model(traced, example_input=example, input=[(batch, 3, *hw)])
    for port, name in zip(ov_model.inputs, ["images"], strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, ["class_logits", "box_deltas"], strict=True):
        port.get_tensor().set_names({name})
    meta = build_metadata(config, hw, names, category_ids, "raw", None)
    meta["precision"] = "fp32"
    if calibration is not None:
        assert nncf is not None
        items, count = _calibration_items(calibration, batch)
        with warnings.catch_warnings(), _rich_output(progress):
            warnings.simplefilter("ignore")
            ov_model = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items) * batch)
        meta["precision"] = "int8"
        meta["quantization"] = {
            "method": f"NNCF {nncf.__version__} post-training quantization (int8)",
            "calibration_source": calibration.source,
            "calibration_images": count,
        }
    _write_pair(ov, ov_model, path, meta, verify)
    return path


@contextlib.contextmanager
def _rich_output(show: bool) -> Iterator[None]:
    """NNCF draws its progress bars on rich's global console and has no switch for them: that
    console is ``quiet`` in this block unless ``show``."""
    from rich import get_console

    console = get_console()
    before = console.quiet
    console.quiet = before or not show
    try:
        yield
    finally:
        console.quiet = before


def _write_pair(
    ov: ModuleType,
    ov_model: Any,
    path: Path,
    meta: dict,
    verify: Callable[[Path], None] | None,
) -> None:
    """Save the IR under temporary names, stamp the .bin's size and hash into the .xml, verify,
    then rename .bin and .xml (see the module docstring)."""
    final_bin = bin_path(path)
    with temporary_path(path) as tmp_xml:
        tmp_bin = bin_path(tmp_xml)
        try:
            ov.save_model(ov_model, os.fspath(tmp_xml), compress_to_fp16=False)
            weights = {"bytes": tmp_bin.stat().st_size, "sha256": file_sha256(tmp_bin)}
            # the weights do not depend on rt_info: save again with their hash in the .xml
            ov_model.set_rt_info(json.dumps({**meta, "weights": weights}), META_KEY)
            ov.save_model(ov_model, os.fspath(tmp_xml), compress_to_fp16=False)
            if file_sha256(tmp_bin) != weights["sha256"]:  # our bug: OpenVINO not deterministic
                raise RuntimeError(f"{tmp_bin}: OpenVINO wrote different weights twice")
            if verify is not None:
                verify(tmp_xml)
            with open(tmp_bin, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_bin, final_bin)  # .bin first: the .xml (renamed last) commits the pair
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp_bin.unlink()
            raise output_error(path, exc) from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp_bin.unlink()
            raise
    fsync_dir(path.parent)
