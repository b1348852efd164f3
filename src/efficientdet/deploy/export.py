"""Export to ONNX or TorchScript: ``efficientdet export --weights W --format onnx|torchscript``.

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
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import NMSConfig, parse_image_size
from ..detection.anchors import AnchorGenerator
from ..detection.layout import levels_to_flat
from ..detection.nms import batched_nms
from ..detection.postprocess import fixed_shape_candidates, fixed_shape_detections
from ..errors import ConfigError
from ..fileio import write_via_temp
from ..nn.fuse import fuse_for_inference
from .metadata import TORCHSCRIPT_EXTRA, build_metadata, onnx_props


class RawExport(nn.Module):
    """``images (N, 3, H, W) -> (class_logits (N, A_all, K), box_deltas (N, A_all, 4))``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_classes = model.config.num_classes

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
        torch._C._set_tracing_state(None)
        try:
            return _OnnxNMS._eager(
                boxes, scores, int(max_output), float(iou_threshold), float(score_threshold)
            )
        finally:
            torch._C._set_tracing_state(state)

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

    def __init__(self, model: nn.Module, image_size_hw: tuple[int, int], nms: NMSConfig):
        super().__init__()
        self.model = model
        self.image_size = tuple(image_size_hw)
        self.num_classes = model.config.num_classes
        self.nms = nms
        anchors = AnchorGenerator(model.config.anchors)(self.image_size)
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
    hw = parse_image_size(image_size) if image_size is not None else tuple(model.config.image_size)
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
) -> Path:
    """Write ``model`` (an EfficientDet) to ``path`` as ONNX (legacy TorchScript-based exporter,
    ``dynamo=False``: it maps the NMS function to ``NonMaxSuppression``). Returns the path."""
    import onnx

    from .detector import _default_names

    if opset < 11:
        raise ConfigError(
            f"--opset {opset}: need 11 or newer (NonMaxSuppression, TopK with k input)"
        )
    model, hw = _prepare(model, image_size, fuse)
    names = (
        list(class_names) if class_names is not None else _default_names(model.config.num_classes)
    )
    path = Path(path)
    images = torch.zeros(batch, 3, *hw)
    nms_cfg = None
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
    meta = build_metadata(model.config, hw, names, category_ids, "nms" if nms else "raw", nms_cfg)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter(
                "ignore"
            )  # TracerWarnings on the static "same" padding, legacy-exporter notices
            torch.onnx.export(
                module,
                args,
                os.fspath(tmp),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
        proto = onnx.load(os.fspath(tmp))
        del proto.metadata_props[:]
        for key, value in onnx_props(meta).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"efficientdet {meta['model_name']} ({meta['outputs']} outputs); see metadata 'efficientdet'"
        onnx.save(proto, os.fspath(tmp))

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
) -> Path:
    """Write the raw-output model traced with ``torch.jit.trace`` (any batch size works; the image
    size is fixed); metadata in ``_extra_files["efficientdet.json"]``. Returns the path."""
    from .detector import _default_names

    model, hw = _prepare(model, image_size, fuse)
    names = (
        list(class_names) if class_names is not None else _default_names(model.config.num_classes)
    )
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(
            RawExport(model).eval(), torch.zeros(batch, 3, *hw), check_trace=False
        )
    meta = build_metadata(model.config, hw, names, category_ids, "raw", None)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # torch.jit is deprecated in favour of torch.export
            torch.jit.save(
                traced, os.fspath(tmp), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(meta)}
            )

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
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument(
        "--nms-in-graph",
        action="store_true",
        help="ONNX only: decode + hard NMS inside the graph (inputs images, scales, original_sizes)",
    )
    parser.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="ONNX: batch axis dynamic (TorchScript is always batch-free)",
    )
    cli_options.add(parser, "batch", "image_size", "conf", "iou", "max_det")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--no-fuse",
        action="store_true",
        help="keep BatchNorm layers (default: folded into the convs)",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the parity check against PyTorch after export"
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
    """``--batch``: the example input's batch (the fixed batch without --dynamic-batch);
    ``--conf/--iou/--max-det``: the NMS settings baked into a ``--nms-in-graph`` file. Writes
    ``OUT/<weights stem>[_nms].onnx`` or ``.torchscript.pt`` into a new run folder
    (``runs/export/N`` or ``--out``), all or nothing."""
    from ..progress import stage
    from ..run_dirs import make_run_dir, refuse_inputs_inside

    NMSConfig(
        iou_threshold=args.iou, score_threshold=args.conf, max_detections=args.max_det
    )  # same checks as val/predict
    if args.nms_in_graph and args.format != "onnx":
        raise ConfigError(
            "--nms-in-graph is available for --format onnx only; fix: TorchScript exports raw outputs, drop it"
        )
    if args.out is not None:
        refuse_inputs_inside(args.out, {"weights file": args.weights})
    quiet = args.quiet
    with stage(f"loading {args.weights}", quiet):
        model, names, category_ids = _load_for_export(args.weights, args.model)
    hw = (
        parse_image_size(args.image_size, "--image-size")
        if args.image_size
        else tuple(model.config.image_size)
    )
    stem = Path(args.weights).stem if os.path.exists(args.weights) else model.config.name
    name = (
        f"{stem}{'_nms' if args.nms_in_graph else ''}.onnx"
        if args.format == "onnx"
        else f"{stem}.torchscript.pt"
    )
    out_dir = make_run_dir(args.out, args.exist_ok, "export")
    refuse_inputs_inside(out_dir, {"weights file": args.weights})
    out = out_dir / name
    with stage(f"exporting {model.config.name} to {args.format} ({hw[0]}x{hw[1]})", quiet):
        if args.format == "onnx":
            export_onnx(
                model,
                out,
                names,
                category_ids,
                nms=args.nms_in_graph,
                dynamic_batch=args.dynamic_batch,
                opset=args.opset,
                image_size=hw,
                batch=args.batch,
                conf=args.conf,
                iou=args.iou,
                max_det=args.max_det,
                fuse=not args.no_fuse,
            )  # all or nothing (fileio.write_via_temp)
        else:
            export_torchscript(
                model,
                out,
                names,
                category_ids,
                image_size=hw,
                batch=args.batch,
                fuse=not args.no_fuse,
            )
    size_mb = out.stat().st_size / 2**20
    print(
        f"exported {model.config.name} ({args.format}{', nms' if args.nms_in_graph else ', raw outputs'}, "
        f"input {hw[0]}x{hw[1]}{', dynamic batch' if args.dynamic_batch else ''}) -> {out} ({size_mb:.1f} MiB)"
    )
    if not args.no_check and not args.nms_in_graph:
        with stage("checking the exported outputs against PyTorch", quiet):
            diff = check_raw_parity(model, out, hw, args.format, batch=args.batch)
        print(f"check: max |difference| vs PyTorch {diff:.2e} on a random batch")
    return 0


def check_raw_parity(
    model: nn.Module, path: str | os.PathLike, image_size_hw, fmt: str, batch: int = 1
) -> float:
    """Max abs difference of the exported file's raw outputs (run by its backend) vs the PyTorch
    model on a random batch. ``fmt`` is read from the file itself and kept for callers."""
    from .backends import open_exported

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *image_size_hw, generator=g)
    with torch.no_grad():
        ref_cls, ref_box = model.eval()(x)
        got_cls, got_box = open_exported(path, torch.device("cpu")).raw(x)
    return max(float((r - o).abs().max()) for r, o in zip(ref_cls + ref_box, got_cls + got_box))
