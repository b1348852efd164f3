"""``efficientdet val``: COCO metrics of a checkpoint or any exported file (ONNX, ONNX int8, OpenVINO
.xml, TorchScript: every kind in :data:`efficientdet.deploy.backends.EXPORTED`) on a dataset split.

Prints the metrics table and writes ``OUT/results.json`` (COCO results with the dataset's
category ids, xywh in original pixels), ``OUT/metrics.json`` and ``OUT/per_class.csv``, each
all or nothing (:mod:`efficientdet.fileio`). OUT is a new run folder (``runs/val/N``, or
``--out``; see :mod:`efficientdet.run_dirs`); one that holds the dataset or weights is refused.

Test-dev style: on a split without annotations (a COCO ``image_info`` JSON, as COCO test-dev
ships, or ``--data`` a folder of images) it writes ``OUT/results.json`` alone, ready for an
evaluation server (image ids: the JSON's, or for a folder :func:`efficientdet.data.folder.image_id_from_name`;
category ids: the dataset's, or for a folder the model's), and says that no metrics were
computed (exit 0). ``--require-metrics`` makes such a split an error (exit 2) instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import cli_options
from ..config import NMSConfig, parse_image_size
from ..errors import DataError
from ..fileio import write_via_temp
from ..run_dirs import claimed_run_dir, refuse_inputs_inside
from ..runtime import precision_dtype, resolve_device, warn_if_slow_precision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        required=True,
        help="checkpoint saved by efficientdet, or a file from efficientdet export",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="dataset YAML, COCO JSON (an image_info JSON: detections only) or a folder of images",
    )
    parser.add_argument(
        "--split", default="val", help="split of the YAML to evaluate (default val)"
    )
    parser.add_argument(
        "--images", default=None, help="image folder (overrides the YAML / next to the COCO JSON)"
    )
    cli_options.add(parser, "image_size", "batch")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    parser.add_argument(
        "--require-metrics",
        action="store_true",
        help="fail (exit 2) on a split without annotations instead of writing its detections only",
    )
    cli_options.add(
        parser,
        "conf",
        "iou",
        "max_det",
        "nms",
        "device",
        "precision",
        "out",
        "exist_ok",
        "json",
        "quiet",
    )


def run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..data.spec import dataset_files
    from ..factory import load_model
    from ..resources import check_memory
    from .evaluator import evaluate, write_metrics, write_per_class_csv, write_results_json

    image_size = parse_image_size(args.image_size, "--image-size")
    nms_cfg: NMSConfig | None = NMSConfig(
        iou_threshold=args.iou,
        score_threshold=args.conf,
        max_detections=args.max_det,
        method=cli_options.nms_method(args),
    )
    device = resolve_device(args.device)
    precision = cli_options.precision_of(args)
    amp_dtype = precision_dtype(precision, device)
    inputs = {"weights file": args.weights, "dataset": args.data, "image folder": args.images}
    if args.out is not None:
        refuse_inputs_inside(args.out, inputs)
    cli_options.check_json_output(args, {**inputs, "dataset": dataset_files(args.data)})

    from ..deploy.backends import is_exported

    if is_exported(
        args.weights
    ):  # any exported file: run through its backend by a Detector (which checks memory)
        from ..deploy.detector import Detector

        model: Any = Detector(  # an exported model, or (below) an EfficientDet nn.Module
            args.weights,
            conf=args.conf,
            iou=args.iou,
            max_det=args.max_det,
            image_size=image_size,
            device=args.device,
            half=amp_dtype is not None,
        )
        names, nms_cfg, amp_dtype, image_size = model.names, None, None, model.image_size
        category_ids = model.category_ids
    else:
        model, ckpt = load_model(args.weights)
        check_memory(model, args.batch, train=False, device=device, image_size=image_size)
        names = list(ckpt.get("class_names") or [])
        category_ids = ckpt.get("category_ids")
    if Path(args.data).is_dir():  # a folder of images: the model's classes and category ids
        data = load_dataset(args.data, class_names=names, category_ids=category_ids)
        if n := data.report.stats["not_images"]:
            print(
                f"note: {args.data}: {n} "
                f"{'entry that is not an image' if n == 1 else 'entries that are not images'} "
                "(other files, subfolders) not read"
            )
    else:
        data = load_dataset(args.data, split=args.split, images=args.images)
    if not data.annotated and args.require_metrics:
        what = "a folder of images" if data.format == "folder" else "no 'annotations' in it"
        raise DataError(
            f"{data.source or args.data}: no annotations to compute metrics against ({what}); "
            "fix: give the split's annotated instances JSON, or drop --require-metrics to write "
            "detections only"
        )
    inputs["image folder"] = sorted({str(Path(r.path).parent) for r in data.records})
    if args.out is not None:
        refuse_inputs_inside(args.out, inputs)
    if not args.quiet:
        warn_if_slow_precision(precision, device)
    if list(data.class_names) != names:
        raise DataError(
            f"{args.data}: class names {data.class_names} differ from those of {args.weights} {names}; "
            "fix: evaluate on a dataset with the same classes in the same order"
        )
    if data.report.count():
        print(
            data.report.summary(title=f"{args.data} ({args.split}): problems found while reading")
        )
    result = evaluate(
        model,
        data,
        image_size or model.config.image_size,
        nms_cfg,
        batch_size=args.batch,
        num_workers=args.workers,
        device=device,
        amp_dtype=amp_dtype,
        progress=not args.quiet,
        require_metrics=False,
    )
    print(result.table())
    # claimed once there are results to write; removed again if the first write fails
    with claimed_run_dir(args.out, args.exist_ok, "val") as out:
        refuse_inputs_inside(out, inputs)
        # the evaluator's writers, each into a temporary file that is renamed when complete
        write_via_temp(out / "results.json", lambda tmp: write_results_json(tmp, result.detections))
    if not result.scored:
        if args.json:
            cli_options.write_json_output(args, result.to_dict())
        print(
            f"wrote {out / 'results.json'}: COCO results (image_id, category_id, bbox [x, y, w, h] "
            "in original pixels, score) for an evaluation server; no metrics computed"
        )
        return 0
    write_via_temp(out / "metrics.json", lambda tmp: write_metrics(tmp, result))
    write_via_temp(out / "per_class.csv", lambda tmp: write_per_class_csv(tmp, result))
    if args.json:
        cli_options.write_json_output(args, result.to_dict())
    print(f"wrote {out / 'results.json'}, {out / 'metrics.json'}, {out / 'per_class.csv'}")
    return 0
