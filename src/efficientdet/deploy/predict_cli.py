"""``efficientdet predict --weights W --source S``: detect, draw, write COCO-style results.

W: our checkpoint, an exported ``.onnx`` file, or with ``--model NAME`` "coco" / an effdet
state_dict. S: an image, a folder, a glob, a video file or a webcam index.

Writes to a new run folder (``runs/predict/N``, or ``--out``; see :mod:`efficientdet.run_dirs`;
an ``--out`` that holds the source is refused): annotated images (same file names) or an
annotated ``<video>.mp4`` (H.264 with the ``video`` extra, else the best codec OpenCV has:
see :mod:`efficientdet.deploy.video`; unless ``--no-save``), and ``predictions.json``: a COCO results list
``[{"image_id", "file_name", "category_id", "bbox": [x, y, w, h], "score"}]`` in original
pixels (:func:`efficientdet.data.coco.detections_to_coco`, plus the file name).
``--save-json`` also writes ``results.json``: the same detections in COCO results format
alone (image_id, category_id, bbox, score), as ``val`` writes it, for an evaluation server.

``image_id``: with ``--data`` (a COCO instances or ``image_info`` JSON) the dataset's id of
the image's file name (an image not in it is refused before any work); otherwise
:func:`efficientdet.data.folder.image_id_from_name`: the file stem when it is a number
(COCO's ``000000397133.jpg`` -> 397133), else a stable id from the file name (CRC-32);
video: frame number + 1. ``category_id``: with ``--data`` the JSON's category ids (its class
names must be the model's), else the checkpoint's category ids when it has them, else the
class index.
Unreadable images are reported and skipped; a summary per source is printed at the end.
Ctrl+C ends a webcam stream normally; elsewhere it keeps the detections of the images done in
``predictions.json`` (a partial annotated video is removed) and exits with status 130. A run
that fails or is interrupted before it wrote anything removes the run folder it created.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import Counter
from pathlib import Path

from .. import cli_options
from ..errors import ConfigError, DataError
from ..fileio import make_dirs, write_json
from ..progress import bar as progress_bar
from ..run_dirs import claimed_run_dir, refuse_inputs_inside


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        required=True,
        help="checkpoint (.pt), exported .onnx, or with --model: 'coco' / a weights file",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model name when --weights is not our checkpoint (e.g. efficientdet_d0)",
    )
    parser.add_argument(
        "--source",
        required=True,
        help="image, folder, glob ('imgs/*.jpg'), video file or webcam index",
    )
    cli_options.add(parser, "conf", "iou", "max_det", "nms")
    parser.add_argument(
        "--classes", nargs="+", default=None, help="keep only these classes (names or indices)"
    )
    cli_options.add(parser, "image_size", "device", "precision", "batch")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    cli_options.add(parser, "out", "exist_ok", "json", "quiet")
    parser.add_argument(
        "--no-save",
        action="store_true",
        help="do not write annotated images/video (predictions.json is still written)",
    )
    parser.add_argument(
        "--save-json",
        action="store_true",
        help="also write results.json: COCO results (image_id, category_id, bbox [x, y, w, h], "
        "score) as val writes them, for an evaluation server",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="COCO JSON (instances or image_info) whose image ids (by file name) and category ids "
        "the results use",
    )


def build_detector(args: argparse.Namespace):
    """The Detector the CLI options describe: ``--precision`` bf16 on CPU / fp16 on CUDA runs
    the network in that dtype (the Detector's ``half``); ``--nms soft`` switches its NMS to
    Gaussian soft-NMS; the default device (auto) is the CPU for an ONNX file."""
    import dataclasses

    from ..runtime import resolve_device, warn_if_slow_precision
    from .detector import Detector

    is_onnx = str(args.weights).lower().endswith(".onnx")
    device = resolve_device("cpu" if is_onnx and args.device in (None, "auto") else args.device)
    precision = cli_options.precision_of(args)
    native_half = "bf16" if device.type == "cpu" else "fp16"
    if precision not in ("fp32", native_half):
        raise ConfigError(
            f"--precision {precision} on {device.type}: the detector runs {native_half} there; "
            f"fix: use --precision {native_half} or fp32"
        )
    options = dict(
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        classes=getattr(args, "classes", None),
        image_size=args.image_size,
        device=device,
        half=precision != "fp32",
        threads=getattr(args, "threads", None),
    )
    detector = (
        Detector.from_name(args.model, weights=args.weights, **options)
        if args.model
        else Detector(args.weights, **options)
    )
    if cli_options.nms_method(args) != detector.nms.method:
        if detector.backend.outputs == "nms":
            raise ConfigError(
                f"{args.weights}: this ONNX file has hard NMS inside; fix: drop --nms soft or export "
                "without --nms-in-graph"
            )
        detector.nms = dataclasses.replace(detector.nms, method=cli_options.nms_method(args))
    if not args.quiet:
        warn_if_slow_precision(precision, device)
    return detector


class _ResultIds:
    """The image and category ids of the results files (module docstring)."""

    def __init__(self, detector, data: str | None, source) -> None:
        self.by_name: dict[str, int | None] | None = None
        self.category_ids = [detector.category_id(i) for i in range(len(detector.names))]
        if data is None:
            return
        from ..data.coco import read_image_index

        if Path(data).suffix.lower() != ".json" or Path(data).is_dir():
            raise ConfigError(
                f"--data {data}: predict maps file names to image ids with a COCO JSON; "
                "fix: give the instances or image_info JSON of these images"
            )
        if source.is_video:
            raise ConfigError(
                f"--data {data}: a video's frames have no dataset image ids; "
                "fix: drop --data (frames are numbered from 1)"
            )
        self.by_name, category_ids, names = read_image_index(data)
        if names != list(detector.names):
            raise DataError(
                f"{data}: class names {names} differ from those of the model {list(detector.names)}; "
                "fix: give the JSON of the dataset the model was trained for"
            )
        self.category_ids = category_ids
        missing = [p for p in source.paths if self.by_name.get(Path(p).name) is None]
        if missing:
            name = Path(missing[0]).name
            what = "is not" if name not in self.by_name else "is ambiguous (two images share it)"
            raise DataError(
                f"{data}: {name} {what} in its images ({len(missing)} of {len(source.paths)} "
                "source images without an id); fix: give the JSON these images belong to, or drop --data"
            )

    def image_id(self, frame, is_video: bool) -> int:
        from ..data.folder import image_id_from_name

        if is_video:
            return frame.index + 1
        if self.by_name is not None:
            image_id = self.by_name[Path(frame.name).name]
            assert image_id is not None  # checked in __init__
            return image_id
        return image_id_from_name(frame.name)


def run(args: argparse.Namespace) -> int:
    from ..resources import check_memory
    from .sources import open_source

    source = open_source(
        args.source
    )  # unknown source / unreadable video fail before the model loads
    if source.not_read:  # nothing skipped in silence: name what the folder holds besides images
        what = ", ".join(
            f"{n} {kind}{'s' if kind == 'subfolder' and n > 1 else ''}"
            for kind, n in source.not_read.items()
        )
        print(
            f"note: {args.source}: not read ({what}): a folder's images only, not recursive; "
            f"for more give a glob ('{Path(args.source) / '**' / '*.jpg'}') or a video file",
            file=sys.stderr,
        )
    inputs = {
        "source": [source.spec, *source.paths] if source.kind != "webcam" else None,
        "weights file": args.weights,
        "dataset": args.data,
    }
    if args.out is not None:
        refuse_inputs_inside(args.out, inputs)
    cli_options.check_json_output(args, inputs)
    detector = build_detector(args)
    ids = _ResultIds(detector, args.data, source)
    check_memory(
        detector.config,
        args.batch,
        train=False,
        device=detector.device,
        image_size=detector.image_size,
    )
    with claimed_run_dir(args.out, args.exist_ok, "predict") as out_dir:
        refuse_inputs_inside(out_dir, inputs)
        make_dirs(out_dir)
        stats = _Stats()
        results: list[dict] = []
        writer = None
        show_bar = source.kind in ("folder", "glob", "video") and not args.quiet
        bar = progress_bar(
            None,
            not show_bar,
            total=len(source) or None,
            desc=f"predict {source.kind}",
            unit="img" if not source.is_video else "frame",
            leave=False,
        )
        t_start = time.perf_counter()
        pending = []
        interrupted = False
        try:
            for frame in source:
                bar.update(1)
                if frame.error:
                    stats.skipped += 1
                    print(f"warning: {frame.error}", file=sys.stderr)
                    continue
                pending.append(frame)
                if len(pending) >= args.batch:
                    writer = _process(
                        detector, pending, source, out_dir, args, results, stats, writer, ids
                    )
                    pending = []
            if pending:
                writer = _process(
                    detector, pending, source, out_dir, args, results, stats, writer, ids
                )
        # Ctrl+C: the way a webcam stream ends; elsewhere keep what is done
        except KeyboardInterrupt:
            interrupted = source.kind != "webcam"
            if interrupted and writer is not None:
                writer.abort()  # no partial video of a file left behind
                writer = None
        except BaseException:
            if writer is not None:
                writer.abort()  # no partial video left behind
            raise
        finally:
            bar.close()
        if writer is not None:
            stats.video_path, stats.video_codec = writer.close(), writer.codec
            if writer.note:
                print(
                    f"note: {writer.path}: written as {writer.codec}; {writer.note}",
                    file=sys.stderr,
                )
        if stats.images == 0:  # nothing done: no empty results files (the new folder goes)
            if interrupted:
                raise KeyboardInterrupt
            raise DataError(
                f"{args.source}: no image could be read ({stats.skipped} skipped); "
                "fix: see the warnings above for why each was skipped"
            )
        total_s = time.perf_counter() - t_start
        json_path = out_dir / "predictions.json"
        write_json(json_path, results, indent=None)
        if args.save_json:  # COCO results format alone, as val writes it
            write_json(
                out_dir / "results.json",
                [{k: v for k, v in r.items() if k != "file_name"} for r in results],
                indent=None,
            )
        if args.json:
            cli_options.write_json_output(args, results)
        if interrupted:
            unit = "frames" if source.is_video else "images"
            print(
                f"interrupted after {stats.images} of {len(source) or '?'} {unit} ({stats.skipped} skipped); "
                f"their detections are in {json_path}",
                file=sys.stderr,
            )
            raise KeyboardInterrupt
        _print_summary(source, detector, stats, total_s, out_dir, json_path, args.no_save)
        if args.save_json:
            print(
                f"  wrote {out_dir / 'results.json'} (COCO results format, for an evaluation server)"
            )
        return 0


class _Stats:
    def __init__(self) -> None:
        self.images = 0
        self.skipped = 0
        self.per_class: Counter = Counter()
        self.model_s = 0.0
        self.written: set[str] = set()  # annotated image names already written
        self.video_path: Path | None = None
        self.video_codec = ""


def _process(
    detector,
    frames,
    source,
    out_dir: Path,
    args,
    results: list,
    stats: _Stats,
    writer,
    ids: _ResultIds,
):
    import numpy as np

    from ..data.coco import detections_to_coco
    from ..fileio import write_via_temp
    from ..visualize import draw_detections

    t0 = time.perf_counter()
    dets = detector.predict([f.image for f in frames])
    stats.model_s += time.perf_counter() - t0
    for frame, det in zip(frames, dets, strict=True):
        stats.images += 1
        stats.per_class.update(det.names)
        image_id = ids.image_id(frame, source.is_video)
        for d in detections_to_coco(
            image_id,
            np.asarray(det.boxes.tolist()),
            np.asarray(det.scores.tolist()),
            np.asarray(det.labels.tolist()),
            ids.category_ids,
        ):
            results.append({**d, "file_name": frame.name})
        if args.no_save:
            continue
        drawn = draw_detections(frame.image, det.boxes, det.scores, det.labels, detector.names)
        if source.is_video:
            if writer is None:
                from .video import VideoWriter

                stem = Path(source.spec).stem if source.kind == "video" else f"webcam{source.spec}"
                writer = VideoWriter(
                    out_dir / f"{stem}.mp4", source.fps, drawn.size
                )  # out_dir holds no input (run())
            writer.write(np.asarray(drawn))
        else:
            name = (
                frame.name
                if frame.name.lower().endswith((".jpg", ".jpeg", ".png"))
                else Path(frame.name).stem + ".png"
            )
            target = out_dir / name
            if name in stats.written:  # the same file name from two folders of a glob
                target = out_dir / f"{frame.index}_{name}"
            stats.written.add(name)
            options = {"quality": 95} if name.lower().endswith((".jpg", ".jpeg")) else {}
            write_via_temp(target, functools.partial(drawn.save, **options))
    return writer


def _print_summary(
    source, detector, stats: _Stats, total_s: float, out_dir: Path, json_path: Path, no_save: bool
) -> None:
    unit = "frames" if source.is_video else "images"
    counts = ", ".join(f"{name} {n}" for name, n in stats.per_class.most_common()) or "none"
    total = sum(stats.per_class.values())
    per_image_ms = 1000.0 * stats.model_s / max(1, stats.images)
    skipped = f" ({stats.skipped} unreadable, skipped)" if stats.skipped else ""
    print(f"{source.spec}: {stats.images} {unit}{skipped}, {total} detections: {counts}")
    print(
        f"  time: {total_s:.2f} s total, {per_image_ms:.1f} ms per {unit[:-1]} in the detector "
        f"({detector.backend}, {detector.model_name}, input {detector.image_size[0]}x{detector.image_size[1]})"
    )
    saved = (
        ""
        if no_save
        else (
            f"annotated video {stats.video_path} ({stats.video_codec}), "
            if source.is_video
            else f"annotated {unit} in {out_dir}, "
        )
    )
    print(f"  wrote {saved}results {json_path}")
