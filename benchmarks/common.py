"""Shared helpers for the benchmark scripts.

Used by our benchmark scripts (run with our venv) and by the peer scripts in
benchmarks/peer/ (run with the peer venv), so both sides are timed the same way.  Only the
standard library is imported at module level; torch is imported lazily where needed, and
nothing here imports our package or effdet (``write_json``, for our scripts only, imports
``efficientdet.fileio`` when called): the timing and peak-memory functions are those of
``efficientdet/deploy/timing.py`` (also used by ``efficientdet bench``), loaded by file path.

    from common import measure, machine_info, run_python, run_peer

* ``measure(fn, warmup, repeats)``: median / p90 wall time of ``fn()`` in ms, with
  ``torch.set_num_threads(2)`` by default (the machine has 2 cores).
* ``machine_info()``: one line naming the CPU, cores, torch and Python versions, load.
* ``peak_rss_mb()``: this process's peak resident set (VmHWM) so far.
* ``write_json(path, obj)``: a script's ``--json`` report, written atomically.
* ``TimingServer`` / ``paired_ratios(ours, peer, pairs)``: two long-lived processes timed in
  alternating short bursts, for ratios that a noisy machine moves little.
* ``run_python(script, args)`` / ``run_peer(script, args)``: run a script in a fresh
  process (ours: this interpreter; peer: benchmarks/peer/.venv/bin/python), parse the JSON
  object it prints on its last stdout line, and add the child's own peak RSS
  (``_peak_rss_mb``, from wait4, so peaks of different measurements never mix) and its wall
  time (``_wall_s``).  Measure memory with one fresh process per measurement.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
PEER_DIR = os.path.join(BENCH_DIR, "peer")
PEER_PYTHON = os.path.join(PEER_DIR, ".venv", "bin", "python")
DEFAULT_THREADS = 2


def _load_timing():
    """efficientdet/deploy/timing.py, loaded by path: it imports only the standard library, so
    the peer venv (without our package) shares our timing and memory functions."""
    import importlib.util

    path = os.path.join(REPO_ROOT, "src", "efficientdet", "deploy", "timing.py")
    spec = importlib.util.spec_from_file_location("efficientdet_timing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timing = _load_timing()


def set_threads(threads: int | None = DEFAULT_THREADS) -> None:
    """torch.set_num_threads(threads) unless threads is None."""
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


def summarize(times_ms: Sequence[float]) -> dict:
    """median / p90 / min / mean of a list of times in ms (p90: nearest-rank), and the times."""
    return {**timing.summarize(times_ms), "times_ms": [round(float(t), 3) for t in times_ms]}


def measure(
    fn: Callable[[], object],
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = DEFAULT_THREADS,
) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Returns dict(median_ms, p90_ms, min_ms, mean_ms, runs, times_ms, threads).  Sets
    torch.set_num_threads(threads) first (None leaves it alone).  Autograd mode is the
    caller's business (wrap fn in torch.no_grad()/inference_mode() as the case needs).
    """
    set_threads(threads)
    out = summarize(timing.time_calls(fn, warmup, repeats))
    out["threads"] = _torch_threads() if threads is None else int(threads)
    return out


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # pragma: no cover - torch missing
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info_dict() -> dict:
    """The facts behind machine_info() as a dict (for JSON reports)."""
    try:
        import torch

        torch_version = torch.__version__
        threads = torch.get_num_threads()
    except Exception:  # pragma: no cover
        torch_version, threads = None, None
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": timing.usable_cores(),
        "torch": torch_version,
        "torch_threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in load] if load else None,
    }


def machine_info() -> str:
    """One line: CPU model, cores, torch and Python versions, current load average."""
    d = machine_info_dict()
    load = ", load {:.2f} {:.2f} {:.2f}".format(*d["loadavg"]) if d["loadavg"] else ""
    return (
        f"{d['cpu']}, {d['cores']} cores ({d['usable_cores']} usable), "
        f"torch {d['torch']} ({d['torch_threads']} threads), Python {d['python']}{load}"
    )


peak_rss_mb = timing.peak_rss_mb


