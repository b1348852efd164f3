"""``Detector``: images in, detections in original-image pixels out.

    from efficientdet import Detector
    det = Detector("best.pt")                                    # our checkpoint
    det = Detector.from_name("efficientdet_d0", weights="coco")  # a named model + weights
    det = Detector("model.onnx")                                 # an exported file (onnxruntime)
    result = det("photo.jpg")                                    # one input -> one Detections
    results = det([pil_image, hwc_uint8_array, chw_tensor])      # a list -> a list, one batch

Inputs: a path, a PIL image, a numpy (H, W, 3) uint8 RGB array ((H, W) grey accepted), or a
tensor (3, H, W) uint8 or float in 0-255 ((N, 3, H, W) counts as N images), or a list of them.

Preprocessing (the project's letterbox, see ``efficientdet.data.transforms``): ``scale =
min(H / h, W / w)`` for an h x w image and an H x W model input, the image is resized once to
``round(h * scale) x round(w * scale)`` (bilinear with antialias; uint8 images are resized as
uint8 by torch, which matches PIL's BILINEAR within one grey level), normalised in torch and
placed at the TOP-LEFT of a zero (= mean colour) canvas. Boxes come back as ``input / scale``,
clipped to the original image. A large JPEG given by path is decoded at a reduced size
(PIL ``draft``) when that still covers the model input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import NMSConfig, parse_image_size, resolve_model_name
from ..detection.postprocess import postprocess
from ..errors import ConfigError, DataError, WeightsError
from ..runtime import resolve_device

# COCO 2017 category ids 1..90 (the 90-slot layout of the official / effdet 90-class weights);
# the 10 ids without annotations keep the names of the original COCO paper.
COCO90_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
COCO90_IDS: tuple[int, ...] = tuple(range(1, 91))


# ----------------------------------------------------------------------------- results
@dataclass
class Detections:
    """Detections of one image, by descending score.

    boxes: (D, 4) float32 (x1, y1, x2, y2) in original-image pixels; scores: (D,) float32;
    labels: (D,) int64 0-based class indices; names: D class names; image_size: original
    (h, w); source: the path (or a label such as ``"video.mp4#12"``) when known. Dict-style
    access works too (``det["boxes"]``).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    image_size: tuple[int, int]
    source: str | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return ("boxes", "scores", "labels", "names", "image_size", "source")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (lists), for JSON."""
        return {
            "boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "labels": self.labels.tolist(),
            "names": list(self.names), "image_size": list(self.image_size), "source": self.source,
        }


# ----------------------------------------------------------------------------- BN folding
def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta."""
    with torch.no_grad():
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + bn.bias
        conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


class _FusedHeadNet(nn.Module):
    """A HeadNet with each level's BN folded into a per-level copy of the shared pointwise conv.

    Same ``forward([P3..]) -> [(N, A*outputs, H_l, W_l)]`` as ``HeadNet``.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        import copy

        self.act = head.act
        self.predict = head.predict
        self.conv_dw = nn.ModuleList([rep.conv_dw for rep in head.conv_rep])  # shared over levels, no bias
        self.conv_pw = nn.ModuleList()  # [repeat][level]
        for rep, bns in zip(head.conv_rep, head.bn_rep):
            per_level = nn.ModuleList()
            for level_bn in bns:
                pw = copy.deepcopy(rep.conv_pw)
                _fold_bn(pw, level_bn.bn)
                per_level.append(pw)
            self.conv_pw.append(per_level)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(features):
            for dw, pws in zip(self.conv_dw, self.conv_pw):
                x = self.act(pws[level](dw(x)))
            outputs.append(self.predict(x))
        return outputs


# (module class name, [(conv attribute, bn attribute)]): convs followed directly by a BN in forward
_CONV_BN_PAIRS: dict[str, list[tuple[str, str]]] = {
    "EfficientNet": [("conv_stem", "bn1"), ("conv_head", "bn2")],
    "DepthwiseSeparableBlock": [("conv_dw", "bn1"), ("conv_pw", "bn2")],
    "InvertedResidualBlock": [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")],
    "SeparableConv": [("conv_pw", "bn")],
    "ConvBn": [("conv", "bn")],
}


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of an eval-mode EfficientDet into the conv before it, in place.

    Exact up to float rounding (outputs within ~1e-5 of the unfused model). The class and box
    heads share their convs across levels but have a BN per level, so each level gets its own
    folded copy of the pointwise conv. The result is for inference only (no BN left to
    train). Returns ``model``.
    """
    if model.training:
        raise ConfigError("fuse_for_inference: call model.eval() first (BatchNorm folding uses running statistics)")
    for module in list(model.modules()):
        for conv_name, bn_name in _CONV_BN_PAIRS.get(type(module).__name__, []):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold_bn(conv, bn)
                setattr(module, bn_name, nn.Identity())
    for head_name in ("class_net", "box_net"):
        head = getattr(model, head_name, None)
        if head is not None and type(head).__name__ == "HeadNet":
            setattr(model, head_name, _FusedHeadNet(head))
    left = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise RuntimeError(f"fuse_for_inference: BatchNorm left unfused at {left[:3]}")  # a layout we do not know: our bug
    return model


