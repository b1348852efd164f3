"""Inference speed side by side with effdet's DetBenchPredict (same machine, same run, same weights).

    python benchmarks/bench_predict.py [--models d0 lite0] [--engines eager onnxruntime onnxruntime-nms
        onnxruntime-int8 openvino openvino-int8 tflite tflite-fp16 tflite-int8] [--calib-data data.yaml]
        [--rounds 3] [--repeats 10] [--threads 2] [--compile] [--json out.json]

Both sides use the fixture weights (tests/fixtures: realistic score spread, so NMS has real
work), batch 1, float32, CPU, ``threads`` intra-op threads, D0 at 512x512 and Lite0 at 320x320.
effdet: ``model(x)`` (network) and ``DetBenchPredict(model)(x)`` (network + top-5000 +
decode + batched NMS, 100 detections), eager and with channels_last, in the peer venv
(benchmarks/peer/peer_predict.py). Ours: ``Detector.raw`` (network) and
``Detector.detect_batch`` (network + top-5000 + decode + class-aware NMS, 100 detections,
score threshold 0) per engine (the Detector of ``efficientdet bench``'s engines,
:func:`efficientdet.deploy.bench.detector_for_engine`). Every measurement runs in a fresh process; the rounds
alternate effdet and ours so that load from other processes hits both alike; the table shows
the median over rounds of each round's median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

# the TFLite engines run in the [tflite] environment (make test-tflite builds it)
TFLITE_PYTHON = os.path.join(common.REPO_ROOT, "benchmarks", "tflite", ".venv", "bin", "python")

MODELS = {  # ours, effdet's, image size
    "d0": ("efficientdet_d0", "tf_efficientdet_d0", 512, "effdet_d0_256.pt"),
    "lite0": ("efficientdet_lite0", "tf_efficientdet_lite0", 320, "effdet_lite0_192x320.pt"),
}


def worker(args) -> None:
    """One measurement of ours in this process; prints one JSON line."""
    import tempfile

    from efficientdet import runtime

    runtime.keep_freed_memory()  # as `efficientdet predict` and `bench` do
    import torch

    from efficientdet import create_model
    from efficientdet.deploy.bench import detector_for_engine
    from efficientdet.weights import load_weights

    common.set_threads(args.threads)
    ours, _, size, fixture = MODELS[args.model]
    ref = torch.load(
        os.path.join(common.REPO_ROOT, "tests", "fixtures", fixture), weights_only=True
    )
    model = create_model(ours, image_size=size).eval()
    load_weights(
        model,
        {k: v.float() if v.is_floating_point() else v for k, v in ref["state_dict_fp16"].items()},
    )
    engine = args.worker
    with tempfile.TemporaryDirectory() as tmp:
        # exported files are kept in --workdir across rounds (exporting is not what is timed)
        det = detector_for_engine(
            engine,
            model,
            args.threads,
            os.path.join(args.workdir, f"{args.model}-{engine}") if args.workdir else tmp,
            args.calib_data,
            reuse=bool(args.workdir),
            max_candidates=5000,
        )
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        if det.backend.name == "torch" and det.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        scales, sizes = torch.ones(1), [(size, size)]
        warm = 15 if engine == "compile" else args.warmup  # compile builds in its first calls
        if args.serve:
            with torch.inference_mode():
                common.serve_timings(lambda: det.detect_batch(x, scales, sizes), warm)
            return
        out = {"impl": "ours", "engine": engine, "model": ours, "image_size": size}
        with torch.inference_mode():
            if det.backend.outputs != "nms":
                out["network"] = common.measure(
                    lambda: det.raw(x), warm, args.repeats, threads=args.threads
                )
            out["end_to_end"] = common.measure(
                lambda: det.detect_batch(x, scales, sizes),
                args.warmup,
                args.repeats,
                threads=args.threads,
            )
            out["num_detections"] = len(det.detect_batch(x, scales, sizes)[0]["scores"])
    out["peak_rss_mb"] = common.peak_rss_mb()
    common.emit_json(out)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: a number of pairs, at least 1")
    return value


def _timing_args(args) -> list[str]:
    """The timing arguments both sides take: repeats, warm-up calls, threads."""
    return [
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]


def _worker_args(args, engine: str, key: str) -> list[str]:
    """Arguments of this script's worker mode for ``engine`` on model ``key``."""
    return [
        "--worker",
        engine,
        "--model",
        key,
        *_timing_args(args),
        *(["--calib-data", args.calib_data] if args.calib_data else []),
        "--workdir",
        args.workdir,
    ]


def _peer_args(args, key: str, extra: list[str]) -> list[str]:
    """Arguments of peer_predict.py for model ``key``."""
    _, peer, size, _ = MODELS[key]
    return [
        "--model",
        peer,
        "--image-size",
        str(size),
        "--batch",
        "1",
        *_timing_args(args),
        "--weights",
        "fixture",
        *extra,
    ]


