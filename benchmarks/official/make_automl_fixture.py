"""Write tests/fixtures/automl_lite0_192x320.pt: what the official google/automl Keras
EfficientDet-Lite0 computes with the effdet fixture's weights, for tests/test_weights_automl.py
(which then needs TensorFlow but not the automl source).

    benchmarks/official/.venv/bin/python benchmarks/official/make_automl_fixture.py --automl /path/to/automl

The weights of tests/fixtures/effdet_lite0_192x320.pt are given to the official model under the
official variable names (``efficientdet.weights.automl.to_automl``); the official model then
runs on that fixture's first input image (``input[:1]``, already normalised). A name or layout error in the mapping makes the
official outputs differ from ours, so the test that loads a checkpoint written from these
weights through ``load_weights(source="automl")`` and compares with the recorded outputs checks
the mapping against the official code. Recorded per pyramid level (P3..P7): 4096 seeded random
positions of the flat NHWC class outputs and 1024 of the box outputs, with their values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_official import VERIFIED_COMMIT, build_official, import_official  # noqa: E402

import efficientdet as ed  # noqa: E402
from efficientdet.fileio import write_via_temp  # noqa: E402
from efficientdet.weights.automl import to_automl  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--automl", required=True, help="google/automl checkout (the folder holding efficientdet/)"
    )
    p.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "automl_lite0_192x320.pt"))
    args = p.parse_args(argv)
    tf, hparams_config, efficientdet_keras, _, _ = import_official(args.automl)

    ref = torch.load(ROOT / "tests" / "fixtures" / "effdet_lite0_192x320.pt", weights_only=True)
    hw = tuple(ref["image_size_hw"])
    model = ed.create_model("lite0", image_size=hw, aspect_ratios="official-v2")
    ed.load_weights(
        model, {k: v.float() for k, v in ref["state_dict_fp16"].items()}, source="effdet"
    )
    variables = to_automl(model)

    official, _ = build_official(
        tf, hparams_config, efficientdet_keras, "efficientdet_lite0", hw, "float32"
    )
    names = {v.name.split(":")[0] for v in official.weights}
    if names != set(variables):
        sys.exit(
            f"error: official and mapped variable names differ: {sorted(names ^ set(variables))[:5]}"
        )
    for v in official.weights:
        v.assign(variables[v.name.split(":")[0]])
    x = (
        ref["input"][:1].permute(0, 2, 3, 1).numpy()
    )  # (1, 3, H, W) -> (1, H, W, 3), already normalised
    cls_out, box_out = official(x, training=False)

    rng = np.random.default_rng(0)
    record = {
        "automl_commit": VERIFIED_COMMIT,
        "model": "efficientdet-lite0",
        "image_size_hw": list(hw),
        "input": "effdet_lite0_192x320.pt input[:1]",
        "class_index": [],
        "class_value": [],
        "box_index": [],
        "box_value": [],
    }
    for kind, outputs, count in (("class", cls_out, 4096), ("box", box_out, 1024)):
        for level in outputs:
            flat = level.numpy().reshape(-1)
            index = np.sort(rng.choice(flat.size, size=min(count, flat.size), replace=False))
            record[f"{kind}_index"].append(torch.from_numpy(index))
            record[f"{kind}_value"].append(torch.from_numpy(flat[index].copy()))
    write_via_temp(args.out, lambda tmp: torch.save(record, tmp))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
