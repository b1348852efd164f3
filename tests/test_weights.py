"""Weights: the pretrained registry (no real download), fine-tuning loads, refusals, our format."""

from __future__ import annotations

import email.message
import hashlib
import io
import json
import logging
import urllib.error

import pytest
import torch

import efficientdet as ed
from efficientdet.cli import main as cli_main
from efficientdet.errors import ConfigError, WeightsError
from efficientdet.factory import load_model, save_model_dict
from efficientdet.weights.registry import COCO_WEIGHTS, cache_dir

from .reference import load_reference, reference_state_dict


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _effdet_release_file(ref: dict) -> dict:
    """The fixture's weights packed the way effdet's release files are: a plain state_dict."""
    return reference_state_dict(ref)


def test_coco_weights_resolve_from_cache_and_convert(hub_dir):
    ref = load_reference("effdet_lite0_192x320")
    entry = COCO_WEIGHTS["efficientdet_lite0"]
    assert (
        entry.file_name == "tf_efficientdet_lite0-dfacfc78.pth"
        and entry.sha256_prefix == "dfacfc78"
    )
    assert entry.url.endswith("/" + entry.file_name)
    target = cache_dir() / entry.file_name
    target.parent.mkdir(parents=True)
    torch.save(_effdet_release_file(ref), target)
    model = ed.create_model("lite0", image_size=ref["image_size_hw"], weights="coco").eval()
    with torch.no_grad():
        _, box_out = model(ref["input"])
    torch.testing.assert_close(box_out[0], ref["box_out"][0], atol=1e-4, rtol=0)


class _FakeResponse(io.BytesIO):
    """Stands in for urlopen's answer: a body and its headers."""

    def info(self):
        headers = email.message.Message()
        headers["Content-Length"] = str(len(self.getvalue()))
        return headers


def test_download_checks_hash(hub_dir, monkeypatch):
    monkeypatch.setattr(
        torch.hub, "urlopen", lambda *a, **k: _FakeResponse(b"not the real weights")
    )
    with pytest.raises(WeightsError, match="SHA-256"):
        ed.create_model("d0", weights="coco")
    assert not (cache_dir() / COCO_WEIGHTS["efficientdet_d0"].file_name).exists()


def test_download_with_matching_hash_is_cached_once(hub_dir, monkeypatch):
    payload = io.BytesIO()
    torch.save(_effdet_release_file(load_reference("effdet_d0_256")), payload)
    digest = hashlib.sha256(payload.getvalue()).hexdigest()
    entry = COCO_WEIGHTS["efficientdet_d0"]
    monkeypatch.setitem(
        COCO_WEIGHTS, "efficientdet_d0", type(entry)(entry.url.replace("f153e0cf", digest[:8]))
    )
    calls = []
    monkeypatch.setattr(
        torch.hub, "urlopen", lambda *a, **k: calls.append(1) or _FakeResponse(payload.getvalue())
    )
    for _ in range(2):
        ed.create_model("d0", image_size=256, weights="coco")
    assert calls == [1]


def test_offline_fails_with_one_line_naming_url_and_alternative(hub_dir, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(WeightsError) as info:
        ed.create_model("d1", weights="coco")
    message = str(info.value)
    assert (
        "\n" not in message
        and COCO_WEIGHTS["efficientdet_d1"].url in message
        and "weights=PATH" in message
    )


def test_other_num_classes_loads_all_but_class_layer(caplog):
    ref = load_reference("effdet_d0_256")
    model = ed.create_model("d0", num_classes=3, image_size=256)
    prior_bias = model.class_net.predict.conv_pw.bias.clone()
    with caplog.at_level(logging.WARNING, logger="efficientdet"):
        report = ed.load_weights(model, reference_state_dict(ref))
    assert report.skipped == ["class_net.predict.conv_pw.weight", "class_net.predict.conv_pw.bias"]
    assert "skipped the class prediction layer" in caplog.text
    torch.testing.assert_close(
        model.box_net.predict.conv_pw.weight,
        reference_state_dict(ref)["box_net.predict.conv_pw.weight"],
    )
    torch.testing.assert_close(model.class_net.predict.conv_pw.bias, prior_bias)
    torch.testing.assert_close(prior_bias, torch.full_like(prior_bias, -4.59511985013459))


def test_wrong_model_fails_with_key_counts():
    ref = load_reference("effdet_lite0_192x320")
    model = ed.create_model("d1")
    with pytest.raises(WeightsError, match=r"\d+ missing, \d+ unexpected, \d+ mismatched keys"):
        ed.load_weights(model, reference_state_dict(ref), name="lite0.pth")


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        ed.create_model("efficientdet_d9")
    assert "efficientdet_d0" in str(info.value) and "efficientdet_lite4" in str(info.value)


def test_missing_and_unsafe_files_fail_in_one_line(tmp_path):
    model = ed.create_model("lite0", num_classes=2)
    with pytest.raises(WeightsError, match="no such weights file"):
        ed.load_weights(model, tmp_path / "absent.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": logging.getLogger("x")}, unsafe)  # pickles an arbitrary object
    with pytest.raises(WeightsError, match="refused to unpickle"):
        ed.load_weights(model, unsafe)


