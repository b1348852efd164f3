"""Drawing: labels of a crowded image do not overlap and stay inside it (hand-computed placements),
text contrast meets WCAG AA on every class colour, and the drawn pixels are where the layout says."""

from __future__ import annotations

import numpy as np

from efficientdet.visualize import class_color, draw_detections, place_labels


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def test_labels_are_placed_by_hand_computed_rules():
    # two identical boxes: the stronger label goes above, the other inside the top of the box
    boxes = [[100, 50, 200, 150], [100, 50, 200, 150]]
    rects = place_labels(boxes, [(60, 14), (60, 14)], (400, 300), order=[1, 0])
    assert rects[1] == (100, 36, 160, 50) and rects[0] == (100, 50, 160, 64)
    # a box at the top-right corner: "above" is clamped inside the image (x <= 400 - 60, y >= 0)
    assert place_labels([[370, 0, 400, 40]], [(60, 14)], (400, 300), order=[0]) == [
        (340, 0, 400, 14)
    ]
    # a third identical box: above and inside-top are taken, next is below the box
    rects = place_labels([*boxes, [100, 50, 200, 150]], [(60, 14)] * 3, (400, 300), order=[0, 1, 2])
    assert rects[2] == (100, 150, 160, 164)


def test_crowded_labels_do_not_overlap_and_stay_inside():
    rs = np.random.RandomState(0)
    W, H = 640, 480
    boxes = []
    for _ in range(25):
        x, y = rs.randint(0, 560), rs.randint(0, 400)
        boxes.append([x, y, x + rs.randint(30, 120), y + rs.randint(30, 120)])
    sizes = [(int(rs.randint(50, 110)), 16) for _ in boxes]
    rects = place_labels(boxes, sizes, (W, H), order=list(range(len(boxes))))
    for (x0, y0, x1, y1), (w, h) in zip(rects, sizes, strict=True):
        assert 0 <= x0 and x1 <= W and 0 <= y0 and y1 <= H and (x1 - x0, y1 - y0) == (w, h)
    overlaps = [
        (i, j) for i in range(len(rects)) for j in range(i) if _overlap(rects[i], rects[j]) > 0
    ]
    assert overlaps == []
    # the naive placement (always above the box's left corner) overlaps on this scene
    naive = [(b[0], b[1] - h, b[0] + w, b[1]) for b, (w, h) in zip(boxes, sizes, strict=True)]
    assert any(_overlap(naive[i], naive[j]) > 0 for i in range(len(naive)) for j in range(i))


def _contrast(a, b) -> float:
    def lum(c):
        c = [v / 255 for v in c]
        c = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_is_black_or_white_with_wcag_aa_contrast_on_every_class_colour():
    from efficientdet.visualize import _text_color

    for label in range(90):
        color = class_color(label)
        assert _contrast(_text_color(color), color) >= 4.5, (
            label,
            color,
        )  # black or white: one always reaches 4.58


def test_drawn_label_sits_above_its_box_after_the_boxes():
    image = np.full((120, 160, 3), 128, np.uint8)
    box = [20, 40, 100, 100]
    drawn = np.asarray(
        draw_detections(
            image, [box, [30, 20, 90, 60]], [0.3, 0.9], [2, 5], ["a", "b", "c", "d", "e", "f"]
        )
    )
    fill = np.array(class_color(2))
    ys, xs = np.nonzero(
        (drawn == fill).all(-1) & (np.arange(120)[:, None] < 40)
    )  # class 2's fill above its box
    assert (
        len(ys) > 50 and ys.min() >= 40 - 20 and xs.min() - 20 <= 1
    )  # on the box top-left corner (1 px edge)
    # the stronger box (class 5) crosses that area, but labels are drawn after all boxes: its line is not over the label
    rows, cols = slice(ys.min(), 40), slice(20, xs.max() + 1)
    assert not (drawn[rows, cols] == np.array(class_color(5))).all(-1).any()
