"""COCO mAP of one checkpoint in every export format, through the CLI a user runs.

    python benchmarks/bench_formats.py --weights runs/demo/1/best.pt \
        --data runs/demo/1/data/data.yaml [--calib-images 200] [--formats ...] [--json out.json]

For each format: ``efficientdet export`` (with its parity check against PyTorch; int8
formats calibrate on ``--calib-images`` images of the dataset's train split), then
``efficientdet val`` on the dataset's val split at ``--conf 0.001`` (the COCO protocol), and the
mAP read back from ``metrics.json``. Prints a markdown table: mAP, mAP@0.5, the difference from
PyTorch and (int8) from the same runtime's float32 file, file size, export time. A format whose
extra is not installed (TFLite: its own engineer's rows) is listed as not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

# name -> (export options, float32 peer for the int8 difference); None: the checkpoint itself
FORMATS: dict[str, tuple[list[str] | None, str | None]] = {
    "pytorch": (None, None),
    "onnx-fp32": (["--format", "onnx"], None),
    "onnx-int8": (["--format", "onnx", "--int8"], "onnx-fp32"),
    "openvino-fp32": (["--format", "openvino"], None),
    "openvino-int8": (["--format", "openvino", "--int8"], "openvino-fp32"),
    "tflite-fp32": (["--format", "tflite"], None),
    "tflite-fp16": (["--format", "tflite", "--fp16"], None),
    "tflite-int8": (["--format", "tflite", "--int8"], "tflite-fp32"),
}


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "efficientdet.cli", *argv], capture_output=True, text=True
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--calib-images", type=int, default=200)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(common.machine_info(), flush=True)
    root = tempfile.mkdtemp(prefix="bench-formats-")
    rows: dict[str, dict] = {}
    for name in args.formats:
        options, _ = FORMATS[name]
        row: dict = {"format": name}
        weights = args.weights
        if options is not None:
            out = os.path.join(root, name)
            argv = ["export", "--weights", args.weights, *options, "--out", out, "--quiet"]
            if "--int8" in options:
                argv += ["--calib-data", args.data, "--calib-images", str(args.calib_images)]
            t0 = time.perf_counter()
            proc = cli(*argv)
            row["export_s"] = round(time.perf_counter() - t0, 1)
            if proc.returncode != 0:
                row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1][:200]
                rows[name] = row
                print(f"{name}: not measured ({row['error']})", flush=True)
                continue
            check = [ln for ln in proc.stdout.splitlines() if ln.startswith("check vs PyTorch")]
            row["check"] = check[0].removeprefix("check vs PyTorch: ") if check else None
            written = [f for f in os.listdir(out) if not f.startswith(".")]
            weights = os.path.join(out, next(f for f in written if not f.endswith(".bin")))
            row["size_mib"] = round(
                sum(os.path.getsize(os.path.join(out, f)) for f in written) / 2**20, 1
            )
        val_out = os.path.join(root, f"val-{name}")
        proc = cli(
            "val", "--weights", weights, "--data", args.data, "--conf", "0.001",
            "--out", val_out, "--quiet", "--workers", "0",
        )  # fmt: skip
        if proc.returncode != 0:
            row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1][:200]
        else:
            with open(os.path.join(val_out, "metrics.json")) as f:
                metrics = json.load(f)
            row["map"], row["map50"] = metrics["stats"]["mAP"], metrics["stats"]["AP50"]
        rows[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    base = rows.get("pytorch", {}).get("map")
    print()
    print(
        "| format | mAP | mAP@0.5 | vs PyTorch | int8 vs its fp32 | file MiB | export s | check at export |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if "map" not in row:
            print(f"| {name} | not measured: {row.get('error', '')} | | | | | | |")
            continue
        peer = rows.get(FORMATS[name][1] or "", {}).get("map")
        vs_base = f"{row['map'] - base:+.4f}" if base is not None else "-"
        vs_peer = f"{row['map'] - peer:+.4f}" if peer is not None else "-"
        print(
            f"| {name} | {row['map']:.4f} | {row['map50']:.4f} | {vs_base} | {vs_peer} | "
            f"{row.get('size_mib', '-')} | {row.get('export_s', '-')} | {row.get('check') or '-'} |"
        )
    if args.json:
        common.write_json(args.json, {"machine": common.machine_info_dict(), "rows": rows})


if __name__ == "__main__":
    main()
