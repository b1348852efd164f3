"""``efficientdet train``'s flags are checked against TrainConfig, the one source of truth:
every field has a flag, the flag's default is the field's default, its type the field's type,
and a value given on the command line lands in that field."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

import pytest

from efficientdet import cli
from efficientdet.engine.config import TrainConfig
from efficientdet.engine.train_cli import (
    CONVERTERS,
    DERIVED_FIELDS,
    FIELD_DEST,
    config_from_args,
)
from efficientdet.errors import ConfigError

HINTS = typing.get_type_hints(TrainConfig)


def train_actions() -> dict[str, argparse.Action]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    return {a.dest: a for a in train._actions}


def parse(*argv: str) -> TrainConfig:
    return config_from_args(cli.build_parser().parse_args(["train", *argv]))


def base_type(hint) -> set[type]:
    """int | None -> {int}; list[str] -> {list}; bool | None -> {bool}."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return {typing.get_origin(a) or a for a in args if a is not type(None)}


def test_every_field_has_a_flag():
    actions = train_actions()
    flags = {f for a in actions.values() for f in a.option_strings}
    for field in dataclasses.fields(TrainConfig):
        if field.name in DERIVED_FIELDS:
            assert DERIVED_FIELDS[field.name] in flags, field.name
        else:
            assert FIELD_DEST.get(field.name, field.name) in actions, (
                f"TrainConfig.{field.name} has no flag in efficientdet train"
            )


def test_no_flag_means_the_field_default():
    cfg, defaults = parse("--data", "d.yaml"), TrainConfig(data="d.yaml")
    for field in dataclasses.fields(TrainConfig):
        assert getattr(cfg, field.name) == getattr(defaults, field.name), field.name


def test_each_flag_has_the_field_type_and_sets_the_field():
    actions = train_actions()
    defaults = TrainConfig()
    checked = 0
    for field in dataclasses.fields(TrainConfig):
        if field.name in DERIVED_FIELDS or field.name in CONVERTERS or field.name == "resume":
            continue  # other shapes: checked below / in test_cli_options
        action = actions[FIELD_DEST.get(field.name, field.name)]
        kinds = base_type(HINTS[field.name])
        flag = action.option_strings[0]
        default = getattr(defaults, field.name)
        if kinds == {bool}:
            assert action.nargs == 0, field.name  # store_true / BooleanOptionalAction
            argv = [flag]
            expected: object = True
        elif action.choices:
            value = next(c for c in action.choices if c != default and c not in (default or []))
            argv = [flag, value]
            expected = [value] if list in kinds else value
        elif kinds & {int, float}:
            want = int if int in kinds else float
            assert action.type is want, f"{flag}: type {action.type}, field {HINTS[field.name]}"
            value = "3" if want is int else "0.25"
            argv, expected = [flag, value], want(value)
        else:
            assert kinds == {str} and action.type in (None, str), field.name
            argv, expected = [flag, "some/value"], "some/value"
        cfg = parse("--data", "d.yaml", *argv) if field.name != "data" else parse(*argv)
        assert getattr(cfg, field.name) == expected, (field.name, argv)
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--ema-decay", "0"], "ema", False),
        (["--ema-decay", "0.99"], "ema_decay", 0.99),
        (["--scale-jitter", "0.5", "1.5"], "scale_min", 0.5),
        (["--scale-jitter", "0.5", "1.5"], "scale_max", 1.5),
        (["--no-sync-bn"], "sync_bn", False),
        (["--no-plots"], "plots", False),
        (["--quiet"], "progress", False),
        (["--precision", "bf16"], "amp", "bf16"),
        (["--image-size", "96x128"], "image_size", [96, 128]),
        (["--aspect-ratios", "1,1", "2,0.5"], "aspect_ratios", [[1.0, 1.0], [2.0, 0.5]]),
        (["--exist-ok"], "exist_ok", True),
        (["--logger", "mlflow", "tensorboard"], "loggers", ["mlflow", "tensorboard"]),
    ],
)
def test_flags_of_another_shape_set_their_fields(argv, field, expected):
    assert getattr(parse("--data", "d.yaml", *argv), field) == expected


def test_bad_logger_and_debug_values_are_one_line_errors(capfd):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own one-line refusal
        cli.main(["train", "--data", "d.yaml", "--logger", "wandb"])
    assert exit_info.value.code == 2
    assert "argument --logger: invalid choice: 'wandb'" in capfd.readouterr().err
    with pytest.raises(ConfigError, match=r"logger 'wandb': unknown; fix: choose from"):
        TrainConfig(data="d.yaml", loggers=["wandb"])
    assert cli.main(["train", "--data", "d.yaml", "--debug-batches", "-1"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: debug_batches=-1: need 0 (off) or more; fix: ")