# ----------------------------------------------------------------------------- preprocessing
def _load_path(path: str, input_hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode an image file -> ((h', w', 3) uint8 tensor, displayed original (h, w)).

    JPEGs are drafted (decoded at 1/2..1/8) when the reduced size still covers the resized
    image, so h' <= h; the letterbox scale is always computed from (h, w).
    """
    from ..data.transforms import apply_exif, letterbox_scale, open_image, to_rgb

    try:
        image, orientation, (w, h), _ = open_image(path)
        with image:
            scale = letterbox_scale(h, w, input_hw)
            if image.format == "JPEG" and scale < 0.5:
                image.draft("RGB" if image.mode in ("RGB", "YCbCr") else None,
                            (max(1, int(image.width * scale) + 1), max(1, int(image.height * scale) + 1)))
            image.load()
            rgb = to_rgb(apply_exif(image, orientation))
            array = np.array(rgb)  # writable copy (np.asarray of PIL is read-only)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read this image ({exc.__class__.__name__}: {exc}); is the file complete and an image?") from None
    return torch.from_numpy(array), (h, w)


def _as_image_tensor(item, input_hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int], str | None]:
    """Any supported input -> (image tensor, original (h, w), source label).

    The tensor is (3, h', w'): uint8 HWC data seen through a permuted view (files, PIL, numpy)
    or the given CHW tensor; h' may be below h for drafted JPEGs.
    """
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such image file; check the path")
        tensor, hw = _load_path(path, input_hw)
        return tensor.permute(2, 0, 1), hw, path
    if isinstance(item, torch.Tensor):
        x = item
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise ConfigError(f"image tensor of shape {tuple(item.shape)}: give (3, H, W) uint8 or float 0-255")
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return x, (int(x.shape[1]), int(x.shape[2])), None
    if isinstance(item, np.ndarray):
        a = item
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ConfigError(f"image array of shape {item.shape}: give (H, W, 3) RGB uint8")
        a = a[:, :, :3]
        if not a.flags.writeable:
            a = a.copy()
        if a.dtype != np.uint8:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1), a.shape[:2], None
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1), (int(a.shape[0]), int(a.shape[1])), None
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        from ..data.transforms import to_rgb

        a = np.array(to_rgb(item))
        return torch.from_numpy(a).permute(2, 0, 1), (int(a.shape[0]), int(a.shape[1])), getattr(item, "filename", None) or None
    raise ConfigError(f"unsupported image input {type(item).__name__}: give a path, PIL image, HWC uint8 array or CHW tensor")


def letterbox_batch(
    images: Sequence[torch.Tensor],
    original_hw: Sequence[tuple[int, int]],
    input_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Letterbox and normalise images into one batch.

    images: (3, h', w') uint8 or float tensors (HWC data as a permuted view); original_hw: the (h, w) that the
    letterbox scale refers to (h' != h only for drafted JPEGs). Returns (batch (N, 3, H, W)
    ``dtype`` on ``device``, scales (N,) float32): image i is resized to round(h*s) x round(w*s),
    normalised ``(x - mean) / std`` and placed top-left; the rest is 0 (the mean colour).
    """
    from ..data.transforms import letterbox_scale, resized_size

    n = len(images)
    H, W = input_hw
    device = torch.device(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch = torch.empty(n, 3, H, W, device=device, dtype=torch.float32, memory_format=layout).zero_()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).reshape(3, 1, 1)
    inv_std = (1.0 / torch.tensor(std, dtype=torch.float64)).to(torch.float32).to(device).reshape(3, 1, 1)
    scales = torch.empty(n, dtype=torch.float32)
    for i, (img, (h, w)) in enumerate(zip(images, original_hw)):
        s = letterbox_scale(h, w, input_hw)
        nh, nw = resized_size(h, w, s)
        nh, nw = min(nh, H), min(nw, W)
        scales[i] = s
        x = img.unsqueeze(0)  # (1, 3, h', w')
        if x.dtype != torch.uint8:
            x = x.to(device=device, dtype=torch.float32)
        if tuple(x.shape[-2:]) != (nh, nw):
            # uint8 stays uint8 on CPU (fast AVX path, rounds like PIL); floats resize in float
            if x.dtype == torch.uint8 and x.device.type != "cpu":
                x = x.float()
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = x[0].to(device=device, dtype=torch.float32, non_blocking=True)
        batch[i, :, :nh, :nw] = (x - mean_t) * inv_std
    return batch.to(dtype), scales


# ----------------------------------------------------------------------------- engines
def flat_to_levels(cls_flat: torch.Tensor, box_flat: torch.Tensor, feature_sizes: Sequence[tuple[int, int]],
                   num_anchors: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Concatenated outputs (N, A_all, K), (N, A_all, 4) -> per-level (N, A*K, H, W), (N, A*4, H, W) views."""
    n, _, k = cls_flat.shape
    cls_levels, box_levels, start = [], [], 0
    for h, w in feature_sizes:
        count = h * w * num_anchors
        # (N, H*W*A, K) -> (N, H, W, A*K) -> (N, A*K, H, W)
        cls_levels.append(cls_flat[:, start:start + count].reshape(n, h, w, num_anchors * k).permute(0, 3, 1, 2))
        box_levels.append(box_flat[:, start:start + count].reshape(n, h, w, num_anchors * 4).permute(0, 3, 1, 2))
        start += count
    return cls_levels, box_levels


def levels_to_flat(cls_levels: Sequence[torch.Tensor], box_levels: Sequence[torch.Tensor], num_classes: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level (N, A*K, H, W), (N, A*4, H, W) -> (N, A_all, K), (N, A_all, 4) in anchor order."""
    n = cls_levels[0].shape[0]
    # (N, A*K, H, W) -> (N, H, W, A*K) -> (N, H*W*A, K)
    cls = torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1, num_classes) for c in cls_levels], 1)
    box = torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in box_levels], 1)
    return cls, box


