"""Transforms: letterbox and its inverse, flip, crop, EXIF, colour modes, normalisation (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from efficientdet.data import (
    AugmentConfig,
    DetectionDataset,
    ImageRecord,
    load_image,
    unletterbox_boxes,
)
from efficientdet.data.records import read_image_size
from efficientdet.data.transforms import (
    clip_boxes,
    hflip_boxes,
    letterbox_scale,
    normalize,
    scale_boxes,
    to_rgb,
)

MEAN, STD = (100.0, 110.0, 120.0), (50.0, 50.0, 50.0)
RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)


def _save(arr: np.ndarray, path, **kw):
    Image.fromarray(arr.astype(np.uint8)).save(path, **kw)
    return str(path)


def _pixels(x) -> np.ndarray:
    """Normalised (3, H, W) tensor -> (H, W, 3) float pixels."""
    return x.numpy().transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)


def test_letterbox_top_left_and_inverse(tmp_path):
    path = _save(np.full((100, 200, 3), (200, 10, 30)), tmp_path / "a.png")
    rec = ImageRecord(path, 200, 100, [[10, 20, 110, 70]], [0], image_id=9)
    image, target = DetectionDataset([rec], (64, 96), MEAN, STD, train=False)[0]
    # scale = min(64/100, 96/200) = 0.48 -> 48 x 96 image at the top-left, rows 48.. padded
    assert target["scale"] == pytest.approx(0.48)
    assert target["original_size"] == (100, 200) and target["image_id"] == 9
    np.testing.assert_allclose(target["boxes"].numpy(), [[4.8, 9.6, 52.8, 33.6]], rtol=1e-6)
    assert target["labels"].tolist() == [0] and target["labels"].dtype.is_floating_point is False
    assert image.shape == (3, 64, 96)
    np.testing.assert_allclose(
        image[:, :48, :].mean(dim=(1, 2)).numpy(), [2.0, -2.0, -1.8], atol=1e-5
    )
    np.testing.assert_allclose(image[:, 48:, :].numpy(), 0.0, atol=1e-6)  # padding = mean colour
    back = unletterbox_boxes(target["boxes"].numpy(), target["scale"], target["original_size"])
    np.testing.assert_allclose(back, [[10, 20, 110, 70]], rtol=1e-5)
    assert letterbox_scale(100, 200, (64, 96)) == pytest.approx(0.48)


def test_hflip_boxes_by_hand():
    np.testing.assert_array_equal(
        hflip_boxes(np.array([[10, 20, 30, 40]]), 100), [[70, 20, 90, 40]]
    )


def test_dataset_flip_moves_boxes_and_pixels(tmp_path):
    arr = np.zeros((100, 200, 3))
    arr[:, :100], arr[:, 100:] = RED, BLUE
    rec = ImageRecord(
        _save(arr, tmp_path / "f.png"), 200, 100, [[10, 20, 110, 70]], [1], image_id=1
    )
    aug = AugmentConfig(scale_min=1.0, scale_max=1.0, flip_prob=1.0, min_box_size=0.0)
    image, target = DetectionDataset([rec], (64, 96), MEAN, STD, train=True, augment=aug)[0]
    # letterboxed box [4.8, 9.6, 52.8, 33.6] mirrored in the 96-wide image part
    np.testing.assert_allclose(target["boxes"].numpy(), [[43.2, 9.6, 91.2, 33.6]], rtol=1e-5)
    px = _pixels(image)
    np.testing.assert_allclose(px[10, 10], BLUE, atol=1)
    np.testing.assert_allclose(px[10, 80], RED, atol=1)


def test_crop_clips_and_drops():
    boxes = np.array(
        [[0, 0, 10, 10], [50, 50, 60, 60], [85, 0, 120, 10], [89, 0, 120, 10]], np.float32
    )
    moved = scale_boxes(boxes, 1.0, (50, 0))
    clipped, keep = clip_boxes(moved, (40, 100), min_size=2.0)
    assert keep.tolist() == [
        False,
        True,
        True,
        False,
    ]  # outside; inside; clipped; clipped to 1 px < 2
    np.testing.assert_array_equal(clipped[keep], [[0, 50, 10, 60], [35, 0, 40, 10]])
    np.testing.assert_allclose(scale_boxes([[10, 20, 30, 40]], 0.5, (2, 3)), [[3, 7, 13, 17]])


def test_random_scale_crop_flip_keeps_boxes_on_the_object(tmp_path):
    """Independent check: the object is a red rectangle; after any jitter/crop/flip the
    target box must enclose red pixels and its surroundings must not be red."""
    arr = np.full((100, 200, 3), GREY)
    arr[30:70, 60:140] = RED
    rec = ImageRecord(
        _save(arr, tmp_path / "r.png"), 200, 100, [[60, 30, 140, 70]], [0], image_id=1
    )
    ds = DetectionDataset(
        [rec],
        (64, 96),
        MEAN,
        STD,
        train=True,
        augment=AugmentConfig(scale_min=0.3, scale_max=2.0, flip_prob=0.5, min_box_size=2.0),
        seed=3,
    )
    kept = checked = 0
    for _ in range(40):
        image, target = ds[0]
        red = _pixels(image)[..., 1] < 64  # more than half red (grey 128 -> red 0 in green)
        assert len(target["boxes"]) <= 1
        if len(target["boxes"]) == 0:
            assert red.sum() < 4 * 4  # dropped: at most a sliver of the object is left
            continue
        kept += 1
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 64
        ys, xs = np.nonzero(red)
        if x2 - x1 >= 3 and y2 - y1 >= 3:
            # the box edges are where the red object's pixels end, to within a pixel
            np.testing.assert_allclose(
                [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x1, y1, x2, y2], atol=1.0
            )
            checked += 1
    assert checked > 10
    assert ds.load_report().stats["boxes_dropped_by_augment"] == 40 - kept


def test_exif_orientation_honoured(tmp_path):
    arr = np.zeros((20, 40, 3))
    arr[:, :20], arr[:, 20:] = RED, BLUE  # stored 40 wide x 20 tall: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left -> top
    path = _save(arr, tmp_path / "e.jpg", exif=exif, quality=95)
    assert read_image_size(path) == (20, 40)
    img = load_image(path)
    assert img.size == (20, 40) and img.mode == "RGB"
    px = np.asarray(img).astype(int)
    assert px[5, 10, 0] > 200 and px[5, 10, 2] < 60  # top: red
    assert px[35, 10, 2] > 200 and px[35, 10, 0] < 60  # bottom: blue
    rec = ImageRecord(path, 20, 40, [[0, 0, 20, 20]], [0], image_id=1)
    image, target = DetectionDataset([rec], (80, 80), MEAN, STD)[0]  # scale 2: 40 x 80
    px = _pixels(image)
    assert px[20, 20, 0] > 200 and px[60, 20, 2] > 200
    np.testing.assert_allclose(target["boxes"].numpy(), [[0, 0, 40, 40]])


def test_jpeg_draft_keeps_boxes_aligned(tmp_path):
    arr = np.full((200, 400, 3), GREY)
    arr[50:150, 100:300] = RED
    path = _save(arr, tmp_path / "big.jpg", quality=95)
    rec = ImageRecord(path, 400, 200, [[100, 50, 300, 150]], [0], image_id=1)
    image, target = DetectionDataset([rec], (64, 64), MEAN, STD)[
        0
    ]  # scale 0.16: decoded at 1/4 first
    np.testing.assert_allclose(target["boxes"].numpy(), [[16, 8, 48, 24]], rtol=1e-5)
    px = _pixels(image)
    assert (px[10:22, 18:46, 0] > 200).all() and (px[10:22, 18:46, 1] < 60).all()
    assert (
        (px[2:6, :, 0] < 180).all()
        and (px[:32, 2:14, 0] < 180).all()
        and (px[:32, 50:, 0] < 180).all()
    )


def test_modes_converted_to_rgb(tmp_path):
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 0))).getpixel((0, 0)) == (10, 20, 30)
    assert to_rgb(Image.new("LA", (2, 2), (90, 0))).getpixel((0, 0)) == (90, 90, 90)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png")
    assert load_image(str(tmp_path / "p.png")).getpixel((0, 0)) == (200, 100, 50)
    a16 = np.array([[0, 25700, 65535]], dtype=np.uint16)  # 16-bit: v / 257 -> 0, 100, 255
    Image.fromarray(a16).save(tmp_path / "g16.png")
    img = load_image(str(tmp_path / "g16.png"))
    assert img.mode == "RGB"
    assert [img.getpixel((i, 0)) for i in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (1, 2, 3), 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert load_image(str(tmp_path / "a.png")).getpixel((1, 1)) == (1, 2, 3)


def test_normalize_by_hand():
    x = normalize(np.array([[[100, 110, 120], [150, 60, 20]]], np.uint8), MEAN, STD)
    assert tuple(x.shape) == (3, 1, 2)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), [0, 0, 0])
    np.testing.assert_allclose(x[:, 0, 1].numpy(), [1, -1, -2])
