"""Parity of an exported file with the PyTorch model, checked by ``efficientdet export`` before
the file is renamed into place (a failure leaves no file and says the measured difference).

Probe images: the calibration images when there are some (at most :data:`PROBE_IMAGES`, the
user's own data letterboxed as at inference), else a seeded random normal batch.

* float32 files (ONNX, OpenVINO, TorchScript): every raw output (class logits, box deltas,
  per level) within :data:`FLOAT_TOLERANCE` of PyTorch's, relative to that output's scale
  (``max |exported - torch| / max |torch|``).
* int8 files: judged by detections, since int8 logits legitimately differ by a few percent.
  PyTorch's confident detections (score >= :data:`INT8_CONFIDENT`) on the probe images must
  be found by the int8 file (same class, IoU >= :data:`INT8_IOU`, its score >= half the
  confidence threshold) at a recall of at least :data:`INT8_MIN_RECALL`. When PyTorch is
  confident of nothing on the probe images (an untrained model), the class scores are
  compared instead: ``max |sigmoid(int8) - sigmoid(torch)|`` at most :data:`INT8_MAX_SCORE_DIFF`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ExportError
from .calibration import CalibrationSet

FLOAT_TOLERANCE = 1e-3
INT8_CONFIDENT = 0.3
INT8_IOU = 0.5
INT8_MIN_RECALL = 0.9
INT8_MAX_SCORE_DIFF = 0.1
PROBE_IMAGES = 16


@dataclass
class ParityResult:
    """What the check measured: ``value`` against ``limit`` (``passed`` when within it)."""

    kind: str  # "relative difference" | "recall" | "score difference"
    value: float
    limit: float
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{self.kind} {self.value:.3g} ({'within' if self.passed else 'outside'} {self.limit:g}; {self.detail})"


def probe_batch(
    image_size_hw: tuple[int, int], calibration: CalibrationSet | None = None, batch: int = 1
) -> torch.Tensor:
    """(N, 3, H, W) normalised probe images: up to :data:`PROBE_IMAGES` calibration images,
    else ``max(batch, 2)`` seeded random normal images."""
    if calibration is not None:
        from .calibration import evenly_spaced

        probe = CalibrationSet(
            calibration.source,
            evenly_spaced(calibration.paths, PROBE_IMAGES),
            calibration.input_hw,
            calibration.mean,
            calibration.std,
        )
        return torch.from_numpy(probe.array())
    g = torch.Generator().manual_seed(0)
    return torch.randn(max(batch, 2), 3, *image_size_hw, generator=g)


def float_parity(reference: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> ParityResult:
    """Relative max difference of the file's raw outputs (run by its backend) vs ``reference``."""
    from .backends import open_exported

    backend = open_exported(path, torch.device("cpu"))
    with torch.no_grad():
        ref_cls, ref_box = reference.eval()(x)
        got_cls, got_box = backend.raw(x)
    worst = 0.0
    for ref, got in zip(ref_cls + ref_box, got_cls + got_box, strict=True):
        scale = max(float(ref.abs().max()), 1e-6)
        worst = max(worst, float((ref - got.to(ref.dtype)).abs().max()) / scale)
    return ParityResult(
        "relative difference",
        worst,
        FLOAT_TOLERANCE,
        worst <= FLOAT_TOLERANCE,
        f"max |exported - PyTorch| / max |PyTorch| over the raw outputs of {x.shape[0]} probe images",
    )


def detection_recall(
    reference: list[dict], found: list[dict], iou: float = INT8_IOU
) -> tuple[int, int]:
    """(matched, total): ``reference`` detections (per image ``boxes`` (D, 4) xyxy, ``labels``
    (D,)) that ``found`` has one to one with the same label and IoU >= ``iou``."""
    from ..detection.boxes import box_iou

    matched = total = 0
    for ref, got in zip(reference, found, strict=True):
        total += len(ref["labels"])
        if len(ref["labels"]) == 0 or len(got["labels"]) == 0:
            continue
        overlap = box_iou(ref["boxes"].float(), got["boxes"].float())  # (R, G)
        overlap[ref["labels"][:, None] != got["labels"][None, :]] = -1.0
        used: set[int] = set()
        for i in range(overlap.shape[0]):
            for j in torch.argsort(overlap[i], descending=True).tolist():
                if float(overlap[i, j]) < iou:
                    break
                if j not in used:
                    used.add(j)
                    matched += 1
                    break
    return matched, total


def int8_parity(reference: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> ParityResult:
    """Recall of PyTorch's confident detections by the int8 file (or, with none, score difference)."""
    from .detector import Detector

    h, w = int(x.shape[-2]), int(x.shape[-1])
    scales, sizes = torch.ones(x.shape[0]), [(h, w)] * x.shape[0]
    torch_det = Detector(model=reference, conf=INT8_CONFIDENT, image_size=(h, w))
    file_det = Detector(os.fspath(path), conf=INT8_CONFIDENT / 2)
    with torch.no_grad():
        ref = sorted_by_score(torch_det.detect_batch(x, scales, sizes))
        got = file_det.detect_batch(x, scales, sizes)
        matched, total = detection_recall(ref, got)
        if total:
            recall = matched / total
            return ParityResult(
                "recall",
                recall,
                INT8_MIN_RECALL,
                recall >= INT8_MIN_RECALL,
                f"{matched} of PyTorch's {total} detections with score >= {INT8_CONFIDENT} "
                f"found, same class and IoU >= {INT8_IOU}, on {x.shape[0]} probe images",
            )
        ref_cls, _ = torch_det.raw(x)
        got_cls, _ = file_det.raw(x)
    diff = max(
        float((torch.sigmoid(r.float()) - torch.sigmoid(g.float())).abs().max())
        for r, g in zip(ref_cls, got_cls, strict=True)
    )
    return ParityResult(
        "score difference",
        diff,
        INT8_MAX_SCORE_DIFF,
        diff <= INT8_MAX_SCORE_DIFF,
        f"max |sigmoid score int8 - PyTorch| on {x.shape[0]} probe images "
        f"(PyTorch has no detection with score >= {INT8_CONFIDENT} there)",
    )


def sorted_by_score(dets: list[dict]) -> list[dict]:
    """Per image, detections by descending score (the greedy matching takes the surest first)."""
    out = []
    for d in dets:
        order = torch.argsort(d["scores"], descending=True)
        out.append({k: v[order] for k, v in d.items()})
    return out


def check_export(
    reference: nn.Module,
    path: str | os.PathLike,
    image_size_hw: tuple[int, int],
    *,
    int8: bool = False,
    calibration: CalibrationSet | None = None,
    batch: int = 1,
    what: str = "exported file",
) -> ParityResult:
    """Run the parity check on ``path`` (float or int8, see the module docstring); raise a
    one-line :class:`ExportError` with the measured value when it fails."""
    x = probe_batch(image_size_hw, calibration, batch)
    result = int8_parity(reference, path, x) if int8 else float_parity(reference, path, x)
    if not result.passed:
        fix = (
            "calibrate on more or more typical images (--calib-data, --calib-images) or export "
            "float32 (drop --int8)"
            if int8
            else "export with --no-fuse, or report this as a bug"
        )
        raise ExportError(
            f"{what}: output differs from PyTorch: {result.line()}; no file written; fix: {fix} "
            "(--no-check skips this check)"
        )
    return result
