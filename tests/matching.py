"""Order-insensitive comparison of two detection sets (the same image through two runtimes).

Float rounding differs between runtimes and CPUs (AVX-512 or not), so near-tied scores may
swap places and a detection at the score threshold or the max-detections cut may be kept by
one side only. Detections are matched one to one by class, score within ``score_tol`` and
box corners within ``box_tol`` pixels (or, with ``box_tol=inf``, box IoU >= ``min_iou``); an unmatched one is accepted only at
such a boundary (its score within ``score_tol`` of ``conf`` or of the other side's lowest kept
score when that side is full). Corners rather than IoU by default: boxes clipped flat against
the image border have zero area (IoU 0 with anything).
"""

from __future__ import annotations

import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, 4), (B, 4) xyxy -> (A, B) IoU, computed by hand (no library under test)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def match(
    a, b, score_tol: float, box_tol: float, min_iou: float = 0.9
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Greedy one-to-one matching (a's detections by descending score) -> (pairs, unmatched a, unmatched b).

    ``a``/``b``: anything with ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,)."""
    iou = box_iou(a.boxes.float(), b.boxes.float())
    used: set[int] = set()
    pairs = []
    for i in torch.argsort(a.scores, descending=True, stable=True).tolist():
        best, best_key = None, None
        for j in range(len(b.scores)):
            if j in used or int(b.labels[j]) != int(a.labels[i]):
                continue
            if abs(float(a.scores[i]) - float(b.scores[j])) > score_tol:
                continue
            corner = float((a.boxes[i] - b.boxes[j]).abs().max())
            same_box = corner <= box_tol if box_tol != float("inf") else float(iou[i, j]) >= min_iou
            if not same_box:
                continue
            key = (corner, -float(iou[i, j]))
            if best_key is None or key < best_key:
                best, best_key = j, key
        if best is not None:
            used.add(best)
            pairs.append((i, best))
    matched_a = {i for i, _ in pairs}
    return (
        pairs,
        [i for i in range(len(a.scores)) if i not in matched_a],
        [j for j in range(len(b.scores)) if j not in used],
    )


def assert_same_detections(
    a,
    b,
    *,
    score_tol: float = 1e-4,
    box_tol: float = 0.05,
    conf: float = 0.0,
    max_det: int | None = None,
) -> None:
    """``a`` and ``b`` hold the same detections up to order and rounding (see the module docstring)."""
    assert len(a.scores) > 0 and len(b.scores) > 0
    _, only_a, only_b = match(a, b, score_tol, box_tol)

    def at_boundary(side, other, idx) -> bool:
        s = float(side.scores[idx])
        if abs(s - conf) <= score_tol:
            return True
        full = max_det is not None and len(other.scores) >= max_det
        return full and s <= float(other.scores.min()) + score_tol

    bad_a = [i for i in only_a if not at_boundary(a, b, i)]
    bad_b = [j for j in only_b if not at_boundary(b, a, j)]
    assert not bad_a and not bad_b, (
        f"unmatched detections: a {[(int(a.labels[i]), round(float(a.scores[i]), 5)) for i in bad_a][:5]}, "
        f"b {[(int(b.labels[j]), round(float(b.scores[j]), 5)) for j in bad_b][:5]}"
    )
