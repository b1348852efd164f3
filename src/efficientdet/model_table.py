"""``efficientdet models``: the registered models as a table.

Parameters and multiply-adds are pure functions of the model config; computing them takes
seconds per model (the model runs on the meta device under a FLOP counter), so they are
cached in ``$XDG_CACHE_HOME/efficientdet/model_costs.json`` (default ``~/.cache``), keyed by a
hash of the config and the package version. A cache that cannot be read is recomputed, one
that cannot be written is skipped with a note.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import get_model_config, list_models, resolve_model_name
from .weights.registry import COCO_WEIGHTS

COLUMNS = ("model", "input", "params", "GFLOPs", "anchor scale", "COCO weights")


def cache_path() -> Path:
    """The cost cache file (``$XDG_CACHE_HOME/efficientdet/model_costs.json``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "efficientdet" / "model_costs.json"


def cost_key(cfg) -> str:
    """Cache key of a ModelConfig: sha256 of its fields and the package version."""
    from . import __version__

    text = json.dumps([__version__, dataclasses.asdict(cfg)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _valid_entry(entry) -> bool:
    """A cache entry as :func:`model_costs` writes it (a damaged one is computed again)."""
    return isinstance(entry, dict) and all(
        type(entry.get(k)) is int and entry[k] >= 0 for k in ("params", "multiply_adds")
    )


def model_costs(names: list[str], quiet: bool = False) -> dict[str, dict]:
    """{name: {"params", "multiply_adds"}} for registered models, from the cache where it has
    them; the others are computed (tqdm bar) and added to the cache."""
    from .errors import OutputError
    from .fileio import write_json
    from .progress import bar

    path = cache_path()
    cache = _read_cache(path)
    keys = {name: cost_key(get_model_config(name)) for name in names}
    missing = [name for name in names if not _valid_entry(cache.get(keys[name]))]
    if missing:
        from .nn.profile import count_multiply_adds, count_parameters

        for name in bar(
            missing, quiet, desc="computing model costs (cached for next time)", unit="model"
        ):
            cfg = get_model_config(name)
            cache[keys[name]] = {
                "model": name,
                "params": count_parameters(cfg),
                "multiply_adds": count_multiply_adds(cfg),
            }
        try:
            write_json(path, cache)
        except OutputError as exc:
            print(f"note: model costs not cached: {exc}", file=sys.stderr)
    return {name: cache[keys[name]] for name in names}


def model_rows(names: list[str] | None = None, quiet: bool = True) -> list[dict]:
    names = [resolve_model_name(n) for n in names] if names else list_models()
    costs = model_costs(names, quiet)
    rows = []
    for name in names:
        cfg = get_model_config(name)
        rows.append(
            {
                "model": name,
                "input": f"{cfg.image_size[0]}x{cfg.image_size[1]}",
                "params": costs[name]["params"],
                "GFLOPs": round(costs[name]["multiply_adds"] / 1e9, 2),
                "anchor scale": cfg.anchors.anchor_scale,
                "COCO weights": "yes" if name in COCO_WEIGHTS else "no",
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    cells = [[f"{r[c]:,}" if c == "params" else str(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    out = [line(COLUMNS), line(["-" * w for w in widths])] + [line(row) for row in cells]
    out.append(
        "GFLOPs: billions of multiply-adds at the native input size (the paper's convention), batch 1."
    )
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from . import cli_options

    parser.add_argument(
        "names", nargs="*", metavar="MODEL", help="only these models (default: all)"
    )
    cli_options.add(parser, "json", "quiet")


def run(args: argparse.Namespace) -> int:
    from . import cli_options

    rows = model_rows(args.names, args.quiet)
    print(format_table(rows))
    if args.json:
        cli_options.write_json_output(args, rows)
    return 0
