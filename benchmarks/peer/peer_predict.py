"""Time the peer effdet's inference: the network alone and DetBenchPredict end to end.

    benchmarks/peer/.venv/bin/python benchmarks/peer/peer_predict.py \
        --model tf_efficientdet_d0 --image-size 512 --batch 1 --repeats 10 [--channels-last]

Eval mode under torch.no_grad(), float32, random input; weights random by default (the cost
does not depend on the values; ``--weights fixture`` loads our D0/Lite0 fixture weights).
"network": ``model(x)`` (backbone + BiFPN + heads, raw outputs); "end_to_end":
``DetBenchPredict(model)(x)`` (network + _post_process top-5000 + per-image decode and
torchvision batched_nms, padded to 100 detections).  Prints one JSON line (last line); with
``--serve``, serves end-to-end calls to ``common.TimingServer`` instead.
"""

import argparse

import _peer_util as pu
from _peer_util import common


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pu.add_common_args(ap)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--weights", choices=("random", "fixture"), default="random")
    ap.add_argument("--only", choices=("both", "network", "end_to_end"), default="both")
    ap.add_argument(
        "--serve", action="store_true", help="serve end-to-end calls (common.serve_timings)"
    )
    args = ap.parse_args()

    import torch
    from effdet.bench import DetBenchPredict

    common.set_threads(args.threads)
    torch.manual_seed(args.seed)
    hw = pu.image_size(args)
    model = pu.build_model(args.model, hw, args.num_classes, args.weights).eval()
    bench = DetBenchPredict(model).eval()
    x = torch.randn(args.batch, 3, *hw)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    result = {
        "impl": "effdet",
        "task": "predict",
        "model": args.model,
        "image_size": list(hw),
        "batch": args.batch,
        "channels_last": args.channels_last,
        "weights": args.weights,
        "grad_mode": "no_grad",
        "versions": pu.versions(),
        "machine": common.machine_info(),
    }
    if args.serve:
        with torch.no_grad():
            common.serve_timings(lambda: bench(x), args.warmup)
        return
    with torch.no_grad():
        if args.only in ("both", "network"):
            result["network"] = common.measure(
                lambda: model(x), args.warmup, args.repeats, threads=args.threads
            )
        if args.only in ("both", "end_to_end"):
            result["end_to_end"] = common.measure(
                lambda: bench(x), args.warmup, args.repeats, threads=args.threads
            )
            det = bench(x)
            result["detections_shape"] = list(det.shape)
    result["peak_rss_mb"] = common.peak_rss_mb()
    common.emit_json(result)


if __name__ == "__main__":
    main()
