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
  the anchor order of :mod:`efficientdet.detection.layout` (float32; an int8 file may quantise
  them, with the tensor's scale and zero point);
* with ``nms``: the graph ends in TFLite's ``TFLite_Detection_PostProcess`` custom op (as the
  official google/automl export; appended to the flatbuffer by :func:`add_detection_postprocess`)
  and outputs its four tensors instead (:data:`TFLITE_NMS_LAYOUT`).

Metadata: our JSON (:mod:`efficientdet.deploy.metadata`) as ``efficientdet.json`` in a zip
appended to the flatbuffer, the TFLite convention for associated files (the interpreter
ignores bytes after the model); :func:`read_tflite_metadata` reads it back with ``zipfile``.
NMS files also carry the TFLite metadata of MediaPipe's ObjectDetector (labels, normalisation).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import NMSConfig
from ..errors import ConfigError
from ..fileio import write_via_temp
from ..nn.bifpn import Resample
from .calibration import CalibrationSet, check_calibration_set
from .export import FILE_SUFFIX, ExportJob, RawExport, _prepare, model_config
from .metadata import build_metadata

TFLITE_JSON = "efficientdet.json"  # the associated file holding our metadata
PRECISIONS = ("fp32", "fp16", "int8")
TFLITE_NMS_LAYOUT = (
    "TFLite_Detection_PostProcess: boxes (1, M, 4) ymin,xmin,ymax,xmax normalised to the input "
    "(letterboxed) image and clipped to [0, 1], classes (1, M) 0-based, scores (1, M), "
    "num_detections (1,); float32"
)
INSTALL = "pip install 'efficientdet[tflite]' (or: make test-tflite, which builds benchmarks/tflite/.venv)"


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


class _GatherResample(Resample):
    """:class:`~efficientdet.nn.bifpn.Resample` whose upsampling picks rows and columns by index.

    torch's ``nearest`` reads source ``floor(dst * in / out)``; litert-torch lowers it to TFLite's
    half-pixel resize, which picks other rows when ``out / in`` is not a whole number (odd
    feature sizes, e.g. 2x3 -> 3x5 at 192x320). Index gathers keep torch's choice exactly.
    """

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.octaves >= 0:
            return super().forward(x, size)
        if hasattr(self, "conv"):
            x = self.conv(x)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        rows = torch.arange(size[0]) * h // size[0]  # (out_h,) source rows
        cols = torch.arange(size[1]) * w // size[1]  # (out_w,) source columns
        return x.index_select(2, rows).index_select(3, cols)


class TFLiteGraph(nn.Module):
    """``images (1, H, W, 3) -> (class_logits (1, A_all, K), box_deltas (1, A_all, 4))``.

    NHWC in (what TFLite runtimes and MediaPipe feed); with ``uint8_input`` the pixels are cast
    and normalised here, ``(x - mean) / std``.
    """

    def __init__(self, model: nn.Module, uint8_input: bool = False, nms: bool = False):
        super().__init__()
        model = copy.deepcopy(model)
        for module in model.modules():
            if type(module) is Resample:
                module.__class__ = _GatherResample
        self.raw = RawExport(model)
        self.uint8_input = uint8_input
        self.nms = nms
        cfg = model_config(model)
        self.register_buffer(
            "mean", torch.tensor(cfg.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        )
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(cfg.std, dtype=torch.float32).reshape(1, 3, 1, 1)
        )

    mean: torch.Tensor
    inv_std: torch.Tensor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2)  # (1, H, W, 3) -> (1, 3, H, W)
        if self.uint8_input:
            x = (x.float() - self.mean) * self.inv_std
        cls, box = self.raw(x)
        if self.nms:  # what TFLite_Detection_PostProcess reads: encodings, then scores
            return box, cls.sigmoid()
        return cls, box


