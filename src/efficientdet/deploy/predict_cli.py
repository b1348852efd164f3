"""``efficientdet predict --weights W --source S``: detect, draw, write COCO-style results.

W: our checkpoint, an exported ``.onnx`` file, or with ``--model NAME`` "coco" / an effdet
state_dict. S: an image, a folder, a glob, a video file or a webcam index.

Writes to ``--out`` (default ``runs/predict``): annotated images (same file names) or an
annotated ``<video>.mp4`` (unless ``--no-save``), and ``predictions.json``: a COCO results list
``[{"image_id", "file_name", "category_id", "bbox": [x, y, w, h], "score"}]`` in original
pixels. ``image_id`` is the file stem when it is a number (COCO's ``000000397133.jpg`` ->
397133), else the 1-based position in the source (video: frame number + 1);
``category_id`` the checkpoint's category ids when it has them, else the class index.
Unreadable images are reported and skipped; a summary per source is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from ..errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="checkpoint (.pt), exported .onnx, or with --model: 'coco' / a weights file")
    parser.add_argument("--model", default=None, help="model name when --weights is not our checkpoint (e.g. efficientdet_d0)")
    parser.add_argument("--source", required=True, help="image, folder, glob ('imgs/*.jpg'), video file or webcam index")
    parser.add_argument("--conf", type=float, default=0.25, help="minimum score (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold (default 0.5)")
    parser.add_argument("--max-det", type=int, default=100, help="detections per image (default 100)")
    parser.add_argument("--classes", nargs="+", default=None, help="keep only these classes (names or indices)")
    parser.add_argument("--image-size", type=int, nargs="+", default=None, help="model input H [W] (default the model's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--half", action="store_true", help="bf16 on CPU, fp16 on CUDA")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    parser.add_argument("--no-save", action="store_true", help="do not write annotated images/video (predictions.json is still written)")


def build_detector(args: argparse.Namespace):
    """The Detector the CLI options describe (shared with export/bench)."""
    from .detector import Detector

    options = dict(conf=args.conf, iou=args.iou, max_det=args.max_det, classes=args.classes,
                   image_size=args.image_size, device=args.device, half=args.half,
                   threads=getattr(args, "threads", None))
    if args.model:
        return Detector.from_name(args.model, weights=args.weights, **options)
    return Detector(args.weights, **options)


def _image_id(name: str, position: int) -> int:
    stem = Path(name).stem
    return int(stem) if stem.isdigit() else position + 1


def run(args: argparse.Namespace) -> int:
    from ..resources import check_memory
    from .sources import open_source

    if args.batch < 1:
        from ..errors import ConfigError

        raise ConfigError(f"--batch {args.batch}: need at least 1")
    source = open_source(args.source)  # unknown source / unreadable video fail before the model loads
    detector = build_detector(args)
    check_memory(detector.config, args.batch, train=False, device=detector.device, image_size=detector.image_size)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = _Stats()
    results: list[dict] = []
    writer = None
    show_bar = source.kind in ("folder", "glob", "video")
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(source) or None, desc=f"predict {source.kind}", unit="img" if not source.is_video else "frame",
                   disable=not show_bar, file=sys.stderr, leave=False)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None
    t_start = time.perf_counter()
    pending = []
    try:
        for frame in source:
            if bar is not None:
                bar.update(1)
            if frame.error:
                stats.skipped += 1
                print(f"warning: {frame.error}", file=sys.stderr)
                continue
            pending.append(frame)
            if len(pending) >= args.batch:
                writer = _process(detector, pending, source, out_dir, args, results, stats, writer)
                pending = []
        if pending:
            writer = _process(detector, pending, source, out_dir, args, results, stats, writer)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.release()
    total_s = time.perf_counter() - t_start
    json_path = out_dir / "predictions.json"
    json_path.write_text(json.dumps(results))
    if stats.images == 0:
        raise DataError(f"{args.source}: no image could be read ({stats.skipped} skipped); see the warnings above")
    _print_summary(source, detector, stats, total_s, out_dir, json_path, args.no_save)
    return 0


class _Stats:
    def __init__(self) -> None:
        self.images = 0
        self.skipped = 0
        self.per_class: Counter = Counter()
        self.model_s = 0.0
        self.written: set[str] = set()  # annotated image names already written
        self.video_path: Path | None = None


def _process(detector, frames, source, out_dir: Path, args, results: list, stats: _Stats, writer):
    from .visualize import draw_detections

    t0 = time.perf_counter()
    dets = detector.predict([f.image for f in frames])
    stats.model_s += time.perf_counter() - t0
    for frame, det in zip(frames, dets):
        stats.images += 1
        stats.per_class.update(det.names)
        image_id = _image_id(frame.name, frame.index) if not source.is_video else frame.index + 1
        boxes = det.boxes.tolist()
        for (x1, y1, x2, y2), score, label in zip(boxes, det.scores.tolist(), det.labels.tolist()):
            results.append({
                "image_id": image_id, "file_name": frame.name, "category_id": detector.category_id(label),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(score, 5),
            })
        if args.no_save:
            continue
        drawn = draw_detections(frame.image, det.boxes, det.scores, det.labels, detector.names)
        if source.is_video:
            import cv2
            import numpy as np

            if writer is None:
                stem = Path(source.spec).stem if source.kind == "video" else f"webcam{source.spec}"
                path = out_dir / f"{stem}.mp4"
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), source.fps, drawn.size)
                if not writer.isOpened():
                    raise DataError(f"{path}: OpenCV cannot write an mp4v video here; use --no-save or another --out")
                stats.video_path = path
            writer.write(np.ascontiguousarray(np.asarray(drawn)[:, :, ::-1]))
        else:
            name = frame.name if frame.name.lower().endswith((".jpg", ".jpeg", ".png")) else Path(frame.name).stem + ".png"
            target = out_dir / name
            if name in stats.written:  # the same file name from two folders of a glob
                target = out_dir / f"{frame.index}_{name}"
            stats.written.add(name)
            drawn.save(target, quality=95) if name.lower().endswith((".jpg", ".jpeg")) else drawn.save(target)
    return writer


def _print_summary(source, detector, stats: _Stats, total_s: float, out_dir: Path, json_path: Path, no_save: bool) -> None:
    unit = "frames" if source.is_video else "images"
    counts = ", ".join(f"{name} {n}" for name, n in stats.per_class.most_common()) or "none"
    total = sum(stats.per_class.values())
    per_image_ms = 1000.0 * stats.model_s / max(1, stats.images)
    skipped = f" ({stats.skipped} unreadable, skipped)" if stats.skipped else ""
    print(f"{source.spec}: {stats.images} {unit}{skipped}, {total} detections: {counts}")
    print(f"  time: {total_s:.2f} s total, {per_image_ms:.1f} ms per {unit[:-1]} in the detector "
          f"({detector.backend}, {detector.model_name}, input {detector.image_size[0]}x{detector.image_size[1]})")
    saved = "" if no_save else (f"annotated video {stats.video_path}, " if source.is_video else f"annotated {unit} in {out_dir}, ")
    print(f"  wrote {saved}results {json_path}")
