"""``efficientdet train``: train a detector on a dataset (see :mod:`efficientdet.engine.trainer`).

    efficientdet train --data data.yaml --model lite0 --backbone-weights imagenet \
        --image-size 320 --epochs 50 --batch 8 --out runs/shapes
    efficientdet train --resume runs/shapes          # continue an interrupted run
    torchrun --nproc_per_node 2 -m efficientdet train --data data.yaml ...   # DDP

Every option defaults to the TrainConfig default (the --recipe's for the training settings); with --resume only --workers, --device and
--quiet/--no-plots may be given (the rest comes from the run's checkpoint).

TrainConfig is the one source of truth: every field has a flag here, read back by
:func:`config_from_args` through :data:`FIELD_DEST` / :data:`DERIVED_FIELDS`
(``tests/test_train_cli.py`` checks each field's flag, default and type), so a new option is
a TrainConfig field plus its ``add_argument`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .. import cli_options
from ..config import (
    ASPECT_RATIO_SETS,
    DEFAULT_ASPECT_RATIOS,
    parse_image_size,
    resolve_aspect_ratios,
)
from ..errors import ConfigError
from .config import (
    DEFAULT_MODEL,
    FREEZE_CHOICES,
    LOGGER_NAMES,
    OPTIMIZER_NAMES,
    RESUME_OVERRIDABLE,
    TrainConfig,
)
from .recipes import RECIPE_NAMES
from .trainer import train

_DEFAULTS = TrainConfig()
PRECISION_TO_AMP = {
    "fp32": "none",
    "bf16": "bf16",
    "fp16": "fp16",
}  # --precision -> TrainConfig.amp
# TrainConfig field -> argparse dest, where the flag is not the field's name
FIELD_DEST = {
    "batch_size": "batch",
    "ema_warmup_steps": "ema_warmup",
    "eval_batch_size": "eval_batch",
    "amp": "precision",
    "loggers": "logger",
}
# TrainConfig fields set by a flag of another shape: field -> the flag that sets it
DERIVED_FIELDS = {
    "ema": "--ema-decay",  # 0 = off
    "ema_decay": "--ema-decay",
    "scale_min": "--scale-jitter",
    "scale_max": "--scale-jitter",
    "sync_bn": "--no-sync-bn",
    "plots": "--no-plots",
    "progress": "--quiet",
}
# TrainConfig field -> parser of the flag's text value (the rest are taken as argparse gives them)
CONVERTERS = {
    "image_size": lambda v: parse_image_size(v, "--image-size"),
    "aspect_ratios": lambda v: parse_aspect_ratios(v),
    "amp": lambda v: PRECISION_TO_AMP.get(v),
    "exist_ok": lambda v: v or None,
}


def parse_aspect_ratios(items: list[str] | None) -> list[list[float]] | None:
    """A set name ('official-v1', 'official-v2'), '1,1 1.4,0.7 0.7,1.4' (width,height pairs) or
    '1 2 0.5' (w/h ratios r -> (sqrt r, 1/sqrt r)); returns the exact (width, height) pairs."""
    if not items:
        return None
    if len(items) == 1 and items[0].strip().lower().replace("_", "-") in ASPECT_RATIO_SETS:
        return [list(r) for r in resolve_aspect_ratios(items[0])]
    out = []
    for item in items:
        try:
            values = [float(v) for v in item.replace(":", ",").split(",")]
        except ValueError:
            values = []
        if len(values) == 1 and values[0] > 0:
            r = values[0] ** 0.5
            values = [r, 1.0 / r]
        if len(values) != 2 or min(values) <= 0:
            raise ConfigError(
                f"--aspect-ratios {item!r}: not a set name, W,H pair or ratio; fix: give {' or '.join(ASPECT_RATIO_SETS)}, "
                "W,H pairs (1.4,0.7) or ratios w/h (2.0), all positive"
            )
        out.append(values)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    g = parser.add_argument_group("data and model")
    g.add_argument("--data", help="dataset YAML (train/val splits) or COCO JSON")
    g.add_argument("--val-data", help="validation COCO JSON / YAML when --data has no val split")
    g.add_argument(
        "--model",
        help=f"model name, e.g. d0, lite0 (default: a --weights checkpoint's model, else {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--weights", help="coco (the released COCO weights), PATH, or none (default none)"
    )
    g.add_argument(
        "--backbone-weights",
        help="imagenet (Lite0-Lite2 backbones) or PATH of an EfficientNet checkpoint",
    )
    cli_options.add(g, "image_size")
    g.add_argument(
        "--freeze",
        choices=FREEZE_CHOICES,
        help="keep parts fixed: backbone (train BiFPN and heads), backbone+fpn (heads only); default none",
    )
    g.add_argument(
        "--anchor-scale", type=float, help="anchor size in strides (model default: 4, Lite 3)"
    )
    g.add_argument(
        "--aspect-ratios",
        nargs="+",
        metavar="R",
        help=f"{' or '.join(ASPECT_RATIO_SETS)} (the official anchors before/after "
        f"Sep 2020; default {DEFAULT_ASPECT_RATIOS}: 1,1 1.4,0.7 0.7,1.4, what the COCO weights expect), "
        "W,H pairs or w/h ratios",
    )
    g.add_argument("--num-scales", type=int, help="anchor scales per octave (default 3)")
    g.add_argument("--min-level", type=int, help="first pyramid level (3)")
    g.add_argument("--max-level", type=int, help="last pyramid level, 5..8 (default 7)")
    g.add_argument(
        "--bn-momentum",
        type=float,
        help="batch norm momentum, PyTorch convention (model default 0.01; 0.1 suits short runs)",
    )
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    cli_options.add(g, "batch")
    g.add_argument(
        "--lr", type=float, help="peak learning rate (default: SGD 0.08 * batch / 64, AdamW 1e-3)"
    )
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    g.add_argument(
        "--min-lr-ratio",
        type=float,
        help=f"final lr of the cosine decay / peak lr (default {d.min_lr_ratio})",
    )
    g.add_argument("--optimizer", choices=OPTIMIZER_NAMES, help=f"default {d.optimizer}")
    g.add_argument(
        "--weight-decay", type=float, help=f"default {d.weight_decay} (not on norms and biases)"
    )
    g.add_argument(
        "--warmup-epochs",
        type=float,
        help=f"linear warm-up before the cosine decay (default {d.warmup_epochs})",
    )
    g.add_argument(
        "--clip-grad", type=float, help=f"gradient norm clip, 0 = off (default {d.clip_grad})"
    )
    g.add_argument(
        "--ema-decay", type=float, help=f"EMA of weights, 0 = off (default {d.ema_decay})"
    )
    g.add_argument(
        "--ema-warmup", type=int, help=f"EMA warm-up steps (default {d.ema_warmup_steps})"
    )
    g.add_argument(
        "--scale-jitter",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help=f"random scale range of the augmentation (default {d.scale_min} {d.scale_max})",
    )
    g.add_argument(
        "--flip-prob", type=float, help=f"horizontal flip probability (default {d.flip_prob})"
    )
    g.add_argument(
        "--box-loss", choices=("huber", "giou"), help="box regression loss (default huber)"
    )
    g.add_argument(
        "--assigner",
        choices=("argmax", "atss"),
        help="anchor assignment (default argmax, official)",
    )
    g.add_argument(
        "--recipe",
        choices=RECIPE_NAMES,
        help="defaults of the optimisation and loss options: official (google/automl: 300 "
        "epochs, warm-up from lr 0.008, ...) or finetune (50 epochs, warm-up from a tenth of the "
        f"peak lr); default {d.recipe}; options you give win (efficientdet/engine/recipes.py)",
    )
    g.add_argument(
        "--warmup-lr",
        type=float,
        help="learning rate at the start of the warm-up (recipe: official 0.008, finetune lr/10)",
    )
    g.add_argument("--focal-alpha", type=float, help=f"focal loss alpha (default {d.focal_alpha})")
    g.add_argument("--focal-gamma", type=float, help=f"focal loss gamma (default {d.focal_gamma})")
    g.add_argument(
        "--label-smoothing",
        type=float,
        help=f"class label smoothing, 0 <= value < 1 (default {d.label_smoothing})",
    )
    g.add_argument(
        "--huber-delta", type=float, help=f"Huber box loss delta (default {d.huber_delta})"
    )
    g.add_argument(
        "--box-loss-weight",
        type=float,
        help=f"weight of the Huber box loss (default {d.box_loss_weight})",
    )
    g.add_argument(
        "--freeze-bn",
        action="store_true",
        default=None,
        help="keep every batch norm in eval mode (running statistics fixed; default: trained)",
    )
    cli_options.add(g, "precision")
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on for CPU, where it is 1.4x faster)",
    )
    g.add_argument(
        "--grad-checkpointing",
        action="store_true",
        default=None,
        help="recompute activations to save memory",
    )
    g = parser.add_argument_group("run")
    g.add_argument(
        "--patience", type=int, help="stop after N epochs without a better val mAP (default: never)"
    )
    g.add_argument(
        "--val-interval",
        type=int,
        help="validate every N epochs (default 1; always after the last)",
    )
    g.add_argument(
        "--eval-batch", type=int, metavar="N", help="validation batch (default: --batch)"
    )
    g.add_argument(
        "--max-bad-steps",
        type=int,
        help=f"diverging steps rolled back (lr halved) before the run stops (default {d.max_bad_steps})",
    )
    cli_options.add(g, "out", "exist_ok")
    g.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/last.pt"
    )
    g.add_argument("--workers", type=int, help=f"data loader processes (default {d.workers})")
    cli_options.add(g, "device")
    g.add_argument("--seed", type=int, help=f"default {d.seed}")
    g.add_argument(
        "--no-sync-bn",
        action="store_true",
        default=None,
        help="DDP on CUDA: keep per-process BatchNorm",
    )
    g.add_argument("--no-plots", action="store_true", default=None, help="skip the PNG plots")
    g.add_argument(
        "--logger",
        nargs="+",
        choices=LOGGER_NAMES,
        metavar="NAME",
        help="also log to: tensorboard (RUN/tensorboard), mlflow (MLFLOW_TRACKING_URI, else "
        "RUN/mlflow.db); several at once; each needs its extra, pip install 'efficientdet[NAME]'",
    )
    g.add_argument(
        "--debug-batches",
        type=int,
        metavar="N",
        help=f"draw the first N training batches to RUN/debug (default {d.debug_batches}; 0: none)",
    )
    g.add_argument(
        "--debug-interval",
        type=int,
        metavar="E",
        help="draw predictions vs ground truth on a few validation images every E epochs "
        f"(default {d.debug_interval}; 0: never)",
    )
    cli_options.add(g, "quiet")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed options: given options override the defaults."""
    given: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in DERIVED_FIELDS:
            continue
        value = getattr(args, FIELD_DEST.get(f.name, f.name))
        convert = CONVERTERS.get(f.name)
        given[f.name] = convert(value) if convert is not None else value
    if args.ema_decay is not None:
        given["ema"] = args.ema_decay > 0
        if args.ema_decay > 0:
            given["ema_decay"] = args.ema_decay
    if args.scale_jitter is not None:
        given["scale_min"], given["scale_max"] = args.scale_jitter
    if args.no_sync_bn:
        given["sync_bn"] = False
    if args.no_plots:
        given["plots"] = False
    if args.quiet:
        given["progress"] = False
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("resume"):
        ignored = sorted(k for k in given if k not in (*RESUME_OVERRIDABLE, "resume"))
        if ignored:
            raise ConfigError(
                f"--resume continues a run with its saved settings; drop {', '.join('--' + FIELD_DEST.get(k, k).replace('_', '-') for k in ignored)} "
                "(only --workers, --device, --quiet, --no-plots may change)"
            )
        return dataclasses.replace(_DEFAULTS, **given)
    if not given.get("data"):
        raise ConfigError("give --data DATA.yaml (or a COCO .json), or --resume RUN_DIR")
    return TrainConfig(**given)  # fields not given: from --recipe


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if not cfg.resume:
        from ..run_dirs import refuse_inputs_inside

        refuse_inputs_inside(
            cfg.out,
            {
                "dataset": cfg.data,
                "validation dataset": cfg.val_data,
                "weights file": cfg.weights,
                "backbone weights file": cfg.backbone_weights,
            },
        )
    if not cfg.resume and cfg.progress:
        from ..runtime import resolve_device, warn_if_slow_precision

        warn_if_slow_precision({"none": "fp32"}.get(cfg.amp, cfg.amp), resolve_device(cfg.device))
    result = train(cfg)
    if result.stopped == "interrupted":
        return 130
    return 0
