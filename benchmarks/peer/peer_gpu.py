"""The peer effdet on a GPU, the counterpart of benchmarks/gpu_bench.py (same arguments, same JSON keys).

    python benchmarks/peer/peer_gpu.py train --model tf_efficientdet_d0 --image-size 512 --batch 64 --precision bf16
    python benchmarks/peer/peer_gpu.py infer --model tf_efficientdet_d0 --image-size 512 --batch 1 --precision fp16

train: zero_grad + ``DetBenchTrain(model, create_labeler=True)(x, target)`` under autocast
(bf16/fp16, as effdet's train.py ``--amp``) + backward (GradScaler for fp16) + SGD step (lr 0.01,
momentum 0.9, wd 4e-5); the boxes of gpu_bench.py. infer: ``network`` = ``model(x)``,
``end_to_end`` = ``DetBenchPredict(model)(x)`` (top 5000, decode, torchvision batched_nms, 100
rows) with the detections copied to the host, under autocast for bf16/fp16 (effdet's validate.py
``--amp``), eager (effdet has no CUDA-graph or compile path of its own). Random weights, nothing
downloaded. Run with a Python that has effdet, timm and torchvision (on the GPU machine:
python3 with the wheels of benchmarks/gpu_prepare.sh). Out of memory gives ``"oom": true``.
"""

import argparse

import _peer_util as pu
from _peer_util import common


def _dtype(precision):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def train(args, hw):
    import torch
    from effdet.bench import DetBenchTrain

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = pu.build_model(args.model, hw, args.num_classes, "random").to(device)
    bench = DetBenchTrain(model, create_labeler=True).to(device).train()
    x = torch.randn(args.batch, 3, *hw, generator=gen).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    yxyx, cls = common.synthetic_boxes(args.batch, args.boxes, hw, args.num_classes, gen)
    target = {"bbox": yxyx.to(device), "cls": cls.float().to(device)}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    amp = args.precision != "fp32"
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=_dtype(args.precision), enabled=amp):
            loss = bench(x, target)["loss"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        losses.append(loss.detach())

    common.reset_peak_memory(device)
    timing = common.measure_device(step, device, args.warmup, args.steps)
    return {
        "step": timing,
        "images_per_s": args.batch / (timing["median_ms"] / 1e3),
        "losses": [round(float(v), 4) for v in losses[-3:]],
        "peak_memory_gib": common.peak_memory_gib(device),
    }


def infer(args, hw):
    import torch
    from effdet.bench import DetBenchPredict

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.manual_seed(args.seed)
    model = pu.build_model(args.model, hw, args.num_classes, "random").to(device).eval()
    bench = DetBenchPredict(model).to(device).eval()
    x = torch.randn(args.batch, 3, *hw, generator=torch.Generator().manual_seed(0)).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp = args.precision != "fp32"

    def run(fn):
        def call():
            with torch.autocast(device.type, dtype=_dtype(args.precision), enabled=amp):
                return fn()

        return call

    out = {}
    common.reset_peak_memory(device)
    with torch.no_grad():
        for part, fn in (
            ("network", run(lambda: model(x))),
            ("end_to_end", run(lambda: bench(x).cpu())),
        ):
            if part in args.parts:
                out[part] = common.measure_device(fn, device, args.warmup, args.repeats)
    out["images_per_s"] = {
        p: args.batch / (out[p]["median_ms"] / 1e3) for p in args.parts if p in out
    }
    out["peak_memory_gib"] = common.peak_memory_gib(device)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task", choices=("train", "infer"))
    pu.add_common_args(ap)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--boxes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--engine", choices=("eager",), default="eager")
    ap.add_argument(
        "--parts", nargs="+", default=["network", "end_to_end"], choices=("network", "end_to_end")
    )
    args = ap.parse_args()
    hw = pu.image_size(args)
    result = {
        "impl": "effdet",
        "task": args.task,
        "model": args.model,
        "image_size": hw[0],
        "batch": args.batch,
        "precision": args.precision,
        "device": args.device,
        "channels_last": args.channels_last,
        "versions": pu.versions(),
    }
    if args.task == "infer":
        result["engine"] = "eager"
    try:
        result.update(train(args, hw) if args.task == "train" else infer(args, hw))
    except Exception as exc:
        if not common.is_out_of_memory(exc):
            raise
        result.update(oom=True, error=str(exc).splitlines()[0][:200])
    result["device_info"] = common.device_info(args.device)
    common.emit_json(result)


if __name__ == "__main__":
    main()
