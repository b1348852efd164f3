"""Synthetic shapes dataset in COCO format: ``efficientdet data synth --out DIR``.

Writes ``DIR/images/{train,val}_NNNNNN.jpg``, ``DIR/train.json``, ``DIR/val.json`` and
``DIR/data.yaml``. Six shape classes (ellipse, rectangle, triangle, star, cross, ring) with
non-contiguous COCO category ids (1, 3, 7, 10, 15, 22), flat saturated colours, sizes from
tiny (~12 px, a minority) to large, varied aspect ratios, overlaps with occlusion capped
so every object keeps >= 70 % of its pixels visible, on textured backgrounds (noise,
gradients, stripes). About 8 % of images have no object. Each box is tight to the visible
drawn pixels: ``x1 = min column, x2 = max column + 1`` (continuous pixel-edge coordinates).

Deterministic: image ``i`` of a split is drawn from ``numpy.random.default_rng([seed,
split, i])``, so the same seed gives byte-identical files. PIL + numpy only.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import DataError

CLASS_NAMES = ["ellipse", "rectangle", "triangle", "star", "cross", "ring"]
CATEGORY_IDS = [1, 3, 7, 10, 15, 22]
MIN_VISIBLE = 0.7
EMPTY_FRACTION = 0.08
MAX_OBJECTS = 7
JPEG_QUALITY = 92
_SPLIT_CODE = {"train": 0, "val": 1}
SYNTH_MARKER = (
    ".efficientdet-synth"  # in a folder synth wrote: it may rewrite that folder, no other
)


# ---------------------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float background: a muted base with noise, a gradient or stripes."""
    base = rng.uniform(70, 190, size=3)
    kind = rng.integers(0, 4)
    img = np.broadcast_to(base, (h, w, 3)).astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == 1:  # linear gradient to a second muted colour
        other = rng.uniform(70, 190, size=3)
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(1e-9, t.max() - t.min())
        img = img * (1 - t[..., None]) + other * t[..., None]
    elif kind == 2:  # stripes (sinusoidal, any angle)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(8, 40)
        amp = rng.uniform(10, 28)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
        img = img + (amp * np.sin(phase))[..., None] * rng.uniform(0.5, 1.0, size=3)
    elif kind == 3:  # blotchy low-frequency noise
        coarse = rng.normal(0, 18, size=(h // 16 + 2, w // 16 + 2, 3))
        img = img + np.kron(coarse, np.ones((16, 16, 1)))[:h, :w]
    img = img + rng.normal(0, rng.uniform(3, 12), size=(h, w, 3))  # fine noise everywhere
    return img


def _polygon(
    cls: str, cx: float, cy: float, bw: float, bh: float, rot: float
) -> list[tuple[float, float]]:
    """Polygon vertices for shapes drawn as polygons, fitting a bw x bh box before rotation."""
    pts: list[tuple[float, float]]
    if cls == "rectangle":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif cls == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif cls == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
    elif cls == "cross":
        t = 0.34
        pts = [
            (-t, -1),
            (t, -1),
            (t, -t),
            (1, -t),
            (1, t),
            (t, t),
            (t, 1),
            (-t, 1),
            (-t, t),
            (-1, t),
            (-1, -t),
            (-t, -t),
        ]
    else:
        raise ValueError(cls)
    c, s = math.cos(rot), math.sin(rot)
    out = []
    for x, y in pts:
        x, y = x * c - y * s, x * s + y * c
        out.append((cx + x * bw / 2, cy + y * bh / 2))
    return out


def _shape_mask(
    cls: str, h: int, w: int, cx: float, cy: float, bw: float, bh: float, rot: float, inner: float
) -> np.ndarray:
    """(h, w) bool mask of one shape, rasterised without anti-aliasing (crisp edges)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if cls in ("ellipse", "ring"):
        draw.ellipse([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], fill=255)
        if cls == "ring":
            iw, ih = bw * inner, bh * inner
            draw.ellipse([cx - iw / 2, cy - ih / 2, cx + iw / 2, cy + ih / 2], fill=0)
    else:
        draw.polygon(_polygon(cls, cx, cy, bw, bh, rot), fill=255)
    return np.asarray(canvas) > 0


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated RGB colour (HSV with s in 0.6-1, v in 0.45-1)."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.45, 1.0)
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return np.array(rgb) * 255.0


def render_image(rng: np.random.Generator, size: int = 320):
    """Draw one image. Returns (PIL RGB image, [(label 0-based, [x1, y1, x2, y2] ints, area)])."""
    from PIL import Image

    r = rng.uniform()
    h, w = (
        (size, size) if r < 0.7 else ((size * 3 // 4, size) if r < 0.85 else (size, size * 3 // 4))
    )
    img = _background(rng, h, w)
    bg_mean = img.reshape(-1, 3).mean(0)
    objects: list[dict] = []
    n_objects = 0 if rng.uniform() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    short = min(h, w)
    for _ in range(n_objects):
        label = int(rng.integers(0, len(CLASS_NAMES)))
        cls = CLASS_NAMES[label]
        band = rng.uniform()
        mid = max(24.0, 64.0 * short / 320)  # medium/large boundary scales with the image
        if band < 0.12:
            s = rng.uniform(12, 20)  # tiny (a minority)
        elif band < 0.6:
            s = rng.uniform(20, mid)
        else:
            s = rng.uniform(mid, max(mid + 1, 0.6 * short))
        spread = math.log(1.7) if cls in ("ellipse", "rectangle", "cross") else math.log(1.2)
        aspect = math.exp(rng.uniform(-spread, spread))
        bw, bh = s * math.sqrt(aspect), s / math.sqrt(aspect)
        rot = rng.uniform(0, 2 * math.pi) if cls in ("triangle", "star") else 0.0
        inner = rng.uniform(0.45, 0.6)
        for _attempt in range(20):
            cx = rng.uniform(bw / 2 + 1, w - bw / 2 - 1)
            cy = rng.uniform(bh / 2 + 1, h - bh / 2 - 1)
            mask = _shape_mask(cls, h, w, cx, cy, bw, bh, rot, inner)
            area = int(mask.sum())
            if area < 40:
                continue
            covered = [o for o in objects if (o["visible"] & mask).any()]
            if any((o["visible"] & ~mask).sum() < MIN_VISIBLE * o["area"] for o in covered):
                continue
            colour = None
            for _c in range(20):
                c = _colour(rng)
                if np.abs(c - bg_mean).sum() >= 150 and all(
                    np.abs(c - o["colour"]).sum() >= 150 for o in covered
                ):
                    colour = c
                    break
            if colour is None:
                continue
            for o in covered:
                o["visible"] = o["visible"] & ~mask
            objects.append({"label": label, "visible": mask, "area": area, "colour": colour})
            break
    for o in objects:
        img[o["visible"]] = o["colour"]
    annotations = []
    for o in objects:
        ys, xs = np.nonzero(o["visible"])
        annotations.append(
            (
                o["label"],
                [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                len(xs),
            )
        )
    pil = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB")
    return pil, annotations


# ---------------------------------------------------------------------------- writing


def _coco_doc(split: str, entries: list[tuple[str, int, int, list]]) -> dict:
    images: list[dict] = []
    anns: list[dict] = []
    for image_id, (file_name, w, h, objs) in enumerate(entries, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for label, (x1, y1, x2, y2), area in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"efficientdet synthetic shapes ({split})", "version": "1"},
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": c, "name": n, "supercategory": "shape"}
            for c, n in zip(CATEGORY_IDS, CLASS_NAMES, strict=True)
        ],
    }


def write_synthetic_dataset(
    out: str | Path,
    num_train: int,
    num_val: int,
    seed: int = 0,
    size: int = 320,
    progress: bool = True,
) -> Path:
    """Write the dataset under ``out``; returns the path of ``data.yaml``."""
    import yaml
    from tqdm import tqdm

    from ..fileio import make_dirs, write_text, write_via_temp

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; fix: pick another --out")
    if num_train < 1 or num_val < 0:
        raise DataError(
            f"--images {num_train} --val-images {num_val}: need at least 1 training image; fix: --images N with N >= 1"
        )
    if size < 64:
        raise DataError(f"--size {size}: too small for the shapes; fix: --size 64 or more")
    planned = ["data.yaml", "train.json", "val.json"] + [
        f"images/{split}_{i:06d}.jpg"
        for split, count in (("train", num_train), ("val", num_val))
        for i in range(count)
    ]
    if not (
        out / SYNTH_MARKER
    ).exists():  # a folder synth wrote before may be rewritten, nothing else
        clash = next((name for name in planned if (out / name).exists()), None)
        if clash is not None:
            raise DataError(
                f"{out / clash}: exists and was not written by 'data synth'; "
                "fix: pick a new --out (nothing was overwritten)"
            )
    make_dirs(out / "images")
    (out / SYNTH_MARKER).touch()
    bar = tqdm(total=num_train + num_val, desc="synth", unit="img", disable=not progress)
    for split, count in (("train", num_train), ("val", num_val)):
        entries = []
        for i in range(count):
            rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], i])
            image, objs = render_image(rng, size)
            file_name = f"{split}_{i:06d}.jpg"
            write_via_temp(
                out / "images" / file_name,
                partial(image.save, format="JPEG", quality=JPEG_QUALITY, subsampling=0),
            )
            entries.append((file_name, image.width, image.height, objs))
            bar.update(1)
        write_text(out / f"{split}.json", json.dumps(_coco_doc(split, entries)))
    bar.close()
    spec = {
        "format": "coco",
        "path": ".",
        "names": list(CLASS_NAMES),
        "train": {"images": "images", "annotations": "train.json"},
        "val": {"images": "images", "annotations": "val.json"},
    }
    yaml_path = out / "data.yaml"
    write_text(yaml_path, yaml.safe_dump(spec, sort_keys=False))
    return yaml_path


def add_arguments(parser) -> None:
    from .. import cli_options

    cli_options.add(
        parser, "out", "exist_ok"
    )  # shared CLI vocabulary (efficientdet/cli_options.py)
    parser.add_argument("--images", type=int, default=500, help="training images (default 500)")
    parser.add_argument(
        "--val-images",
        type=int,
        default=None,
        help="validation images (default: images / 5, at least 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument(
        "--size", type=int, default=320, help="longer image side in pixels (default 320)"
    )
    cli_options.add(parser, "quiet")


def run(args) -> int:
    from ..run_dirs import make_run_dir

    num_val = args.val_images if args.val_images is not None else max(1, args.images // 5)
    out = make_run_dir(args.out, args.exist_ok, "synth")
    yaml_path = write_synthetic_dataset(
        out, args.images, num_val, args.seed, args.size, progress=not args.quiet
    )
    print(f"wrote {args.images} train + {num_val} val images: {yaml_path}")
    return 0
