"""The eager backend's inference rewrites, on and off, in one process (interleaved A/B).

    python benchmarks/bench_eager_rewrites.py [--models d0 lite0] [--rounds 10] [--repeats 10]

For each model (fixture weights, D0 at 512, Lite0 at 320, batch 1, channels_last, BN folded:
the network of ``Detector(model=...)``), times ``Detector.detect_batch`` with
:func:`efficientdet.nn.fuse.pad_before_expand` on and off, alternating every round so that
load from other processes hits both alike, and prints the median over rounds of each round's
median, the ratio and the largest output difference (the rewrite is exact up to rounding).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from bench_predict import MODELS


def ab_model(name: str, rounds: int, repeats: int, threads: int) -> tuple[float, float, float]:
    """(median ms with the rewrite off, on, largest output difference) for one model."""
    import torch

    from efficientdet import create_model
    from efficientdet.deploy.detector import Detector
    from efficientdet.nn.efficientnet import InvertedResidualBlock
    from efficientdet.weights import load_weights

    ours, _, size, fixture = MODELS[name]
    ref = torch.load(
        os.path.join(common.REPO_ROOT, "tests", "fixtures", fixture), weights_only=True
    )
    model = create_model(ours, image_size=size).eval()
    state = ref["state_dict_fp16"]
    load_weights(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    det = Detector(model=model, conf=0.0, iou=0.5, max_det=100, max_candidates=5000)
    blocks = [m for m in det.backend.network.modules() if isinstance(m, InvertedResidualBlock)]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    scales, sizes = torch.ones(1), [(size, size)]

    def use(on: bool) -> None:
        for block in blocks:
            block.pad_before_expand = on

    with torch.inference_mode():
        outputs = {}
        for on in (False, True):
            use(on)
            cls_out, box_out = det.raw(x)
            outputs[on] = cls_out + box_out
        diff = max(
            float((a - b).abs().max()) for a, b in zip(outputs[False], outputs[True], strict=True)
        )
        medians: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for on in (False, True):
                use(on)
                timing = common.measure(
                    lambda: det.detect_batch(x, scales, sizes), 3, repeats, threads
                )
                medians[on].append(timing["median_ms"])
    return statistics.median(medians[False]), statistics.median(medians[True]), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["d0", "lite0"], choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    args = ap.parse_args()

    from efficientdet import runtime

    runtime.keep_freed_memory()  # as `efficientdet predict` and `bench` do
    common.set_threads(args.threads)
    print(common.machine_info())
    print("| model | rewrite off ms | rewrite on ms | on / off | max output difference |")
    print("|---|---|---|---|---|")
    for name in args.models:
        off, on, diff = ab_model(name, args.rounds, args.repeats, args.threads)
        ours, _, size, _ = MODELS[name]
        print(f"| {ours} {size} | {off:.1f} | {on:.1f} | {on / off:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
