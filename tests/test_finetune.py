"""Fine-tuning: frozen parts (--freeze), ImageNet backbones for Lite0-Lite2, and checkpoints
that carry their model, anchors, image size and classes into the next run.

Tiny settings: efficientdet_lite0 at 64x64 on 8 synthetic training images, batch 4, workers 0.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

import efficientdet as ed
from efficientdet.data.synth import write_synthetic_dataset
from efficientdet.engine.trainer import IMAGENET_BACKBONES, TrainConfig, build_model, train
from efficientdet.errors import ConfigError, WeightsError

from .data_factory import tiny_train_config as tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(
        root / "data", num_train=8, num_val=4, seed=5, size=96, progress=False
    )


class Snapshot:
    """Captures the model as training starts: state, requires_grad and the optimizer's parameters."""

    def on_train_start(self, trainer) -> None:
        self.requires_grad = {n: p.requires_grad for n, p in trainer.model.named_parameters()}
        self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self.optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        self.trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
        self.model = trainer.model


# ---- --freeze ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_head_only_training_keeps_backbone_and_fpn_bit_identical(synth, tmp_path):
    snap = Snapshot()
    result = train(
        tiny(
            synth,
            tmp_path / "heads",
            epochs=1,
            freeze="backbone+fpn",
            ema_decay=0.9,
            ema_warmup_steps=0,
        ),
        callbacks=[snap],
    )  # EMA on (decay 0.9: x*d + x*(1-d) != x in float)
    frozen = ("backbone.", "fpn.")
    assert not any(v for n, v in snap.requires_grad.items() if n.startswith(frozen))
    assert all(v for n, v in snap.requires_grad.items() if n.startswith(("class_net.", "box_net.")))
    assert (
        snap.optimized == snap.trainable and snap.optimized
    )  # the optimizer holds only trainable params
    trained_live = snap.model.state_dict()
    saved = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)[
        "model"
    ]  # the EMA weights
    keys = [k for k in snap.state if k.startswith(frozen)]
    assert any(k.endswith("running_mean") for k in keys) and any(
        k.endswith("running_var") for k in keys
    )
    for state in (trained_live, saved):
        changed = [k for k in keys if not torch.equal(state[k], snap.state[k])]
        assert not changed, changed[:3]  # weights and batch-norm statistics, bit for bit
    for prefix in ("class_net.", "box_net."):  # the heads did train, their batch norms too
        head = [k for k in snap.state if k.startswith(prefix) and snap.state[k].is_floating_point()]
        assert any(
            not torch.equal(trained_live[k], snap.state[k]) for k in head if k.endswith(".weight")
        ), prefix
        assert any(
            not torch.equal(trained_live[k], snap.state[k])
            for k in head
            if k.endswith("running_mean")
        ), prefix


def test_freeze_choice_is_checked():
    with pytest.raises(ConfigError, match="backbone\\+fpn"):
        TrainConfig(data="x.yaml", freeze="fpn")


def test_freezing_random_layers_is_never_silent(tmp_path):
    """Found by trying: --freeze backbone+fpn without --weights trained the heads on a fixed
    random network, without a word. Now the log says so with the fix; with weights it does not."""
    from efficientdet.factory import save_model_dict

    def logged(**options) -> list[str]:
        lines: list[str] = []
        build_model(
            TrainConfig(data="x.yaml", model="lite0", image_size=64, **options),
            2,
            class_names=["a", "b"],
            log=lines.append,
        )
        return [line for line in lines if line.startswith("warning: --freeze")]

    assert logged(freeze="backbone+fpn") == [
        "warning: --freeze backbone+fpn keeps randomly initialised layers fixed, which rarely learns; "
        "fix: give --weights (or drop --freeze)"
    ]
    assert "or --backbone-weights" in logged(freeze="backbone")[0]
    assert logged(freeze="none") == []
    ckpt = tmp_path / "ours.pt"
    torch.save(
        save_model_dict(
            ed.create_model("efficientdet_lite0", num_classes=2, image_size=64), ["a", "b"]
        ),
        ckpt,
    )
    assert logged(freeze="backbone+fpn", weights=str(ckpt)) == []


