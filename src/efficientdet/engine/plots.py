"""Training plots as PNG (matplotlib, Agg backend: no display needed).

* :func:`plot_history`: results.csv rows -> loss curves (total, class, box) and val mAP/AP50.
* :func:`plot_pr_curves`: precision-recall per class at IoU 0.5 and averaged over
  IoU 0.5:0.95, from the COCOeval precision array an EvalResult carries.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Rows with epoch, train_loss, class_loss, box_loss, mAP, AP50 (None when not validated)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(axes[:3], ("train_loss", "class_loss", "box_loss"), strict=True):
        ax.plot(epochs, [r[key] for r in history], marker="o", markersize=3)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    val = [r for r in history if r.get("mAP") is not None]
    ax = axes[3]
    if val:
        ax.plot(
            [r["epoch"] for r in val],
            [r["mAP"] for r in val],
            marker="o",
            markersize=3,
            label="mAP@[.5:.95]",
        )
        ax.plot(
            [r["epoch"] for r in val],
            [r["AP50"] for r in val],
            marker="o",
            markersize=3,
            label="AP50",
        )
        ax.legend(loc="lower right")
    ax.set_title("validation")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def coco_precision(eval_result, data) -> np.ndarray:
    """COCOeval ``eval["precision"]`` (T=10 IoUs, R=101 recall points, K classes, A=4 areas,
    M=3 maxDets) of ``eval_result`` (an EvalResult, which carries it) against ``data`` (a
    DetectionData); recomputed only for a result without it. -1 where undefined. Classes in
    increasing category-id order (= 0-based label order)."""
    if getattr(eval_result, "precision", None) is not None:
        return eval_result.precision
    from ..data.coco import records_to_coco
    from .evaluator import coco_eval

    return coco_eval(records_to_coco(data), eval_result.detections)[2]


def plot_pr_curves(eval_result, data, path: str | os.PathLike) -> None:
    """One panel per class: precision vs recall at IoU 0.5 and the mean over IoU 0.5:0.95."""
    plt = _pyplot()
    precision = coco_precision(eval_result, data)
    recall = np.linspace(0.0, 1.0, precision.shape[1])
    names = list(data.class_names)
    k = len(names)
    cols = min(4, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        p50 = precision[0, :, i, 0, -1]
        p_all = precision[:, :, i, 0, -1]
        if (p50 > -1).any():
            ax.plot(recall, np.clip(p50, 0, None), label=f"IoU .5 (AP {p50[p50 > -1].mean():.3f})")
            mean = np.where(p_all > -1, p_all, 0).mean(axis=0)
            ax.plot(recall, mean, label=f"IoU .5:.95 (AP {p_all[p_all > -1].mean():.3f})")
            ax.legend(loc="lower left", fontsize=7)
        else:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center")
        ax.set_title(names[i], fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