def paired(args) -> None:
    """--paired: per model and engine, ``args.paired`` alternating pairs of bursts."""
    import tempfile

    if not common.peer_available():
        raise SystemExit("--paired needs effdet: bash benchmarks/peer/setup_peer.sh")
    print(common.machine_info())
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-predict-")
    print(
        "| model | engine | ours ms (median) | effdet eager ms (median) | ours / effdet "
        "(median of pairs) | p10 - p90 of pairs |"
    )
    print("|---|---|---|---|---|---|")
    results = []
    for key in args.models:
        for engine in args.engines:
            with (
                common.TimingServer(
                    os.path.join(common.PEER_DIR, "peer_predict.py"),
                    [*_peer_args(args, key, []), "--serve"],
                    python=common.PEER_PYTHON,
                ) as peer,
                common.TimingServer(
                    os.path.abspath(__file__),
                    [*_worker_args(args, engine, key), "--serve"],
                    python=TFLITE_PYTHON if engine.startswith("tflite") else None,
                ) as ours,
            ):
                res = common.paired_ratios(ours, peer, args.paired)
            name, _, size, _ = MODELS[key]
            results.append({"model": name, "image_size": size, "engine": engine, **res})
            print(
                f"| {name} {size} | {engine} | {res['ours_median_ms']:.1f} | "
                f"{res['peer_median_ms']:.1f} | **{res['ratio_median']:.3f}x** | "
                f"{res['ratio_p10']:.3f} - {res['ratio_p90']:.3f} |",
                flush=True,
            )
    if args.json:
        common.write_json(args.json, {"machine": common.machine_info_dict(), "paired": results})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["d0", "lite0"], choices=list(MODELS))
    ap.add_argument("--engines", nargs="+", default=["eager", "onnxruntime", "onnxruntime-nms"])
    ap.add_argument(
        "--compile", action="store_true", help="also time torch.compile (slow to build)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--calib-data",
        default=None,
        help="calibration images of the -int8 engines (default: 8 random-pixel images)",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--workdir",
        default=None,
        help="keep the exported files here and reuse those already there (default: a new "
        "temporary folder); a first run with --rounds 1 --repeats 1 exports them untimed",
    )
    ap.add_argument(
        "--paired",
        type=_positive,
        default=0,
        metavar="PAIRS",
        help="instead of rounds: keep effdet (eager) and each engine alive in two processes and "
        "time PAIRS pairs of short end-to-end bursts in alternation (common.paired_ratios)",
    )
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.paired:
        paired(args)
        return
    engines = list(args.engines) + (
        ["compile"] if args.compile and "compile" not in args.engines else []
    )
    print(common.machine_info())
    import tempfile

    # exported files are shared by the rounds
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-predict-")
    os.makedirs(args.workdir, exist_ok=True)
    rows: dict[tuple, list[dict]] = {}
    for rnd in range(args.rounds):
        for key in args.models:
            jobs = [("effdet", "eager", []), ("effdet", "channels_last", ["--channels-last"])]
            jobs += [("ours", e, None) for e in engines]
            for impl, engine, extra in jobs:
                if impl == "effdet":
                    if not common.peer_available():
                        continue
                    res = common.run_peer("peer_predict.py", _peer_args(args, key, extra))
                else:
                    res = common.run_python(
                        os.path.abspath(__file__),
                        python=TFLITE_PYTHON if engine.startswith("tflite") else None,
                        args=_worker_args(args, engine, key),
                    )
                rows.setdefault((key, impl, engine), []).append(res)
                net = res.get("network", {}).get("median_ms")
                print(
                    f"round {rnd + 1} {key} {impl:6s} {engine:15s} network {net if net is None else round(net, 1)} ms, "
                    f"end to end {res['end_to_end']['median_ms']:.1f} ms",
                    flush=True,
                )
    summary = []
    print()
    print(
        "| model | impl | engine | network ms (median) | end to end ms (median) | end to end p90 | vs effdet end to end | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key in args.models:
        base = rows.get((key, "effdet", "eager"))
        base_e2e = statistics.median(r["end_to_end"]["median_ms"] for r in base) if base else None
        for (k, impl, engine), rs in rows.items():
            if k != key:
                continue
            net = [r["network"]["median_ms"] for r in rs if "network" in r]
            e2e = statistics.median(r["end_to_end"]["median_ms"] for r in rs)
            p90 = statistics.median(r["end_to_end"]["p90_ms"] for r in rs)
            peak = max(r.get("_peak_rss_mb") or 0 for r in rs)
            ratio = f"{e2e / base_e2e:.2f}x" if base_e2e else "-"
            netm = f"{statistics.median(net):.1f}" if net else "(in graph)"
            print(
                f"| {MODELS[key][0]} {MODELS[key][2]} | {impl} | {engine} | {netm} | {e2e:.1f} | {p90:.1f} | {ratio} | {peak:.0f} |"
            )
            summary.append(
                {
                    "model": MODELS[key][0],
                    "image_size": MODELS[key][2],
                    "impl": impl,
                    "engine": engine,
                    "network_ms": statistics.median(net) if net else None,
                    "end_to_end_ms": e2e,
                    "end_to_end_p90_ms": p90,
                    "ratio_to_effdet": e2e / base_e2e if base_e2e else None,
                    "peak_rss_mb": peak,
                    "rounds": len(rs),
                }
            )
    if args.json:
        common.write_json(
            args.json,
            {
                "machine": common.machine_info_dict(),
                "threads": args.threads,
                "results": summary,
                "raw": {"|".join(k): v for k, v in rows.items()},
            },
        )


if __name__ == "__main__":
    main()