def _litert_torch():
    try:
        import litert_torch
    except ImportError:
        raise ConfigError(
            f"exporting to TFLite needs the converter litert-torch, which is not installed; fix: {INSTALL}"
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


def calibration_samples(calibration: CalibrationSet, uint8_input: bool) -> list[np.ndarray]:
    """The calibration images as (1, H, W, 3) arrays (float32 normalised, or uint8 pixels), read
    before any conversion so that a set with no readable image is refused in one line first."""
    return [
        np.ascontiguousarray(image.transpose(1, 2, 0)[None])  # (3, H, W) -> (1, H, W, 3)
        for batch in calibration.batches(batch=8, raw_pixels=uint8_input)
        for image in batch
    ]


def convert_float(graph: nn.Module, hw: tuple[int, int], uint8_input: bool) -> bytes:
    """The float32 flatbuffer of ``graph`` (litert-torch)."""
    litert_torch = _litert_torch()
    dtype = torch.uint8 if uint8_input else torch.float32
    example = torch.zeros(1, hw[0], hw[1], 3, dtype=dtype)
    litert_torch.config.show_progress = False  # its task lines; the CLI shows one stage line
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of torch.export internals
        edge = litert_torch.convert(graph.eval(), (example,))
    with tempfile.TemporaryDirectory(prefix="efficientdet-tflite-") as tmp:
        out = Path(tmp) / "float.tflite"
        edge.export(os.fspath(out))
        return out.read_bytes()


def quantize(
    float_model: bytes,
    precision: str,
    samples: list[np.ndarray] | None = None,
    progress: bool = False,
) -> bytes:
    """float16 weights (``fp16``) or full-integer int8 (``int8``: static, calibrated on ``samples``
    from :func:`calibration_samples`) of a float32 flatbuffer; ``progress``: the quantiser's bars."""
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
        return bytes(
            qt.quantize(enable_progress_bar=progress, enable_progress_report=False).quantized_model
        )
    qt = quantizer.Quantizer(bytearray(float_model), recipe.static_wi8_ai8())
    # calibrate() has no switch for its bar (a tqdm on sys.stderr, a line that disappears when
    # done): without ``progress`` it draws on a stream nobody reads
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(sys.stderr if progress else io.StringIO()),
    ):
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": calibration does
        calib = qt.calibrate({"serving_default": [{"args_0": x} for x in samples or []]})
        result = qt.quantize(calib, enable_progress_bar=progress, enable_progress_report=False)
    return bytes(result.quantized_model)


