"""``efficientdet bench``: latency, throughput and peak memory of inference per engine and batch.

    efficientdet bench --model efficientdet_d0 --batches 1 8 --engine eager onnxruntime compile \
        [--image-size 512] [--threads 2] [--repeats 10] [--json out.json]

Engines: ``eager`` (PyTorch, BN folded, channels_last, inference_mode), ``onnxruntime`` (the raw
ONNX export in ONNX Runtime with all graph optimisations; decode + NMS in PyTorch),
``onnxruntime-nms`` (decode + NMS inside the ONNX graph), ``onnxruntime-int8`` (the int8 QDQ
export), ``openvino`` / ``openvino-int8`` (the OpenVINO IR, float32 / NNCF int8, CPU plugin),
``tflite`` / ``tflite-fp16`` / ``tflite-int8`` (the TFLite export, float32 / float16 weights /
full-integer int8, in the LiteRT interpreter; needs the ``tflite`` extra),
``compile`` (``torch.compile`` of the eager model), ``tensorrt`` (the ONNX export through ONNX
Runtime's TensorRT provider; NVIDIA GPU only). The int8 engines calibrate on ``--calib-data``
(default: 8 random-pixel images, enough for timing, not for accuracy: measure mAP with
``efficientdet val`` on a file exported with your data). Parts: ``network`` (normalised batch -> raw outputs), ``end_to_end`` (network +
top-k, decode, class-aware NMS, 100 detections, like effdet's DetBenchPredict) and
``from_image`` (end to end plus letterboxing a 640x480 uint8 image per batch item).

``--weights FILE`` from ``efficientdet export`` times the file in its own runtime, one row
labelled by it (``--engine tensorrt`` also runs an ONNX file; any other engine is refused).

Weights are random unless ``--weights`` is given (cost does not depend on the values; NMS runs
over all 5000 candidates with score threshold 0, as DetBenchPredict does). Each (engine, batch)
runs in a fresh process, so peak memory (peak RSS) is its own.

The parts are timed in interleaved rounds (network, end_to_end, from_image, network, ...),
after all of them are warmed up: timed one after the other, a part that ran while the machine
was busier (another job, OpenMP threads spinning, a cold allocator) could show a network time
larger than the end-to-end time that contains it. Idle OpenMP threads sleep (the CLI's
:func:`efficientdet.runtime.prepare_heavy_work`, also in the per-engine processes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from . import timing
from .timing import peak_rss_mb, summarize, usable_cores

ENGINES = (
    "eager",
    "onnxruntime",
    "onnxruntime-nms",
    "onnxruntime-int8",
    "openvino",
    "openvino-int8",
    "tflite",
    "tflite-fp16",
    "tflite-int8",
    "compile",
    "tensorrt",
)
DEFAULT_MODEL = "efficientdet_d0"  # without --model and --weights
DEFAULT_ENGINES = ["eager", "onnxruntime"]  # without --engine (an exported --weights: its own)
# file kind (backends.file_kind) -> the engine that runs it; ONNX files also run on "tensorrt"
FILE_ENGINE = {
    "onnx": "onnxruntime",
    "openvino": "openvino",
    "tflite": "tflite",
    "torchscript": "torchscript",
}
PARTS = ("network", "end_to_end", "from_image")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .. import cli_options

    parser.add_argument(
        "--model",
        default=None,
        help="registered model name (default: the --weights checkpoint's model, else efficientdet_d0)",
    )
    parser.add_argument(
        "--weights", default=None, help="optional: our checkpoint or (with --model) a weights file"
    )
    cli_options.add(parser, "batch")
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="several batch sizes to time one after the other (instead of --batch)",
    )
    parser.add_argument(
        "--engine",
        nargs="+",
        default=None,
        choices=ENGINES,
        help="engines to time (default eager onnxruntime; an exported --weights file: its runtime)",
    )
    cli_options.add(parser, "image_size")
    parser.add_argument("--num-classes", type=int, default=90)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for torch and ONNX Runtime (default: usable cores)",
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed runs per measurement (default 10)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument(
        "--calib-data",
        default=None,
        metavar="DATA",
        help="calibration images of the -int8 engines (default: 8 random-pixel images, timing only)",
    )
    cli_options.add(parser, "json", "quiet")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure everything in this process (peak memory then accumulates)",
    )


def build_detector(
    engine: str,
    model_name: str,
    image_size,
    num_classes: int,
    threads: int | None,
    weights: str | None = None,
    workdir: str | None = None,
    calib_data: str | None = None,
):
    """The Detector an engine uses (conf 0, IoU 0.5, 100 detections, 5000 candidates)."""
    import torch

    from ..config import parse_image_size
    from ..factory import create_model
    from .backends import is_exported
    from .detector import Detector

    opts: dict[str, Any] = {"conf": 0.0, "iou": 0.5, "max_det": 100}

    if weights and is_exported(weights):  # its own runtime, or TensorRT (run checks --engine)
        return Detector(
            weights, threads=threads, engine="tensorrt" if engine == "tensorrt" else None, **opts
        )
    if weights:  # our checkpoint carries its model; other weights need model_name
        det = (
            Detector.from_name(
                model_name, weights=weights, image_size=image_size, fuse=False, channels_last=False
            )
            if model_name
            else Detector(weights, image_size=image_size, fuse=False, channels_last=False)
        )
        model = det.model
    else:
        torch.manual_seed(0)
        model = create_model(
            model_name or DEFAULT_MODEL,
            num_classes=num_classes,
            image_size=parse_image_size(image_size, "--image-size"),
        ).eval()
    return detector_for_engine(engine, model, threads, workdir, calib_data)


def detector_for_engine(
    engine: str,
    model,
    threads: int | None,
    workdir: str | None = None,
    calib_data: str | None = None,
    reuse: bool = False,
    **options,
):
    """The Detector that runs ``model`` on ``engine`` (exported into ``workdir`` where the engine
    needs a file; with ``reuse`` a file already there from an earlier call is taken as is);
    ``options`` default to conf 0, IoU 0.5, 100 detections."""
    from .detector import Detector

    opts: dict[str, Any] = {"conf": 0.0, "iou": 0.5, "max_det": 100, **options}
    if engine == "eager":
        return Detector(model=model, **opts)
    if engine == "compile":
        return Detector(model=model, compile=True, **opts)
    workdir = workdir or tempfile.mkdtemp(prefix="efficientdet-bench-")
    suffix = {"openvino": ".xml", "tflite": ".tflite"}.get(engine.split("-")[0], ".onnx")
    path = os.path.join(workdir, engine + suffix)
    calibration = (
        bench_calibration(model, workdir, calib_data)
        if engine.endswith("-int8") and not (reuse and os.path.exists(path))
        else None
    )
    if reuse and os.path.exists(path):
        pass
    elif engine.startswith("openvino"):
        from .export_openvino import export_openvino

        export_openvino(model, path, calibration=calibration)
    elif engine.startswith("tflite"):
        from .export_tflite import export_tflite

        precision = engine.split("-")[1] if "-" in engine else "fp32"
        export_tflite(model, path, precision=precision, calibration=calibration)
    else:
        from .export import export_onnx

        export_onnx(
            model,
            path,
            dynamic_batch=calibration is None,
            nms=engine == "onnxruntime-nms",
            conf=float(opts["conf"]),
            iou=float(opts["iou"]),
            max_det=int(opts["max_det"]),
            calibration=calibration,
        )
    if engine.startswith(("openvino", "tflite")):
        return Detector(path, threads=threads, **opts)
    return Detector(
        path, threads=threads, engine="tensorrt" if engine == "tensorrt" else None, **opts
    )


def bench_calibration(model, workdir: str, calib_data: str | None = None):
    """The calibration set of an int8 engine: ``calib_data``, else 8 random-pixel JPEGs written
    into ``workdir`` (timing only: int8 speed does not depend on the images' content)."""
    import numpy as np
    from PIL import Image

    from .calibration import calibration_set

    if calib_data is None:
        calib_data = os.path.join(workdir, "calibration")
        os.makedirs(calib_data, exist_ok=True)
        rng = np.random.RandomState(0)
        for i in range(8):
            pixels = rng.randint(0, 256, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(calib_data, f"{i}.jpg"))
    cfg = model.config
    return calibration_set(calib_data, tuple(cfg.image_size), cfg.mean, cfg.std, 200)


def measure_engine(engine: str, batch: int, args) -> list[dict]:
    """Time the requested parts for one engine and batch size in this process."""
    import numpy as np
    import torch

    from ..resources import check_memory

    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="efficientdet-bench-") as workdir:
        t0 = time.perf_counter()
        det = build_detector(
            engine,
            args.model,
            args.image_size,
            args.num_classes,
            threads,
            args.weights,
            workdir,
            getattr(args, "calib_data", None),
        )
        setup_s = time.perf_counter() - t0
        check_memory(det.config, batch, train=False, device=det.device, image_size=det.image_size)
        h, w = det.image_size
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, h, w, generator=g)
        if det.backend.name == "torch":
            x = x.to(det.dtype)
            if det.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        scales = torch.ones(batch)
        sizes = [(h, w)] * batch
        image = np.random.RandomState(0).randint(0, 256, (480, 640, 3), dtype=np.uint8)
        images = [image] * batch
        runs: dict[str, Callable[[], object] | None] = {
            "network": lambda: det.raw(x),
            "end_to_end": lambda: det.detect_batch(x, scales, sizes),
            "from_image": lambda: det.predict(images),
        }
        if det.backend.outputs == "nms":
            runs["network"] = None  # the graph always includes NMS
        parts = {part: runs[part] for part in args.parts if runs.get(part) is not None}
        with torch.inference_mode():
            times = time_interleaved(
                parts,
                args.warmup,
                args.repeats,
                quiet=getattr(args, "quiet", False),
                desc=f"bench {engine} batch {batch}",
            )
        from .backends import is_exported

        exported = bool(args.weights) and is_exported(args.weights)
        rows = []
        for part, part_times in times.items():
            stats = summarize(part_times)
            rows.append(
                {
                    "engine": det.backend.name if exported else engine,  # a file: what ran it
                    "backend": det.backend.name,
                    "batch": batch,
                    "image_size": list(det.image_size),
                    "part": part,
                    "model": det.model_name,
                    **stats,
                    "images_per_s": 1000.0 * batch / stats["median_ms"],
                    "peak_rss_mb": peak_rss_mb(),
                    "setup_s": round(setup_s, 2),
                    "threads": threads,
                }
            )
        return rows


