"""Calibrate the memory guard (efficientdet.resources): analytic estimate vs measured peak RSS.

For Lite0 and D0 at a few small sizes (batch 2), each measurement in a fresh process:
``resources.measure_step_memory`` (growth of peak RSS over two real steps) next to the
analytic element count in bytes (``_count``, factor 1) and the guard's estimate. The last
lines fit ``measured - anchors = factor x analytic + offset`` per mode: the factors in
resources.py (TRAIN_FACTOR, INFER_FACTOR, CHECKPOINTED_FACTOR) and OVERHEAD come from them.

Calibration run (2-core AMD EPYC, torch 2.13 CPU, batch 2; MB of peak RSS growth; the
resources.py factors were set from these: train 1.45, infer 2.3, train+gc 2.1, overhead 40 MB)::

    model               size  mode      analytic  measured
    efficientdet_lite0   128  train         64.7     151.3
    efficientdet_lite0   128  infer          9.0      47.8
    efficientdet_lite0   128  train+gc      28.8     122.7
    efficientdet_lite0   256  train        259.0     381.5
    efficientdet_lite0   256  infer         36.0     102.9
    efficientdet_lite0   256  train+gc     115.3     254.8
    efficientdet_lite0   384  train        582.7     895.1
    efficientdet_lite0   384  infer         81.0     180.0
    efficientdet_lite0   384  train+gc     259.5     563.2
    efficientdet_d0      128  train         70.8     164.4
    efficientdet_d0      128  infer          9.0      53.7
    efficientdet_d0      128  train+gc      30.8     134.1
    efficientdet_d0      256  train        283.1     447.3
    efficientdet_d0      256  infer         36.0     114.5
    efficientdet_d0      256  train+gc     123.2     262.0
    efficientdet_d0      384  train        636.9     895.1
    efficientdet_d0      384  infer         81.0     220.6

With those factors the guard's estimate is 0.78-1.27x of every measurement above (the test
suite holds it to a factor of 2 on any CPU: tests/test_memory_guard.py).

    python benchmarks/bench_memory_guard.py            # the table (a few minutes on 2 cores)
    python benchmarks/bench_memory_guard.py --quick    # Lite0 only
"""

from __future__ import annotations

import argparse
import json
import sys

from common import machine_info, run_python

CASES = [("efficientdet_lite0", s) for s in (128, 256, 384)] + [
    ("efficientdet_d0", s) for s in (128, 256, 384)
]
MODES = ("train", "infer", "train+gc")


def child(model: str, size: int, batch: int, mode: str) -> None:
    from efficientdet.config import get_model_config
    from efficientdet.resources import _count, estimate_memory, measure_step_memory

    cfg = get_model_config(model, num_classes=6, image_size=size)
    train, gc = mode != "infer", mode == "train+gc"
    measured = measure_step_memory(cfg, batch, train=train, grad_checkpointing=gc)
    counts = _count(cfg, cfg.image_size)
    key = {"train": "all", "infer": "peak", "train+gc": "checkpointed"}[mode]
    print(
        json.dumps(
            {
                "measured": measured,
                "analytic": 4 * batch * counts[key],
                "anchors": 4 * counts["anchors"],
                "estimate": estimate_memory(cfg, batch, train=train, grad_checkpointing=gc),
            }
        )
    )


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = factor * x + offset`` over (x, y) points."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    factor = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else my / mx
    return factor, my - factor * mx


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("MODEL", "SIZE", "BATCH", "MODE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--quick", action="store_true", help="Lite0 only")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        model, size, batch, mode = args.child
        child(model, int(size), int(batch), mode)
        return
    print(machine_info())
    print(
        f"{'model':20s} {'size':>5s} {'mode':9s} {'analytic MB':>12s} {'measured MB':>12s} "
        f"{'estimate MB':>12s} {'estimate/measured':>18s}"
    )
    points: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for model, size in CASES:
        if args.quick and "lite0" not in model:
            continue
        for mode in MODES:
            r = run_python(__file__, ["--child", model, size, args.batch, mode], timeout=900)
            points[mode].append((r["analytic"], r["measured"] - r["anchors"]))
            print(
                f"{model:20s} {size:5d} {mode:9s} {r['analytic'] / 1e6:12.1f} {r['measured'] / 1e6:12.1f} "
                f"{r['estimate'] / 1e6:12.1f} {r['estimate'] / r['measured']:18.2f}",
                flush=True,
            )
    for mode, values in points.items():
        factor, offset = fit(values)
        print(f"{mode}: measured - anchors = {factor:.2f} x analytic + {offset / 1e6:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
