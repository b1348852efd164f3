"""COCO-size annotations: read time, peak memory, and what DataLoader workers add.

Generates (once, cached) a deterministic COCO instances JSON the size of train2017 (118,287
images, 826,000 boxes, every box with a polygon ``segmentation``, 1% crowd boxes with an RLE
``counts`` list) and an image folder of hard links to a few header-correct JPEGs, then measures,
each in a fresh process and in interleaved rounds (medians):

* ``read``: wall time of ``read_coco`` and the process's peak RSS (VmHWM, interpreter and
  imports included) for this tree's ``src`` and, with ``--before DIR``, another ``src`` (the
  code before the change: ``git archive <commit> src | tar -x -C DIR``);
* ``workers``: total memory (PSS, USS and anonymous PSS summed over the main process and its
  DataLoader workers, from /proc/PID/smaps_rollup) after one full pass over every record of a
  ``DetectionDataset`` through ``create_loader`` (each item reads the record's path, boxes,
  labels, ignore and areas as training does, without decoding the image), with 0 and with
  ``--workers`` workers; once with the loader alone in the main process and once (``--run-model``,
  default d0) with a training run's state built first (model, optimizer after a step, EMA).

    python benchmarks/bench_data_memory.py                          # this tree, full size
    python benchmarks/bench_data_memory.py --before /tmp/before/src # before vs after (this src)
    python benchmarks/bench_data_memory.py --images 2000 --boxes 14000 --rounds 1  # quick look

Goals (issue #11 item 8): read <= 10 s and <= 600 MB peak RSS; 8 workers <= 1.2x 0 workers in
a run (the ``--run-model`` rows).
The last lines give what 8 workers cost over a dataset of constant items (no records): each
worker's own interpreter and torch state, which no record layout can share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from common import cpu_model  # noqa: E402

# COCO's 80 category ids (1..90 with gaps) and a few of its image sizes.
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
IMAGE_SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (612, 612), (640, 360)]


def generate(folder: Path, num_images: int, num_boxes: int, seed: int = 0) -> Path:
    """Write ``folder/instances.json`` + ``folder/images/`` (once); return the JSON path.

    The JSON is written last (atomically), so a folder holding it is complete."""
    import numpy as np
    from PIL import Image

    from efficientdet.fileio import atomic_write, make_dirs

    json_path = folder / "instances.json"
    if json_path.is_file():
        return json_path
    rng = np.random.default_rng(seed)
    images_dir = make_dirs(folder / "images")
    sources = []
    for w, h in IMAGE_SIZES:
        src = folder / f"source_{w}x{h}.jpg"
        if not src.is_file():
            with atomic_write(src, "wb") as f:
                Image.new("RGB", (w, h), (90, 120, 150)).save(f, format="JPEG", quality=50)
        sources.append(src)
    size_index = rng.integers(0, len(IMAGE_SIZES), num_images)
    for i in range(num_images):
        link = images_dir / f"{i + 1:012d}.jpg"
        if not link.exists():
            os.link(sources[size_index[i]], link)
    # boxes per image: most images a few, some none, as in train2017
    owner = np.sort(rng.integers(0, num_images, num_boxes))
    with atomic_write(json_path, "w") as f:
        f.write('{"info": {"description": "generated, train2017-sized", "year": 2017},\n')
        f.write('"licenses": [{"id": 1, "name": "generated", "url": "http://example.invalid"}],\n')
        f.write('"images": [\n')
        for i in range(num_images):
            w, h = IMAGE_SIZES[size_index[i]]
            sep = ",\n" if i + 1 < num_images else "\n"
            f.write(
                f'{{"license": 1, "file_name": "{i + 1:012d}.jpg", "coco_url": '
                f'"http://images.example.invalid/train2017/{i + 1:012d}.jpg", "height": {h}, '
                f'"width": {w}, "date_captured": "2013-11-14 16:28:13", "id": {i + 1}}}{sep}'
            )
        f.write("],\n")
        f.write('"annotations": [\n')
        sizes = np.array(IMAGE_SIZES, dtype=np.float64)[size_index[owner]]
        bw = rng.uniform(0.02, 0.6, num_boxes) * sizes[:, 0]
        bh = rng.uniform(0.02, 0.6, num_boxes) * sizes[:, 1]
        x = rng.uniform(0, 1, num_boxes) * (sizes[:, 0] - bw)
        y = rng.uniform(0, 1, num_boxes) * (sizes[:, 1] - bh)
        cats = rng.choice(CATEGORY_IDS, num_boxes)
        crowd = rng.random(num_boxes) < 0.01
        vertices = rng.integers(4, 25, num_boxes)
        for n in range(num_boxes):
            if crowd[n]:
                counts = rng.integers(1, 400, 40).tolist()
                seg = f'{{"counts": {counts}, "size": [{int(sizes[n, 1])}, {int(sizes[n, 0])}]}}'
            else:
                t = np.linspace(0, 2 * np.pi, vertices[n], endpoint=False)
                px = x[n] + bw[n] * (0.5 + 0.5 * np.cos(t))
                py = y[n] + bh[n] * (0.5 + 0.5 * np.sin(t))
                coords = ",".join(f"{v:.2f}" for v in np.stack([px, py], 1).reshape(-1))
                seg = f"[[{coords}]]"
            sep = ",\n" if n + 1 < num_boxes else "\n"
            f.write(
                f'{{"segmentation": {seg}, "area": {0.8 * bw[n] * bh[n]:.4f}, '
                f'"iscrowd": {int(crowd[n])}, "image_id": {owner[n] + 1}, '
                f'"bbox": [{x[n]:.2f}, {y[n]:.2f}, {bw[n]:.2f}, {bh[n]:.2f}], '
                f'"category_id": {cats[n]}, "id": {n + 1}}}{sep}'
            )
        f.write("],\n")
        cats_json = ", ".join(
            f'{{"supercategory": "thing", "id": {c}, "name": "class{c}"}}' for c in CATEGORY_IDS
        )
        f.write(f'"categories": [{cats_json}]}}\n')
    return json_path


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def _smaps_mb(pid: int) -> tuple[float, float, float]:
    """(PSS, USS, anonymous PSS) of ``pid`` in MB from /proc/PID/smaps_rollup.

    The PSS of file-backed pages (torch's and numpy's libraries) is split with every process
    on the machine that maps the same files, so it moves with other people's work; the
    anonymous PSS is shared only within this process tree."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields.get("Pss", 0) / 1024, uss / 1024, fields.get("Pss_Anon", 0) / 1024