def test_set_train_mode_keeps_frozen_batch_norms_in_eval():
    from efficientdet.engine.trainer import set_train_mode

    model = build_model(
        TrainConfig(data="x.yaml", model="lite0", image_size=64, freeze="backbone+fpn"),
        2,
        log=lambda m: None,
    )
    set_train_mode(model, "backbone+fpn")
    bns = {n: m.training for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bns and all(not t for n, t in bns.items() if n.startswith(("backbone.", "fpn.")))
    assert all(t for n, t in bns.items() if n.startswith(("class_net.", "box_net.")))
    assert not any(p.requires_grad for p in model.fpn.parameters())
    assert all(p.requires_grad for p in model.class_net.parameters())


# ---- ImageNet backbones (the packages' real weights on real photos) ---------------------------


def _photo(name: str, size: int) -> torch.Tensor:
    from PIL import Image
    from skimage import data as skimage_data

    image = (
        Image.fromarray(getattr(skimage_data, name)())
        .convert("RGB")
        .resize((size, size), Image.BILINEAR)
    )
    x = torch.from_numpy(np.array(image)).float().permute(2, 0, 1)[None]
    return (x - 127.0) / 128.0  # the Lite models' input normalisation


def _imagenet_file(backbone: str) -> str:
    module, cls, _ = IMAGENET_BACKBONES[backbone]
    return getattr(importlib.import_module(module), cls).get_model_file_path()


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_imagenet_weights_classify_real_photos(backbone):
    """Our backbone + the package's classifier head name the cat and the espresso of skimage."""
    net = ed.create_backbone(backbone, num_classes=1000)
    report = ed.load_weights(net, _imagenet_file(backbone), source="efficientnet-pytorch")
    assert report.loaded == len(net.state_dict())
    net.eval()
    with torch.no_grad():
        top1 = [int(net(_photo(name, 224)).argmax()) for name in ("chelsea", "coffee")]
    assert top1 == [285, 967]  # ImageNet: Egyptian cat, espresso


@pytest.mark.parametrize("model_name", ["efficientdet_lite1", "efficientdet_lite2"])
def test_backbone_weights_imagenet_for_lite1_lite2(model_name):
    cfg = TrainConfig(data="x.yaml", model=model_name, image_size=64, backbone_weights="imagenet")
    lines = []
    model = build_model(cfg, 3, log=lines.append)
    stem = torch.load(_imagenet_file(model.config.backbone), weights_only=True)["_conv_stem.weight"]
    assert torch.equal(model.backbone.conv_stem.weight, stem)
    assert "backbone weights:" in lines[0]


def test_backbone_weights_imagenet_refused_for_a_backbone_without_package():
    with pytest.raises(ConfigError) as info:
        build_model(
            TrainConfig(data="x.yaml", model="lite3", backbone_weights="imagenet"),
            3,
            log=lambda m: None,
        )
    message = str(info.value)
    assert "efficientnet_lite3" in message and "efficientnet_lite2" in message and "fix:" in message


# ---- checkpoints carry their model, anchors, image size and classes ---------------------------

ANCHORS = dict(anchor_scale=2.0, num_scales=2, aspect_ratios=[[1.0, 1.0], [2.0, 0.5]])


@pytest.fixture(scope="module")
def source_run(synth, tmp_path_factory):
    """A finished tiny run with non-default anchors at 64x64: its best.pt is what users fine-tune from."""
    out = tmp_path_factory.mktemp("runs") / "source"
    result = train(tiny(synth, out, epochs=1, image_size=[64, 64], **ANCHORS))
    return result.best_checkpoint


@pytest.fixture(scope="module")
def made_ckpt(synth, tmp_path_factory):
    """Our checkpoint as the trainer writes its model section, made without training (fast):
    Lite0 at 64x64 with non-default anchors and the synthetic dataset's classes."""
    from efficientdet.data.synth import CATEGORY_IDS, CLASS_NAMES
    from efficientdet.factory import save_model_dict

    torch.manual_seed(0)
    model = ed.create_model(
        "lite0",
        num_classes=len(CLASS_NAMES),
        image_size=64,
        anchor_scale=2.0,
        num_scales=2,
        aspect_ratios=((1.0, 1.0), (2.0, 0.5)),
    )
    torch.nn.init.normal_(model.class_net.predict.conv_pw.bias)  # rows that differ per class
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save(save_model_dict(model, CLASS_NAMES, CATEGORY_IDS), path)
    return path


def _saved(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_finetune_without_model_takes_everything_from_the_checkpoint(synth, source_run, tmp_path):
    snap = Snapshot()
    cfg = tiny(
        synth, tmp_path / "tuned", epochs=1, model=None, image_size=None, weights=str(source_run)
    )
    result = train(cfg, callbacks=[snap])
    before, after = _saved(source_run), _saved(result.best_checkpoint)
    assert (
        after["config"] == before["config"]
    )  # model, image size, anchors (scale, ratios, scales, levels)
    assert after["config"]["anchors"]["anchor_scale"] == 2.0 and tuple(
        after["config"]["image_size"]
    ) == (64, 64)
    assert (
        after["class_names"] == before["class_names"]
        and after["category_ids"] == before["category_ids"]
    )
    start = {k: v for k, v in snap.state.items() if not k.endswith("num_batches_tracked")}
    assert all(
        torch.equal(v, before["model"][k]) for k, v in start.items()
    )  # training starts from the file
    assert (
        after["args"]["model"] == "efficientdet_lite0" and after["args"]["anchor_scale"] == 2.0
    )  # args.yaml too
    log = (result.run_dir / "train.log").read_text()
    assert f"weights: {source_run}: efficientdet_lite0 at 64x64, anchor scale 2" in log


@pytest.mark.parametrize(
    "flag, value, saved",
    [
        ("--model", "d0", "efficientdet_lite0"),
        ("--anchor-scale", "3", "2"),
        ("--image-size", "96", "64x64"),
    ],
)
def test_conflicting_flag_is_refused_naming_both_values(
    synth, made_ckpt, tmp_path, capsys, flag, value, saved
):
    from efficientdet import cli

    code = cli.main(
        [
            "train",
            "--data",
            str(synth),
            "--weights",
            str(made_ckpt),
            flag,
            value,
            "--epochs",
            "1",
            "--workers",
            "0",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    shown = {"--model": "efficientdet_d0", "--anchor-scale": "3", "--image-size": "96x96"}[flag]
    assert err[0] == (
        f"error: {flag} {shown} conflicts with the checkpoint's {saved} ({made_ckpt}); fix: drop {flag} "
        "(the checkpoint carries its model, image size and anchors)"
    )
    assert not any((tmp_path / "run").glob("*.pt"))


def test_repeating_the_checkpoints_values_is_accepted(made_ckpt):
    cfg = TrainConfig(
        data="x.yaml", model="lite0", image_size=64, anchor_scale=2.0, weights=str(made_ckpt)
    )
    model = build_model(cfg, 6, log=lambda m: None)
    assert model.config.anchors.num_scales == 2 and model.config.anchors.aspect_ratios == (
        (1.0, 1.0),
        (2.0, 0.5),
    )


def _per_class(weight: torch.Tensor, num_classes: int) -> torch.Tensor:
    return weight.reshape(-1, num_classes, *weight.shape[1:])  # (A*K, C, 1, 1) -> (A, K, C, 1, 1)


def test_same_classes_in_another_order_are_mapped_by_name(made_ckpt):
    saved = _saved(made_ckpt)
    names = list(saved["class_names"])
    shuffled = [names[i] for i in (3, 0, 5, 1, 4, 2)]
    lines = []
    model = build_model(
        TrainConfig(data="x.yaml", weights=str(made_ckpt)),
        len(names),
        class_names=shuffled,
        log=lines.append,
    )
    k = len(names)
    for key in ("class_net.predict.conv_pw.weight", "class_net.predict.conv_pw.bias"):
        ours = _per_class(model.state_dict()[key], k)
        theirs = _per_class(saved["model"][key], k)
        for new_index, name in enumerate(shuffled):
            assert torch.equal(ours[:, new_index], theirs[:, names.index(name)]), (key, name)
    assert "classes mapped by name" in lines[-1]
    # the box layer is untouched by the mapping
    assert torch.equal(
        model.box_net.predict.conv_pw.weight, saved["model"]["box_net.predict.conv_pw.weight"]
    )


def test_other_classes_get_a_new_class_head_and_say_so(made_ckpt):
    saved = _saved(made_ckpt)
    other = [
        f"part{i}" for i in range(len(saved["class_names"]))
    ]  # same count, other names: must not load silently
    lines = []
    model = build_model(
        TrainConfig(data="x.yaml", weights=str(made_ckpt)),
        len(other),
        class_names=other,
        log=lines.append,
    )
    bias = model.class_net.predict.conv_pw.bias
    torch.testing.assert_close(
        bias, torch.full_like(bias, -4.59511985013459)
    )  # the prior, log((1 - 0.01) / 0.01)
    assert "starts anew" in lines[-1] and "part0" in lines[-1]
    assert torch.equal(
        model.box_net.predict.conv_pw.weight, saved["model"]["box_net.predict.conv_pw.weight"]
    )


def test_python_create_model_takes_the_checkpoint_settings(made_ckpt):
    saved = _saved(made_ckpt)
    model = ed.create_model(weights=made_ckpt)
    assert model.config.name == "efficientdet_lite0" and model.config.image_size == (64, 64)
    assert model.config.anchors.anchor_scale == 2.0 and model.config.num_classes == len(
        saved["class_names"]
    )
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    with pytest.raises(WeightsError) as info:
        ed.create_model("d0", weights=made_ckpt)
    assert str(info.value).startswith(
        "model efficientdet_d0 conflicts with the checkpoint's efficientdet_lite0"
    )
    other_anchors = ed.create_model(
        "lite0",
        num_classes=len(saved["class_names"]),
        image_size=64,
        num_scales=2,
        aspect_ratios=((1.0, 1.0), (2.0, 0.5)),
    )  # Lite0's anchor scale 3.0: same shapes
    with pytest.raises(
        WeightsError,
        match=r"anchor_scale 2\.0 differs from this model's 3\.0.*create_model\(weights=PATH\)",
    ):
        ed.load_weights(other_anchors, made_ckpt)
