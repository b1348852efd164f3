"""Command-line entry point: ``efficientdet <command> ...``.

Thin by design: each command lives in the module that does the work, which exposes
``add_arguments(parser)`` and ``run(args) -> int``. User errors (``EfficientDetError``)
print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from importlib import import_module

# (command words, module, one-line help)
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (
        ("models",),
        "efficientdet.model_table",
        "list the registered models with size, parameters and GFLOPs",
    ),
    (("data", "synth"), "efficientdet.data.synth", "write a synthetic COCO-format shapes dataset"),
    (
        ("data", "check"),
        "efficientdet.analysis.doctor",
        "check a dataset for problems and fit anchors to its boxes",
    ),
    (("train",), "efficientdet.engine.train_cli", "train a detector on a dataset"),
    (("val",), "efficientdet.engine.val_cli", "evaluate a checkpoint with COCO metrics"),
    (
        ("predict",),
        "efficientdet.deploy.predict_cli",
        "detect objects in images, folders and videos",
    ),
    (("export",), "efficientdet.deploy.export", "export a checkpoint to ONNX or TorchScript"),
    (("bench",), "efficientdet.deploy.bench", "measure latency and throughput"),
    (
        ("demo",),
        "efficientdet.engine.demo",
        "synthesize data, train, evaluate and predict in one go",
    ),
]

# commands that run networks or decode many images: one place sets their CPU runtime (runtime.py)
HEAVY_COMMANDS = ("train", "val", "predict", "bench", "export", "demo", "data check")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="efficientdet", description="EfficientDet: train, evaluate, predict, export."
    )
    parser.add_argument("--version", action="version", version=f"efficientdet {__version__}")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND")
    }
    for words, module_name, help_text in COMMANDS:
        module = import_module(module_name)
        for depth in range(1, len(words)):
            prefix = words[:depth]
            if prefix not in groups:
                group_parser = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=f"{prefix[-1]} commands"
                )
                groups[prefix] = group_parser.add_subparsers(
                    dest=f"command_{depth}", metavar="COMMAND"
                )
        sub = groups[words[:-1]].add_parser(words[-1], help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, command_words=" ".join(words))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; Ctrl+C at any point (even while modules import) prints one line, exit 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    from . import runtime
    from .cli_options import apply_command_defaults, check_counts
    from .errors import EfficientDetError

    words = sys.argv[1:] if argv is None else argv
    if words == ["--version"]:  # answered without importing the commands (and torch)
        from . import __version__

        print(f"efficientdet {__version__}")
        return 0
    if words and (words[0] in HEAVY_COMMANDS or " ".join(words[:2]) in HEAVY_COMMANDS):
        runtime.prepare_heavy_work()  # before torch starts its OpenMP threads

    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 1
    apply_command_defaults(args, args.command_words)
    try:
        check_counts(args)
        if (
            getattr(args, "json", None) == "-"
        ):  # stdout carries the JSON alone; messages go to stderr
            args.json_stdout = sys.stdout
            with contextlib.redirect_stdout(sys.stderr):
                return int(args.run(args) or 0)
        return int(args.run(args) or 0)
    except EfficientDetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