def test_our_checkpoint_round_trip(tmp_path):
    model = ed.create_model("lite0", num_classes=2, image_size=(128, 160), anchor_scale=2.5).eval()
    path = tmp_path / "model.pt"
    torch.save(save_model_dict(model, ["cat", "dog"], [3, 7]), path)
    loaded, ckpt = load_model(path)
    assert ckpt["class_names"] == ["cat", "dog"] and ckpt["category_ids"] == [3, 7]
    assert loaded.config == model.config
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0][0], model(x)[0][0])


def test_effdet_file_is_not_our_checkpoint(tmp_path):
    path = tmp_path / "effdet.pth"
    torch.save(reference_state_dict(load_reference("effdet_d0_256")), path)
    with pytest.raises(WeightsError, match="not an efficientdet checkpoint"):
        load_model(path)


def test_models_command_prints_table(capsys):
    assert cli_main(["models", "--json", "-"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert (
        rows["efficientdet_d0"]["params"] == 3_880_067
        and rows["efficientdet_d0"]["input"] == "512x512"
    )
    assert (
        rows["efficientdet_d7"]["anchor scale"] == 5.0
        and rows["efficientdet_lite0"]["anchor scale"] == 3.0
    )
    assert abs(rows["efficientdet_d0"]["GFLOPs"] - 2.54) / 2.54 < 0.03
    assert all(row["COCO weights"] == "yes" for row in rows.values())
    assert cli_main(["models"]) == 0
    table = capsys.readouterr().out
    assert "efficientdet_lite3x" in table and "3,880,067" in table


# ---- training-mode features -------------------------------------------------------------------


def test_drop_connect_active_only_in_training():
    torch.manual_seed(0)
    net = ed.create_backbone("efficientnet_b0", drop_path_rate=0.5)
    block = net.blocks[1][1]  # an inverted-residual block with a skip connection
    assert block.has_skip and block.drop_path_rate > 0
    block.drop_path_rate = 0.5
    block.train()
    for module in block.modules():  # BN in eval mode: only drop-connect is random
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    x = torch.randn(256, 24, 8, 8)
    with torch.no_grad():
        out = block(x)
        branch_dropped = (out == x).flatten(1).all(1)  # a dropped branch leaves the skip alone
        assert 0.35 < branch_dropped.float().mean() < 0.65
        kept = ~branch_dropped
        block.drop_path_rate = 0.0
        torch.testing.assert_close(
            out[kept] - x[kept], 2 * (block(x)[kept] - x[kept])
        )  # rescaled by 1/keep
        block.drop_path_rate = 0.5
        block.eval()
        assert torch.equal(block(x), block(x)) and not (block(x) == x).flatten(1).all(1).any()


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = ed.create_model("d0", num_classes=2, image_size=128, backbone_drop_path=0.0)
    x = torch.randn(2, 3, 128, 128)

    def grads(checkpointing: bool):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        class_out, box_out = model(x)
        sum(o.square().mean() for o in class_out + box_out).backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_channels_last_gives_same_outputs():
    ref = load_reference("effdet_d0_256")
    model = ed.create_model("d0", image_size=256)
    ed.load_weights(model, reference_state_dict(ref))
    model = model.eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        class_out, _ = model(ref["input"].contiguous(memory_format=torch.channels_last))
    for ours, theirs in zip(class_out, ref["class_out"], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
