"""Training-step throughput: our EfficientDet-D0 vs effdet's DetBenchTrain, side by side.

    python benchmarks/bench_train.py [--rounds 2] [--steps 5] [--json out.json]

One step = zero_grad + forward + loss (anchor labelling included) + backward + SGD step
(lr 0.01, momentum 0.9, wd 4e-5), D0 at 512x512, batch 4, 90 classes, 8 random boxes per
image, random weights and input, 2 threads. Each measurement runs in a fresh process
(benchmarks/common.py: run_python / run_peer) so peak RSS is per configuration; the
configurations are interleaved over ``--rounds`` rounds (the machine is shared); each round
gives the median of its steps, and the table reports the median over rounds. Both sides get the same environment
(``OMP_WAIT_POLICY=PASSIVE`` unless --omp-active: idle OpenMP threads sleep instead of
spinning, which matters on a loaded 2-core machine).

Ours: float32 NCHW, channels_last, channels_last + bf16 autocast, all with the allocator
setting ``efficientdet train`` applies (efficientdet/runtime.py: keep freed memory for reuse),
and channels_last with glibc's default allocator; and ``--loop``: the whole training loop of
``efficientdet train`` (``efficientdet.train()``: data loading with workers 0, the divergence
guard, gradient clipping, EMA, scheduler, events and callbacks), timed from one step-end event
to the next over random-noise JPEGs with 8 random boxes each and 90 classes (validation is
skipped: the validation split has no boxes). ``--baseline-src DIR`` adds the same loop run from
another source tree (e.g. ``git archive`` of an older commit), to compare two versions of the
loop side by side. effdet (benchmarks/peer/peer_train.py):
float32 NCHW and channels_last as shipped, and channels_last with the same allocator setting
passed as ``GLIBC_TUNABLES``. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

# efficientdet.runtime.keep_freed_memory() expressed as glibc tunables, for the peer's process
KEEP_FREED_MEMORY_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.top_pad=67108864"


def worker(args) -> None:
    """Our side in this process: prints one JSON line like peer_train.py."""
    from efficientdet import runtime

    if not args.default_malloc:
        runtime.keep_freed_memory()  # as `efficientdet train` does
    import torch

    from efficientdet.detection.loss import DetectionLoss
    from efficientdet.factory import create_model

    common.set_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    hw = (args.image_size, args.image_size)
    model = create_model("efficientdet_d0", num_classes=90, image_size=hw).train()
    loss_fn = DetectionLoss(model.config.anchors, None, 90)
    x = torch.randn(args.batch, 3, *hw, generator=gen)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    # the same synthetic boxes as peer_train.py (yxyx fractions -> xyxy pixels, 0-based labels)
    yx0 = torch.rand(args.batch, args.boxes, 2, generator=gen) * 0.7
    size = 0.05 + torch.rand(args.batch, args.boxes, 2, generator=gen) * 0.25
    yx1 = (yx0 + size).clamp(max=1.0)
    cls = torch.randint(1, 91, (args.batch, args.boxes), generator=gen) - 1
    targets = [
        {
            "boxes": torch.stack(
                [
                    yx0[i, :, 1] * hw[1],
                    yx0[i, :, 0] * hw[0],
                    yx1[i, :, 1] * hw[1],
                    yx1[i, :, 0] * hw[0],
                ],
                dim=1,
            ),
            "labels": cls[i],
        }
        for i in range(args.batch)
    ]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    amp = args.precision == "bf16"
    rss_before = common.peak_rss_mb()
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            class_out, box_out = model(x)
        out = loss_fn(class_out, box_out, targets, hw)
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))

    timing = common.measure(step, args.warmup, args.steps, threads=args.threads)
    common.emit_json(
        {
            "impl": "ours",
            "task": "train",
            "model": "efficientdet_d0",
            "image_size": list(hw),
            "batch": args.batch,
            "channels_last": args.channels_last,
            "precision": args.precision,
            "step": timing,
            "images_per_s": args.batch / (timing["median_ms"] / 1e3),
            "losses": [round(v, 4) for v in losses],
            "peak_rss_mb": common.peak_rss_mb(),
            "peak_rss_mb_before_training": rss_before,
        }
    )


def loop_worker(args) -> None:
    """``efficientdet.train()`` on a generated dataset; prints one JSON line like worker()."""
    import random
    import tempfile
    import time

    from PIL import Image

    from efficientdet import runtime

    runtime.keep_freed_memory()
    import numpy as np
    import torch

    import efficientdet
    from efficientdet.engine.trainer import TrainConfig, train

    common.set_threads(args.threads)
    rng = random.Random(args.seed)
    n_images = args.batch * (args.warmup + args.steps)
    size = args.image_size
    with tempfile.TemporaryDirectory(prefix="bench_train_loop_") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        images, annotations = [], []
        for i in range(n_images):
            pixels = np.random.default_rng(args.seed + i).integers(
                0, 256, (size, size, 3), np.uint8
            )
            Image.fromarray(pixels).save(root / "images" / f"{i}.jpg", quality=90)
            images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": size, "height": size})
            for _ in range(args.boxes):
                w, h = rng.uniform(0.05, 0.3) * size, rng.uniform(0.05, 0.3) * size
                x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": rng.randint(1, 90),
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": c, "name": f"class{c}"} for c in range(1, 91)]
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (root / "train.json").write_text(json.dumps(doc))
        (root / "val.json").write_text(json.dumps({**doc, "images": images[:1], "annotations": []}))
        (root / "data.yaml").write_text(
            "format: coco\ntrain: {images: images, annotations: train.json}\n"
            "val: {images: images, annotations: val.json}\n"
        )

        class StepTimer:
            """Wall time between consecutive step-end events (a whole loop iteration)."""

            def __init__(self) -> None:
                self.last: float | None = None
                self.times_ms: list[float] = []
                self.losses: list[float] = []

            def on_train_start(self, trainer) -> None:
                self.last = time.perf_counter()

            def on_step_end(self, trainer, *rest) -> None:
                now = time.perf_counter()
                self.times_ms.append((now - self.last) * 1e3)
                self.last = now

        timer = StepTimer()
        cfg = TrainConfig(
            data=str(root / "data.yaml"),
            model="efficientdet_d0",
            image_size=size,
            epochs=1,
            batch_size=args.batch,
            lr=0.01,
            workers=0,
            out=str(root / "run"),
            progress=False,
            plots=False,
            seed=args.seed,
        )
        if "debug_batches" in {f for f in TrainConfig.__dataclass_fields__}:
            cfg.debug_batches, cfg.debug_interval = 0, 0  # drawing is not the step
        rss_before = common.peak_rss_mb()
        train(cfg, callbacks=[timer])
    timing = common.summarize(timer.times_ms[args.warmup :])
    timing["threads"] = args.threads
    common.emit_json(
        {
            "impl": "ours",
            "task": "train_loop",
            "source": str(Path(efficientdet.__file__).parent),
            "model": "efficientdet_d0",
            "image_size": [size, size],
            "batch": args.batch,
            "channels_last": True,
            "precision": "fp32",
            "step": timing,
            "images_per_s": args.batch / (timing["median_ms"] / 1e3),
            "peak_rss_mb": common.peak_rss_mb(),
            "peak_rss_mb_before_training": rss_before,
            "torch_threads": torch.get_num_threads(),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loop-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--loop", action="store_true", help="also time efficientdet.train()'s whole loop"
    )
    ap.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="with --loop: also the loop of another source tree (its src folder)",
    )
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--boxes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="autocast dtype of ours (as train)",
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--default-malloc", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--omp-active", action="store_true", help="leave OMP_WAIT_POLICY unset")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run only the configurations named exactly (e.g. 'ours channels_last' 'effdet fp32')",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.loop_worker:
        loop_worker(args)
        return

    env = {} if args.omp_active else {"OMP_WAIT_POLICY": "PASSIVE"}
    common_args = [
        "--image-size",
        args.image_size,
        "--batch",
        args.batch,
        "--steps",
        args.steps,
        "--warmup",
        args.warmup,
        "--threads",
        args.threads,
        "--seed",
        args.seed,
        "--boxes",
        args.boxes,
    ]
    configs = [
        ("ours fp32", "ours", []),
        ("ours channels_last", "ours", ["--channels-last"]),
        ("ours channels_last+bf16", "ours", ["--channels-last", "--precision", "bf16"]),
        ("ours channels_last, default malloc", "ours", ["--channels-last", "--default-malloc"]),
    ]
    if args.loop:
        configs.append(("ours train() loop", "ours", ["--loop-worker"]))
        if args.baseline_src:
            configs.append(("ours train() loop, baseline", "baseline", ["--loop-worker"]))
    if not args.skip_peer and common.peer_available():
        configs += [
            ("effdet fp32", "peer", ["--model", "tf_efficientdet_d0"]),
            ("effdet channels_last", "peer", ["--model", "tf_efficientdet_d0", "--channels-last"]),
            (
                "effdet channels_last, our malloc",
                "peer+malloc",
                ["--model", "tf_efficientdet_d0", "--channels-last"],
            ),
        ]
    if args.only:
        unknown = sorted(set(args.only) - {name for name, _, _ in configs})
        if unknown:
            ap.error(f"--only: unknown configuration(s) {unknown}")
        configs = [c for c in configs if c[0] in args.only]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for r in range(args.rounds):
        for name, impl, extra in configs:
            try:
                if impl == "baseline":  # the same loop worker, importing the baseline tree
                    src = str(Path(args.baseline_src).resolve())
                    res = common.run_python(
                        __file__, [*common_args, *extra], env={**env, "PYTHONPATH": src}
                    )
                elif impl == "ours" and "--loop-worker" in extra:
                    src = str(Path(__file__).resolve().parents[1] / "src")
                    res = common.run_python(
                        __file__, [*common_args, *extra], env={**env, "PYTHONPATH": src}
                    )
                elif impl == "ours":
                    res = common.run_python(__file__, ["--worker", *common_args, *extra], env=env)
                else:  # the peer cannot import our runtime module: the same settings as glibc tunables
                    peer_env = (
                        {**env, "GLIBC_TUNABLES": KEEP_FREED_MEMORY_TUNABLES}
                        if impl == "peer+malloc"
                        else env
                    )
                    res = common.run_peer("peer_train.py", [*common_args, *extra], env=peer_env)
            except common.SubprocessError as exc:
                print(f"{name}: failed: {str(exc)[:500]}", file=sys.stderr)
                continue
            results[name].append(res)
            print(
                f"round {r + 1} {name:36s} {res['images_per_s']:.3f} img/s  median {res['step']['median_ms'] / 1e3:.2f} s"
                f"  peak RSS {res['_peak_rss_mb']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    summary = {}
    for name, runs in results.items():
        if not runs:
            continue
        summary[name] = {
            "images_per_s": round(statistics.median(x["images_per_s"] for x in runs), 3),
            "median_step_s": round(
                statistics.median(x["step"]["median_ms"] for x in runs) / 1e3, 3
            ),
            "all_rounds_images_per_s": [round(x["images_per_s"], 3) for x in runs],
            "peak_rss_mb": round(max(x["_peak_rss_mb"] for x in runs), 1),
        }
    base = summary.get("effdet fp32", {}).get("images_per_s")
    print(
        f"\nD0 {args.image_size}x{args.image_size} batch {args.batch} training step, {args.threads} threads, "
        f"env {env or 'default'}\n{common.machine_info()}",
        file=sys.stderr,
    )
    print(
        f"{'config':36s} {'img/s':>8s} {'vs effdet fp32':>15s} {'peak RSS MiB':>13s}",
        file=sys.stderr,
    )
    for name, s in summary.items():
        ratio = f"{s['images_per_s'] / base:.2f}x" if base else "-"
        print(
            f"{name:36s} {s['images_per_s']:8.3f} {ratio:>15s} {s['peak_rss_mb']:13.0f}",
            file=sys.stderr,
        )
    out = {
        "benchmark": "train_step",
        "model": "d0",
        "image_size": args.image_size,
        "batch": args.batch,
        "env": env,
        "machine": common.machine_info_dict(),
        "results": summary,
        "baseline_src": args.baseline_src,
    }
    if args.json:
        common.write_json(args.json, out)
    common.emit_json(out)


if __name__ == "__main__":
    main()
