"""The GPU suite of issue #16 in one run under a time budget (started by benchmarks/gpu_suite.sh).

    python benchmarks/gpu_suite.py --out DIR [--budget-s 540] [--stages env tests train infer ddp memory]
    python benchmarks/gpu_suite.py --out DIR --dry-run      # every stage on the CPU, tiny sizes

Stages, in order (each has its own share of the budget; a job that would start past its stage's
share or the whole budget is recorded as "not run", never dropped):

* env: GPU model, memory, driver, torch / CUDA / cuDNN, ONNX Runtime providers, TensorRT, effdet.
* tests: ``pytest -m cuda tests/test_cuda.py`` (results per test from its JUnit XML).
* train: images/s and peak memory of one training step, D0 512 and D4 1024, bf16 / fp16 / fp32,
  ours (benchmarks/gpu_bench.py) then effdet's DetBenchTrain (benchmarks/peer/peer_gpu.py) at the
  batch ours reached: the batch starts large and halves on out-of-memory.
* infer: D0 batch 1 end-to-end latency (eager, CUDA graph, compile, ONNX Runtime GPU), D0 batch 32
  bf16 throughput, D7x batch 1; effdet's DetBenchPredict beside them.
* ddp: ``torchrun --standalone --nproc_per_node 1 -m efficientdet train`` on the GPU (a small
  synthetic dataset): the launcher path end to end (NCCL + SyncBatchNorm run in the tests stage).
* memory: gradient checkpointing on and off, D4 1024 and D6 1280, bf16: peak memory, step time.

Writes ``DIR/gpu_suite.json`` (rewritten whole after every job, temp name + rename) and
``DIR/gpu_suite.log`` (every command and its output, appended as it runs), and prints a summary table.
Each job runs in its own process (peak memory per job); its last stdout line is its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

STAGES = ("env", "tests", "train", "infer", "ddp", "memory")
# seconds of the whole budget each stage may use (scaled to --budget-s)
SHARES = {"env": 10, "tests": 130, "train": 150, "infer": 130, "ddp": 40, "memory": 80}
PEER_NAMES = {
    "efficientdet_d0": "tf_efficientdet_d0",
    "efficientdet_d4": "tf_efficientdet_d4",
    "efficientdet_d6": "tf_efficientdet_d6",
    "efficientdet_d7x": "tf_efficientdet_d7x",
    "efficientdet_lite0": "tf_efficientdet_lite0",
}


class Suite:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "gpu_suite.log"
        self.log_file = open(self.log_path, "a", encoding="utf-8")
        self.t_start = time.monotonic()
        self.device = "cpu" if args.dry_run else "cuda"
        self.report = {
            "dry_run": args.dry_run,
            "budget_s": args.budget_s,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "stages": {},
        }
        total = sum(SHARES[s] for s in STAGES)
        self.share = {s: args.budget_s * SHARES[s] / total for s in STAGES}
        self.peer_python = self._peer_python()

    # -- bookkeeping
    def log(self, text: str) -> None:
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def save(self) -> None:
        import common

        self.report["elapsed_s"] = round(self.elapsed(), 1)
        common.write_json(self.out / "gpu_suite.json", self.report)

    def _peer_python(self) -> str | None:
        """The peer's interpreter: $EFFICIENTDET_PEER_PYTHON, else benchmarks/peer/.venv, else this
        Python when it can import effdet (the GPU machine, with the carried wheels)."""
        import common

        for candidate in (
            os.environ.get("EFFICIENTDET_PEER_PYTHON"),
            common.PEER_PYTHON if common.peer_available() else None,
        ):
            if candidate:
                return candidate
        ok = (
            subprocess.run([sys.executable, "-c", "import effdet"], capture_output=True).returncode
            == 0
        )
        return sys.executable if ok else None

    # -- running one job
    def run_job(
        self, stage: str, name: str, cmd: list[str], limit: float, env: dict | None = None
    ) -> dict:
        """Run ``cmd`` with a time limit (the smaller of ``limit``, the stage's and the budget's
        remainder); returns its last-line JSON (or the failure) and records it under the stage."""
        rows = self.report["stages"].setdefault(stage, {"jobs": []})["jobs"]
        left = min(
            limit, self.stage_deadline - time.monotonic(), self.args.budget_s - self.elapsed()
        )
        if left < 5:
            row = {"job": name, "status": "not run", "reason": "stage or suite time limit reached"}
            rows.append(row)
            self.log(f"[{stage}] {name}: not run (time limit)")
            self.save()
            return row
        self.log(
            f"[{stage}] {name}: $ {' '.join(shlex.quote(c) for c in cmd)}  (limit {left:.0f} s)"
        )
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=left,
                cwd=ROOT,
                env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
            )
            wall = time.monotonic() - t0
            self.log_file.write(proc.stdout[-20000:] + proc.stderr[-20000:] + "\n")
            row = {"job": name, "rc": proc.returncode, "wall_s": round(wall, 1)}
            lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
            try:
                result = json.loads(lines[-1]) if lines else None
            except ValueError:
                result = None
            if isinstance(result, dict):
                row["result"] = result
            row["status"] = "ok" if proc.returncode == 0 else "failed"
            if proc.returncode != 0:
                row["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        except subprocess.TimeoutExpired as exc:
            row = {"job": name, "status": "timeout", "wall_s": round(time.monotonic() - t0, 1)}
            self.log_file.write(
                str(exc.stdout or "")[-5000:] + str(exc.stderr or "")[-5000:] + "\n"
            )
        rows.append(row)
        self.log(
            f"[{stage}] {name}: {row['status']} in {row.get('wall_s', 0)} s {_brief(row.get('result'))}"
        )
        self.save()
        return row

    def begin(self, stage: str) -> None:
        self.stage_deadline = time.monotonic() + self.share[stage]
        self.report["stages"].setdefault(stage, {"jobs": []})["share_s"] = round(
            self.share[stage], 1
        )
        self.log(f"== {stage} (up to {self.share[stage]:.0f} s; {self.elapsed():.0f} s elapsed)")

    # -- the jobs of a measurement
    def bench(
        self, impl: str, task: str, model: str, size: int, batch: int, precision: str, **opts
    ) -> list[str]:
        a = self.args
        script = BENCH / "gpu_bench.py" if impl == "ours" else BENCH / "peer" / "peer_gpu.py"
        python = sys.executable if impl == "ours" else self.peer_python
        cmd = [
            python,
            str(script),
            task,
            "--model",
            model if impl == "ours" else PEER_NAMES[model],
            "--image-size",
            str(size),
            "--batch",
            str(batch),
            "--precision",
            precision,
            "--device",
            self.device,
        ]
        if task == "train":
            cmd += ["--steps", str(opts.pop("steps", a.steps)), "--warmup", str(a.warmup)]
        else:
            cmd += ["--repeats", str(opts.pop("repeats", a.repeats)), "--warmup", str(a.warmup)]
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            cmd += (
                [flag]
                if value is True
                else [flag, str(value)]
                if value not in (None, False)
                else []
            )
        return cmd

    def fitting(
        self,
        stage: str,
        impl: str,
        task: str,
        model: str,
        size: int,
        batch: int,
        precision: str,
        limit: float,
        min_batch: int = 1,
        **opts,
    ) -> dict:
        """Run at ``batch``, halving on out-of-memory down to ``min_batch``; the last row."""
        while True:
            label = (
                f"{impl} {task} {model}@{size} b{batch} {precision}"
                + "".join(f" {k}" for k, v in opts.items() if v is True)
                + "".join(f" {k}={v}" for k, v in opts.items() if v not in (True, False, None))
            )
            if impl == "effdet" and (self.peer_python is None or self.args.no_peer):
                reason = (
                    "--no-peer"
                    if self.args.no_peer
                    else "effdet not importable (run benchmarks/gpu_prepare.sh and carry .whl)"
                )
                row = {"job": label, "status": "not run", "reason": reason}
                self.report["stages"][stage]["jobs"].append(row)
                self.log(f"[{stage}] {label}: not run (no effdet)")
                return row
            row = self.run_job(
                stage,
                label,
                self.bench(impl, task, model, size, batch, precision, **dict(opts)),
                limit,
            )
            if not (row.get("result") or {}).get("oom") or batch <= min_batch:
                return row
            batch //= 2

    # -- stages
    def stage_env(self) -> None:
        row = self.run_job(
            "env",
            "environment",
            [sys.executable, str(BENCH / "gpu_bench.py"), "env", "--device", self.device],
            60,
        )
        self.report["environment"] = row.get("result")
        if not self.args.dry_run:
            self.run_job("env", "nvidia-smi", ["nvidia-smi"], 20)

    def stage_tests(self) -> None:
        """The fast CUDA tests, then the slow one (torch.compile) in its own run, so that a time
        limit can only cost the slow one. The dry run runs the fast ones on the CPU."""
        env = {"EFFICIENTDET_CUDA_TEST_DEVICE": "cpu"} if self.args.dry_run else {}
        runs = [("cuda and not slow", 300)] + (
            [] if self.args.dry_run else [("cuda and slow", 200)]
        )
        for marks, limit in runs:
            xml = Path(tempfile.mkdtemp(prefix="gpu-suite-")) / "junit.xml"
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-m",
                marks,
                "tests/test_cuda.py",
                "-p",
                "no:cacheprovider",
                "-rA",
                f"--junitxml={xml}",
            ]
            row = self.run_job("tests", f"pytest -m '{marks}' tests/test_cuda.py", cmd, limit, env)
            row["tests"] = _junit(xml)
            counts: dict = {}
            for t in row["tests"]:
                counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
            row["counts"] = counts
            self.log(f"[tests] {marks}: {counts}")
            self.save()

    def sizes(self):
        """(name, image size, start batch) for the training comparison; tiny on the CPU."""
        if self.args.dry_run:
            return [("efficientdet_d0", 128, 2), ("efficientdet_lite0", 128, 2)]
        return [("efficientdet_d0", 512, 128), ("efficientdet_d4", 1024, 32)]

    def stage_train(self) -> None:
        precisions = ("fp32",) if self.args.dry_run else ("bf16", "fp16", "fp32")
        for precision in precisions:
            for model, size, batch in self.sizes():
                ours = self.fitting("train", "ours", "train", model, size, batch, precision, 120)
                reached = (ours.get("result") or {}).get("batch", batch)
                self.fitting("train", "effdet", "train", model, size, reached, precision, 120)
        if (
            not self.args.dry_run
        ):  # the trainer's CUDA default is NCHW; is channels_last faster there?
            model, size, batch = self.sizes()[0]
            self.fitting(
                "train", "ours", "train", model, size, batch, "bf16", 120, channels_last=True
            )

    def stage_infer(self) -> None:
        dry = self.args.dry_run
        d0, s0 = ("efficientdet_d0", 128) if dry else ("efficientdet_d0", 512)
        low = "fp32" if dry else "fp16"
        engines = ("eager",) if dry else ("eager", "cudagraph", "compile", "onnxruntime-gpu")
        providers = (self.report.get("environment") or {}).get("ort_providers") or []
        for engine in engines:  # D0 batch 1: the latency goal (< 5 ms end to end)
            if engine == "onnxruntime-gpu" and not any(
                p in providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
            ):
                self.report["stages"]["infer"]["jobs"].append(
                    {
                        "job": f"ours infer {d0}@{s0} b1 onnxruntime-gpu",
                        "status": "not run",
                        "reason": f"no ONNX Runtime GPU provider installed (providers: {providers})",
                    }
                )
                continue
            self.fitting(
                "infer",
                "ours",
                "infer",
                d0,
                s0,
                1,
                "fp32" if engine == "onnxruntime-gpu" else low,
                150,
                engine=engine,
                channels_last=True,
            )
        self.fitting("infer", "effdet", "infer", d0, s0, 1, low, 90)
        big = 2 if dry else 32
        prec = "fp32" if dry else "bf16"
        for engine in (
            ("eager",) if dry else ("eager", "cudagraph")
        ):  # batch 32 bf16: the throughput goal
            self.fitting(
                "infer",
                "ours",
                "infer",
                d0,
                s0,
                big,
                prec,
                90,
                engine=engine,
                channels_last=True,
                repeats=max(3, self.args.repeats // 3),
            )
        self.fitting(
            "infer",
            "effdet",
            "infer",
            d0,
            s0,
            big,
            prec,
            90,
            repeats=max(3, self.args.repeats // 3),
        )
        if not dry:
            self.fitting("infer", "ours", "infer", d0, s0, 1, "fp32", 60, channels_last=True)
            self.fitting("infer", "effdet", "infer", d0, s0, 1, "fp32", 60)
            self.fitting(
                "infer",
                "ours",
                "infer",
                "efficientdet_d7x",
                1536,
                1,
                "bf16",
                90,
                channels_last=True,
                repeats=10,
            )
            self.fitting(
                "infer", "effdet", "infer", "efficientdet_d7x", 1536, 1, "bf16", 90, repeats=10
            )

    def stage_ddp(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="gpu-suite-ddp-"))
        self.run_job(
            "ddp",
            "synthetic dataset",
            [
                sys.executable,
                "-m",
                "efficientdet",
                "data",
                "synth",
                "--out",
                str(work / "data"),
                "--images",
                "16",
                "--seed",
                "0",
            ],
            60,
        )
        data = work / "data" / "data.yaml"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "1",
            "-m",
            "efficientdet",
            "train",
            "--data",
            str(data),
            "--model",
            "efficientdet_lite0",
            "--image-size",
            "128",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            self.device,
            "--workers",
            "2",
            "--no-plots",
            "--out",
            str(work / "run"),
        ]
        if not self.args.dry_run:
            cmd += ["--amp", "bf16"]
        row = self.run_job("ddp", "torchrun --nproc_per_node 1 efficientdet train", cmd, 120)
        row["run_files"] = (
            sorted(p.name for p in (work / "run").glob("*")) if (work / "run").exists() else []
        )
        self.save()

    def stage_memory(self) -> None:
        cases = (
            [("efficientdet_lite0", 128, 2)]
            if self.args.dry_run
            else [("efficientdet_d4", 1024, 8), ("efficientdet_d6", 1280, 4)]
        )
        prec = "fp32" if self.args.dry_run else "bf16"
        for model, size, batch in cases:
            for ckpt in (False, True):
                self.fitting(
                    "memory",
                    "ours",
                    "train",
                    model,
                    size,
                    batch,
                    prec,
                    90,
                    grad_checkpointing=ckpt,
                    steps=max(1, self.args.steps // 2),
                )

    def summary(self) -> str:
        lines = [f"{'stage':<7} {'job':<62} {'status':<8} {'result'}"]
        for stage, block in self.report["stages"].items():
            for row in block["jobs"]:
                cell = (
                    row.get("counts")
                    or row.get("reason")
                    or _brief(row.get("result"))
                    or row.get("error", "")
                )
                lines.append(f"{stage:<7} {row['job'][:62]:<62} {row['status']:<8} {cell}")
        return "\n".join(lines)


def _junit(path: Path) -> list[dict]:
    """Per test: name, outcome (passed / failure / error / skipped), seconds, message."""
    if not path.exists():
        return []
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        tests.append(
            {
                "test": case.get("name"),
                "outcome": bad[0].tag if bad else "passed",
                "time_s": float(case.get("time", 0)),
                "message": bad[0].get("message", "")[:300] if bad else "",
            }
        )
    return tests


def _brief(result) -> str:
    """One short cell per result: images/s, latency, memory or OOM."""
    if not isinstance(result, dict):
        return ""
    if result.get("oom"):
        return "out of memory"
    if result.get("error"):
        return str(result["error"])[:60]
    parts = []
    ips = result.get("images_per_s")
    if isinstance(ips, (int, float)):
        parts.append(
            f"batch {result.get('batch')}: {ips:.1f} img/s, step {result['step']['median_ms']:.1f} ms"
        )
    elif isinstance(ips, dict):
        for key in ("network", "end_to_end"):
            if key in result:
                parts.append(
                    f"{key} {result[key]['median_ms']:.2f} ms ({ips.get(key, 0):.0f} img/s)"
                )
    if result.get("peak_memory_gib") is not None:
        parts.append(f"peak {result['peak_memory_gib']:.1f} GiB")
    return ", ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_suite.json and gpu_suite.log")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="whole-suite time budget in seconds (default 540; dry run 1800: the CPU is slow)",
    )
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="run every stage on the CPU with tiny sizes and few steps",
    )
    ap.add_argument(
        "--no-peer", action="store_true", help="skip the effdet jobs (recorded as not run)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="timed training steps (default 8; dry run 1)"
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed inference runs (default 50; dry run 1)"
    )
    ap.add_argument(
        "--warmup", type=int, default=None, help="untimed runs first (default 3; dry run 0)"
    )
    args = ap.parse_args(argv)
    args.budget_s = args.budget_s or (1800.0 if args.dry_run else 540.0)
    args.steps = args.steps or (1 if args.dry_run else 8)
    args.repeats = args.repeats or (1 if args.dry_run else 50)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.dry_run else 3)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(
                "error: gpu_suite: torch sees no CUDA device; fix: run it on the GPU machine, or add --dry-run",
                file=sys.stderr,
            )
            return 2
    suite = Suite(args)
    suite.log(f"gpu_suite: {suite.report['command']} (peer python: {suite.peer_python})")
    for stage in STAGES:
        if stage in args.stages:
            suite.begin(stage)
            getattr(suite, f"stage_{stage}")()
    suite.save()
    suite.log(
        f"done in {suite.elapsed():.0f} s; {suite.out / 'gpu_suite.json'}\n" + suite.summary()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
