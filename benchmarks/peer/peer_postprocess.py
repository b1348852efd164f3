"""Time the peer effdet's post-processing alone: _post_process + _batch_detection.

    benchmarks/peer/.venv/bin/python benchmarks/peer/peer_postprocess.py \
        --model tf_efficientdet_d0 --image-size 512 --batch 1 --repeats 20

This is exactly what DetBenchPredict.forward does after the network: top-5000 over
anchors x classes (_post_process), then per image box decoding, sigmoid scores and
class-aware torchvision batched_nms at IoU 0.5, padded to 100 rows (_batch_detection, a
TorchScript function).  Its cost depends on the head outputs (how many boxes overlap), so
the outputs are made realistic: the network is run once with our fixture's weights
(--weights fixture, default) on a random input, or read from --outputs FILE (a torch.save'd
dict with lists 'class_out' and 'box_out', e.g. written by --save-outputs), so that our
post-processing can be timed on the very same tensors.  Reports the two parts separately
and together.  Prints one JSON line (last line).
"""

import argparse
import os

import _peer_util as pu
from _peer_util import common


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pu.add_common_args(ap)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--weights", choices=("random", "fixture"), default="fixture")
    ap.add_argument("--outputs", help="read class_out/box_out from this file instead")
    ap.add_argument("--save-outputs", help="save the head outputs used to this file")
    args = ap.parse_args()

    import torch
    from effdet.anchors import Anchors
    from effdet.bench import _batch_detection, _post_process
    from effdet.config import get_efficientdet_config

    common.set_threads(args.threads)
    torch.manual_seed(args.seed)
    hw = pu.image_size(args)
    if args.outputs:
        saved = torch.load(args.outputs, weights_only=True)
        class_out, box_out = list(saved["class_out"]), list(saved["box_out"])
        config = get_efficientdet_config(args.model)
        config.image_size = hw
        config.num_classes = args.num_classes
        source = f"file {os.path.basename(args.outputs)}"
    else:
        model = pu.build_model(args.model, hw, args.num_classes, args.weights).eval()
        config = model.config
        x = torch.randn(args.batch, 3, *hw)
        with torch.no_grad():
            class_out, box_out = model(x)
        source = f"network with {args.weights} weights on a random input"
        if args.save_outputs:
            torch.save(
                {
                    "class_out": class_out,
                    "box_out": box_out,
                    "model": args.model,
                    "image_size": list(hw),
                },
                args.save_outputs,
            )
    batch = class_out[0].shape[0]
    anchors = Anchors.from_config(config)
    boxes = anchors.boxes
    nl, nc, mdp = config.num_levels, config.num_classes, config.max_detection_points
    mdi, soft = config.max_det_per_image, config.soft_nms

    def post():
        return _post_process(
            class_out, box_out, num_levels=nl, num_classes=nc, max_detection_points=mdp
        )

    pp = post()

    def detect():
        c, b, idx, cls = pp
        return _batch_detection(
            batch, c, b, boxes, idx, cls, None, None, max_det_per_image=mdi, soft_nms=soft
        )

    def both():
        c, b, idx, cls = post()
        return _batch_detection(
            batch, c, b, boxes, idx, cls, None, None, max_det_per_image=mdi, soft_nms=soft
        )

    with torch.no_grad():
        r_post = common.measure(post, args.warmup, args.repeats, threads=args.threads)
        r_det = common.measure(detect, args.warmup, args.repeats, threads=args.threads)
        r_both = common.measure(both, args.warmup, args.repeats, threads=args.threads)
        det = both()
    result = {
        "impl": "effdet",
        "task": "postprocess",
        "model": args.model,
        "image_size": list(hw),
        "batch": batch,
        "outputs_from": source,
        "max_detection_points": mdp,
        "max_det_per_image": mdi,
        "soft_nms": soft,
        "nms": "torchvision.ops.batched_nms (compiled CPU kernel)",
        "versions": pu.versions(),
        "machine": common.machine_info(),
        "post_process_topk": r_post,
        "batch_detection_nms": r_det,
        "total": r_both,
        "num_detections": int((det[..., 4] > 0).sum()),
        "peak_rss_mb": common.peak_rss_mb(),
    }
    common.emit_json(result)


if __name__ == "__main__":
    main()
