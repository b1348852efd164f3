"""Export: ``efficientdet export --weights W --format onnx|torchscript|openvino [--int8 --calib-data D]``.

One dispatch per format: ONNX and TorchScript here, OpenVINO IR in :mod:`.export_openvino`,
int8 by ONNX Runtime QDQ (:mod:`.quantize`) or NNCF; every file is checked against PyTorch
before it is kept (:mod:`.parity`).

Graph inputs/outputs (the image size is fixed at export; the batch is fixed or dynamic):

* raw (default): input ``images`` (N, 3, H, W) float32, letterboxed and normalised
  (``(x - mean) / std``, see the metadata); outputs ``class_logits`` (N, A_all, K) and
  ``box_deltas`` (N, A_all, 4) (ty, tx, th, tw), concatenated over levels P3..P7 in anchor
  order (level, row, column, anchor), the order of
  :class:`efficientdet.detection.anchors.AnchorGenerator`.
* ``--nms-in-graph`` (ONNX only): inputs ``images``, ``scales`` (N,) (the letterbox factor of each
  image) and ``original_sizes`` (N, 2) (h, w of each original image); the graph decodes,
  clips, runs class-aware NMS with the ONNX ``NonMaxSuppression`` op and undoes the letterbox.
  Outputs ``boxes`` (N, M, 4) xyxy in ORIGINAL pixels, ``scores`` (N, M), ``classes`` (N, M)
  int64 0-based, ``num_detections`` (N,) int64; M = max detections, rows past
  num_detections are zero. The score threshold, IoU and M are fixed at export (metadata).

Metadata (:mod:`efficientdet.deploy.metadata`, read back by :mod:`efficientdet.deploy.backends`):
ONNX ``metadata_props`` key ``efficientdet`` (JSON; also a few flat keys for humans);
TorchScript ``_extra_files["efficientdet.json"]``. It holds model name, config, num_classes,
class names, category ids, image size, mean, std, the letterbox convention, the output layout
and the NMS settings. Files are written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig, NMSConfig, parse_image_size
from ..detection.anchors import AnchorGenerator
from ..detection.layout import levels_to_flat
from ..detection.nms import batched_nms
from ..detection.postprocess import fixed_shape_candidates, fixed_shape_detections
from ..errors import ConfigError
from ..fileio import write_via_temp
from ..nn.fuse import fuse_for_inference
from .backends.base import require
from .calibration import DEFAULT_CALIBRATION_IMAGES, CalibrationSet, check_calibration_set
from .metadata import TORCHSCRIPT_EXTRA, build_metadata, onnx_props
from .parity import ParityResult, check_export


def model_config(model: nn.Module) -> ModelConfig:
    """The ModelConfig an EfficientDet module carries."""
    config = model.config
    assert isinstance(config, ModelConfig), type(config)  # our bug if not an EfficientDet
    return config


class RawExport(nn.Module):
    """``images (N, 3, H, W) -> (class_logits (N, A_all, K), box_deltas (N, A_all, 4))``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_classes = model_config(model).num_classes

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_out, box_out = self.model(images)
        return levels_to_flat(cls_out, box_out, self.num_classes)


class _OnnxNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (per batch and class; suppresses IoU > threshold, keeps score > threshold).

    boxes (N, B, 4) (any corner order), scores (N, C, B) -> selected (S, 3) int64 [batch, class, box].
    The eager forward computes the same with :func:`batched_nms` so tracing sees real values.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_output, iou_threshold, score_threshold):
        state = (
            torch._C._get_tracing_state()
        )  # compute real values without recording them in the trace
        # torch's _C stubs lack _set_tracing_state (it exists next to _get_tracing_state)
        torch._C._set_tracing_state(None)  # type: ignore[attr-defined]
        try:
            return _OnnxNMS._eager(
                boxes, scores, int(max_output), float(iou_threshold), float(score_threshold)
            )
        finally:
            torch._C._set_tracing_state(state)  # type: ignore[attr-defined]  # as above

    @staticmethod
    def _eager(
        boxes, scores, max_output: int, iou_threshold: float, score_threshold: float
    ) -> torch.Tensor:
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                idx = (scores[b, c] > score_threshold).nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                keep = batched_nms(
                    boxes[b, idx], scores[b, c, idx], None, iou_threshold, max_output
                )
                sel = idx[keep]
                rows.append(torch.stack([torch.full_like(sel, b), torch.full_like(sel, c), sel], 1))
        if not rows:
            return torch.zeros(0, 3, dtype=torch.long)
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, scores, max_output, iou_threshold, score_threshold):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            max_output,
            iou_threshold,
            score_threshold,
            center_point_box_i=0,
        )


