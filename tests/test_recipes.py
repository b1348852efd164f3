"""Training recipes (``--recipe official|finetune``): the official values against a table
written by hand from google/automl, explicit settings winning, the values reaching the
optimizer, scheduler, loss and augmentation of a real run, and the scale jitter range."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from efficientdet import cli
from efficientdet.data import AugmentConfig, DetectionDataset, ImageRecord
from efficientdet.data.synth import write_synthetic_dataset
from efficientdet.data.transforms import letterbox_scale
from efficientdet.engine.recipes import OFFICIAL_SOURCES, RECIPE_FIELDS, resolve_recipe
from efficientdet.engine.train_cli import config_from_args
from efficientdet.engine.trainer import TrainConfig, train
from efficientdet.errors import ConfigError

from .data_factory import tiny_train_config

# Read by hand from github.com/google/automl efficientdet/ at commit 6a54c87 (2025-03-01):
# hparams_config.py default_detection_configs() and tf2/train_lib.py.
OFFICIAL = {
    "optimizer": "sgd",  # hparams_config.py:213 h.optimizer = 'sgd'
    "momentum": 0.9,  # :212 h.momentum = 0.9
    "weight_decay": 4e-5,  # :242 h.weight_decay = 4e-5
    "warmup_lr": 0.008,  # :215 h.lr_warmup_init = 0.008
    "warmup_epochs": 1.0,  # :216 h.lr_warmup_epoch = 1.0
    "min_lr_ratio": 0.0,  # :278 h.lr_decay_method = 'cosine'; train_lib.py:114 decays to 0
    "clip_grad": 10.0,  # :220 h.clip_gradients_norm = 10.0
    "epochs": 300,  # :221 h.num_epochs = 300
    "ema": True,  # :279 h.moving_average_decay = 0.9998 (non-zero)
    "ema_decay": 0.9998,  # :279
    "scale_min": 0.1,  # :184 h.jitter_min = 0.1
    "scale_max": 2.0,  # :185 h.jitter_max = 2.0
    "flip_prob": 0.5,  # :183 h.input_rand_hflip = True; preprocessor: 50%
    "label_smoothing": 0.0,  # :229 h.label_smoothing = 0.0
    "focal_alpha": 0.25,  # :231 h.alpha = 0.25
    "focal_gamma": 1.5,  # :232 h.gamma = 1.5
    "huber_delta": 0.1,  # :235 h.delta = 0.1
    "box_loss_weight": 50.0,  # :237 h.box_loss_weight = 50.0
    "box_loss": "huber",  # :238 h.iou_loss_type = None
    "assigner": "argmax",  # tf2/anchors.py:184 ArgMaxMatcher
    "freeze_bn": False,  # :210 h.is_training_bn = True
}
# hparams_config.py:301-467 efficientdet_model_param_dict / efficientdet_lite_param_dict
OFFICIAL_IMAGE_SIZE = {
    "efficientdet_d0": 512,
    "efficientdet_d1": 640,
    "efficientdet_d2": 768,
    "efficientdet_d3": 896,
    "efficientdet_d4": 1024,
    "efficientdet_d5": 1280,
    "efficientdet_d6": 1280,
    "efficientdet_d7": 1536,
    "efficientdet_d7x": 1536,
    "efficientdet_lite0": 320,
    "efficientdet_lite1": 384,
    "efficientdet_lite2": 448,
    "efficientdet_lite3": 512,
    "efficientdet_lite3x": 640,
    "efficientdet_lite4": 640,
}
# The defaults before recipes existed (what --recipe finetune must keep).
FINETUNE = {**OFFICIAL, "epochs": 50, "warmup_lr": None}


def test_official_recipe_field_by_field():
    resolved = resolve_recipe("official", "efficientdet_d0", total_batch=64)
    for name, value in OFFICIAL.items():
        assert resolved[name] == value, name
        assert OFFICIAL_SOURCES.get(name), name
    # learning_rate 0.08 per 64 images, linear in the total batch (tf2/train_lib.py:41)
    assert resolved["lr"] == pytest.approx(0.08)
    assert resolve_recipe("official", "efficientdet_d0", 8)["lr"] == pytest.approx(0.01)
    assert resolve_recipe("official", "efficientdet_d0", 256)["lr"] == pytest.approx(0.32)
    # nothing the recipe sets is left out of the hand-written table
    assert set(RECIPE_FIELDS) - {"ema_warmup_steps"} == set(OFFICIAL)
    cfg = TrainConfig(data="d.yaml", recipe="official")
    assert {k: getattr(cfg, k) for k in OFFICIAL} == OFFICIAL


@pytest.mark.parametrize("model", sorted(OFFICIAL_IMAGE_SIZE))
def test_official_image_size_per_model(model):
    size = OFFICIAL_IMAGE_SIZE[model]
    assert resolve_recipe("official", model, 64)["image_size"] == [size, size]


def test_finetune_is_the_default_and_keeps_the_small_data_settings():
    cfg = TrainConfig(data="d.yaml")
    assert cfg.recipe == "finetune"
    assert {k: getattr(cfg, k) for k in FINETUNE} == FINETUNE
    assert cfg.ema_warmup_steps == 2000
    assert resolve_recipe("finetune", "efficientdet_lite0", 16)["lr"] == pytest.approx(0.02)


def test_explicit_settings_win_over_the_recipe():
    cfg = TrainConfig(data="d.yaml", recipe="official", epochs=3, focal_gamma=2.0, warmup_lr=None)
    assert (cfg.epochs, cfg.focal_gamma, cfg.warmup_lr) == (3, 2.0, None)
    assert cfg.focal_alpha == 0.25 and cfg.huber_delta == 0.1  # the rest: the recipe's
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            *("train", "--data", "d.yaml", "--recipe", "official", "--epochs", "4"),
            *("--warmup-lr", "0.002", "--scale-jitter", "0.5", "1.5", "--box-loss-weight", "10"),
            *("--label-smoothing", "0.1", "--freeze-bn"),
        ]
    )
    cfg = config_from_args(args)
    assert cfg.recipe == "official"
    assert (cfg.epochs, cfg.warmup_lr, cfg.scale_min, cfg.scale_max) == (4, 0.002, 0.5, 1.5)
    assert (cfg.box_loss_weight, cfg.label_smoothing, cfg.freeze_bn) == (10.0, 0.1, True)
    assert (cfg.focal_gamma, cfg.clip_grad, cfg.momentum) == (1.5, 10.0, 0.9)
    loss = cfg.loss_config()
    assert (loss.box_loss_weight, loss.label_smoothing, loss.alpha) == (10.0, 0.1, 0.25)
    # a flag equal to the finetune default still wins over the official recipe
    args = parser.parse_args(
        ["train", "--data", "d.yaml", "--recipe", "official", "--epochs", "50"]
    )
    assert config_from_args(args).epochs == 50


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--focal-alpha", "1.5", "alpha=1.5: need 0 <= value <= 1; fix: e.g. --focal-alpha 0.25"),
        ("--focal-gamma", "-1", "gamma=-1.0: need 0 <= value; fix: e.g. --focal-gamma 1.5"),
        ("--huber-delta", "0", "huber_delta=0.0: need 0 < value; fix: e.g. --huber-delta 0.1"),
        ("--huber-delta", "nan", "huber_delta=nan: need 0 < value; fix:"),
        ("--box-loss-weight", "-2", "box_loss_weight=-2.0: need 0 <= value; fix:"),
        ("--label-smoothing", "1", "label_smoothing=1.0: need 0 <= value < 1"),
        ("--warmup-lr", "0", "warmup_lr=0.0: need a positive learning rate; fix: e.g. --warmup-lr"),
    ],
)
def test_bad_recipe_values_are_one_line_errors(capfd, option, value, message):
    assert cli.main(["train", "--data", "d.yaml", option, value]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err


def test_freeze_bn_puts_every_batch_norm_in_eval_mode():
    from efficientdet import create_model
    from efficientdet.engine.trainer import set_train_mode

    model = create_model("efficientdet_lite0", num_classes=2, image_size=(64, 64))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    set_train_mode(model, "none", freeze_bn=True)
    assert model.training and bns and not any(m.training for m in bns)
    set_train_mode(model, "none")
    assert all(m.training for m in bns)


def test_unknown_recipe(capfd):
    with pytest.raises(SystemExit) as exc:  # argparse: exit 2 naming the choices
        cli.main(["train", "--data", "d.yaml", "--recipe", "tpu"])
    assert exc.value.code == 2
    assert "official" in capfd.readouterr().err
    with pytest.raises(ConfigError, match="recipe='tpu': unknown recipe; fix: --recipe official"):
        TrainConfig(data="d.yaml", recipe="tpu")


class _Capture:
    """Records what the running trainer built from its config."""

    def on_train_start(self, trainer) -> None:
        decay = next(g for g in trainer.optimizer.param_groups if g["name"] == "decay")
        self.start = {
            "lr_step0": trainer.optimizer.param_groups[0]["lr"],
            "peak": trainer.scheduler.base_lrs[0],
            "momentum": decay["momentum"],
            "weight_decay": decay["weight_decay"],
            "loss": trainer.loss_fn.cfg,
            "augment": trainer.train_set.augment,
            "ema_decay": trainer.ema.decay,
        }


@pytest.mark.slow  # a real (one-epoch) run: ~10-20 s on 2 shared cores
@pytest.mark.usefixtures("one_torch_thread")
def test_official_recipe_reaches_the_run_and_args_yaml(tmp_path):
    data = write_synthetic_dataset(
        tmp_path / "data", num_train=4, num_val=2, seed=1, size=64, progress=False
    )
    capture = _Capture()
    cfg = tiny_train_config(
        data,
        tmp_path / "run",
        recipe="official",
        epochs=1,
        lr=None,
        focal_gamma=2.0,
        plots=False,
    )
    result = train(cfg, callbacks=[capture])
    s = capture.start
    assert s["peak"] == pytest.approx(0.08 * 4 / 64)  # batch 4, one process
    assert s["lr_step0"] == pytest.approx(0.008)  # the official warm-up start (absolute)
    assert (s["momentum"], s["weight_decay"], s["ema_decay"]) == (0.9, 4e-5, 0.9998)
    assert s["augment"] == AugmentConfig(0.1, 2.0, 0.5)
    loss = s["loss"]
    assert (loss.alpha, loss.gamma, loss.huber_delta, loss.box_loss_weight) == (0.25, 2.0, 0.1, 50)
    saved = yaml.safe_load((Path(result.run_dir) / "args.yaml").read_text())
    expected = {**OFFICIAL, "epochs": 1, "focal_gamma": 2.0, "recipe": "official"}
    assert {k: saved[k] for k in expected} == expected
    assert saved["lr"] == pytest.approx(0.005) and saved["image_size"] == 64  # as given


def test_scale_jitter_of_the_official_recipe_spans_0_1_to_2(tmp_path):
    """The training transform really scales by U(0.1, 2.0) x the letterbox scale: the factor
    the dataset reports covers the range, and below 1 the image's red area on the canvas
    (the rest is padding) is exactly that wide."""
    red = np.zeros((100, 200, 3), np.uint8)
    red[..., 0] = 255
    path = tmp_path / "red.png"
    Image.fromarray(red).save(path)
    cfg = TrainConfig(data="d.yaml", recipe="official")
    augment = AugmentConfig(cfg.scale_min, cfg.scale_max, cfg.flip_prob)
    record = ImageRecord(str(path), 200, 100, [[10, 10, 190, 90]], [0], image_id=1)
    ds = DetectionDataset([record], (64, 96), (0, 0, 0), (1, 1, 1), train=True, augment=augment)
    base = letterbox_scale(100, 200, (64, 96))
    jitters = []
    for _ in range(300):
        image, target = ds[0]
        jitter = target["scale"] / base
        jitters.append(jitter)
        red_cols = int((image[0, 0] > 127).sum())  # first row: red where the image is
        expected = min(96, max(1, round(200 * target["scale"])))
        if jitter < 1:
            assert abs(red_cols - expected) <= 1, (jitter, red_cols, expected)
        else:
            assert red_cols == 96  # the scaled image covers the whole canvas
    assert 0.1 <= min(jitters) < 0.15 and 1.95 < max(jitters) <= 2.0
    # roughly uniform: about half of the draws below the midpoint 1.05
    assert 0.4 < np.mean(np.array(jitters) < 1.05) < 0.6
    assert not math.isnan(sum(jitters))
