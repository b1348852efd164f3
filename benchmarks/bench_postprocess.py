"""Post-processing speed: D0 at 512x512 (49,104 anchors x 90 classes), one image, CPU.

Logits are N(-4, 1.5) so that sigmoid scores are spread like a trained model's, box deltas
N(0, 0.25). Prints a markdown table (median, p90 in ms); the effdet side is
``benchmarks/peer/peer_postprocess.py`` (BENCHMARKS.md).

    python benchmarks/bench_postprocess.py [--runs 50] [--threads 2] [--method hard|gaussian]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from efficientdet.config import AnchorConfig, NMSConfig
from efficientdet.detection.anchors import AnchorGenerator
from efficientdet.detection.postprocess import postprocess


def make_outputs(
    image_size_hw=(512, 512), num_classes: int = 90, batch: int = 1, seed: int = 0, anchor_cfg=None
):
    """Random head outputs in the model layout: lists over levels of (N, A*K, H, W), (N, A*4, H, W)."""
    anchor_cfg = anchor_cfg or AnchorConfig()
    gen = AnchorGenerator(anchor_cfg)
    g = torch.Generator().manual_seed(seed)
    a = anchor_cfg.num_anchors
    cls, box = [], []
    for h, w in gen.feature_sizes(image_size_hw):
        cls.append(torch.randn(batch, a * num_classes, h, w, generator=g) * 1.5 - 4.0)
        box.append(torch.randn(batch, a * 4, h, w, generator=g) * 0.25)
    return cls, box, gen(image_size_hw)


def time_postprocess(
    image_size_hw=(512, 512),
    num_classes: int = 90,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = 2,
    nms_cfg: NMSConfig | None = None,
    device: str = "cpu",
    channels_last: bool = False,
) -> dict:
    """Times :func:`postprocess` on one image; returns {"median_ms", "p90_ms", "runs", "times_ms", ...}.

    ``channels_last``: head outputs in channels_last memory, as the Detector's network returns
    them (the anchor-major top-k path); otherwise NCHW, the model's default layout."""
    if threads:
        torch.set_num_threads(threads)
    nms_cfg = nms_cfg or NMSConfig()
    cls, box, anchors = make_outputs(image_size_hw, num_classes)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    cls = [c.to(device).contiguous(memory_format=memory_format) for c in cls]
    box = [b.to(device) for b in box]
    anchors = anchors.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            postprocess(cls, box, anchors, nms_cfg, image_size_hw)
        sync()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            dets = postprocess(cls, box, anchors, nms_cfg, image_size_hw)
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
    times_sorted = sorted(times)
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times_sorted[min(len(times) - 1, round(0.9 * (len(times) - 1)))],
        "runs": runs,
        "threads": torch.get_num_threads(),
        "num_detections": int(dets[0]["scores"].numel()),
        "times_ms": times,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", choices=("hard", "gaussian"), default=None, help="default: both")
    args = ap.parse_args()
    methods = [args.method] if args.method else ["hard", "gaussian"]
    print(
        f"post-processing, D0 512x512, 49,104 anchors x 90 classes, 1 image, CPU, {args.threads} threads\n"
    )
    print("| head output layout | NMS | median (ms) | p90 (ms) | runs |")
    print("| --- | --- | ---: | ---: | ---: |")
    for layout in ("NCHW", "channels_last"):
        for m in methods:
            r = time_postprocess(
                runs=args.runs,
                threads=args.threads,
                nms_cfg=NMSConfig(method=m),
                channels_last=layout == "channels_last",
            )
            print(f"| {layout} | {m} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['runs']} |")


if __name__ == "__main__":
    main()