class NMSExport(nn.Module):
    """``(images, scales (N,), original_sizes (N, 2)) -> boxes (N, M, 4), scores (N, M), classes (N, M), num (N,)``.

    Same steps and arithmetic as :func:`efficientdet.detection.postprocess.postprocess` (top-k
    candidates over anchors x classes, decode, clip to the image region of the input, class-aware
    hard NMS, keep M by score, divide by scale, clip to the original): the fixed-shape steps of
    :mod:`efficientdet.detection.postprocess` around the ONNX op for NMS.
    """

    anchors: torch.Tensor  # (A_all, 4) buffer, registered in __init__

    def __init__(self, model: nn.Module, image_size_hw: tuple[int, int], nms: NMSConfig):
        super().__init__()
        config = model_config(model)
        self.model = model
        self.image_size = tuple(image_size_hw)
        self.num_classes = config.num_classes
        self.nms = nms
        anchors = AnchorGenerator(config.anchors)(self.image_size)
        self.register_buffer("anchors", anchors, persistent=False)  # (A_all, 4) xyxy input pixels
        self.num_candidates = min(nms.max_candidates, anchors.shape[0] * self.num_classes)

    def forward(self, images: torch.Tensor, scales: torch.Tensor, original_sizes: torch.Tensor):
        cls_out, box_out = self.model(images)
        cls_flat, box_flat = levels_to_flat(
            cls_out, box_out, self.num_classes
        )  # (N, A, K), (N, A, 4)
        n, k = cls_flat.shape[0], self.num_candidates
        scores, boxes, class_idx = fixed_shape_candidates(
            cls_flat, box_flat, self.anchors, k, self.image_size, scales, original_sizes
        )  # (N, k), (N, k, 4), (N, k)
        # one score row per class: a candidate scores only in its own class (N, K, k)
        own = class_idx.unsqueeze(1) == torch.arange(self.num_classes).reshape(1, -1, 1)
        passing = (
            scores >= self.nms.score_threshold
            if self.nms.score_threshold > 0
            else torch.ones_like(own[:, 0])
        )
        class_scores = torch.where(own & passing.unsqueeze(1), scores.unsqueeze(1), torch.zeros(()))
        selected = _OnnxNMS.apply(
            boxes,
            class_scores,
            torch.tensor([self.nms.max_detections]),
            torch.tensor([self.nms.iou_threshold], dtype=torch.float32),
            torch.tensor([0.0], dtype=torch.float32),
        )  # (S, 3)
        kept = torch.zeros(n, k)
        kept = kept.index_put(
            (selected[:, 0], selected[:, 2]), torch.ones_like(selected[:, 0], dtype=torch.float32)
        )
        return fixed_shape_detections(
            boxes, scores, class_idx, kept, self.nms.max_detections, scales, original_sizes
        )


