"""``efficientdet val``: COCO metrics of a checkpoint on a dataset split.

Prints the metrics table and writes ``OUT/results.json`` (COCO results with the dataset's
category ids, xywh in original pixels), ``OUT/metrics.json`` and ``OUT/per_class.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..config import NMSConfig, parse_image_size
from ..errors import ConfigError, DataError
from ..runtime import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="checkpoint saved by efficientdet (train or save_model_dict)")
    parser.add_argument("--data", required=True, help="dataset YAML or COCO JSON")
    parser.add_argument("--split", default="val", help="split of the YAML to evaluate (default val)")
    parser.add_argument("--images", default=None, help="image folder (overrides the YAML / next to the COCO JSON)")
    parser.add_argument("--image-size", default=None,
                        help="model input: S or HxW (default: the checkpoint's training size)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    parser.add_argument("--conf", type=float, default=0.0, help="score threshold (default 0: keep all, as COCO eval)")
    parser.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold (default 0.5)")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image (default 100)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none", help="autocast dtype on the device")
    parser.add_argument("--out", default="runs/val", help="output folder (default runs/val)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..factory import load_model
    from ..resources import check_memory
    from .evaluator import evaluate, write_metrics, write_per_class_csv, write_results_json

    image_size = parse_image_size(args.image_size)
    nms_cfg = NMSConfig(iou_threshold=args.iou, score_threshold=args.conf, max_detections=args.max_det)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: need at least 1")
    device = resolve_device(args.device)
    amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.amp]

    model, ckpt = load_model(args.weights)
    check_memory(model, args.batch_size, train=False, device=device, image_size=image_size)
    data = load_dataset(args.data, split=args.split, images=args.images)
    names = list(ckpt.get("class_names") or [])
    if list(data.class_names) != names:
        raise DataError(
            f"{args.data}: class names {data.class_names} differ from those of {args.weights} {names}; "
            "fix: evaluate on a dataset with the same classes in the same order"
        )
    if data.report.count():
        print(data.report.summary(title=f"{args.data} ({args.split}): problems found while reading"))
    result = evaluate(model, data, image_size or model.config.image_size, nms_cfg, batch_size=args.batch_size,
                      num_workers=args.workers, device=device, amp_dtype=amp_dtype, progress=not args.quiet)
    print(result.table())
    out = Path(args.out)
    write_results_json(out / "results.json", result.detections)
    write_metrics(out / "metrics.json", result)
    write_per_class_csv(out / "per_class.csv", result)
    print(f"wrote {out / 'results.json'}, {out / 'metrics.json'}, {out / 'per_class.csv'}")
    return 0
