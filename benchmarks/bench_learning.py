"""Does the demo's configuration learn? COCO mAP@[.5:.95] on the synthetic validation split.

    python benchmarks/bench_learning.py --out runs/bench_learning [--epochs N ...]

Writes the synthetic shapes dataset (efficientdet.data.synth), trains with the demo's
settings (``efficientdet.engine.demo.DEMO_SETTINGS``, overridable below), and prints one JSON
line: settings, mAP/AP50 per epoch, best mAP, train and total wall time, machine. Goal: best
mAP >= 0.5. Applies the same process settings as ``efficientdet demo`` (efficientdet/runtime.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit_json, machine_info


def main() -> None:
    from efficientdet import runtime

    runtime.prepare_heavy_work()  # as `efficientdet train`/`demo` do, before torch loads its OpenMP runtime
    from efficientdet.engine.demo import DEMO_SETTINGS

    d = DEMO_SETTINGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_learning")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--val-images", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=d["epochs"])
    ap.add_argument("--image-size", type=int, default=d["image_size"])
    ap.add_argument("--batch", type=int, default=d["batch_size"])
    ap.add_argument("--optimizer", default=d["optimizer"])
    ap.add_argument("--lr", type=float, default=d["lr"])
    ap.add_argument("--scale-jitter", type=float, nargs=2, default=(d["scale_min"], d["scale_max"]))
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument(
        "--anchor-scale", type=float, default=d.get("anchor_scale"), help="default: the model's"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from efficientdet.data.synth import write_synthetic_dataset
    from efficientdet.engine.trainer import TrainConfig, train

    t0 = time.perf_counter()
    out = Path(args.out)
    yaml_path = out / "data" / "data.yaml"
    if not yaml_path.exists():
        write_synthetic_dataset(
            out / "data", args.images, args.val_images, seed=args.seed, size=320, progress=False
        )
    settings = {
        **d,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "scale_min": args.scale_jitter[0],
        "scale_max": args.scale_jitter[1],
        "amp": {"fp32": "none"}.get(args.precision, args.precision),
        "anchor_scale": args.anchor_scale,
    }
    cfg = TrainConfig(
        data=str(yaml_path),
        out=str(out / "run"),
        exist_ok=True,
        workers=args.workers,
        seed=args.seed,
        progress=False,
        **settings,
    )
    t1 = time.perf_counter()
    result = train(cfg)
    t2 = time.perf_counter()
    emit_json(
        {
            "benchmark": "learning",
            "settings": settings,
            "images": [args.images, args.val_images],
            "mAP_per_epoch": [r["mAP"] for r in result.history],
            "AP50_per_epoch": [r["AP50"] for r in result.history],
            "best_map": result.best_map,
            "best_epoch": result.best_epoch,
            "goal_met": result.best_map >= 0.5,
            "train_wall_s": round(t2 - t1, 1),
            "total_wall_s": round(t2 - t0, 1),
            "train_images_per_s": [r["images_per_s"] for r in result.history],
            "machine": machine_info(),
        }
    )


if __name__ == "__main__":
    main()