def emit_json(obj: dict) -> None:
    """Print ``obj`` as JSON on one line (the last line a script prints, for run_python)."""
    sys.stdout.flush()
    print(json.dumps(obj), flush=True)


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write a script's ``--json`` report: ``obj`` as JSON (indent 1) through the library's
    atomic write (temporary name, then rename): a failed or interrupted write leaves the file
    that was there before, and no temporary file."""
    from efficientdet.fileio import write_json as atomic_write_json

    atomic_write_json(path, obj, indent=1)


class SubprocessError(RuntimeError):
    pass


def _child_env(extra: dict | None = None) -> dict:
    """The environment of a benchmark's child process: ours, Python warnings off unless set,
    plus ``extra``."""
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.update(extra or {})
    return env


def run_python(
    script_path: str,
    args: Sequence[str] = (),
    python: str | None = None,
    timeout: float | None = 1800,
    env: dict | None = None,
    cwd: str | None = None,
) -> dict:
    """Run ``python script_path *args`` in a fresh process and return its last-line JSON.

    ``python`` defaults to this interpreter.  The result gets ``_peak_rss_mb`` (the child's
    ru_maxrss from wait4: its own peak, not mixed with other children's) and ``_wall_s``.
    Raises SubprocessError (with the tail of stderr) on a non-zero exit, a timeout or a
    last line that is not a JSON object.
    """
    python = python or sys.executable
    cmd = [python, os.fspath(script_path), *[str(a) for a in args]]
    run_env = _child_env(env)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=run_env, cwd=cwd or REPO_ROOT)
        timed_out = threading.Event()

        def _kill():
            timed_out.set()
            try:
                proc.kill()
            except OSError:
                pass

        timer = threading.Timer(timeout, _kill) if timeout else None
        if timer:
            timer.start()
        try:
            # wait4 instead of proc.wait(): it also gives this child's own rusage.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer:
                timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if timed_out.is_set():
        raise SubprocessError(f"{' '.join(cmd)} timed out after {timeout} s\n{stderr[-3000:]}")
    if proc.returncode != 0:
        raise SubprocessError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stderr (tail) ---\n{stderr[-3000:]}"
            f"\n--- stdout (tail) ---\n{stdout[-1000:]}"
        )
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1])
        if not isinstance(result, dict):
            raise ValueError("not a JSON object")
    except (IndexError, ValueError) as e:
        raise SubprocessError(
            f"{' '.join(cmd)}: last stdout line is not a JSON object ({e})"
            f"\n--- stdout (tail) ---\n{stdout[-2000:]}"
        ) from None
    result["_peak_rss_mb"] = usage.ru_maxrss / 1024.0  # Linux: KiB
    result["_wall_s"] = round(wall, 3)
    return result


def peer_available() -> bool:
    return os.access(PEER_PYTHON, os.X_OK)


def run_peer(
    script_path: str,
    args: Sequence[str] = (),
    timeout: float | None = 1800,
    env: dict | None = None,
) -> dict:
    """Run a script with the peer venv's Python (effdet in its own process).

    ``script_path`` may be a bare name of a script in benchmarks/peer/ (e.g.
    ``"peer_predict.py"``).  Returns the script's last-line JSON plus ``_peak_rss_mb`` and
    ``_wall_s``; see run_python.  Set the peer venv up with benchmarks/peer/setup_peer.sh.
    """
    if not peer_available():
        raise SubprocessError(
            f"peer venv missing ({PEER_PYTHON}); run bash benchmarks/peer/setup_peer.sh"
        )
    path = os.fspath(script_path)
    if not os.path.exists(path) and os.path.exists(os.path.join(PEER_DIR, path)):
        path = os.path.join(PEER_DIR, path)
    return run_python(path, args, python=PEER_PYTHON, timeout=timeout, env=env)


# ----------------------------------------------------------------------------- GPU (gpu_bench.py, peer/peer_gpu.py)


def measure_device(fn: Callable[[], object], device, warmup: int = 3, repeats: int = 10) -> dict:
    """Like measure(), for work on ``device``: on CUDA every call ends with a synchronize, so the
    wall time is the device's time (launch gaps included, as a user sees them). Thread count is
    left alone (the GPU machine's cores are not shared)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":

        def timed():
            fn()
            torch.cuda.synchronize(dev)
    else:
        timed = fn
    return measure(timed, warmup, repeats, threads=None)


def synthetic_boxes(batch: int, boxes: int, hw, num_classes: int, gen):
    """The benchmark's ground truth: (B, M, 4) yxyx boxes in pixels and (B, M) 1-based classes,
    at random positions (5% to 30% of each side). Ours converts to xyxy / 0-based, effdet uses them as is."""
    import torch

    yx0 = torch.rand(batch, boxes, 2, generator=gen) * 0.7
    size = 0.05 + torch.rand(batch, boxes, 2, generator=gen) * 0.25
    yx1 = (yx0 + size).clamp(max=1.0)
    scale = torch.tensor([float(hw[0]), float(hw[1])])
    return torch.cat([yx0 * scale, yx1 * scale], dim=-1), torch.randint(
        1, num_classes + 1, (batch, boxes), generator=gen
    )


def device_info(device) -> dict:
    """GPU model, memory, driver, torch/CUDA/cuDNN versions (CPU model for a CPU device)."""
    import torch

    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["driver"] = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def reset_peak_memory(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device) -> float | None:
    """Peak tensor memory on a CUDA device since reset_peak_memory (None on CPU: see peak RSS)."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ----------------------------------------------------------------------------- paired timing


# marks the protocol's lines on stdout, which libraries may share (a native library's unflushed
# text without a newline may come first on the same line)
_MARK = "@@timing@@ "


def serve_timings(fn: Callable[[], object], warmup: int = 3) -> None:
    """Serve timed calls of ``fn()`` over stdin/stdout (the other end: :class:`TimingServer`).

    After ``warmup`` untimed calls prints ``{"ready": true}``; then for each line ``N W`` read
    from stdin times ``fn()`` with :func:`timing.time_calls` (W untimed calls, then N timed)
    and prints ``{"times_ms": [N times]}``; ends at end of input. Each reply is one line
    starting with a marker.
    """
    for _ in range(warmup):
        fn()
    print(_MARK + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        n, w = (int(v) for v in line.split())
        print(_MARK + json.dumps({"times_ms": timing.time_calls(fn, w, n)}), flush=True)


class TimingServer:
    """A process running :func:`serve_timings` (``python script *args``), kept alive so that
    its calls can alternate with another server's. A context manager: leaving it ends the
    process (killed if it does not end by itself)."""

    def __init__(self, script_path: str, args: Sequence[str] = (), python: str | None = None):
        cmd = [python or sys.executable, os.fspath(script_path), *[str(a) for a in args]]
        self._err = tempfile.TemporaryFile("w+")
        self.cmd = " ".join(cmd)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=_child_env(),
            cwd=REPO_ROOT,
        )
        try:
            self._reply("ready")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TimingServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _reply(self, key: str):
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # other output may share stdout: only marked lines count
            if _MARK in line:
                obj = json.loads(line[line.index(_MARK) + len(_MARK) :])
                if key in obj:
                    return obj[key]
        self._err.seek(0)
        raise SubprocessError(f"{self.cmd} ended early\n{self._err.read()[-3000:]}")

    def time(self, n: int = 1, warmup: int = 0) -> list[float]:
        """Wall times (ms) of ``n`` calls run now, after ``warmup`` untimed ones."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n} {warmup}\n")
        self.proc.stdin.flush()
        return self._reply("times_ms")

    def close(self) -> None:
        """End the process: end of input, then a kill after 60 s."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            self._err.close()


def paired_ratios(
    ours: TimingServer, peer: TimingServer, pairs: int, burst: int = 5, warmup: int = 2
) -> dict:
    """Time ``pairs`` pairs of bursts, ours and the peer's back to back (the order alternates
    every pair): each burst is ``warmup`` untimed calls (caches and idle threads warm again)
    then ``burst`` timed ones, back to back as in steady use. Load from other processes
    changes over seconds, so the two bursts of a pair see nearly the same load. Returns the
    medians of each side's burst medians and of the per-pair ratios ours / peer, with the
    ratios' 10th and 90th percentiles."""
    ours_ms, peer_ms = [], []
    for i in range(pairs):
        for side in (ours, peer) if i % 2 == 0 else (peer, ours):
            ms = statistics.median(side.time(burst, warmup))
            (ours_ms if side is ours else peer_ms).append(ms)
    ratios = sorted(o / p for o, p in zip(ours_ms, peer_ms, strict=True))

    return {
        "pairs": pairs,
        "burst": burst,
        "ours_median_ms": statistics.median(ours_ms),
        "peer_median_ms": statistics.median(peer_ms),
        "ratio_median": statistics.median(ratios),
        "ratio_p10": timing.nearest_rank(ratios, 0.1),
        "ratio_p90": timing.nearest_rank(ratios, 0.9),
    }