def _prepare(model: nn.Module, image_size, fuse: bool) -> tuple[nn.Module, tuple[int, int]]:
    model = copy.deepcopy(model).eval().float()
    if fuse:
        fuse_for_inference(model)
    hw = parse_image_size(image_size) if image_size is not None else model_config(model).image_size
    return model, hw


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    *,
    nms: bool = False,
    dynamic_batch: bool = False,
    opset: int = 17,
    image_size=None,
    batch: int = 1,
    conf: float = 0.001,
    iou: float = 0.5,
    max_det: int = 100,
    max_candidates: int = 5000,
    fuse: bool = True,
    calibration: CalibrationSet | None = None,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` (an EfficientDet) to ``path`` as ONNX (legacy TorchScript-based exporter,
    ``dynamo=False``: it maps the NMS function to ``NonMaxSuppression``). With a
    ``calibration`` set the raw graph is quantised to int8 QDQ (:mod:`.quantize`).
    ``verify(tmp)`` runs on the finished temporary file before it is renamed (the parity
    check: raising leaves no file). Returns the path."""
    import onnx

    from .detector import _default_names

    check_calibration_set(calibration)
    if opset < 11:
        raise ConfigError(
            f"--opset {opset}: need 11 or newer (NonMaxSuppression, TopK with k input); "
            "fix: drop --opset (17) or give 11 or newer"
        )
    if calibration is not None and (nms or dynamic_batch):
        raise ConfigError(
            "--int8 exports raw outputs with a fixed batch; fix: drop --nms-in-graph / "
            "--dynamic-batch (decoding and NMS then run in PyTorch)"
        )
    model, hw = _prepare(model, image_size, fuse)
    config = model_config(model)
    names = list(class_names) if class_names is not None else _default_names(config.num_classes)
    path = Path(path)
    images = torch.zeros(batch, 3, *hw)
    nms_cfg = None
    module: nn.Module
    args: tuple[torch.Tensor, ...]
    if nms:
        nms_cfg = NMSConfig(
            max_candidates=max_candidates,
            iou_threshold=iou,
            score_threshold=conf,
            max_detections=max_det,
        )
        module = NMSExport(model, hw, nms_cfg).eval()
        h, w = hw
        args = (images, torch.ones(batch), torch.tensor([[float(h), float(w)]] * batch))
        input_names, output_names = (
            ["images", "scales", "original_sizes"],
            ["boxes", "scores", "classes", "num_detections"],
        )
    else:
        module = RawExport(model).eval()
        args = (images,)
        input_names, output_names = ["images"], ["class_logits", "box_deltas"]
    dynamic_axes = (
        {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
    )
    meta = build_metadata(config, hw, names, category_ids, "nms" if nms else "raw", nms_cfg)
    meta["precision"] = "fp32" if calibration is None else "int8"

    def torch_export(target: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter(
                "ignore"
            )  # TracerWarnings on the static "same" padding, legacy-exporter notices
            torch.onnx.export(
                module,
                args,
                os.fspath(target),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )

    def write(tmp: Path) -> None:
        if calibration is None:
            torch_export(tmp)
        else:
            from .quantize import quantize_onnx

            with tempfile.TemporaryDirectory(prefix="efficientdet-export-") as work:
                float_file = Path(work) / "float.onnx"
                torch_export(float_file)
                meta["quantization"] = quantize_onnx(float_file, tmp, calibration, batch)
        proto = onnx.load(os.fspath(tmp))
        del proto.metadata_props[:]
        for key, value in onnx_props(meta).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"efficientdet {meta['model_name']} ({meta['outputs']} outputs); see metadata 'efficientdet'"
        onnx.save(proto, os.fspath(tmp))
        if verify is not None:
            verify(tmp)

    write_via_temp(path, write)
    return path


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    *,
    image_size=None,
    batch: int = 1,
    fuse: bool = True,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Write the raw-output model traced with ``torch.jit.trace`` (any batch size works; the image
    size is fixed); metadata in ``_extra_files["efficientdet.json"]``. ``verify(tmp)``: as for
    :func:`export_onnx`. Returns the path."""
    from .detector import _default_names

    model, hw = _prepare(model, image_size, fuse)
    config = model_config(model)
    names = list(class_names) if class_names is not None else _default_names(config.num_classes)
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(
            RawExport(model).eval(), torch.zeros(batch, 3, *hw), check_trace=False
        )
    meta = build_metadata(config, hw, names, category_ids, "raw", None)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # torch.jit is deprecated in favour of torch.export
            torch.jit.save(
                traced, os.fspath(tmp), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(meta)}
            )
        if verify is not None:
            verify(tmp)

    write_via_temp(path, write)
    return path


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .. import cli_options

    parser.add_argument(
        "--weights",
        required=True,
        help="our checkpoint (.pt), or with --model: 'coco' or an effdet/state_dict file",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model name for --weights that are not our checkpoint (e.g. efficientdet_d0)",
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument(
        "--nms-in-graph",
        action="store_true",
        help="decode + hard NMS inside the graph (ONNX: inputs images, scales, original_sizes; "
        "TFLite: the TFLite_Detection_PostProcess op, boxes / classes / scores / count)",
    )
    parser.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="ONNX: batch axis dynamic (TorchScript is always batch-free)",
    )
    cli_options.add(parser, "batch", "image_size", "conf", "iou", "max_det")
    from .export_tflite import add_tflite_arguments

    add_tflite_arguments(parser)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--no-fuse",
        action="store_true",
        help="keep BatchNorm layers (default: folded into the convs)",
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip the parity check against PyTorch (run on the file before it is kept)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="onnx / openvino / tflite: int8 post-training quantization on --calib-data images",
    )
    parser.add_argument(
        "--calib-data",
        default=None,
        metavar="DATA",
        help="calibration images for --int8: a dataset YAML / COCO JSON (its train split) or a folder",
    )
    parser.add_argument(
        "--calib-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help=f"calibration images to use, evenly spread (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    cli_options.add(parser, "out", "exist_ok", "quiet")


def _load_for_export(weights: str, model_name: str | None):
    """(model, class names, category ids) from our checkpoint or a named model + weights."""
    from .detector import Detector

    if model_name:
        det = Detector.from_name(model_name, weights=weights, fuse=False, channels_last=False)
    else:
        from .backends import is_exported

        if is_exported(weights):
            raise ConfigError(
                f"{weights}: already an exported file; fix: export from the checkpoint it came from"
            )
        det = Detector(weights, fuse=False, channels_last=False)
    return det.model, det.names, det.category_ids


def run(args: argparse.Namespace) -> int:
    """The export command (:func:`_run`); a run folder it created is removed again when the
    export fails or is interrupted before writing anything into it."""
    try:
        return _run(args)
    except BaseException:
        from ..run_dirs import remove_if_empty

        remove_if_empty(getattr(args, "new_out_dir", None))
        raise


def _run(args: argparse.Namespace) -> int:
    """``--batch``: the example input's batch (the fixed batch without --dynamic-batch);
    ``--conf/--iou/--max-det``: the NMS settings baked into a ``--nms-in-graph`` file. Writes
    ``OUT/<weights stem><suffix>`` (:func:`_job`, :func:`.export_tflite.tflite_job`) into a new
    run folder (``runs/export/N`` or ``--out``), all or nothing: the parity check against
    PyTorch (:mod:`.parity`) runs on the temporary file, which is kept only when it passes."""
    from ..progress import stage
    from ..run_dirs import refuse_inputs_inside
    from .calibration import calibration_set
    from .export_tflite import check_tflite_options, tflite_job

    NMSConfig(
        iou_threshold=args.iou, score_threshold=args.conf, max_detections=args.max_det
    )  # same checks as val/predict
    check_format_options(args)
    check_tflite_options(args)
    if args.format == "openvino":  # before any work: name the extra when it is missing
        require("openvino", "--format openvino", "openvino")
        if args.int8:
            require("nncf", "--format openvino --int8", "openvino")
    if args.out is not None:
        refuse_inputs_inside(args.out, _inputs(args))
    quiet = args.quiet
    with stage(f"loading {args.weights}", quiet):
        model, names, category_ids = _load_for_export(args.weights, args.model)
    config = model_config(model)
    hw = parse_image_size(args.image_size or config.image_size, "--image-size")
    stem = Path(args.weights).stem if os.path.exists(args.weights) else config.name
    calibration = None
    if args.int8:
        chosen = calibration_set(args.calib_data, hw, config.mean, config.std, args.calib_images)
        n = len(chosen.paths)
        with stage(f"reading {n} calibration image{'s' if n != 1 else ''}", quiet):
            calibration = readable_only(chosen)  # refused here, before the run folder, if none
    job = (tflite_job if args.format == "tflite" else _job)(
        args, model, names, category_ids, hw, calibration
    )
    out = output_path(args, f"{stem}{job.suffix}")
    # float16 TFLite weights are held to no tolerance: on the probe pixels they move the Lite0
    # reference weights' logits by up to 0.67 and lose 10% of their confident detections, yet
    # the demo model's fp16 mAP equals float32's (BENCHMARKS.md)
    checking = not args.no_check and not args.nms_in_graph and not args.fp16
    checked: list[ParityResult] = []

    def verify(tmp: Path) -> None:
        if checking:
            checked.append(
                check_export(
                    model,
                    tmp,
                    hw,
                    int8=args.int8,
                    absolute=job.absolute,
                    calibration=calibration,
                    batch=args.batch,
                    what=str(out),
                )
            )

    with stage(
        f"exporting {config.name} to {args.format} {job.precision} ({hw[0]}x{hw[1]}"
        f"{', checking against PyTorch' if checking else ''})",
        quiet,
    ):
        job.write(out, verify)  # all or nothing (fileio.write_via_temp)
    if calibration is not None:
        skipped = calibration.skipped
        print(
            f"calibrated on {len(calibration.paths)} image{'s' if len(calibration.paths) != 1 else ''}"
            f" from {calibration.source}"
            + (f"; {len(skipped)} unreadable, skipped (first: {skipped[0][1]})" if skipped else "")
        )
    size_mb = sum(p.stat().st_size for p in _written_files(out)) / 2**20
    print(
        f"exported {config.name} ({args.format} {job.precision}, {', '.join(job.traits)}) "
        f"-> {out} ({size_mb:.1f} MiB)"
    )
    if checked:
        print(f"check vs PyTorch: {checked[0].line()}")
    return 0


@dataclass
class ExportJob:
    """One format's part of the export command; :func:`_run` does the rest (calibration images,
    run folder, parity check, the stage and summary lines)."""

    suffix: str  # the file name after the weights stem, e.g. "_nms.onnx"
    precision: str  # as the lines name it: "float32" / "int8"; TFLite "fp32" / "fp16" / "int8"
    traits: list[str]  # the summary's words after the precision: ["raw outputs", "input 64x64"]
    write: Callable[[Path, Callable[[Path], None]], object]  # (out, verify): the export call
    absolute: bool = False  # the parity rule for float files: absolute or relative difference


def _job(
    args: argparse.Namespace,
    model: nn.Module,
    names: list[str],
    category_ids: list[int] | None,
    hw: tuple[int, int],
    calibration: CalibrationSet | None,
) -> ExportJob:
    """ONNX, TorchScript and OpenVINO: ``<stem>[_nms][_int8]`` + ``.onnx``, ``.torchscript.pt``
    or ``.xml`` (+ ``.bin``)."""
    common = dict(image_size=hw, batch=args.batch, fuse=not args.no_fuse)

    def write(out: Path, verify: Callable[[Path], None]) -> None:
        if args.format == "onnx":
            export_onnx(
                model,
                out,
                names,
                category_ids,
                nms=args.nms_in_graph,
                dynamic_batch=args.dynamic_batch,
                opset=args.opset,
                conf=args.conf,
                iou=args.iou,
                max_det=args.max_det,
                calibration=calibration,
                verify=verify,
                **common,
            )
        elif args.format == "openvino":
            from .export_openvino import export_openvino

            export_openvino(
                model,
                out,
                names,
                category_ids,
                calibration=calibration,
                progress=not args.quiet,
                verify=verify,
                **common,
            )
        else:
            export_torchscript(model, out, names, category_ids, verify=verify, **common)

    suffix = ("_nms" if args.nms_in_graph else "") + ("_int8" if args.int8 else "")
    return ExportJob(
        suffix=f"{suffix}{FILE_SUFFIX[args.format]}",
        precision="int8" if args.int8 else "float32",
        traits=[
            "nms" if args.nms_in_graph else "raw outputs",
            f"input {hw[0]}x{hw[1]}",
            *(["dynamic batch"] if args.dynamic_batch else []),
        ],
        write=write,
    )


FORMATS = ("onnx", "torchscript", "openvino", "tflite")
FILE_SUFFIX = {
    "onnx": ".onnx",
    "torchscript": ".torchscript.pt",
    "openvino": ".xml",
    "tflite": ".tflite",
}
INT8_FORMATS = ("onnx", "openvino", "tflite")


def check_format_options(args: argparse.Namespace) -> None:
    """Refuse a format / option pair that cannot work, in one line, before any work."""
    if args.nms_in_graph and args.format not in ("onnx", "tflite"):
        raise ConfigError(
            f"--nms-in-graph is available for --format onnx and tflite; fix: --format "
            f"{args.format} exports raw outputs, drop it"
        )
    if args.dynamic_batch and args.format == "openvino":
        raise ConfigError(
            "--dynamic-batch: an OpenVINO IR has a fixed batch (the backend runs any batch in "
            "pieces of it); fix: drop --dynamic-batch"
        )
    if args.int8 and args.format not in INT8_FORMATS:
        raise ConfigError(
            f"--int8 is not available for --format {args.format}; fix: use --format "
            f"{' or '.join(INT8_FORMATS)} for int8, or drop --int8"
        )
    if args.int8 and not args.calib_data:
        raise ConfigError(
            "--int8 needs calibration images; fix: add --calib-data data.yaml (or a folder of "
            "images like the ones the model will see)"
        )
    if args.calib_data and not args.int8:
        raise ConfigError(
            "--calib-data is for int8 quantization; fix: add --int8 or drop --calib-data"
        )
    if args.int8 and args.format != "tflite" and (args.nms_in_graph or args.dynamic_batch):
        raise ConfigError(
            "--int8 exports raw outputs with a fixed batch; fix: drop --nms-in-graph / "
            "--dynamic-batch (decoding and NMS then run in PyTorch)"
        )


def readable_only(calibration: CalibrationSet) -> CalibrationSet:
    """The set with its unreadable images found now (one decoding pass, before any export
    work): one-line DataError when none is readable; the others are left out and counted in
    ``skipped``, so the quantiser and the parity check read the good ones only."""
    for _ in calibration.batches():
        pass
    bad = {path for path, _ in calibration.skipped}
    return CalibrationSet(
        calibration.source,
        [p for p in calibration.paths if p not in bad],
        calibration.input_hw,
        calibration.mean,
        calibration.std,
        list(calibration.skipped),
    )


def _inputs(args: argparse.Namespace) -> dict[str, object]:
    """What ``export`` reads, which its output folder may not hold (:mod:`efficientdet.run_dirs`)."""
    return {"weights file": args.weights, "calibration data": args.calib_data}


def output_path(args: argparse.Namespace, name: str) -> Path:
    """The file ``name`` in the run folder of this export; refused (one line, before the work)
    when the folder holds an input or a folder sits where the file(s) will go."""
    from ..run_dirs import created_here, make_run_dir, refuse_inputs_inside

    out_dir = make_run_dir(args.out, args.exist_ok, "export")
    args.new_out_dir = created_here(args.out, out_dir, "export")  # removed again on failure
    refuse_inputs_inside(out_dir, _inputs(args))
    out = out_dir / name
    for path in _written_files(out):
        if path.is_dir():
            raise ConfigError(
                f"{path}: a folder has the name of the exported file; fix: move it away or give "
                "another --out"
            )
    return out


def _written_files(out: Path) -> list[Path]:
    """The files one export wrote: ``out``, and its .bin for an OpenVINO .xml."""
    return [out, out.with_suffix(".bin")] if out.suffix == ".xml" else [out]