def time_interleaved(
    parts: dict, warmup: int, repeats: int, quiet: bool = False, desc: str = "bench"
) -> dict[str, list[float]]:
    """:func:`efficientdet.deploy.timing.time_interleaved` with a tqdm bar over the rounds."""
    from ..progress import bar

    return timing.time_interleaved(
        parts,
        warmup,
        repeats,
        rounds=lambda span: bar(span, quiet, desc=desc, unit="round", leave=False),
    )


def _child(engine: str, batch: int, args) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "efficientdet.cli",
        "bench",
        "--in-process",
        *(["--model", args.model] if args.model else []),
        "--engine",
        engine,
        "--batch",
        str(batch),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--num-classes",
        str(args.num_classes),
        "--parts",
        *args.parts,
        "--quiet",
    ]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.weights:
        cmd += ["--weights", args.weights]
    if args.calib_data:
        cmd += ["--calib-data", args.calib_data]
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        proc = subprocess.run([*cmd, "--json", out], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            user_error = proc.returncode == 2 and tail[0].startswith(
                "error: "
            )  # efficientdet.cli's one line
            return [
                {
                    "engine": engine,
                    "batch": batch,
                    "part": "error",
                    "error": tail[0],
                    "user_error": user_error,
                }
            ]
        with open(out) as f:
            return json.load(f)["results"]
    finally:
        os.unlink(out)


def format_table(results: list[dict]) -> str:
    head = f"{'engine':<16} {'batch':>5} {'part':<11} {'median ms':>10} {'p90 ms':>9} {'img/s':>8} {'peak MB':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.get("part") == "error":
            lines.append(f"{r['engine']:<16} {r['batch']:>5} failed: {r['error']}")
            continue
        peak = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"
        lines.append(
            f"{r['engine']:<16} {r['batch']:>5} {r['part']:<11} {r['median_ms']:>10.1f} {r['p90_ms']:>9.1f} "
            f"{r['images_per_s']:>8.1f} {peak:>8}"
        )
    return "\n".join(lines)


def engines_for_file(weights: str, engines: list[str] | None) -> list[str]:
    """The engines that time an exported ``weights`` file: its own runtime (the default), or for
    ONNX also ``tensorrt``; one line refusing any other (it would time the file's runtime under
    another engine's name)."""
    from ..errors import ConfigError
    from .backends import file_kind

    kind = file_kind(weights)
    own = FILE_ENGINE[kind]
    runs = [own, "tensorrt"] if kind == "onnx" else [own]
    for engine in engines or []:
        if engine not in runs:
            raise ConfigError(
                f"--engine {engine}: {weights} is an exported {kind} file, which runs in "
                f"{' or '.join(runs)}; fix: drop --engine, or give the checkpoint it came from "
                "to compare engines"
            )
    return list(dict.fromkeys(engines or [own]))


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import cli_options
    from ..config import resolve_model_name
    from ..errors import ConfigError
    from ..progress import bar
    from .backends import is_exported

    args.model = resolve_model_name(args.model) if args.model else None
    cli_options.check_json_output(args, {"weights file": args.weights})
    batches = args.batches or [args.batch]
    if min(batches) < 1 or args.repeats < 1:
        raise ConfigError("--batch/--batches and --repeats must be at least 1")
    if args.weights and is_exported(args.weights):
        args.engine = engines_for_file(args.weights, args.engine)
    else:
        args.engine = args.engine or list(DEFAULT_ENGINES)
    results: list[dict] = []
    jobs = [(e, b) for e in args.engine for b in batches]
    progress = bar(jobs, args.quiet or len(jobs) == 1, desc="bench", unit="run")
    for engine, batch in progress:
        progress.set_postfix_str(f"{engine} batch {batch}")
        results += (
            measure_engine(engine, batch, args) if args.in_process else _child(engine, batch, args)
        )
    failed = [r for r in results if r.get("part") == "error"]
    if failed and len(failed) == len(results) and all(r.get("user_error") for r in failed):
        # every measurement met the same kind of user error (bad weights, a missing extra...):
        # that one line, exit 2, without an empty table
        raise ConfigError(failed[0]["error"].removeprefix("error: "))
    sizes = {"x".join(map(str, r["image_size"])) for r in results if r.get("image_size")}
    hw = sizes.pop() if len(sizes) == 1 else args.image_size or None  # a file: its own size
    measured = {
        r["model"] for r in results if r.get("model")
    }  # what ran: a checkpoint's or a file's own model
    args.model = (
        measured.pop()
        if len(measured) == 1
        else args.model or (DEFAULT_MODEL if not args.weights else None)
    )
    summary = {
        "model": args.model,
        "image_size": hw,
        "threads": args.threads or usable_cores(),
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        "results": results,
    }
    if not args.in_process or len(jobs) > 1 or not args.json:
        print(
            f"{args.model}, input {hw or 'default'}, threads {summary['threads']}, {args.repeats} runs (median / p90)"
        )
        print(format_table(results))
    if args.json:
        cli_options.write_json_output(args, summary)
    return 1 if failed and len(failed) == len(results) else 0