def export_tflite(
    model: nn.Module,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    *,
    precision: str = "fp32",
    calibration: CalibrationSet | None = None,
    uint8_input: bool = False,
    nms: NMSConfig | None = None,
    image_size=None,
    fuse: bool = True,
    float_flatbuffer: bytes | None = None,
    progress: bool = False,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` to ``path`` as TFLite (see the module docstring). ``precision``: ``fp32``,
    ``fp16`` (float16 weights, float32 compute) or ``int8`` (needs ``calibration``, a
    :class:`~efficientdet.deploy.calibration.CalibrationSet` for the same input size); ``nms``:
    the settings of TFLite_Detection_PostProcess at the end of the graph (None: raw outputs).
    ``float_flatbuffer``: :func:`convert_float` of the same ``TFLiteGraph`` from an earlier call
    (skips the conversion when exporting several precisions of one model); ``progress``: the
    quantiser's progress bars; ``verify(tmp)`` runs on the finished temporary file before it is
    renamed (the parity check: raising leaves no file). Returns the path."""
    import json

    from .detector import _default_names

    check_calibration_set(calibration)
    if precision not in PRECISIONS:
        raise ConfigError(
            f"TFLite precision {precision!r}; fix: use one of {', '.join(PRECISIONS)}"
        )
    if precision == "int8" and calibration is None:
        raise ConfigError("--int8 needs calibration images; fix: add --calib-data data.yaml")
    model, hw = _prepare(model, image_size, fuse)
    config = model_config(model)
    names = list(class_names) if class_names is not None else _default_names(config.num_classes)
    meta = build_metadata(config, hw, names, category_ids, "nms" if nms else "raw", nms)
    meta.update(
        input_layout=(
            "NHWC uint8 RGB 0-255, letterboxed with the mean colour; normalised in the graph"
            if uint8_input
            else "NHWC float32 RGB, (x - mean) / std in 0-255 units"
        ),
        tflite={"precision": precision, "uint8_input": uint8_input},
    )
    if nms is not None:
        meta["output_layout"] = TFLITE_NMS_LAYOUT
    samples = None
    if precision == "int8":
        assert calibration is not None  # refused above
        samples = calibration_samples(calibration, uint8_input)
    data = float_flatbuffer or convert_float(
        TFLiteGraph(model, uint8_input, nms is not None), hw, uint8_input
    )
    if precision != "fp32":
        data = quantize(data, precision, samples, progress)
    if nms is not None:
        anchors = normalised_anchors(config, hw)
        data = add_detection_postprocess(data, anchors, config.num_classes, nms)
        blob = with_mediapipe_metadata(data, meta, uint8_input)
    else:
        blob = with_metadata(data, json.dumps(meta))
    path = Path(path)

    def write(tmp: Path) -> None:
        tmp.write_bytes(blob)
        if verify is not None:
            verify(tmp)

    write_via_temp(path, write)  # all or nothing, checked before the rename
    return path


# ----------------------------------------------------------------------------- CLI
def add_tflite_arguments(parser) -> None:
    """The options of ``export --format tflite`` only (refused with any other format); --int8,
    --calib-data and --calib-images are export's, shared with onnx and openvino."""
    group = parser.add_argument_group("TFLite (--format tflite)")
    group.add_argument("--fp16", action="store_true", help="float16 weights (float32 compute)")
    group.add_argument(
        "--uint8-input",
        action="store_true",
        help="the graph takes uint8 0-255 pixels and normalises inside (as the official Lite models)",
    )


def check_tflite_options(args) -> None:
    """One line for an option that does not fit the format (before any work)."""
    given = [
        flag for flag, on in (("--fp16", args.fp16), ("--uint8-input", args.uint8_input)) if on
    ]
    if args.format != "tflite":
        if given:
            raise ConfigError(
                f"{given[0]} is an option of --format tflite; fix: add --format tflite or drop {given[0]}"
            )
        return
    if args.fp16 and args.int8:
        raise ConfigError("--fp16 and --int8 together; fix: pick one")
    if args.dynamic_batch or args.batch != 1:
        raise ConfigError(
            "TFLite files take one image (batch 1); fix: drop --dynamic-batch / --batch"
        )
    if args.no_fuse:
        raise ConfigError("--no-fuse: TFLite export folds BatchNorm always; fix: drop --no-fuse")
    _litert_torch()  # a missing converter is one line before any work


def tflite_job(
    args,
    model: nn.Module,
    names: list[str],
    category_ids: list[int] | None,
    hw: tuple[int, int],
    calibration: CalibrationSet | None,
) -> ExportJob:
    """``export --format tflite``: ``<stem>[_fp16|_int8][_uint8][_nms].tflite`` (the rest of the
    command, parity check included, is :func:`.export._run`'s)."""
    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    nms = None
    if args.nms_in_graph:
        nms = NMSConfig(
            iou_threshold=args.iou, score_threshold=args.conf, max_detections=args.max_det
        )

    def write(out: Path, verify: Callable[[Path], None]) -> None:
        export_tflite(
            model,
            out,
            names,
            category_ids,
            precision=precision,
            calibration=calibration,
            uint8_input=args.uint8_input,
            nms=nms,
            image_size=hw,
            progress=not args.quiet,
            verify=verify,
        )

    suffix = (
        ("" if precision == "fp32" else f"_{precision}")
        + ("_uint8" if args.uint8_input else "")
        + ("_nms" if nms else "")
    )
    return ExportJob(
        suffix=f"{suffix}{FILE_SUFFIX['tflite']}",
        precision=precision,
        traits=[
            *(["uint8 input"] if args.uint8_input else []),
            "NMS inside" if nms else "raw outputs",
            f"input {hw[0]}x{hw[1]}",
        ],
        write=write,
        absolute=True,
    )


# ----------------------------------------------------------------------------- NMS in the graph
def normalised_anchors(config, hw: tuple[int, int]) -> np.ndarray:
    """(A_all, 4) anchors as TFLite_Detection_PostProcess reads them: (y_center, x_center, h, w)
    divided by the input (H, W)."""
    from ..detection.anchors import AnchorGenerator

    a = AnchorGenerator(config.anchors)(hw).double().numpy()  # (A_all, 4) x1, y1, x2, y2 pixels
    h, w = float(hw[0]), float(hw[1])
    out = np.stack(
        [
            (a[:, 1] + a[:, 3]) / 2 / h,
            (a[:, 0] + a[:, 2]) / 2 / w,
            (a[:, 3] - a[:, 1]) / h,
            (a[:, 2] - a[:, 0]) / w,
        ],
        axis=1,
    )
    return out.astype(np.float32)


def _postprocess_options(num_classes: int, nms: NMSConfig) -> bytes:
    """The op's attributes as a FlexBuffer map (the keys google/automl's export gives it)."""
    from flatbuffers import flexbuffers

    fbb = flexbuffers.Builder()
    with fbb.Map():
        fbb.Int("max_detections", nms.max_detections)
        fbb.Int("max_classes_per_detection", 1)
        fbb.Int("detections_per_class", nms.max_detections)
        fbb.Bool("use_regular_nms", True)  # class-aware NMS as the Detector's (automl: fast NMS)
        fbb.Float("nms_score_threshold", nms.score_threshold)
        fbb.Float("nms_iou_threshold", nms.iou_threshold)
        fbb.Int("num_classes", num_classes)
        for key in ("y_scale", "x_scale", "h_scale", "w_scale"):
            fbb.Float(key, 1.0)
    return bytes(fbb.Finish())


def add_detection_postprocess(
    model_bytes: bytes, anchors: np.ndarray, num_classes: int, nms: NMSConfig
) -> bytes:
    """Append TFLite's ``TFLite_Detection_PostProcess`` custom op to a graph whose outputs are
    (box encodings (1, A, 4), class scores (1, A, K)); the graph then outputs its four tensors:
    boxes (1, M, 4) (ymin, xmin, ymax, xmax) normalised to the input and clipped to [0, 1],
    classes (1, M) 0-based,
    scores (1, M), count (1,), all float32. Quantised encodings/scores are dequantised first."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    box_idx, score_idx = graph.outputs

    def opcode(builtin: int, custom: str | None = None) -> int:
        for i, code in enumerate(model.operatorCodes):
            if code.builtinCode == builtin and (
                custom is None or code.customCode in (custom, custom.encode())
            ):
                return i
        model.operatorCodes.append(
            fb.OperatorCodeT(
                deprecatedBuiltinCode=min(builtin, 127), customCode=custom, builtinCode=builtin
            )
        )
        return len(model.operatorCodes) - 1

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        buffer = fb.BufferT()
        if data is not None:
            buffer.data = np.frombuffer(data.tobytes(), np.uint8)
        model.buffers.append(buffer)
        graph.tensors.append(
            fb.TensorT(
                shape=shape, type=fb.TensorType.FLOAT32, buffer=len(model.buffers) - 1, name=name
            )
        )
        return len(graph.tensors) - 1

    def as_float(idx: int, name: str) -> int:
        t = graph.tensors[idx]
        if t.type == fb.TensorType.FLOAT32:
            return idx
        out = tensor(name, list(t.shape))
        graph.operators.append(
            fb.OperatorT(
                opcodeIndex=opcode(fb.BuiltinOperator.DEQUANTIZE), inputs=[idx], outputs=[out]
            )
        )
        return out

    box_idx = as_float(box_idx, "box_encodings")
    score_idx = as_float(score_idx, "class_scores")
    anchor_idx = tensor("anchors", list(anchors.shape), np.ascontiguousarray(anchors, np.float32))
    m = nms.max_detections
    names = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
    shapes = ([1, m, 4], [1, m], [1, m], [1])
    # boxes clipped to the input, [0, 1], as the Detector clips (clients such as MediaPipe take
    # the op's boxes as they are, overhanging the image). The four outputs are made last and in
    # order: MediaPipe reads them by increasing tensor index.
    raw_boxes = tensor("detection_boxes_unclipped", shapes[0])
    lo = tensor("zero", [], np.zeros((), np.float32))
    hi = tensor("one", [], np.ones((), np.float32))
    floor = tensor("detection_boxes_floor", shapes[0])
    outs = [tensor(n, s) for n, s in zip(names, shapes, strict=True)]
    graph.operators.append(
        fb.OperatorT(
            opcodeIndex=opcode(fb.BuiltinOperator.CUSTOM, "TFLite_Detection_PostProcess"),
            inputs=[box_idx, score_idx, anchor_idx],
            outputs=[raw_boxes, *outs[1:]],
            customOptions=np.frombuffer(_postprocess_options(num_classes, nms), np.uint8),
            customOptionsFormat=fb.CustomOptionsFormat.FLEXBUFFERS,
        )
    )
    for builtin, ins, out in (
        (fb.BuiltinOperator.MAXIMUM, [raw_boxes, lo], floor),
        (fb.BuiltinOperator.MINIMUM, [floor, hi], outs[0]),
    ):
        graph.operators.append(
            fb.OperatorT(
                opcodeIndex=opcode(builtin),
                inputs=ins,
                outputs=[out],
                builtinOptionsType=fb.BuiltinOptions.MaximumMinimumOptions,
                builtinOptions=fb.MaximumMinimumOptionsT(),
            )
        )
    graph.outputs = outs
    for sig in model.signatureDefs or []:
        sig.outputs = [
            fb.TensorMapT(name=n, tensorIndex=i) for n, i in zip(names, outs, strict=True)
        ]
    builder = flatbuffers.Builder(len(model_bytes) + anchors.nbytes + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


MIN_PARSER_VERSION = "1.0.0"  # stamped by the shim below; MediaPipe accepts files up to its own


def _metadata_version_shim() -> None:
    """mediapipe 1.2 wheels ship the metadata writer without its C++ helper
    ``_pywrap_metadata_version`` (it only stamps the minimum metadata-parser version into the
    metadata): provide a stand-in stamping :data:`MIN_PARSER_VERSION` when it is missing."""
    import importlib.util
    import sys
    import types

    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    try:
        if importlib.util.find_spec(name) is not None:
            return
    except ImportError:
        pass
    if importlib.util.find_spec("mediapipe") is None:
        return  # the import after this reports the missing package
    shim = types.ModuleType(name)
    shim.GetMinimumMetadataParserVersion = lambda buf: MIN_PARSER_VERSION  # type: ignore[attr-defined]
    parts = name.split(".")
    for i in range(3, len(parts)):  # the packages mediapipe.tasks.cc... do not exist either
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    sys.modules[name] = shim
    setattr(sys.modules[".".join(parts[:-1])], parts[-1], shim)


def with_mediapipe_metadata(model_bytes: bytes, meta: dict, uint8_input: bool) -> bytes:
    """The TFLite metadata MediaPipe's ObjectDetector needs (labels, input normalisation) plus
    our ``efficientdet.json``, packed together as associated files (MediaPipe's writer)."""
    import json

    try:
        _metadata_version_shim()
        from mediapipe.tasks.python.metadata.metadata_writers import (
            metadata_writer,
            object_detector,
        )
    except ImportError:
        raise ConfigError(
            f"--nms-in-graph writes the metadata of MediaPipe's ObjectDetector with mediapipe; fix: {INSTALL}"
        ) from None
    labels = metadata_writer.Labels().add(list(meta["class_names"]))
    mean = [0.0, 0.0, 0.0] if uint8_input else list(meta["mean"])
    std = [1.0, 1.0, 1.0] if uint8_input else list(meta["std"])
    writer = object_detector.MetadataWriter.create_for_models_with_nms(
        bytearray(model_bytes), mean, std, labels
    )
    with tempfile.TemporaryDirectory(prefix="efficientdet-tflite-") as tmp:
        json_path = Path(tmp) / TFLITE_JSON
        json_path.write_text(json.dumps(meta))
        writer.writer._associated_files.append(os.fspath(json_path))  # packed with labels.txt
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "not described in the metadata": ours is not
            data, _ = writer.populate()
        del writer  # its __del__ cleans a temp folder: now, not at interpreter exit
    return bytes(data)