# ----------------------------------------------------------------------------- Detector
class Detector:
    """Run a detector on images; see the module docstring for inputs and preprocessing.

    Options: ``conf`` (min score, default 0.25), ``iou`` (NMS IoU, 0.5), ``max_det`` (100),
    ``classes`` (class names or indices to keep: only they compete for the top-k candidates and
    ``max_det``; for an ONNX file with NMS inside they are filtered after the graph),
    ``image_size`` (model input (h, w) or int; default the model's, fixed for ONNX files),
    ``device`` ("cpu", "cuda", "auto"), ``half`` (bf16 on CPU, fp16 on CUDA), ``channels_last``
    (default True on CPU), ``fuse`` (fold BN into the convs, default True), ``compile``
    (torch.compile the network), ``threads`` (ONNX Runtime intra-op threads),
    ``max_candidates`` (top-k before NMS, 5000).

    Backends: ``torch`` (a checkpoint, a named model or ``model=``) and ``onnxruntime`` (an
    exported ``.onnx``: raw outputs are post-processed here exactly as for torch; a file with
    NMS inside was built with its own IoU / minimum score / max detections, and the Detector
    refuses options it cannot honour).
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, model: nn.Module | None = None,
                 class_names: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
                 conf: float = 0.25, iou: float = 0.5, max_det: int = 100, classes: Sequence | None = None,
                 image_size: int | Sequence[int] | None = None, device: str | torch.device | None = "cpu",
                 half: bool = False, channels_last: bool | None = None, fuse: bool = True, compile: bool = False,
                 threads: int | None = None, max_candidates: int = 5000):
        self.onnx = None
        self.device = resolve_device(device)
        if (weights is None) == (model is None):
            raise ConfigError("Detector: give a checkpoint/ONNX path or model=..., not both or neither")
        if weights is not None:
            path = os.fspath(weights)
            if path.lower().endswith(".onnx"):
                from .onnx_runtime import OnnxModel

                if self.device.type != "cpu":
                    raise ConfigError(f"{path}: ONNX files run on CPU here (onnxruntime); use --device cpu")
                if half:
                    raise ConfigError(f"{path}: the ONNX file runs in float32; drop --half (it applies to PyTorch weights)")
                self.onnx = OnnxModel(path, threads=threads)
                meta = self.onnx.meta
                from ..factory import config_from_dict

                self.config = config_from_dict(meta["config"])
                class_names = class_names or meta["class_names"]
                category_ids = category_ids if category_ids is not None else meta.get("category_ids")
                exported_hw = tuple(meta["image_size"])
                if image_size is not None and parse_image_size(image_size) != exported_hw:
                    raise ConfigError(f"{path}: exported for image size {exported_hw}; re-export with --image-size or drop the option")
                image_size = exported_hw
            else:
                from ..factory import load_model
                from ..weights import read_checkpoint

                ckpt = read_checkpoint(path)
                if not isinstance(ckpt, dict) or ckpt.get("format") != "efficientdet":
                    raise WeightsError(
                        f"{path}: not an efficientdet checkpoint (a plain state_dict, e.g. effdet's?); "
                        f"use --model NAME --weights {path} (Detector.from_name(NAME, weights=PATH))"
                    )
                model, ckpt = load_model(ckpt)
                class_names = class_names or ckpt.get("class_names")
                category_ids = category_ids if category_ids is not None else ckpt.get("category_ids")
        if model is not None:
            self.config = model.config
        self.model_name = self.config.name
        self.num_classes = self.config.num_classes
        self.names = list(class_names) if class_names is not None else _default_names(self.num_classes)
        if len(self.names) != self.num_classes:
            raise ConfigError(f"{len(self.names)} class names for a {self.num_classes}-class model; give one per class")
        self.category_ids = list(category_ids) if category_ids is not None else (
            list(COCO90_IDS) if self.num_classes == 90 and class_names is None else None)
        self.image_size = parse_image_size(image_size) if image_size is not None else tuple(self.config.image_size)
        self.mean, self.std = self.config.mean, self.config.std
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self.nms = NMSConfig(max_candidates=max_candidates, iou_threshold=self.iou, score_threshold=self.conf,
                             max_detections=self.max_det)
        self.class_filter = self._resolve_classes(classes)
        from ..detection.anchors import AnchorGenerator
        from ..resources import check_memory

        check_memory(self.config, 1, train=False, device=self.device, image_size=self.image_size)  # before the anchors
        self.anchor_gen = AnchorGenerator(self.config.anchors)
        self.anchors = self.anchor_gen(self.image_size, device=self.device)
        self.feature_sizes = self.anchor_gen.feature_sizes(self.image_size)
        self.half = bool(half)
        self.dtype = (torch.bfloat16 if self.device.type == "cpu" else torch.float16) if half else torch.float32
        self.channels_last = (self.device.type == "cpu") if channels_last is None else bool(channels_last)
        self.model = None
        if self.onnx is not None:
            self.onnx.check_options(self)
            self.backend = "onnxruntime"
            return
        self.backend = "torch"
        model = model.eval()
        if fuse:
            import copy

            model = fuse_for_inference(copy.deepcopy(model))
        model = model.to(self.device, self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.network = torch.compile(model, dynamic=False) if compile else model

    # -- constructors
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **options) -> "Detector":
        """From our checkpoint (``{"format": "efficientdet", ...}``) or an exported ``.onnx`` file."""
        return cls(path, **options)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, **options) -> "Detector":
        """From an ONNX file exported by ``efficientdet export`` (raw outputs or NMS inside)."""
        if not os.fspath(path).lower().endswith(".onnx"):
            raise ConfigError(f"{path}: expected a .onnx file")
        return cls(path, **options)

    @classmethod
    def from_name(cls, name: str, weights: str | os.PathLike | None = "coco", class_names: Sequence[str] | None = None,
                  num_classes: int | None = None, category_ids: Sequence[int] | None = None, **options) -> "Detector":
        """A registered model (``efficientdet_d0``, ``lite0``...) with ``weights``: "coco", a path
        (effdet / our layout; the class count is read from the file when not given) or None
        (random). 90-class models get COCO's 90 names and category ids 1..90 by default."""
        from ..factory import create_model
        from ..weights import read_checkpoint

        name = resolve_model_name(name)
        image_size = options.get("image_size")
        if weights is not None and not (isinstance(weights, str) and weights.lower() in ("coco", "none")):
            path = os.fspath(weights)
            if path.lower().endswith(".onnx"):
                raise ConfigError(f"{path}: an ONNX file carries its model; use --weights {path} without --model")
            state = read_checkpoint(path)
            if isinstance(state, dict) and state.get("format") == "efficientdet":
                return cls(path, class_names=class_names, category_ids=category_ids, **options)
            if num_classes is None:
                num_classes = _num_classes_in(state)
            weights = state
        elif num_classes is None and class_names is not None:
            num_classes = len(class_names)
        hw = parse_image_size(image_size) if image_size else None
        if isinstance(weights, dict):
            from ..weights import load_weights

            model = create_model(name, num_classes=num_classes, image_size=hw)
            load_weights(model, weights, name=os.fspath(path))
        else:
            model = create_model(name, num_classes=num_classes, image_size=hw, weights=weights)
        return cls(model=model, class_names=class_names, category_ids=category_ids, **options)

    @classmethod
    def from_model(cls, model: nn.Module, class_names: Sequence[str] | None = None, **options) -> "Detector":
        """Wrap an ``EfficientDet`` module (it is copied when BN folding is on)."""
        return cls(model=model, class_names=class_names, **options)

    # -- options
    def _resolve_classes(self, classes) -> list[int] | None:
        if classes is None:
            return None
        if isinstance(classes, (str, int)):
            classes = [classes]
        out = []
        lookup = {n.lower(): i for i, n in enumerate(self.names)}
        for c in classes:
            if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
                if c.strip().lower() not in lookup:
                    raise ConfigError(f"class {c!r} is not one of this model's classes ({', '.join(self.names[:10])}...)")
                out.append(lookup[c.strip().lower()])
            else:
                i = int(c)
                if not 0 <= i < self.num_classes:
                    raise ConfigError(f"class index {i}: need 0..{self.num_classes - 1}")
                out.append(i)
        return sorted(set(out))

    # -- running
    def preprocess(self, images: Sequence) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]], list]:
        """Inputs -> (batch (N, 3, H, W), scales (N,), original sizes [(h, w)], source labels)."""
        tensors, sizes, labels = [], [], []
        for item in images:
            t, hw, label = _as_image_tensor(item, self.image_size)
            tensors.append(t)
            sizes.append(hw)
            labels.append(label)
        dtype = self.dtype if self.onnx is None else torch.float32
        batch, scales = letterbox_batch(tensors, sizes, self.image_size, self.mean, self.std,
                                        self.device if self.onnx is None else "cpu", dtype,
                                        self.channels_last and self.onnx is None)
        return batch, scales, sizes, labels

    @torch.inference_mode()
    def raw(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Network only: normalised batch (N, 3, H, W) -> per-level (class logits (N, A*K, H_l, W_l),
        box deltas (N, A*4, H_l, W_l)) float32 (ONNX raw outputs come back as views in this layout)."""
        if self.onnx is not None:
            cls_flat, box_flat = self.onnx.run_raw(batch)
            return flat_to_levels(cls_flat, box_flat, self.feature_sizes, self.config.anchors.num_anchors)
        cls_out, box_out = self.network(batch)
        if self.dtype != torch.float32:
            cls_out = [c.float() for c in cls_out]
            box_out = [b.float() for b in box_out]
        return cls_out, box_out

    @torch.inference_mode()
    def detect_batch(self, batch: torch.Tensor, scales: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Network + decoding + NMS on a preprocessed batch -> [{"boxes", "scores", "labels"}] original pixels."""
        sizes_t = torch.tensor(sizes, dtype=torch.float32).reshape(-1, 2)
        nms_inside = self.onnx is not None and self.onnx.has_nms
        if nms_inside:
            dets = self.onnx.run_nms(batch, scales, sizes_t)
        else:
            # channels_last network outputs and ONNX outputs are anchor-major: read without copies
            cls_out, box_out = self.raw(batch)
            dets = postprocess(cls_out, box_out, self.anchors, self.nms, self.image_size, scales, sizes_t,
                               class_subset=self.class_filter)
        out = []
        for d in dets:
            if nms_inside:
                # the graph ran NMS at a score threshold <= conf and kept >= max_det: filtering after is exact
                keep = d["scores"] >= self.conf
                keep &= torch.arange(keep.numel()) < self.max_det
                if self.class_filter is not None:
                    keep &= torch.isin(d["labels"], torch.tensor(self.class_filter))
                d = {k: v[keep] for k, v in d.items()}
            out.append({k: v.cpu() for k, v in d.items()})
        return out

    def predict(self, images, batch_size: int | None = None) -> list[Detections]:
        """A list of inputs -> a list of :class:`Detections` (batches of ``batch_size``, default all)."""
        items = _as_list(images)
        step = batch_size or max(1, len(items))
        results: list[Detections] = []
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            batch, scales, sizes, labels = self.preprocess(chunk)
            for d, hw, label in zip(self.detect_batch(batch, scales, sizes), sizes, labels):
                results.append(Detections(d["boxes"].float(), d["scores"].float(), d["labels"].long(),
                                          [self.names[i] for i in d["labels"].tolist()], hw, label))
        return results

    def __call__(self, images, batch_size: int | None = None):
        """One input -> one :class:`Detections`; a list (or an (N, 3, H, W) tensor) -> a list."""
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, torch.Tensor) and images.ndim == 4)
        results = self.predict(images, batch_size)
        return results[0] if single else results

    def category_id(self, label: int) -> int:
        """Dataset category id of a class index (the checkpoint's ids, else the index)."""
        return int(self.category_ids[label]) if self.category_ids is not None else int(label)

    def __repr__(self) -> str:
        return (f"Detector({self.model_name}, backend={self.backend}, image_size={self.image_size}, "
                f"classes={self.num_classes}, device={self.device}, dtype={self.dtype})")


def _as_list(images) -> list:
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _default_names(num_classes: int) -> list[str]:
    return list(COCO90_NAMES) if num_classes == 90 else [str(i) for i in range(num_classes)]


def _num_classes_in(state: dict) -> int | None:
    """Classes of an effdet-layout state dict, from the class prediction bias (A*K values, A = 9)."""
    from ..weights.convert import unwrap_state_dict

    try:
        sd = unwrap_state_dict(state)
    except Exception:  # noqa: BLE001 - not a state dict: load_weights reports it
        return None
    bias = sd.get("class_net.predict.conv_pw.bias") if isinstance(sd, dict) else None
    if bias is None or bias.numel() % 9:
        return None
    return bias.numel() // 9
