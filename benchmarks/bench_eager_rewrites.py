"""The eager backend's inference rewrites, each on and off, in one process (interleaved A/B).

    python benchmarks/bench_eager_rewrites.py [--models d0 lite0] [--rounds 10] [--repeats 10]

For each model (fixture weights, D0 at 512, Lite0 at 320, batch 1, channels_last, BN folded:
the network of ``Detector(model=...)``), times ``Detector.detect_batch`` with neither, each and
both of :func:`efficientdet.nn.fuse.pad_before_expand` and
:func:`efficientdet.nn.fuse.fold_fusion_weights` (Lite's BiFPN sums its inputs: no fold
variants there), the order rotated every round so that load from other processes and the
position in a round hit all alike, and prints the median over rounds of each round's median, the
ratio to neither and the largest output difference to neither (the rewrites are exact up to
float rounding).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from bench_predict import MODELS

VARIANTS = {  # name: (pad_before_expand, fold_fusion_weights)
    "neither": (False, False),
    "pad_before_expand": (True, False),
    "fold_fusion_weights": (False, True),
    "both (the backend)": (True, True),
}


def ab_model(name: str, rounds: int, repeats: int, threads: int) -> dict[str, tuple[float, float]]:
    """{variant: (median ms, largest output difference to "neither")} for one model."""
    import torch

    from efficientdet import create_model
    from efficientdet.deploy.detector import Detector
    from efficientdet.nn.bifpn import FuseInputs
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
    network = det.backend.network
    blocks = [m for m in network.modules() if isinstance(m, InvertedResidualBlock)]
    nodes = {m: m.folded_weights for m in network.modules() if isinstance(m, FuseInputs)}
    nodes = {node: folded for node, folded in nodes.items() if folded is not None}
    # fold_fusion_weights leaves "sum" nodes (Lite) alone: its variants would time "neither"
    variants = [v for v in VARIANTS if nodes or not VARIANTS[v][1]]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    scales, sizes = torch.ones(1), [(size, size)]

    def use(variant: str) -> None:
        pad, fold = VARIANTS[variant]
        for block in blocks:
            block.pad_input_first = pad
        for node, weights in nodes.items():
            node.folded_weights = weights if fold else None

    with torch.inference_mode():
        outputs = {}
        for variant in variants:
            use(variant)
            cls_out, box_out = det.raw(x)
            outputs[variant] = cls_out + box_out
        medians: dict[str, list[float]] = {variant: [] for variant in variants}
        for r in range(rounds):
            for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
                use(variant)
                timing = common.measure(
                    lambda: det.detect_batch(x, scales, sizes), 3, repeats, threads
                )
                medians[variant].append(timing["median_ms"])
    return {
        variant: (
            statistics.median(medians[variant]),
            max(
                float((a - b).abs().max())
                for a, b in zip(outputs["neither"], outputs[variant], strict=True)
            ),
        )
        for variant in variants
    }


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
    print("| model | rewrites | end to end ms | vs neither | max output difference |")
    print("|---|---|---|---|---|")
    for name in args.models:
        results = ab_model(name, args.rounds, args.repeats, args.threads)
        ours, _, size, _ = MODELS[name]
        base = results["neither"][0]
        for variant, (ms, diff) in results.items():
            print(f"| {ours} {size} | {variant} | {ms:.1f} | {ms / base:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
