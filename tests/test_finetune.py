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
from efficientdet.errors import ConfigError

from .data_factory import tiny_train_config as tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(root / "data", num_train=8, num_val=4, seed=5, size=96, progress=False)


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
    result = train(tiny(synth, tmp_path / "heads", epochs=1, freeze="backbone+fpn", ema_decay=0.9,
                       ema_warmup_steps=0), callbacks=[snap])  # EMA on (decay 0.9: x*d + x*(1-d) != x in float)
    frozen = ("backbone.", "fpn.")
    assert not any(v for n, v in snap.requires_grad.items() if n.startswith(frozen))
    assert all(v for n, v in snap.requires_grad.items() if n.startswith(("class_net.", "box_net.")))
    assert snap.optimized == snap.trainable and snap.optimized  # the optimizer holds only trainable params
    trained_live = snap.model.state_dict()
    saved = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["model"]  # the EMA weights
    keys = [k for k in snap.state if k.startswith(frozen)]
    assert any(k.endswith("running_mean") for k in keys) and any(k.endswith("running_var") for k in keys)
    for state in (trained_live, saved):
        changed = [k for k in keys if not torch.equal(state[k], snap.state[k])]
        assert not changed, changed[:3]  # weights and batch-norm statistics, bit for bit
    for prefix in ("class_net.", "box_net."):  # the heads did train, their batch norms too
        head = [k for k in snap.state if k.startswith(prefix) and snap.state[k].is_floating_point()]
        assert any(not torch.equal(trained_live[k], snap.state[k]) for k in head if k.endswith(".weight")), prefix
        assert any(not torch.equal(trained_live[k], snap.state[k]) for k in head if k.endswith("running_mean")), prefix


def test_freeze_choice_is_checked():
    with pytest.raises(ConfigError, match="backbone\\+fpn"):
        TrainConfig(data="x.yaml", freeze="fpn")


def test_set_train_mode_keeps_frozen_batch_norms_in_eval():
    from efficientdet.engine.trainer import set_train_mode

    model = build_model(TrainConfig(data="x.yaml", model="lite0", image_size=64, freeze="backbone+fpn"), 2,
                        log=lambda m: None)
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

    image = Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((size, size), Image.BILINEAR)
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
        build_model(TrainConfig(data="x.yaml", model="lite3", backbone_weights="imagenet"), 3, log=lambda m: None)
    message = str(info.value)
    assert "efficientnet_lite3" in message and "efficientnet_lite2" in message and "fix:" in message
