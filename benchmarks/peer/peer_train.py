"""Time the peer effdet's training step: DetBenchTrain forward + loss + backward + SGD step.

    benchmarks/peer/.venv/bin/python benchmarks/peer/peer_train.py \
        --model tf_efficientdet_d0 --image-size 512 --batch 4 --steps 5 [--channels-last]

Train mode (batch norm updating, drop path as configured), float32, random weights and
input, synthetic targets: --boxes boxes per image at random positions and classes, labelled
on the fly by effdet's AnchorLabeler (DetBenchTrain(model, create_labeler=True)), as in
effdet's train.py without a prefetching loader.  Optimizer: torch.optim.SGD(lr=0.01,
momentum=0.9, weight_decay=4e-5).  Each timed step = zero_grad + forward + loss + backward
+ step.  Reports images/s from the median step time and the process's peak RSS (VmHWM).
Prints one JSON line (last line).
"""

import argparse

import _peer_util as pu
from _peer_util import common


def synthetic_targets(batch, hw, boxes, num_classes, gen):
    """{'bbox': (B, M, 4) yxyx pixels, 'cls': (B, M) 1-based classes} as effdet expects."""
    import torch

    h, w = hw
    yx0 = torch.rand(batch, boxes, 2, generator=gen) * 0.7
    size = 0.05 + torch.rand(batch, boxes, 2, generator=gen) * 0.25
    yx1 = (yx0 + size).clamp(max=1.0)
    scale = torch.tensor([h, w], dtype=torch.float32)
    bbox = torch.cat([yx0 * scale, yx1 * scale], dim=-1)
    cls = torch.randint(1, num_classes + 1, (batch, boxes), generator=gen).float()
    return {"bbox": bbox, "cls": cls}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pu.add_common_args(ap)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--boxes", type=int, default=8, help="ground-truth boxes per image")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()

    import torch
    from effdet.bench import DetBenchTrain

    common.set_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    hw = pu.image_size(args)
    model = pu.build_model(args.model, hw, args.num_classes, "random")
    bench = DetBenchTrain(model, create_labeler=True).train()
    x = torch.randn(args.batch, 3, *hw, generator=gen)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    target = synthetic_targets(args.batch, hw, args.boxes, args.num_classes, gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    rss_before = common.peak_rss_mb()
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        out = bench(x, target)
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))

    timing = common.measure(step, args.warmup, args.steps, threads=args.threads)
    result = {
        "impl": "effdet",
        "task": "train",
        "model": args.model,
        "image_size": list(hw),
        "batch": args.batch,
        "channels_last": args.channels_last,
        "boxes_per_image": args.boxes,
        "optimizer": "SGD(lr=0.01, momentum=0.9, wd=4e-5)",
        "versions": pu.versions(),
        "machine": common.machine_info(),
        "step": timing,
        "images_per_s": args.batch / (timing["median_ms"] / 1e3),
        "losses": [round(v, 4) for v in losses],
        "peak_rss_mb": common.peak_rss_mb(),
        "peak_rss_mb_before_training": rss_before,
    }
    common.emit_json(result)


if __name__ == "__main__":
    main()
