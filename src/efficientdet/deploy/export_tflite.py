"""Export to TFLite: ``efficientdet export --weights W --format tflite [--fp16 | --int8 ...]``.

Converter: litert-torch (``torch.export`` -> LiteRT), straight from the PyTorch module, with
ai-edge-quantizer for float16 weights and full-integer int8. Chosen over ONNX -> onnx2tf ->
TensorFlow because onnx2tf 1.28 (the last release for Python 3.11) fails on EfficientDet's
"same"-padded strided convs and pools (it mis-infers NCHW/NHWC layouts at 64 and 128 px) and
downloads sample images from GitHub on every conversion; litert-torch needs no TensorFlow.

Graph (batch 1, the image size fixed at export):

* input ``images`` (1, H, W, 3) NHWC: float32 letterboxed and normalised (``(x - mean) / std``,
  0-255 units, as the other exports), or with ``uint8_input`` uint8 0-255 RGB pixels,
  letterboxed with the mean colour, normalised inside the graph (as the official Lite models);
* outputs ``class_logits`` (1, A_all, K) and ``box_deltas`` (1, A_all, 4) (ty, tx, th, tw), in
  the anchor order of :mod:`efficientdet.detection.layout`, float32 in every variant.

Metadata: our JSON (:mod:`efficientdet.deploy.metadata`) as ``efficientdet.json`` in a zip
appended to the flatbuffer, the TFLite convention for associated files (the interpreter
ignores bytes after the model); :func:`read_tflite_metadata` reads it back with ``zipfile``.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..fileio import write_bytes
from .export import RawExport, _prepare
from .metadata import build_metadata

TFLITE_JSON = "efficientdet.json"  # the associated file holding our metadata
PRECISIONS = ("fp32", "fp16", "int8")
INSTALL = "pip install 'efficientdet[tflite]' (or: make test-tflite, which builds benchmarks/tflite/.venv)"


def is_tflite(path: str | os.PathLike) -> bool:
    """True when the file is a TFLite flatbuffer (file identifier ``TFL3`` at bytes 4..8)."""
    with open(path, "rb") as f:
        return f.read(8)[4:8] == b"TFL3"


def read_tflite_metadata(path: str | os.PathLike) -> str | None:
    """Our metadata JSON text stored in a .tflite file, or None when it has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(TFLITE_JSON).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError):
        return None