def child_read(json_path: str) -> dict:
    """Time one read_coco in this (fresh) process; peak RSS includes the interpreter."""
    from efficientdet.data.coco import read_coco

    start_rss = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    data = read_coco(json_path)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": seconds,
        "cpu_s": cpu,  # on a shared machine, CPU time says more than wall time
        "peak_rss_mb": _vm_hwm_mb(),
        "rss_before_mb": start_rss,
        "images": len(data),
        "boxes": int(sum(len(r.labels) for r in data.records)),
        "problems": len(data.report.problems),
    }


class _TouchRecords:
    """Item i reads record i of a DetectionDataset as ``_load`` does, without decoding pixels."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple:
        import torch

        r = self.dataset.records[i]
        use = ~r.ignore
        value = len(r.path) + int(r.labels[use].sum()) + float(r.boxes[use].sum())
        return torch.zeros(1), value  # (image, target) as create_loader's collate expects


def _training_state(model_name: str) -> tuple:
    """What a training run's main process holds when its loader forks the workers: the model
    (``model_name``, 80 classes, channels_last as on CPU), its optimizer with state after one
    training step at batch 2, and the EMA copy, built by the trainer's own builders with the
    default recipe."""
    import torch

    from efficientdet.engine.builders import (
        build_loss,
        build_model,
        build_optimization,
        resolve_model_config,
    )
    from efficientdet.engine.config import TrainConfig
    from efficientdet.engine.ema import ModelEMA

    cfg = TrainConfig(data="unused", model=model_name, batch_size=2)
    model = build_model(cfg, 80, load_pretrained=False, log=lambda _: None).train()
    model = model.to(memory_format=torch.channels_last)
    model_cfg = resolve_model_config(cfg, 80)
    _, optimizer, scheduler, _ = build_optimization(cfg, model, 100, 100, 2)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema else None
    h, w = model_cfg.image_size
    images = torch.rand(2, 3, h, w).contiguous(memory_format=torch.channels_last)
    box = torch.tensor([[10.0, 20.0, h / 2, w / 2]])
    targets = [{"boxes": box, "labels": torch.tensor([3])} for _ in range(2)]
    losses = build_loss(cfg, model_cfg)(*model(images), targets, (h, w))
    losses["loss"].backward()
    optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update(model)
    return model, optimizer, ema


def child_workers(json_path: str, workers: int, model_name: str = "none") -> dict:
    """PSS/USS summed over main + workers after a full pass over the records; with a
    ``model_name``, the main process first builds a training run's state (``_training_state``)."""
    from efficientdet.data.coco import read_coco
    from efficientdet.data.dataset import DetectionDataset
    from efficientdet.data.loader import create_loader

    state = _training_state(model_name) if model_name != "none" else None
    data = read_coco(json_path)
    dataset = DetectionDataset(data, (64, 64), (0, 0, 0), (1, 1, 1))
    # the project's loader (persistent, seeded workers), as training builds it
    loader = create_loader(
        _TouchRecords(dataset), batch_size=512, shuffle=True, num_workers=workers
    )
    total = 0.0
    for _, values in loader:
        total += sum(values)
    pids = [os.getpid(), *_children(os.getpid())]
    pss = uss = anon = 0.0
    for pid in pids:
        p, u, a = _smaps_mb(pid)
        pss, uss, anon = pss + p, uss + u, anon + a
    del loader, state
    return {
        "processes": len(pids),
        "pss_mb": pss,
        "uss_mb": uss,
        "pss_anon_mb": anon,
        "checksum": total,
    }


