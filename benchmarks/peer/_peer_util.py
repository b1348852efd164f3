"""Helpers shared by the peer scripts (run with benchmarks/peer/.venv/bin/python)."""

import os
import sys
from importlib.metadata import version

PEER_DIR = os.path.dirname(os.path.abspath(__file__))
BENCH_DIR = os.path.dirname(PEER_DIR)
REPO_ROOT = os.path.dirname(BENCH_DIR)
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import common  # noqa: E402  (benchmarks/common.py: same timing code as our side)

# effdet model name -> fixture whose state dict (effdet key layout) fits that model at any
# image size (the weights do not depend on the image size; only anchors do).
FIXTURE_WEIGHTS = {
    "tf_efficientdet_d0": os.path.join(REPO_ROOT, "tests", "fixtures", "effdet_d0_256.pt"),
    "tf_efficientdet_lite0": os.path.join(
        REPO_ROOT, "tests", "fixtures", "effdet_lite0_192x320.pt"
    ),
}


def versions():
    import torch

    return {
        "effdet": version("effdet"),
        "timm": version("timm"),
        "torchvision": version("torchvision"),
        "torch": torch.__version__,
    }


def image_size(args):
    """--image-size 512 or --image-size 384x640 (H x W) -> (H, W)."""
    s = str(args.image_size).lower()
    if "x" in s:
        h, w = s.split("x")
        return int(h), int(w)
    return int(s), int(s)


def build_model(name, hw, num_classes=90, weights="random"):
    """effdet.create_model(name, image_size=hw) without any download.

    weights="random": effdet's own initialisation (fine for timing: the network cost does
    not depend on the values).  weights="fixture": the fp16 state dict of our reference
    fixture for that model, cast to float32 (realistic score spread for post-processing).
    """
    import torch
    from effdet import create_model

    model = create_model(
        name,
        bench_task="",
        num_classes=num_classes,
        image_size=hw,
        pretrained=False,
        pretrained_backbone=False,
    )
    if weights == "fixture":
        if name not in FIXTURE_WEIGHTS:
            raise SystemExit(f"no fixture weights for {name} (have {sorted(FIXTURE_WEIGHTS)})")
        fx = torch.load(FIXTURE_WEIGHTS[name], weights_only=True)
        model.load_state_dict(
            {
                k: (v.float() if v.is_floating_point() else v)
                for k, v in fx["state_dict_fp16"].items()
            }
        )
    elif weights != "random":
        raise SystemExit(f"unknown --weights {weights}")
    return model


def add_common_args(ap, image_size="512"):
    ap.add_argument("--model", default="tf_efficientdet_d0", help="effdet model name")
    ap.add_argument("--image-size", default=image_size, help="S or HxW (default %(default)s)")
    ap.add_argument("--num-classes", type=int, default=90)
    ap.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    ap.add_argument("--seed", type=int, default=0)
