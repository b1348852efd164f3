"""Anchor grid: exact equality with effdet's anchors, layout and sizes checked by hand."""

from __future__ import annotations

import pytest
import torch

from efficientdet.config import AnchorConfig
from efficientdet.detection.anchors import AnchorGenerator, feature_sizes
from efficientdet.detection.boxes import (
    cxcywh_to_xyxy,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
    xyxy_to_yxyx,
    yxyx_to_xyxy,
)
from efficientdet.errors import ConfigError

from .reference import REFERENCE_NAMES, load_reference


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_anchors_equal_effdet_exactly(name):
    ref = load_reference(name)
    cfg = AnchorConfig(anchor_scale=float(ref["config"]["anchor_scale"]))
    anchors = AnchorGenerator(cfg)(ref["image_size_hw"])
    assert anchors.dtype == torch.float32
    assert torch.equal(xyxy_to_yxyx(anchors), ref["anchors_yxyx"])


def test_feature_sizes_ceil_halving():
    # 192 -> 96, 48, 24 | 12, 6, 3, 2 ; 320 -> 160, 80, 40 | 20, 10, 5, 3
    assert feature_sizes((192, 320), 3, 7) == [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]
    assert feature_sizes((1536, 1536), 3, 8)[-1] == (6, 6)  # D7x: P8
    gen = AnchorGenerator(AnchorConfig(max_level=8))
    assert len(gen.feature_sizes((1536, 1536))) == 6
    assert gen((1536, 1536)).shape[0] == 9 * sum(h * w for h, w in gen.feature_sizes((1536, 1536)))


def test_layout_by_hand():
    anchors = AnchorGenerator(AnchorConfig())((512, 512))
    assert anchors.shape == (49104, 4)  # 9 * (64^2 + 32^2 + 16^2 + 8^2 + 4^2)
    # level 3, cell (0, 0): centre (4, 4), base size 4 * 8 = 32
    assert anchors[0].tolist() == [-12.0, -12.0, 20.0, 20.0]
    # anchor 1: scale 0, ratio (1.4, 0.7): 44.8 x 22.4
    torch.testing.assert_close(anchors[1], torch.tensor([4 - 22.4, 4 - 11.2, 4 + 22.4, 4 + 11.2]))
    # anchor 3: scale 1 (2^(1/3)), ratio (1, 1)
    half = 16 * 2 ** (1 / 3)
    torch.testing.assert_close(anchors[3], torch.tensor([4 - half, 4 - half, 4 + half, 4 + half]))
    # anchor 9: next cell to the right: centre (12, 4)
    assert anchors[9].tolist() == [-4.0, -12.0, 28.0, 20.0]
    # anchor 64*9: second row, centre (4, 12)
    assert anchors[64 * 9].tolist() == [-12.0, -4.0, 20.0, 28.0]
    # first anchor of level 4: centre (8, 8), size 64
    assert anchors[64 * 64 * 9].tolist() == [-24.0, -24.0, 40.0, 40.0]


def test_cache_per_size_device_dtype():
    gen = AnchorGenerator(AnchorConfig())
    a = gen((256, 256))
    assert gen((256, 256)) is a
    assert gen((256, 320)) is not a
    assert gen((256, 256), dtype=torch.float64).dtype == torch.float64
    assert gen.num_anchors_per_level((256, 256)) == [
        9 * 32 * 32,
        9 * 16 * 16,
        9 * 8 * 8,
        9 * 4 * 4,
        9 * 2 * 2,
    ]


def test_bad_size_is_config_error():
    with pytest.raises(ConfigError):
        AnchorGenerator(AnchorConfig())((0, 512))


def test_box_format_round_trips():
    b = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert xyxy_to_yxyx(b).tolist() == [[2.0, 1.0, 10.0, 5.0]]
    assert torch.equal(yxyx_to_xyxy(xyxy_to_yxyx(b)), b)
    assert xyxy_to_cxcywh(b).tolist() == [[3.0, 6.0, 4.0, 8.0]]
    assert torch.equal(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)
    assert xyxy_to_xywh(b).tolist() == [[1.0, 2.0, 4.0, 8.0]]
    assert torch.equal(xywh_to_xyxy(xyxy_to_xywh(b)), b)


# ----------------------------------------------------------------------------- named aspect-ratio sets
def test_official_v2_anchors_by_hand():
    """official-v2 = hparams aspect_ratios [1.0, 2.0, 0.5] -> (sqrt r, 1/sqrt r) (google/automl tf2/anchors.py)."""
    v2 = AnchorGenerator(AnchorConfig(aspect_ratios="official-v2"))((512, 512), dtype=torch.float64)
    # level 3, cell (0, 0), centre (4, 4), base 32: ratio 2 -> 32*sqrt(2) x 32/sqrt(2)
    hw, hh = 16 * 2**0.5, 16 / 2**0.5
    torch.testing.assert_close(
        v2[1],
        torch.tensor([4 - hw, 4 - hh, 4 + hw, 4 + hh], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
    torch.testing.assert_close(
        v2[2],
        torch.tensor([4 - hh, 4 - hw, 4 + hh, 4 + hw], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


def test_official_v1_is_the_default_and_v2_moves_two_thirds_of_d0_anchors():
    assert (
        AnchorConfig().aspect_ratios
        == AnchorConfig(aspect_ratios="official-v1").aspect_ratios
        == ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    )
    v1 = AnchorGenerator(AnchorConfig())((512, 512), dtype=torch.float64)
    v2 = AnchorGenerator(AnchorConfig(aspect_ratios="official-v2"))((512, 512), dtype=torch.float64)
    moved = (v1 - v2).abs().amax(1) > 1e-9
    ratio_index = torch.arange(v1.shape[0]) % 3  # anchors within a cell: scale-major, then ratio
    assert torch.equal(moved, ratio_index != 0)  # the (1, 1) anchors stay, the others move
    # largest move: P7 (stride 128), scale 2^(2/3), ratio 2: half-width 4*128*2^(2/3)*(sqrt 2 - 1.4)/2
    expected = 4 * 128 * 2 ** (2 / 3) * (2**0.5 - 1.4) / 2
    assert (
        float((v1 - v2).abs().max()) == pytest.approx(expected, abs=1e-9) and 5.7 < expected < 5.8
    )


def test_unknown_aspect_ratio_set_is_config_error():
    with pytest.raises(ConfigError, match="official-v1 or official-v2"):
        AnchorConfig(aspect_ratios="official-v3")
    with pytest.raises(ConfigError, match="pairs"):
        AnchorConfig(aspect_ratios=((1.0, 0.0),))
