"""Numerics that follow the official google/automl EfficientDet: Lite input normalisation and the
named anchor aspect-ratio sets as they reach users (checkpoints, CLI). Anchor geometry itself is
in test_anchors.py, the ATSS centre margin in test_assign.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import efficientdet as ed
from efficientdet.cli import main as cli_main
from efficientdet.config import get_model_config, list_models
from efficientdet.deploy.detector import Detector
from efficientdet.detection.anchors import AnchorGenerator
from efficientdet.factory import load_model, save_model_dict


@pytest.mark.parametrize("name", list_models())
def test_lite_models_take_x_minus_127_over_128(name):
    cfg = get_model_config(name)
    if (
        "lite" in name
    ):  # official hparams_config.lite_common_param: mean_rgb 127.0, stddev_rgb 128.0
        assert cfg.mean == (127.0,) * 3 and cfg.std == (128.0,) * 3
    else:  # ImageNet mean/std in 0-255 units
        assert cfg.mean == pytest.approx((0.485 * 255, 0.456 * 255, 0.406 * 255))
        assert cfg.std == pytest.approx((0.229 * 255, 0.224 * 255, 0.225 * 255))


def test_detector_feeds_lite_models_official_inputs():
    model = ed.create_model("lite0", num_classes=2, image_size=(64, 64))
    det = Detector.from_model(model, class_names=["a", "b"], fuse=False)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :16], image[:, 16:32], image[:, 32:48], image[:, 48:] = 0, 127, 255, 191
    batch = det.preprocess([image])[0]
    assert batch.shape == (1, 3, 64, 64)
    for x0, expected in ((0, -127 / 128), (16, 0.0), (32, 1.0), (48, 0.5)):
        torch.testing.assert_close(
            batch[0, :, :, x0 : x0 + 16], torch.full((3, 64, 16), expected), rtol=0, atol=1e-6
        )


def _scene() -> np.ndarray:
    """A deterministic 192x320 photo-like image: smooth gradients and a few flat shapes."""
    y, x = np.mgrid[0:192, 0:320].astype(np.float64)
    img = np.stack([128 + 100 * np.sin(x / 23), 128 + 90 * np.cos(y / 17), 60 + 0.5 * x], axis=-1)
    img[40:120, 30:110] = (230, 40, 40)
    img[90:170, 180:300] = (20, 200, 90)
    img[20:60, 200:260] = (250, 250, 250)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_trained_lite_network_barely_sees_the_normalisation_change():
    """The change from effdet's (x - 127.5) / 127.5 to the official (x - 127) / 128 moves inputs by
    at most 0.008. A trained Lite network (the ImageNet EfficientNet-Lite0 of the [pretrained]
    extra, Google's weights) gives the same top-5 classes with probabilities within 1e-3 (while
    ImageNet mean/std, a real normalisation mismatch, moves them 100x more). effdet's ported
    EfficientDet-Lite COCO files cannot be downloaded in the test suite; the random-weight effdet
    fixture is no stand-in: random deep networks amplify any input change."""
    from efficientdet.engine.trainer import imagenet_backbone_path
    from efficientdet.factory import create_backbone

    net = create_backbone(
        "efficientnet_lite0", weights=imagenet_backbone_path("efficientnet_lite0")
    ).eval()
    image = torch.from_numpy(_scene()).permute(2, 0, 1).float()[None]  # (1, 3, 192, 320), 0..255
    with torch.no_grad():
        official, effdet_norm, imagenet_norm = (
            net((image - m) / s).softmax(-1)
            for m, s in (
                (127.0, 128.0),
                (127.5, 127.5),
                (
                    torch.tensor([123.7, 116.3, 103.5])[:, None, None],
                    torch.tensor([58.4, 57.1, 57.4])[:, None, None],
                ),
            )
        )
    assert torch.equal(official.topk(5).indices, effdet_norm.topk(5).indices)
    assert float((official - effdet_norm).abs().max()) < 1e-3
    assert float((official - imagenet_norm).abs().max()) > 1e-1 * float(official.max())


def test_checkpoint_records_the_exact_aspect_ratios(tmp_path):
    model = ed.create_model(
        "lite0", num_classes=2, image_size=(64, 64), aspect_ratios="official-v2"
    )
    path = tmp_path / "v2.pt"
    torch.save(save_model_dict(model, ["a", "b"]), path)
    saved = torch.load(path, weights_only=True)["config"]["anchors"]["aspect_ratios"]
    r = math.sqrt(2.0)
    assert [list(p) for p in saved] == [
        [1.0, 1.0],
        [r, 1 / r],
        [math.sqrt(0.5), 1 / math.sqrt(0.5)],
    ]
    loaded, _ = load_model(path)
    expected = AnchorGenerator(
        get_model_config("lite0", image_size=(64, 64), aspect_ratios="official-v2").anchors
    )
    assert torch.equal(
        Detector.from_model(loaded, class_names=["a", "b"]).anchors, expected((64, 64))
    )
    default = AnchorGenerator(get_model_config("lite0").anchors)
    assert not torch.equal(default((64, 64)), expected((64, 64)))


def test_train_cli_aspect_ratio_set_names(capsys):
    from efficientdet import cli
    from efficientdet.engine.train_cli import config_from_args

    parser = cli.build_parser()
    cfg = config_from_args(
        parser.parse_args(["train", "--data", "d.yaml", "--aspect-ratios", "official-v2"])
    )
    # official tf2/anchors.py: aspect_x = np.sqrt(r), aspect_y = 1.0 / aspect_x
    assert cfg.aspect_ratios == [
        [1.0, 1.0],
        [math.sqrt(2.0), 1.0 / math.sqrt(2.0)],
        [math.sqrt(0.5), 1.0 / math.sqrt(0.5)],
    ]
    assert (
        cfg.model_overrides()["aspect_ratios"]
        == get_model_config("d0", aspect_ratios="official-v2").anchors.aspect_ratios
    )
    from efficientdet.engine.trainer import TrainConfig

    assert (
        TrainConfig(aspect_ratios="official-v2").aspect_ratios == cfg.aspect_ratios
    )  # the Python equivalent
    assert cli_main(["train", "--data", "d.yaml", "--aspect-ratios", "official-v3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: --aspect-ratios 'official-v3': ")
        and "fix: give official-v1 or" in err[0]
    )


# ----------------------------------------------------------------------------- google/automl weights
def test_official_variables_map_onto_ours_by_name():
    """The effdet fixture's weights under their official names (a dict, no TensorFlow needed)
    give what the official Keras model computed with them (fixture made from google/automl)."""
    from .reference import check_official_outputs, official_lite0

    record, variables, x = official_lite0()
    assert len(variables) == 588 and "efficientnet-lite0/stem/conv2d/kernel" in variables
    model = ed.create_model("lite0", image_size=(192, 320), aspect_ratios="official-v2")
    assert ed.load_weights(model, variables, source="automl").loaded == 588
    check_official_outputs(model, record, x)


def test_official_variables_of_another_model_are_refused():
    from efficientdet.errors import WeightsError

    from .reference import official_lite0

    _, variables, _ = official_lite0()
    lite1 = ed.create_model("lite1", image_size=(192, 320))
    before = {k: v.clone() for k, v in lite1.state_dict().items()}
    with pytest.raises(
        WeightsError, match=r"does not fit this model \(\d+ missing, \d+ unexpected, \d+ mismatched"
    ) as info:
        ed.load_weights(lite1, variables, source="automl")
    assert "\n" not in str(info.value)
    assert all(torch.equal(v, lite1.state_dict()[k]) for k, v in before.items())
    from efficientdet.factory import create_backbone

    with pytest.raises(WeightsError, match="load into an EfficientDet, not a EfficientNet"):
        ed.load_weights(create_backbone("efficientnet_lite0"), variables, source="automl")


def test_automl_checkpoint_without_tensorflow_says_how_to_get_it(monkeypatch, tmp_path):
    import sys

    from efficientdet.errors import WeightsError

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(
        WeightsError, match=r"needs TensorFlow; fix: pip install 'efficientdet\[automl\]'"
    ):
        ed.load_weights(
            ed.create_model("lite0", image_size=(64, 64)), tmp_path / "model", source="automl"
        )
