"""Debug views: synthetic images with known boxes; the rendered grid is read back pixel by pixel
(box outlines on the expected pixels of the expected tile, labels next to them, un-normalisation
within one grey level) and the PNG is decoded again with PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.data import ImageRecord
from efficientdet.data.transforms import normalize
from efficientdet.engine.debug_views import (
    pick_debug_images,
    render_predictions,
    render_training_batch,
    save_view,
)
from efficientdet.visualize import class_color

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # ImageNet: channels differ
MARK = (0, 255, 0)  # a pixel at (0, 0) of every test image: finds the tile in the grid
GREY = 90
BLOCK = (200, 30, 30)


def _image(h: int = 64, w: int = 64) -> np.ndarray:
    img = np.full((h, w, 3), GREY, np.uint8)
    img[16:40, 20:48] = (
        BLOCK  # the object: columns 20..47, rows 16..39 -> box xyxy [20, 16, 48, 40]
    )
    img[0, 0] = MARK
    return img


def _tile_origins(grid: np.ndarray) -> list[tuple[int, int]]:
    """(y, x) of every MARK pixel, row-major: the top-left corner of each tile."""
    return [tuple(p) for p in np.argwhere((grid == MARK).all(-1)).tolist()]


def _batch(n: int):
    imgs = [_image() for _ in range(n)]
    imgs[1][50:60, 5:15] = (10, 240, 250)  # tile 1 differs from the others
    return imgs, torch.stack([normalize(i, MEAN, STD) for i in imgs])


def test_training_batch_boxes_land_on_the_right_pixels_of_the_right_tile(tmp_path):
    imgs, batch = _batch(4)
    box = [20.0, 16.0, 48.0, 40.0]
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([box]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    grid = render_training_batch(batch, targets, MEAN, STD, ["cat", "dog"])
    # 4 tiles of 64x64 -> 2 x 2 cells, 2 px apart and from the edges
    assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 66, 2 + 2 * 66, 3)
    assert _tile_origins(grid) == [(2, 2), (2, 68), (68, 2), (68, 68)]

    # tiles without boxes: the input image back, every pixel within one grey level
    for (y, x), img in zip(_tile_origins(grid), imgs, strict=True):
        if (y, x) != (68, 2):
            tile = grid[y : y + 64, x : x + 64].astype(int)
            assert np.abs(tile - img).max() <= 1
    # tile 2 (row 1, column 0): the outline in the class colour of label 1 on x = 20 and 48,
    # y = 16 and 40 (PIL draws the corners inclusive); the label sits above the box
    tile = grid[68 : 68 + 64, 2 : 2 + 64]
    color = np.array(class_color(1))
    outline = np.zeros((64, 64), bool)
    outline[17:41, 20] = outline[17:41, 48] = True  # left/right edges under the label
    outline[40, 20:49] = True  # bottom edge
    assert (tile[outline] == color).all()
    # pixels away from the box and its label are the image itself
    far = np.ones((64, 64), bool)
    far[:42, 18:] = False
    assert np.abs(tile[far].astype(int) - _image()[far]).max() <= 1
    inside = tile[20:38, 24:44].astype(int)
    assert np.abs(inside - np.array(BLOCK)).max() <= 1  # un-normalised block colour
    # the label: filled with the class colour just above the box, with text pixels in it
    label = tile[:16, 20:60]
    assert (label == color).all(-1).sum() > 30
    # text: pixels in it that are neither the fill, its dark edge nor the image
    other = ~((label == color).all(-1) | (label == 40).all(-1) | (label == GREY).all(-1))
    assert other.sum() > 10

    # the class name is what is written: a longer name makes a wider label
    longer = render_training_batch(batch, targets, MEAN, STD, ["cat", "dog with a long name"])
    width = lambda g: int((g[68:84, 2:66] == color).all(-1).any(0).sum())  # noqa: E731
    assert width(longer) > width(grid) + 15

    path = save_view(grid, tmp_path / "views" / "train_batch.png")
    assert path == tmp_path / "views" / "train_batch.png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), grid)
    assert sorted(p.name for p in path.parent.iterdir()) == ["train_batch.png"]  # no temporaries


def test_training_batch_max_images_and_ignore_boxes_dashed():
    _, batch = _batch(5)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 5
    targets = list(targets)
    targets[0] = {
        "boxes": torch.tensor([[20.0, 16.0, 48.0, 40.0]]),
        "labels": torch.tensor([0]),
        "ignore": torch.tensor([True]),
    }
    grid = render_training_batch(batch, targets, MEAN, STD, ["cat"], max_images=3)
    assert len(_tile_origins(grid)) == 3  # 3 tiles: 2 x 2 cells, one left empty
    assert grid.shape == (2 + 2 * 66, 2 + 2 * 66, 3)
    assert (grid[68:132, 68:132] == (24, 24, 24)).all()
    tile = grid[2:66, 2:66]
    grey = (160, 160, 160)
    bottom = (tile[40, 20:49] == grey).all(-1)
    # dashed: both grey dash pixels and gaps showing the image along the bottom edge
    assert 8 <= bottom.sum() <= 25
    assert (np.abs(tile[40, 20:49][~bottom].astype(int) - BLOCK).max(-1) > 50).all()
    assert not (tile == class_color(0)).all(-1).any()  # not drawn as an ordinary box
    with pytest.raises(ValueError, match="5 images but 2 targets"):
        render_training_batch(batch, targets[:2], MEAN, STD, ["cat"])


def test_predictions_vs_truth_tiles_and_legend(tmp_path):
    a = _image(60, 80)
    b = _image(40, 40)
    truth = {"boxes": np.array([[10.0, 20.0, 50.0, 50.0]]), "labels": np.array([0])}
    pred = {
        "boxes": np.array([[30.0, 5.0, 70.0, 44.0]]),
        "scores": np.array([0.9]),
        "labels": np.array([1]),
    }
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0), "scores": np.zeros(0)}
    view = render_predictions([a, b], [pred, empty], [truth, empty], ["cat", "dog"])
    origins = _tile_origins(view)
    assert len(origins) == 2 and origins[0][0] == origins[1][0]  # one row of two tiles
    (y, x), (y2, x2) = origins
    assert x == 2 and x2 == 2 + 80 + 2  # cells as wide as the widest image
    assert y > 8  # a legend line above the tiles, with text in it
    assert (view[: y - 2] != (24, 24, 24)).any(-1).sum() > 50
    tile = view[y : y + 60, x : x + 80]
    # ground truth: white dashes (with gaps) on its left edge x = 10, rows 20..50
    left = (tile[20:51, 10] == 255).all(-1)
    assert 8 <= left.sum() <= 24 and (~left).sum() >= 5
    # prediction: solid in the colour of class 1 on its bottom edge y = 44, left of the label
    pred_color = np.array(class_color(1))
    assert (tile[44, 31:50] == pred_color).all()
    assert (tile[18:45, 70] == pred_color).all()  # right edge, under its label
    # the second image has neither: its tile is the image, unchanged
    np.testing.assert_array_equal(view[y2 : y2 + 40, x2 : x2 + 40], b)
    with pytest.raises(ValueError, match="one of each per image"):
        render_predictions([a], [pred, empty], [truth], ["cat", "dog"])
    path = save_view(view, tmp_path / "val_predictions.png")
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), view)


def test_save_view_refuses_a_non_image_and_reports_an_unwritable_folder(readonly_dir):
    from efficientdet.errors import OutputError

    with pytest.raises(ValueError, match="uint8"):
        save_view(np.zeros((4, 4, 3), np.float32), readonly_dir / "x.png")
    with pytest.raises(OutputError, match="fix:"):
        save_view(np.zeros((4, 4, 3), np.uint8), readonly_dir / "x.png")
    assert list(readonly_dir.iterdir()) == []


def _record(i: int, n_boxes: int, ignore: bool = False) -> ImageRecord:
    return ImageRecord(
        path=f"{i}.jpg",
        width=10,
        height=10,
        boxes=np.tile([1.0, 1.0, 5.0, 5.0], (n_boxes, 1)),
        labels=np.zeros(n_boxes),
        ignore=np.full(n_boxes, ignore),
        image_id=i,
    )


def test_pick_debug_images_prefers_images_with_boxes_and_is_fixed():
    # boxes on 1, 3, 5, 7, 9, 11 (of 12); 0 has only an ignore box
    records = [_record(i, i % 2, ignore=False) for i in range(12)]
    records[0] = _record(0, 1, ignore=True)
    assert pick_debug_images(records, 4) == [1, 5, 7, 11]  # evenly over the six with boxes
    assert pick_debug_images(records, 4) == pick_debug_images(list(records), 4)
    # too few with boxes: all of them, then evenly over the others
    few = [_record(i, 1 if i in (2, 6) else 0) for i in range(10)]
    assert pick_debug_images(few, 4) == [0, 2, 6, 9]
    assert pick_debug_images(few[:3], 10) == [0, 1, 2]
    assert pick_debug_images([], 4) == []

    class Holder:  # a DetectionData / DetectionDataset: anything with .records
        pass

    holder = Holder()
    holder.records = records  # type: ignore[attr-defined]
    assert pick_debug_images(holder, 2) == [1, 11]


def test_labels_of_a_second_call_avoid_those_of_the_first():
    from efficientdet.visualize import draw_detections, place_labels

    # hand-computed: "above" (100, 36, 160, 50) is taken, so the label goes inside the top
    assert place_labels([[100, 50, 200, 150]], [(60, 14)], (400, 300), [0], avoid=[]) == [
        (100, 36, 160, 50)
    ]
    assert place_labels(
        [[100, 50, 200, 150]], [(60, 14)], (400, 300), [0], avoid=[(100, 36, 160, 50)]
    ) == [(100, 50, 160, 64)]
    # through draw_detections: the rectangles placed are handed back and avoided
    image = np.full((120, 160, 3), GREY, np.uint8)
    first: list = []
    draw_detections(image, [[40, 40, 120, 100]], None, [0], ["cat"], placed=first)
    second: list = []
    draw_detections(
        image, [[40, 40, 120, 100]], [0.5], [1], ["cat", "dog"], avoid=first, placed=second
    )
    (a,), (b,) = first, second
    assert a[1] < 40 and min(a[2], b[2]) - max(a[0], b[0]) > 0  # same columns ...
    assert b[1] >= a[3] or b[3] <= a[1]  # ... so stacked, not overlapping
