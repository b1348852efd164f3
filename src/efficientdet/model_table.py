"""``efficientdet models``: the registered models as a table."""

from __future__ import annotations

import argparse
import json

from .config import get_model_config, list_models
from .nn.profile import count_multiply_adds, count_parameters
from .weights.registry import COCO_WEIGHTS

COLUMNS = ("model", "input", "params", "GFLOPs", "anchor scale", "COCO weights")


def model_rows() -> list[dict]:
    rows = []
    for name in list_models():
        cfg = get_model_config(name)
        rows.append({
            "model": name,
            "input": f"{cfg.image_size[0]}x{cfg.image_size[1]}",
            "params": count_parameters(cfg),
            "GFLOPs": round(count_multiply_adds(cfg) / 1e9, 2),
            "anchor scale": cfg.anchors.anchor_scale,
            "COCO weights": "yes" if name in COCO_WEIGHTS else "no",
        })
    return rows


def format_table(rows: list[dict]) -> str:
    cells = [[f"{r[c]:,}" if c == "params" else str(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))
    out = [line(COLUMNS), line(["-" * w for w in widths])] + [line(row) for row in cells]
    out.append("GFLOPs: billions of multiply-adds at the native input size (the paper's convention), batch 1.")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    rows = model_rows()
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