def with_metadata(model_bytes: bytes, meta_json: str) -> bytes:
    """The flatbuffer with a zip holding ``efficientdet.json`` appended (TFLite associated files)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(TFLITE_JSON, meta_json)
    return bytes(model_bytes) + buf.getvalue()


class TFLiteGraph(nn.Module):
    """``images (1, H, W, 3) -> (class_logits (1, A_all, K), box_deltas (1, A_all, 4))``.

    NHWC in (what TFLite runtimes and MediaPipe feed); with ``uint8_input`` the pixels are cast
    and normalised here, ``(x - mean) / std``.
    """

    def __init__(self, model: nn.Module, uint8_input: bool = False):
        super().__init__()
        self.raw = RawExport(model)
        self.uint8_input = uint8_input
        cfg = model.config
        self.register_buffer(
            "mean", torch.tensor(cfg.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        )
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(cfg.std, dtype=torch.float32).reshape(1, 3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2)  # (1, H, W, 3) -> (1, 3, H, W)
        if self.uint8_input:
            x = (x.float() - self.mean) * self.inv_std
        return self.raw(x)


def _litert_torch():
    try:
        import litert_torch
    except ImportError:
        raise ConfigError(
            f"--format tflite needs the converter litert-torch; fix: {INSTALL}"
        ) from None
    return litert_torch


def _quantizer():
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError:
        raise ConfigError(
            f"--fp16 / --int8 TFLite need ai-edge-quantizer; fix: {INSTALL}"
        ) from None
    return quantizer, recipe


def _nhwc_samples(calibration, uint8_input: bool) -> Iterator[np.ndarray]:
    """Calibration images one by one as (1, H, W, 3) (float32 normalised, or uint8 pixels)."""
    for batch in calibration.batches(batch=8, raw_pixels=uint8_input):
        for image in batch:
            yield np.ascontiguousarray(image.transpose(1, 2, 0)[None])


def convert_float(graph: nn.Module, hw: tuple[int, int], uint8_input: bool) -> bytes:
    """The float32 flatbuffer of ``graph`` (litert-torch)."""
    litert_torch = _litert_torch()
    dtype = torch.uint8 if uint8_input else torch.float32
    example = torch.zeros(1, hw[0], hw[1], 3, dtype=dtype)
    with torch.no_grad():
        edge = litert_torch.convert(graph.eval(), (example,))
    with tempfile.TemporaryDirectory(prefix="efficientdet-tflite-") as tmp:
        out = Path(tmp) / "float.tflite"
        edge.export(os.fspath(out))
        return out.read_bytes()


def quantize(
    float_model: bytes, precision: str, calibration=None, uint8_input: bool = False
) -> bytes:
    """float16 weights (``fp16``) or full-integer int8 (``int8``, static, calibrated) of a float32 flatbuffer."""
    quantizer, recipe = _quantizer()
    if precision == "fp16":
        from ai_edge_quantizer import recipe_manager

        manager = recipe_manager.RecipeManager()
        for op in ("CONV_2D", "DEPTHWISE_CONV_2D"):  # every weight of the network is a conv's
            manager.add_weight_only_config(
                regex=".*",
                operation_name=getattr(quantizer.qtyping.TFLOperationName, op),
                num_bits=16,
                algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING,
            )
        qt = quantizer.Quantizer(bytearray(float_model), manager.get_quantization_recipe())
        return bytes(qt.quantize(enable_progress_report=False).quantized_model)
    qt = quantizer.Quantizer(bytearray(float_model), recipe.static_wi8_ai8())
    samples = [{"args_0": x} for x in _nhwc_samples(calibration, uint8_input)]
    calib = qt.calibrate({"serving_default": samples})
    return bytes(qt.quantize(calib, enable_progress_report=False).quantized_model)


def export_tflite(
    model: nn.Module,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    *,
    precision: str = "fp32",
    calibration=None,
    uint8_input: bool = False,
    image_size=None,
    fuse: bool = True,
) -> Path:
    """Write ``model`` to ``path`` as TFLite (see the module docstring). ``precision``: ``fp32``,
    ``fp16`` (float16 weights, float32 compute) or ``int8`` (needs ``calibration``, a
    :class:`~efficientdet.deploy.calibration.CalibrationSet` for the same input size). Returns the path."""
    import json

    from .detector import _default_names

    if precision not in PRECISIONS:
        raise ConfigError(
            f"TFLite precision {precision!r}; fix: use one of {', '.join(PRECISIONS)}"
        )
    if precision == "int8" and calibration is None:
        raise ConfigError("--int8 needs calibration images; fix: add --calib-data data.yaml")
    model, hw = _prepare(model, image_size, fuse)
    names = (
        list(class_names) if class_names is not None else _default_names(model.config.num_classes)
    )
    meta = build_metadata(model.config, hw, names, category_ids, "raw", None)
    meta.update(
        input_layout=(
            "NHWC uint8 RGB 0-255, letterboxed with the mean colour; normalised in the graph"
            if uint8_input
            else "NHWC float32 RGB, (x - mean) / std in 0-255 units"
        ),
        tflite={"precision": precision, "uint8_input": uint8_input},
    )
    data = convert_float(TFLiteGraph(model, uint8_input), hw, uint8_input)
    if precision != "fp32":
        data = quantize(data, precision, calibration, uint8_input)
    blob = with_metadata(data, json.dumps(meta))
    path = Path(path)
    write_bytes(path, blob)  # all or nothing
    return path


# ----------------------------------------------------------------------------- CLI
def add_tflite_arguments(parser) -> None:
    """The options of ``export --format tflite`` (refused with any other format)."""
    from .calibration import DEFAULT_CALIBRATION_IMAGES

    group = parser.add_argument_group("TFLite (--format tflite)")
    group.add_argument("--fp16", action="store_true", help="float16 weights (float32 compute)")
    group.add_argument(
        "--int8", action="store_true", help="full-integer int8, calibrated on --calib-data"
    )
    group.add_argument(
        "--calib-data",
        default=None,
        help="--int8: dataset YAML / COCO JSON (its train split) or a folder of images",
    )
    group.add_argument(
        "--calib-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"--int8: how many calibration images (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    group.add_argument(
        "--uint8-input",
        action="store_true",
        help="the graph takes uint8 0-255 pixels and normalises inside (as the official Lite models)",
    )


def check_tflite_options(args) -> None:
    """One line for an option that does not fit the format (before any work)."""
    given = [
        flag
        for flag, on in (
            ("--fp16", args.fp16),
            ("--int8", args.int8),
            ("--calib-data", args.calib_data is not None),
            ("--uint8-input", args.uint8_input),
        )
        if on
    ]
    if args.format != "tflite":
        if given:
            raise ConfigError(
                f"{given[0]} is an option of --format tflite; fix: add --format tflite or drop {given[0]}"
            )
        return
    if args.nms_in_graph:
        raise ConfigError(
            "--nms-in-graph: TFLite files hold raw outputs (NMS runs after the interpreter); "
            "fix: drop it, or export --format onnx --nms-in-graph"
        )
    if args.fp16 and args.int8:
        raise ConfigError("--fp16 and --int8 together; fix: pick one")
    if args.int8 and args.calib_data is None:
        raise ConfigError(
            "--int8 needs calibration images; fix: add --calib-data data.yaml (or a folder of images)"
        )
    if args.calib_data is not None and not args.int8:
        raise ConfigError("--calib-data is for --int8 only; fix: add --int8 or drop --calib-data")
    if args.dynamic_batch or args.batch != 1:
        raise ConfigError(
            "TFLite files take one image (batch 1); fix: drop --dynamic-batch / --batch"
        )
    if args.no_fuse:
        raise ConfigError("--no-fuse: TFLite export folds BatchNorm always; fix: drop --no-fuse")


def run_tflite(args, model: nn.Module, names, category_ids, hw: tuple[int, int], stem: str) -> int:
    """``export --format tflite``: writes ``OUT/<stem>[_fp16|_int8][_uint8].tflite`` into a new run
    folder, then checks its raw outputs against PyTorch (float32: at most 1e-3)."""
    from ..progress import stage
    from ..run_dirs import make_run_dir, refuse_inputs_inside

    quiet = args.quiet
    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    _litert_torch()  # a missing converter is one line before the run folder is made
    calibration = None
    if args.int8:
        from .calibration import calibration_set

        calibration = calibration_set(
            args.calib_data, hw, model.config.mean, model.config.std, args.calib_images
        )
    suffix = ("" if precision == "fp32" else f"_{precision}") + (
        "_uint8" if args.uint8_input else ""
    )
    out_dir = make_run_dir(args.out, args.exist_ok, "export")
    refuse_inputs_inside(out_dir, {"weights file": args.weights})
    out = out_dir / f"{stem}{suffix}.tflite"
    with stage(f"exporting {model.config.name} to tflite {precision} ({hw[0]}x{hw[1]})", quiet):
        export_tflite(
            model,
            out,
            names,
            category_ids,
            precision=precision,
            calibration=calibration,
            uint8_input=args.uint8_input,
            image_size=hw,
        )
    if calibration is not None:
        used = len(calibration.paths) - len(calibration.skipped)
        print(f"calibrated on {used} images from {calibration.source}", end="")
        if calibration.skipped:
            print(
                f"; {len(calibration.skipped)} unreadable, skipped (first: {calibration.skipped[0][1]})"
            )
        else:
            print()
    size_mb = out.stat().st_size / 2**20
    print(
        f"exported {model.config.name} (tflite {precision}{', uint8 input' if args.uint8_input else ''}, "
        f"raw outputs, input {hw[0]}x{hw[1]}) -> {out} ({size_mb:.1f} MiB)"
    )
    if not args.no_check:
        from .export import check_raw_parity

        with stage("checking the exported outputs against PyTorch", quiet):
            fused, _ = _prepare(model, hw, True)
            diff = check_raw_parity(fused, out, hw, "tflite")
        print(f"check: max |difference| vs PyTorch {diff:.2e} on a random batch")
    return 0
