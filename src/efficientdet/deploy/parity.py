"""Parity of an exported file with the PyTorch model, checked by ``efficientdet export`` (every
format) before the file is renamed into place: a failure leaves no file and says the measured
difference and its tolerance.

Probe images: the calibration images when there are some (at most :data:`PROBE_IMAGES`, the
user's own data letterboxed as at inference), else seeded random 0-255 pixels, normalised (whole
pixels, so a TFLite ``--uint8-input`` file sees exactly what PyTorch sees).

* float32 files: every raw output (class logits, box deltas, per level) within
  :data:`FLOAT_TOLERANCE` of PyTorch's, relative to that output's scale
  (``max |exported - torch| / max |torch|``; ONNX, OpenVINO, TorchScript) or absolutely
  (``max |exported - torch|``; TFLite).
* int8 files: judged by detections, since int8 logits legitimately differ by a few percent.
  At most :data:`INT8_MAX_MISSED` of PyTorch's confident detections (score >=
  :data:`INT8_CONFIDENT`) on the probe images may be missing from the int8 file's (same class,
  IoU >= :data:`INT8_IOU`, its score >= half the confidence threshold). When PyTorch is
  confident of nothing on the probe images (an untrained model), the class scores are compared
  instead: ``max |sigmoid(int8) - sigmoid(torch)|`` at most :data:`INT8_MAX_SCORE_DIFF`.
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
INT8_MAX_MISSED = 0.1
INT8_MAX_SCORE_DIFF = 0.1
PROBE_IMAGES = 16


@dataclass
class ParityResult:
    """What the check measured: a difference ``value`` against its tolerance ``limit``."""

    value: float
    limit: float
    detail: str  # what the difference is, on which images

    @property
    def passed(self) -> bool:
        return self.value <= self.limit

    def line(self) -> str:
        verdict = "within" if self.passed else "exceeds"
        return f"difference {self.value:.3g} {verdict} tolerance {self.limit:g} ({self.detail})"


def probe_batch(
    image_size_hw: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    calibration: CalibrationSet | None = None,
    batch: int = 1,
) -> torch.Tensor:
    """(N, 3, H, W) normalised probe images: up to :data:`PROBE_IMAGES` calibration images,
    else ``max(batch, 2)`` seeded random images of whole 0-255 pixels, ``(x - mean) / std``."""
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
    pixels = torch.randint(0, 256, (max(batch, 2), 3, *image_size_hw), generator=g).float()
    return (pixels - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)


def float_parity(
    reference: nn.Module, path: str | os.PathLike, x: torch.Tensor, absolute: bool = False
) -> ParityResult:
    """Largest difference of the file's raw outputs (run by its backend) from ``reference``'s,
    relative to each output's largest ``|value|``, or ``absolute``."""
    from .backends import open_exported

    backend = open_exported(path, torch.device("cpu"))
    with torch.no_grad():
        ref_cls, ref_box = reference.eval()(x)
        got_cls, got_box = backend.raw(x)
    worst = 0.0
    for ref, got in zip(ref_cls + ref_box, got_cls + got_box, strict=True):
        scale = 1.0 if absolute else max(float(ref.abs().max()), 1e-6)
        worst = max(worst, float((ref - got.to(ref.dtype)).abs().max()) / scale)
    how = "max |exported - PyTorch|" + ("" if absolute else " / max |PyTorch|")
    return ParityResult(worst, FLOAT_TOLERANCE, f"{how} per raw output, {x.shape[0]} probe images")


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
    """The share of PyTorch's confident detections the int8 file misses (or, with none, the
    score difference)."""
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
            return ParityResult(
                (total - matched) / total,
                INT8_MAX_MISSED,
                f"share of PyTorch's {total} detections with score >= {INT8_CONFIDENT} not "
                f"found (same class, IoU >= {INT8_IOU}), {x.shape[0]} probe images",
            )
        ref_cls, _ = torch_det.raw(x)
        got_cls, _ = file_det.raw(x)
    diff = max(
        float((torch.sigmoid(r.float()) - torch.sigmoid(g.float())).abs().max())
        for r, g in zip(ref_cls, got_cls, strict=True)
    )
    return ParityResult(
        diff,
        INT8_MAX_SCORE_DIFF,
        f"max |sigmoid score int8 - PyTorch|, {x.shape[0]} probe images "
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
    absolute: bool = False,
    calibration: CalibrationSet | None = None,
    batch: int = 1,
    what: str = "exported file",
) -> ParityResult:
    """Run the parity check on ``path`` (int8, or float32 with the ``absolute`` rule or the
    relative one, see the module docstring); raise a one-line :class:`ExportError` with the
    measured difference when it exceeds the tolerance."""
    from .export import model_config

    config = model_config(reference)
    x = probe_batch(image_size_hw, config.mean, config.std, calibration, batch)
    result = int8_parity(reference, path, x) if int8 else float_parity(reference, path, x, absolute)
    if not result.passed:
        fix = (
            "calibrate on more or more typical images (--calib-data, --calib-images) or export "
            "float32 (drop --int8)"
            if int8
            else "report this as a bug (onnx, openvino, torchscript: --no-fuse may avoid it)"
        )
        raise ExportError(
            f"{what}: measured {result.line()}, no file written; fix: {fix} "
            "(--no-check skips this check)"
        )
    return result
