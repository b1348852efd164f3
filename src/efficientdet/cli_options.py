"""The command line's shared option vocabulary: each option is defined once here and added to
every command that takes it, so ``--image-size``, ``--batch``, ``--device``... have one
spelling, one meaning and one help text everywhere (tests/test_cli_options.py walks every
command's parser to hold this).

A command adds what it needs with :func:`add` (``add(parser, "image_size", "batch", ...)``).
Where the sensible default depends on the command (``--batch``, ``--conf``), the option's
default is None and :func:`apply_command_defaults` fills in the value from
:data:`COMMAND_DEFAULTS` (one table, quoted in the help text).
"""

from __future__ import annotations

import argparse

# defaults that depend on the command; an absent command keeps None (train: TrainConfig's default)
COMMAND_DEFAULTS: dict[str, dict[str, float | int]] = {
    "batch": {"val": 8, "predict": 1, "export": 1, "bench": 1, "demo": 8},
    "conf": {"val": 0.0, "predict": 0.25, "export": 0.001, "demo": 0.3},
}


def _defaults_help(name: str, train_note: str = "") -> str:
    table = ", ".join(f"{cmd} {value:g}" for cmd, value in COMMAND_DEFAULTS[name].items())
    return f"{table}{train_note}"


PRECISIONS = ("fp32", "bf16", "fp16")

# dest -> (flags, argparse keyword arguments)
OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "image_size": (
        ("--image-size",),
        dict(
            default=None,
            metavar="S|HxW",
            help="model input in pixels: S (square) or HxW, e.g. 512 or 384x640 (default: the checkpoint's / model's)",
        ),
    ),
    "batch": (
        ("--batch",),
        dict(
            type=int,
            default=None,
            metavar="N",
            help=f"images per forward pass / training step (default: {_defaults_help('batch', ', train 8')})",
        ),
    ),
    "device": (
        ("--device",),
        dict(
            default=None,
            help="auto, cpu, cuda or cuda:N (default auto: CUDA when available, else CPU; ONNX files run on CPU)",
        ),
    ),
    "precision": (
        ("--precision",),
        dict(
            default=None,
            choices=PRECISIONS,
            help="compute precision: fp32 (default), bf16 (CUDA, or CPUs with AVX512-BF16/AMX; slow elsewhere), "
            "fp16 (CUDA only)",
        ),
    ),
    "conf": (
        ("--conf",),
        dict(
            type=float,
            default=None,
            metavar="SCORE",
            help=f"minimum detection score (default: {_defaults_help('conf')})",
        ),
    ),
    "iou": (("--iou",), dict(type=float, default=0.5, help="NMS IoU threshold (default 0.5)")),
    "max_det": (
        ("--max-det",),
        dict(type=int, default=100, help="detections kept per image (default 100)"),
    ),
    "nms": (
        ("--nms",),
        dict(
            default="hard",
            choices=("hard", "soft"),
            help="hard: class-aware NMS (default); soft: Gaussian soft-NMS (sigma 0.5), overlapping scores decay",
        ),
    ),
    "quiet": (("--quiet",), dict(action="store_true", help="no progress bars or stage messages")),
    "json": (
        ("--json",),
        dict(
            default=None,
            metavar="PATH",
            help="also write the results as JSON to PATH ('-': stdout)",
        ),
    ),
    "out": (
        ("--out",),
        dict(
            default=None,
            metavar="DIR",
            help="output folder (default: a new numbered folder runs/COMMAND/N); a folder that holds a run gets a "
            "number added (DIR2, DIR3...) unless --exist-ok",
        ),
    ),
    "exist_ok": (
        ("--exist-ok",),
        dict(action="store_true", help="write into --out even if it holds a run"),
    ),
}


def add(parser, *names: str):
    """Add the shared options ``names`` (keys of :data:`OPTIONS`) to ``parser`` (or a group)."""
    for name in names:
        flags, kwargs = OPTIONS[name]
        parser.add_argument(*flags, dest=name, **kwargs)
    return parser


def apply_command_defaults(args: argparse.Namespace, command: str) -> argparse.Namespace:
    """Fill options left at None with the ``command``'s value from :data:`COMMAND_DEFAULTS`."""
    for name, table in COMMAND_DEFAULTS.items():
        if getattr(args, name, "absent") is None and command in table:
            setattr(args, name, table[command])
    return args


# the least value of counting options, wherever a command has them (None: the command's default)
MINIMUMS: dict[str, tuple[int, str]] = {
    "batch": (1, "--batch"),
    "batches": (1, "--batches"),
    "workers": (0, "--workers"),
    "threads": (0, "--threads"),
}


def check_counts(args: argparse.Namespace) -> None:
    """ConfigError (one line) for a counting option below its minimum (:data:`MINIMUMS`), e.g.
    ``--batch 0`` or ``--workers -1``, before a command starts (called by :func:`efficientdet.cli.main`)."""
    from .errors import ConfigError

    for name, (least, flag) in MINIMUMS.items():
        value = getattr(args, name, None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and v < least:
                raise ConfigError(
                    f"{flag} {v}: need {least} or more; fix: give {flag} {least} or more"
                    + (" (0: the default)" if name == "threads" else "")
                )


def nms_method(args: argparse.Namespace) -> str:
    """``--nms`` -> :class:`efficientdet.config.NMSConfig` ``method`` ("hard" / "gaussian")."""
    return "gaussian" if getattr(args, "nms", "hard") == "soft" else "hard"


def precision_of(args: argparse.Namespace) -> str:
    """``--precision`` with its default (fp32)."""
    return getattr(args, "precision", None) or "fp32"


def check_json_output(args: argparse.Namespace, inputs: dict[str, object]) -> None:
    """Refuse, before the work, a ``--json PATH`` that would overwrite one of the command's
    ``inputs`` ({what: path(s)}) or is a folder (:func:`efficientdet.run_dirs.refuse_output_file`)."""
    from .run_dirs import refuse_output_file

    refuse_output_file(getattr(args, "json", None), inputs, "--json")


def write_json_output(args: argparse.Namespace, obj) -> None:
    """What ``--json PATH`` means everywhere: ``obj`` as JSON to PATH (written atomically), or
    for '-' to standard output, which then carries the JSON alone (:func:`efficientdet.cli.main`
    sends the command's other messages to stderr and leaves the real stdout in ``args.json_stdout``)."""
    import json
    import sys

    if args.json == "-":
        stream = getattr(args, "json_stdout", None) or sys.stdout
        print(json.dumps(obj, indent=2), file=stream)
        return
    from .fileio import write_json

    write_json(args.json, obj)