class _Constant:
    """``n`` items of nothing: what a worker costs with no records at all."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        import torch

        return torch.zeros(1), 1.0


def child_floor(items: int, workers: int) -> dict:
    """PSS summed over main + workers after a pass over ``items`` constant items."""
    from efficientdet.data.loader import create_loader

    loader = create_loader(_Constant(items), batch_size=512, shuffle=True, num_workers=workers)
    for _ in loader:
        pass
    pids = [os.getpid(), *_children(os.getpid())]
    pss = sum(_smaps_mb(pid)[0] for pid in pids)
    return {"processes": len(pids), "pss_mb": pss}


def run_child(src: Path, args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--boxes", type=int, default=826_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--run-model",
        default="d0",
        help="also measure with this model's training state (model, optimizer, EMA) in the main "
        "process, as in a training run ('none': the loader alone only)",
    )
    parser.add_argument("--before", type=Path, help="another src folder to compare against")
    parser.add_argument(
        "--after", type=Path, default=REPO_ROOT / "src", help="the src folder measured as 'after'"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "efficientdet"
        / "bench_data_memory",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, *rest = args.child
        if kind == "read":
            result = child_read(path)
        elif kind == "floor":
            result = child_floor(int(path), int(rest[0]))
        else:
            result = child_workers(path, int(rest[0]), *rest[1:])
        print(json.dumps(result))
        return

    sys.path.insert(0, str(REPO_ROOT / "src"))
    if args.run_model != "none":  # before any work: one line for an unknown name
        from efficientdet.config import get_model_config
        from efficientdet.errors import EfficientDetError

        try:
            get_model_config(args.run_model)
        except EfficientDetError as exc:
            parser.error(f"--run-model: {exc}")
    folder = args.cache / f"coco_{args.images}_{args.boxes}"
    t0 = time.perf_counter()
    json_path = generate(folder, args.images, args.boxes)
    print(
        f"# {json_path} ({json_path.stat().st_size / 1e6:.0f} MB, ready in "
        f"{time.perf_counter() - t0:.0f} s); CPU: {cpu_model()}, {os.cpu_count()} cores",
        flush=True,
    )
    sides = {"after": args.after.resolve()}
    if args.before is not None:
        sides = {"before": args.before.resolve(), **sides}
    reads: dict[str, list[dict]] = {k: [] for k in sides}
    mains = ["none"] + ([args.run_model] if args.run_model != "none" else [])
    mems: dict[tuple[str, str, int], list[dict]] = {}
    for r in range(args.rounds):
        for name, src in sides.items():
            res = run_child(src, ["read", str(json_path)])
            reads[name].append(res)
            print(f"round {r} {name:6s} read: {json.dumps(res)}", flush=True)
        for name, src in sides.items():
            for main_model in mains:
                for w in (0, args.workers):
                    res = run_child(src, ["workers", str(json_path), str(w), main_model])
                    mems.setdefault((name, main_model, w), []).append(res)
                    print(
                        f"round {r} {name:6s} main={main_model} workers={w}: {json.dumps(res)}",
                        flush=True,
                    )
    print(f"\nmedians of {args.rounds} rounds; {args.images} images, {args.boxes} boxes")
    print("side    read s  read CPU s  peak RSS MB")
    for name in sides:
        sec = statistics.median(x["seconds"] for x in reads[name])
        peak = statistics.median(x["peak_rss_mb"] for x in reads[name])
        cpus = [x["cpu_s"] for x in reads[name] if "cpu_s" in x]
        cpu = statistics.median(cpus) if cpus else float("nan")
        print(f"{name:6s} {sec:7.1f} {cpu:11.1f} {peak:12.0f}")
    print(
        f"\nside    main process     PSS 0 workers MB  PSS {args.workers} workers MB  ratio"
        f"  anon PSS 0 / {args.workers} MB  anon ratio"
    )
    for name in sides:
        for main_model in mains:
            p0, pw, a0, aw = (
                statistics.median(x[key] for x in mems[(name, main_model, w)])
                for key, w in (
                    ("pss_mb", 0),
                    ("pss_mb", args.workers),
                    ("pss_anon_mb", 0),
                    ("pss_anon_mb", args.workers),
                )
            )
            label = "loader alone" if main_model == "none" else f"{main_model} training"
            print(
                f"{name:6s}  {label:15s} {p0:17.0f} {pw:18.0f} {pw / p0:6.2f}"
                f" {a0:8.0f} / {aw:4.0f} {aw / a0:11.2f}"
            )
    # the cost of the worker processes themselves (interpreter, torch), with no records at all
    floor = {
        w: run_child(sides["after"], ["floor", str(args.images), str(w)]) for w in (0, args.workers)
    }
    extra = floor[args.workers]["pss_mb"] - floor[0]["pss_mb"]
    print(
        f"{args.workers} workers over no records add {extra:.0f} MB "
        f"({extra / args.workers:.1f} MB each): the ratio's floor for a main process of a given size"
    )
    if "before" in sides:
        b = statistics.median(x["seconds"] for x in reads["before"])
        a = statistics.median(x["seconds"] for x in reads["after"])
        print(f"read time after/before: {a / b:.2f}")


if __name__ == "__main__":
    main()
