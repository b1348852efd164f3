"""Our side of the GPU benchmarks (benchmarks/gpu_suite.sh runs it): one measurement per process,
one JSON line printed last, the same settings and JSON keys as benchmarks/peer/peer_gpu.py (effdet).

    python benchmarks/gpu_bench.py train --model efficientdet_d0 --image-size 512 --batch 64 \
        --precision bf16 [--grad-checkpointing] [--channels-last] [--steps 10] [--device cuda]
    python benchmarks/gpu_bench.py env --device cuda     # GPU, driver, versions, ORT providers, TensorRT
    python benchmarks/gpu_bench.py infer --model efficientdet_d0 --image-size 512 --batch 1 \
        --precision fp16 --engine eager|cudagraph|compile|onnxruntime-gpu [--repeats 50]

train: one step = zero_grad + forward (autocast bf16/fp16 around the network, as the trainer)
+ DetectionLoss (anchor assignment on the device) + backward (GradScaler for fp16) + SGD step
(lr 0.01, momentum 0.9, wd 4e-5); random weights and input, 8 random boxes per image (the
peer's boxes). Reports images/s from the median step and the peak CUDA memory.

infer: the network with BN folded, cast to the precision (as ``Detector(half=True)`` casts it),
channels_last; ``network`` = normalised batch -> raw outputs, ``end_to_end`` = network + top-k,
decode, class-aware NMS, 100 detections per image copied to the host (Detector.detect_batch's
work). Engines: ``eager``; ``cudagraph`` (the network captured once in a CUDA graph and replayed,
post-processing eager); ``compile`` (torch.compile, default mode, as ``Detector(compile=True)``);
``onnxruntime-gpu`` (our ONNX export on ONNX Runtime's TensorRT or CUDA provider, float32).

Out of memory is a result, not a crash: the JSON line then says ``"oom": true`` (gpu_suite
halves the batch). Exit status 0 unless something else failed.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

PRECISIONS = ("fp32", "bf16", "fp16")
ENGINES = ("eager", "cudagraph", "compile", "onnxruntime-gpu")


def _dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build(args, **kwargs):
    import torch

    from efficientdet.factory import create_model

    torch.manual_seed(args.seed)
    hw = (args.image_size, args.image_size)
    return create_model(args.model, num_classes=args.num_classes, image_size=hw, **kwargs), hw


def train(args) -> dict:
    import torch

    from efficientdet.detection.loss import DetectionLoss

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    model, hw = build(args, grad_checkpointing=args.grad_checkpointing)
    model = model.to(device).train()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, *hw, generator=gen).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    yxyx, cls = common.synthetic_boxes(args.batch, args.boxes, hw, args.num_classes, gen)
    targets = [
        {"boxes": yxyx[i][:, [1, 0, 3, 2]].to(device), "labels": (cls[i] - 1).to(device)}
        for i in range(args.batch)
    ]
    loss_fn = DetectionLoss(model.config.anchors, None, args.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    amp = args.precision != "fp32"
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=_dtype(args.precision), enabled=amp):
            class_out, box_out = model(x)
        loss = loss_fn(class_out, box_out, targets, hw)["loss"]
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


def _inference_network(args, device):
    """The folded network in the precision and memory format a Detector uses."""
    import torch

    from efficientdet.nn.fuse import fuse_for_inference

    model, hw = build(args)
    model = fuse_for_inference(model.eval()).to(device, _dtype(args.precision))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, hw


def infer(args) -> dict:
    import torch

    from efficientdet.config import NMSConfig
    from efficientdet.detection.anchors import AnchorGenerator
    from efficientdet.detection.postprocess import postprocess

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if args.engine in ("cudagraph", "onnxruntime-gpu") and device.type != "cuda":
        return {"error": f"engine {args.engine} needs CUDA"}
    model, hw = _inference_network(args, device)
    x = torch.randn(args.batch, 3, *hw, generator=torch.Generator().manual_seed(0)).to(
        device, _dtype(args.precision)
    )
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    extra = {}
    if args.engine == "eager":
        network = model
    elif args.engine == "compile":
        network = torch.compile(
            model, dynamic=False
        )  # as Detector(compile=True); max-autotune would take minutes
    elif args.engine == "cudagraph":
        network = _cuda_graph(model, x)
    else:
        network, extra = _onnxruntime_gpu(model, hw, args)
        if network is None:
            return extra
    with torch.inference_mode():
        network(x)  # compile / capture / session warm-up, timed as setup
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    setup_s = time.perf_counter() - t0
    anchors = AnchorGenerator(model.config.anchors)(hw, device=device)
    nms = NMSConfig(max_candidates=5000, iou_threshold=0.5, score_threshold=0.0, max_detections=100)
    scales = torch.ones(args.batch)
    sizes = torch.tensor([hw] * args.batch, dtype=torch.float32)

    def end_to_end():
        cls_out, box_out = network(x)
        dets = postprocess(
            [c.float() for c in cls_out],
            [b.float() for b in box_out],
            anchors,
            nms,
            hw,
            scales,
            sizes,
        )
        return [{k: v.cpu() for k, v in d.items()} for d in dets]

    out = {"setup_s": round(setup_s, 2), **extra}
    common.reset_peak_memory(device)
    with torch.inference_mode():
        for part, fn in (("network", lambda: network(x)), ("end_to_end", end_to_end)):
            if part in args.parts:
                out[part] = common.measure_device(fn, device, args.warmup, args.repeats)
    out["images_per_s"] = {
        p: args.batch / (out[p]["median_ms"] / 1e3) for p in args.parts if p in out
    }
    out["peak_memory_gib"] = common.peak_memory_gib(device)
    return out


def _cuda_graph(model, x):
    """Capture ``model(x)`` once; the returned callable copies its input into the captured buffer
    and replays (the outputs are the graph's own tensors, overwritten by the next replay)."""
    import torch

    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(3):  # cuDNN autotuning and allocator warm-up outside the capture
            model(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = model(static_x)

    def run(inp):
        if inp.data_ptr() != static_x.data_ptr():
            static_x.copy_(inp)
        graph.replay()
        return static_out

    return run


def _onnxruntime_gpu(model, hw, args):
    """(callable batch -> per-level outputs, info) on the best GPU provider (outputs
    through the host), or (None, error)."""
    import tempfile

    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        return None, {"error": "onnxruntime not installed"}
    providers = [
        p
        for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        if p in ort.get_available_providers()
    ]
    if not providers:
        return None, {
            "error": f"no GPU provider in onnxruntime {ort.__version__} (have {ort.get_available_providers()}); "
            "needs onnxruntime-gpu"
        }
    from efficientdet.deploy.export import export_onnx
    from efficientdet.detection.anchors import AnchorGenerator
    from efficientdet.detection.layout import flat_to_levels

    cpu_model = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format)
    path = Path(tempfile.mkdtemp(prefix="gpu-bench-")) / "model.onnx"
    export_onnx(cpu_model, path, batch=args.batch, fuse=False)
    session = ort.InferenceSession(str(path), providers=[providers[0], "CPUExecutionProvider"])
    sizes = AnchorGenerator(model.config.anchors).feature_sizes(hw)
    device = torch.device(args.device)

    def run(x):
        # the input is bound on the device (no host copy); the outputs come back through the host
        import numpy as np

        binding = session.io_binding()
        xc = x.float().contiguous()
        binding.bind_input(
            "images", "cuda", device.index or 0, np.float32, list(xc.shape), xc.data_ptr()
        )
        binding.bind_output("class_logits")
        binding.bind_output("box_deltas")
        session.run_with_iobinding(binding)
        cls, box = (torch.from_numpy(o).to(device) for o in binding.copy_outputs_to_cpu())
        return flat_to_levels(cls, box, sizes, model.config.anchors.num_anchors)

    return run, {"provider": session.get_providers()[0], "onnxruntime": ort.__version__}


def environment(device: str) -> dict:
    """What the machine offers: device, versions, ONNX Runtime providers, TensorRT, the peer's packages."""
    import importlib

    info = common.device_info(device)
    import torch

    info["cuda_available"] = torch.cuda.is_available()
    for name in (
        "onnxruntime",
        "tensorrt",
        "torch_tensorrt",
        "effdet",
        "timm",
        "torchvision",
        "pycocotools",
    ):
        try:
            info[name] = getattr(importlib.import_module(name), "__version__", "installed")
        except Exception:
            info[name] = None
    if info["onnxruntime"]:
        import onnxruntime

        info["ort_providers"] = onnxruntime.get_available_providers()
    return info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("task", choices=("train", "infer", "env"))
    ap.add_argument("--model", default="efficientdet_d0")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--num-classes", type=int, default=90)
    ap.add_argument("--boxes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--repeats", type=int, default=50, help="timed inference runs")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--engine", choices=ENGINES, default="eager")
    ap.add_argument(
        "--parts", nargs="+", default=["network", "end_to_end"], choices=("network", "end_to_end")
    )
    args = ap.parse_args(argv)
    if args.task == "env":
        common.emit_json(environment(args.device))
        return
    result = {
        "impl": "ours",
        "task": args.task,
        "model": args.model,
        "image_size": args.image_size,
        "batch": args.batch,
        "precision": args.precision,
        "device": args.device,
        "channels_last": args.channels_last,
    }
    if args.task == "train":
        result["grad_checkpointing"] = args.grad_checkpointing
    else:
        result["engine"] = args.engine
    try:
        result.update(train(args) if args.task == "train" else infer(args))
    except Exception as exc:
        if not common.is_out_of_memory(exc):
            raise
        result.update(oom=True, error=str(exc).splitlines()[0][:200])
    result["device_info"] = common.device_info(args.device)
    common.emit_json(result)


if __name__ == "__main__":
    main()
