"""One option vocabulary: every command's parser (cli.build_parser()) spells and means the shared
options the same way; --version; the per-command defaults."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from efficientdet import cli
from efficientdet.cli_options import COMMAND_DEFAULTS, OPTIONS

ROOT = Path(__file__).resolve().parents[1]
# spellings the commands used before one vocabulary; none may come back
RETIRED = {"--batch-size", "--amp", "--half", "--bs", "--img-size", "--imgsz", "--output"}


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """{"predict": parser, "data check": parser, ...} for every command."""
    found = {}

    def walk(parser, words):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and words:
            found[" ".join(words)] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, [*words, name])

    walk(cli.build_parser(), [])
    return found


def test_every_command_is_walked():
    assert set(command_parsers()) == {" ".join(words) for words, _, _ in cli.COMMANDS}


def test_shared_options_have_one_spelling_and_one_meaning_everywhere():
    flag_to_name = {flag: name for name, (flags, _) in OPTIONS.items() for flag in flags}
    seen: dict[str, list[str]] = {name: [] for name in OPTIONS}
    for command, parser in command_parsers().items():
        for action in parser._actions:
            assert not RETIRED & set(action.option_strings), f"{command}: {action.option_strings}"
            shared = [flag_to_name[f] for f in action.option_strings if f in flag_to_name]
            # a shared dest under another flag would be a second spelling of the same thing
            assert shared or action.dest not in OPTIONS, (
                f"{command}: {action.option_strings} -> dest {action.dest}"
            )
            if not shared:
                continue
            name = shared[0]
            flags, kwargs = OPTIONS[name]
            assert tuple(action.option_strings) == flags, command
            assert action.dest == name, command
            assert action.help == kwargs["help"], f"{command} {flags[0]}: help differs"
            assert action.default == kwargs.get(
                "default", False if kwargs.get("action") == "store_true" else None
            )
            assert action.type == kwargs.get("type"), f"{command} {flags[0]}: type"
            assert tuple(action.choices or ()) == tuple(kwargs.get("choices") or ()), (
                f"{command} {flags[0]}: choices"
            )
            assert action.nargs == kwargs.get(
                "nargs", 0 if kwargs.get("action") == "store_true" else None
            )
            seen[name].append(command)
    # the options the issue names reach every command where they mean something
    for command in ("train", "val", "predict", "export", "bench", "demo"):
        for name in ("image_size", "batch", "quiet"):
            assert command in seen[name], f"{command} lacks {OPTIONS[name][0][0]}"
    for command in ("train", "val", "predict", "demo"):
        for name in ("device", "precision", "out"):
            assert command in seen[name], f"{command} lacks {OPTIONS[name][0][0]}"
    for command in ("val", "predict"):
        for name in ("conf", "iou", "max_det", "nms", "json", "exist_ok"):
            assert command in seen[name], f"{command} lacks {OPTIONS[name][0][0]}"
    assert {"models", "bench", "data check"} <= set(seen["json"])


def test_image_size_means_the_same_in_every_command():
    from efficientdet.config import parse_image_size

    parser = cli.build_parser()
    commands = {
        "train": ["--data", "d.yaml"],
        "val": ["--weights", "w", "--data", "d"],
        "predict": ["--weights", "w", "--source", "s"],
        "export": ["--weights", "w"],
        "bench": [],
        "demo": [],
    }
    for command, required in commands.items():
        args = parser.parse_args([command, *required, "--image-size", "96x128"])
        assert parse_image_size(args.image_size) == (96, 128), command


def test_per_command_defaults_are_applied_and_quoted_in_the_help():
    from efficientdet.cli_options import apply_command_defaults
    from efficientdet.engine.trainer import TrainConfig

    parser = cli.build_parser()
    predict = apply_command_defaults(
        parser.parse_args(["predict", "--weights", "w", "--source", "s"]), "predict"
    )
    val = apply_command_defaults(parser.parse_args(["val", "--weights", "w", "--data", "d"]), "val")
    assert (predict.conf, predict.batch, val.conf, val.batch) == (0.25, 1, 0.0, 8)
    given = apply_command_defaults(
        parser.parse_args(["predict", "--weights", "w", "--source", "s", "--conf", "0.6"]),
        "predict",
    )
    assert given.conf == 0.6
    batch_help = OPTIONS["batch"][1]["help"]
    assert f"train {TrainConfig().batch_size}" in batch_help  # train keeps TrainConfig's default
    for command, value in COMMAND_DEFAULTS["batch"].items():
        assert f"{command} {value}" in batch_help
    train = parser.parse_args(["train", "--data", "d.yaml"])
    assert train.batch is None  # -> TrainConfig's default, and --resume stays possible


def test_version_flag_prints_the_package_version():
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    proc = subprocess.run(
        [sys.executable, "-m", "efficientdet", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"efficientdet {expected}"


def test_a_bad_choice_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["predict", "--weights", "w", "--source", "s", "--nms", "fancy"])
    assert info.value.code == 2 and "invalid choice: 'fancy'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--conf", "5", "score_threshold=5.0 (--conf): need 0 <= value <= 1"),
        ("--conf", "-0.1", "score_threshold=-0.1 (--conf)"),
        ("--conf", "nan", "score_threshold=nan (--conf)"),
        ("--iou", "0", "iou_threshold=0.0 (--iou): need 0 < value <= 1"),
        ("--max-det", "0", "max_detections=0 (--max-det)"),
    ],
)
def test_detection_thresholds_out_of_range_are_one_line_errors(
    tmp_path, capfd, option, value, expected
):
    """Found by trying: --conf 5 / -0.1 / nan ran and silently kept no (or every) detection.
    val, predict and export refuse them in one line with the fix, exit status 2."""
    import numpy as np
    import torch
    from PIL import Image

    from efficientdet import create_model
    from efficientdet.factory import save_model_dict

    torch.manual_seed(0)
    ckpt = tmp_path / "small.pt"
    torch.save(
        save_model_dict(
            create_model("efficientdet_lite0", num_classes=1, image_size=64).eval(), ["cat"]
        ),
        ckpt,
    )
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    commands = [
        ["val", "--weights", str(ckpt), "--data", str(tmp_path / "d.yaml")],
        [
            "predict",
            "--weights",
            str(ckpt),
            "--source",
            str(tmp_path / "a.png"),
            "--out",
            str(tmp_path / "p"),
        ],
        ["export", "--weights", str(ckpt), "--out", str(tmp_path / "e")],
    ]
    for argv in commands:
        assert cli.main([*argv, option, value, "--quiet"]) == 2, argv
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {expected}") and "; fix: " in err[0], (
            err
        )
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["export", "--weights", "w.pt", "--batch", "0"],
            "error: --batch 0: need 1 or more; fix: give --batch 1 or more",
        ),
        (
            ["val", "--weights", "w.pt", "--data", "d.yaml", "--workers", "-1"],
            "error: --workers -1: need 0 or more",
        ),
        (["train", "--data", "d.yaml", "--workers", "-1"], "error: --workers -1: need 0 or more"),
        (
            ["predict", "--weights", "w.pt", "--source", "s", "--threads", "-2"],
            "error: --threads -2: need 0 or more",
        ),
        (["bench", "--batches", "1", "0"], "error: --batches 0: need 1 or more"),
    ],
)
def test_counts_below_their_minimum_are_one_line_errors(capfd, argv, line):
    """Found by trying: export --batch 0 and val --workers -1 ended in tracebacks. Every command
    checks --batch/--batches/--workers/--threads in one place (cli_options.check_counts)."""
    assert cli.main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line) and "; fix: " in err[0], err


@pytest.mark.parametrize(
    "mistake", ["no source", "empty folder", "glob", "image size", "model", "device", "webcam"]
)
def test_common_mistakes_end_in_error_and_fix(tmp_path, capfd, mistake):
    """Found by trying: these one-line errors had no 'fix:' part (the promised form is
    'error: <item>: <what>; fix: <how>')."""
    (tmp_path / "empty").mkdir()
    predict = ["predict", "--weights", "w.pt", "--out", str(tmp_path / "out")]
    argv = {
        "no source": [*predict, "--source", str(tmp_path / "nowhere.jpg")],
        "empty folder": [*predict, "--source", str(tmp_path / "empty")],
        "glob": [*predict, "--source", str(tmp_path / "empty" / "*.jpg")],
        "image size": ["val", "--weights", "w.pt", "--data", "d.yaml", "--image-size", "0"],
        "model": ["data", "check", "d.yaml", "--model", "efficientdet_d9"],
        "device": ["val", "--weights", "w.pt", "--data", "d.yaml", "--device", "tpu"],
        "webcam": [*predict, "--source", "9"],  # no camera 9 here (nor on CI)
    }[mistake]
    assert cli.main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "; fix: " in err[0], err
