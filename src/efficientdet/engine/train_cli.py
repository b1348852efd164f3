"""``efficientdet train``: train a detector on a dataset (see :mod:`efficientdet.engine.trainer`).

    efficientdet train --data data.yaml --model lite0 --backbone-weights imagenet \
        --image-size 320 --epochs 50 --batch 8 --out runs/shapes
    efficientdet train --resume runs/shapes          # continue an interrupted run
    torchrun --nproc_per_node 2 -m efficientdet train --data data.yaml ...   # DDP

Every option defaults to the TrainConfig default; with --resume only --workers, --device and
--quiet/--no-plots may be given (the rest comes from the run's checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses

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
    OPTIMIZER_NAMES,
    RESUME_OVERRIDABLE,
    TrainConfig,
)
from .trainer import train

_DEFAULTS = TrainConfig()
PRECISION_TO_AMP = {
    "fp32": "none",
    "bf16": "bf16",
    "fp16": "fp16",
}  # --precision -> TrainConfig.amp


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
    cli_options.add(g, "quiet")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed options: given options override the defaults."""
    given = {
        "data": args.data,
        "val_data": args.val_data,
        "model": args.model,
        "weights": args.weights,
        "backbone_weights": args.backbone_weights,
        "image_size": parse_image_size(args.image_size, "--image-size"),
        "freeze": args.freeze,
        "anchor_scale": args.anchor_scale,
        "aspect_ratios": parse_aspect_ratios(args.aspect_ratios),
        "num_scales": args.num_scales,
        "min_level": args.min_level,
        "max_level": args.max_level,
        "bn_momentum": args.bn_momentum,
        "epochs": args.epochs,
        "batch_size": args.batch,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "weight_decay": args.weight_decay,
        "warmup_epochs": args.warmup_epochs,
        "clip_grad": args.clip_grad,
        "ema_warmup_steps": args.ema_warmup,
        "flip_prob": args.flip_prob,
        "box_loss": args.box_loss,
        "assigner": args.assigner,
        "amp": PRECISION_TO_AMP.get(args.precision),
        "channels_last": args.channels_last,
        "grad_checkpointing": args.grad_checkpointing,
        "patience": args.patience,
        "val_interval": args.val_interval,
        "out": args.out,
        "exist_ok": args.exist_ok or None,
        "resume": args.resume,
        "workers": args.workers,
        "device": args.device,
        "seed": args.seed,
    }
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
                f"--resume continues a run with its saved settings; drop {', '.join('--' + k.replace('_', '-') for k in ignored)} "
                "(only --workers, --device, --quiet, --no-plots may change)"
            )
        return dataclasses.replace(_DEFAULTS, **given)
    if not given.get("data"):
        raise ConfigError("give --data DATA.yaml (or a COCO .json), or --resume RUN_DIR")
    return TrainConfig(**{**dataclasses.asdict(_DEFAULTS), **given})


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
