"""Parameters and multiply-adds of every model at its native size, against the paper.

    .venv/bin/python benchmarks/bench_flops.py [--markdown]

Counts with torch.utils.flop_counter on the meta device (no real tensors), which counts
2 FLOPs per multiply-add; the paper's "FLOPs" are multiply-adds, so GMACs is compared.
"""

from __future__ import annotations

import argparse

from efficientdet.config import get_model_config, list_models
from efficientdet.nn.profile import count_multiply_adds, count_parameters

# EfficientDet paper (Tan, Pang, Le, CVPR 2020), Table 2; D5 is 135B in the first version
# (the automl README says 130B); D7x from the automl README.
PAPER_GFLOPS = {
    "efficientdet_d0": 2.54,
    "efficientdet_d1": 6.10,
    "efficientdet_d2": 11.0,
    "efficientdet_d3": 24.9,
    "efficientdet_d4": 55.2,
    "efficientdet_d5": 135.0,
    "efficientdet_d6": 226.0,
    "efficientdet_d7": 325.0,
    "efficientdet_d7x": 410.0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    for name in list_models():
        cfg = get_model_config(name)
        gmacs = count_multiply_adds(cfg) / 1e9
        paper = PAPER_GFLOPS.get(name)
        rows.append(
            (
                name,
                f"{cfg.image_size[0]}",
                f"{count_parameters(cfg):,}",
                f"{gmacs:.2f}",
                f"{paper:g}" if paper else "-",
                f"{(gmacs / paper - 1) * 100:+.1f}%" if paper else "-",
            )
        )
    header = ("model", "input", "params", "GMACs (ours)", "paper GFLOPs", "difference")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        for row in (header, *rows):
            print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
