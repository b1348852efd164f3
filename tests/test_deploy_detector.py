"""Detector: every input kind, the letterbox and its inverse against hand-built inputs, BN folding,
class filter, options, checkpoint refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet import Detector, create_model
from efficientdet.config import NMSConfig
from efficientdet.deploy.detector import COCO90_NAMES
from efficientdet.detection.anchors import AnchorGenerator
from efficientdet.detection.postprocess import postprocess
from efficientdet.errors import ConfigError, DataError, WeightsError
from efficientdet.factory import save_model_dict
from efficientdet.nn.bifpn import FuseInputs, Resample
from efficientdet.nn.efficientnet import InvertedResidualBlock
from efficientdet.nn.fuse import (
    fold_fusion_weights,
    fuse_for_inference,
    pad_before_expand,
    rewrite_for_eager,
)
from efficientdet.weights import load_weights

from .matching import box_iou
from .reference import load_reference, reference_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lite0():
    """Lite0 with the effdet fixture weights (well-spread scores), 90 classes, input 192x320."""
    ref = load_reference("effdet_lite0_192x320")
    model = create_model("efficientdet_lite0", image_size=(192, 320)).eval()
    load_weights(model, reference_state_dict(ref))
    return model


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (blurred noise, so bilinear resizing is well behaved)."""
    rs = np.random.RandomState(seed)
    small = rs.randint(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def _same(a, b, box_tol=0.0):
    assert len(a) == len(b)
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.boxes, b.boxes, atol=box_tol, rtol=0)


def test_every_input_kind_gives_the_same_detections(lite0, tmp_path):
    img = _image(150, 260, seed=1)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    det = Detector(model=lite0, conf=0.2, threads=None)
    ref = det(img)
    assert len(ref) > 5 and ref.image_size == (150, 260)
    for other in (
        str(path),
        path,
        Image.fromarray(img),
        torch.from_numpy(img).permute(2, 0, 1).contiguous(),
        Image.fromarray(img).convert("RGBA"),
    ):
        _same(ref, det(other))
    assert det(str(path)).source == str(path)
    with pytest.raises(
        TypeError, match="ONE image"
    ):  # det(x)[0] from list-returning APIs: say what to do
        ref[0]
    # a list is one batch; an (N, 3, H, W) tensor counts as N images
    batch = det([img, str(path), Image.fromarray(img[:100])])
    assert len(batch) == 3
    _same(ref, batch[0], box_tol=1e-4)
    _same(ref, batch[1], box_tol=1e-4)
    _same(det(Image.fromarray(img[:100])), batch[2], box_tol=1e-4)
    stacked = det(torch.from_numpy(np.stack([img, img])).permute(0, 3, 1, 2))
    assert isinstance(stacked, list) and len(stacked) == 2
    # grey numpy -> 3 channels
    grey = det(img[:, :, 0])
    _same(grey, det(np.repeat(img[:, :, :1], 3, axis=2)))
    # a float 0-255 tensor: the same detections when no resize is needed; when resized (in float,
    # no uint8 rounding) the input stays within one grey level of the uint8 path
    exact = _image(192, 320, seed=5)
    _same(det(exact), det(torch.from_numpy(exact).permute(2, 0, 1).float()))
    b_u8 = det.preprocess([img])[0]
    b_f32 = det.preprocess([torch.from_numpy(img).permute(2, 0, 1).float()])[0]
    assert float((b_u8 - b_f32).abs().max()) <= 1.01 / 127.5


@pytest.mark.parametrize("hw", [(150, 400), (400, 100), (192, 320)])
def test_letterbox_and_inverse_match_a_hand_built_input(lite0, hw):
    """A constant-colour image resizes exactly under any filter, so the input can be built by
    hand: scale = min(192/h, 320/w), image area round(h*s) x round(w*s) at the top-left."""
    h, w = hw
    color = np.array([200, 40, 90], dtype=np.uint8)
    img = np.broadcast_to(color, (h, w, 3)).copy()
    det = Detector(model=lite0, conf=0.1, fuse=False, channels_last=False)
    got = det(img)

    scale = min(192 / h, 320 / w)
    nh, nw = round(h * scale), round(w * scale)
    cfg = lite0.config
    x = torch.zeros(1, 3, 192, 320)
    value = (torch.tensor(color, dtype=torch.float32) - torch.tensor(cfg.mean)) / torch.tensor(
        cfg.std
    )
    x[0, :, :nh, :nw] = value.reshape(3, 1, 1)
    with torch.no_grad():
        cls, box = lite0(x)
    anchors = AnchorGenerator(cfg.anchors)((192, 320))
    nms = NMSConfig(score_threshold=0.1, iou_threshold=0.5, max_detections=100)
    # decode in input pixels, clipped to the image area (no letterbox given), then undo it by hand
    raw = postprocess(cls, box, anchors, nms, (192, 320), original_sizes=[(nh, nw)], scales=None)[0]
    expected = raw["boxes"].clone()
    expected = torch.stack(
        [
            (expected[:, 0] / scale).clamp(0, w),
            (expected[:, 1] / scale).clamp(0, h),
            (expected[:, 2] / scale).clamp(0, w),
            (expected[:, 3] / scale).clamp(0, h),
        ],
        1,
    )
    assert len(got) == len(raw["scores"]) > 0
    assert torch.equal(got.labels, raw["labels"])
    torch.testing.assert_close(got.scores, raw["scores"], atol=1e-6, rtol=0)
    torch.testing.assert_close(got.boxes, expected, atol=1e-3, rtol=1e-5)
    assert float(got.boxes[:, [0, 2]].max()) <= w and float(got.boxes[:, [1, 3]].max()) <= h


def test_letterbox_scale_and_placement(lite0):
    """Hand-computed letterbox values: 150x400 into 192x320 -> scale 0.8, image area 120x320."""
    det = Detector(model=lite0, fuse=False, channels_last=False)
    img = np.full((150, 400, 3), 255, dtype=np.uint8)
    batch, scales, sizes, _ = det.preprocess([img])
    assert batch.shape == (1, 3, 192, 320)
    assert float(scales[0]) == pytest.approx(0.8) and sizes == [(150, 400)]
    white = (255 - torch.tensor(lite0.config.mean)) / torch.tensor(lite0.config.std)
    torch.testing.assert_close(batch[0, :, :120, :], white.reshape(3, 1, 1).expand(3, 120, 320))
    assert float(batch[0, :, 120:, :].abs().max()) == 0.0  # padding = the mean colour


@pytest.mark.parametrize("name", ["efficientdet_lite0", "efficientdet_d0"])  # sum / fast-attention
def test_fuse_for_inference_is_exact_up_to_rounding(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, image_size=128).eval()
    with torch.no_grad():  # realistic conv weights, non-trivial BN statistics and affine parameters
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, (1.0 / m.weight[0].numel()) ** 0.5)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        for m in model.modules():  # unequal fusion weights, one of them cut by the relu
            if isinstance(m, FuseInputs) and m.fusion != "sum":
                m.edge_weights.uniform_(-0.3, 2.0)
        ref_cls, ref_box = model(x)
        fused = fuse_for_inference(copy.deepcopy(model))
        cls, box = fused(x)
        # the eager backend's network: BN folded, then its rewrites
        cls_eager, box_eager = rewrite_for_eager(fuse_for_inference(copy.deepcopy(model)))(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    for a, b, c in zip(ref_cls + ref_box, cls + box, cls_eager + box_eager, strict=True):
        assert a.std() > 0.05  # outputs carry signal
        # float32 rounding differs once BN is folded: 1e-4 relative to the output range
        torch.testing.assert_close(b, a, atol=1e-4 * max(1.0, float(a.abs().max())), rtol=0)
        torch.testing.assert_close(c, a, atol=1e-4 * max(1.0, float(a.abs().max())), rtol=0)
    with pytest.raises(ConfigError):
        fuse_for_inference(create_model("efficientdet_lite0", num_classes=2, image_size=64).train())


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("hw", [(16, 16), (15, 18), (7, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pad_before_expand_gives_the_block_output(kernel, hw, channels_last):
    """Padding a strided block's input before the 1x1 expansion (and zeroing the border it
    fills) equals TF-"same" padding of the expansion, for even, odd and tiny sizes."""
    torch.manual_seed(kernel + hw[0])
    block = InvertedResidualBlock(8, 16, kernel, 2, 6, 0.25, "swish", 0.0)
    with torch.no_grad():  # a bias that makes the expansion's border far from zero
        for bn in (block.bn1, block.bn2, block.bn3):
            bn.running_mean.uniform_(-2, 2)
            bn.bias.uniform_(1, 2)
    x = torch.randn(2, 8, *hw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = block.eval()(x)
        out = pad_before_expand(block)(x)
        assert block.pad_input_first
        # training ignores the rewrite: its BN statistics must not count the border
        torch.manual_seed(1)
        trained = block.train()(x)
        block.pad_input_first = False
        torch.manual_seed(1)
        trained_ref = block(x)
    assert out.shape == ref.shape == (2, 16, (hw[0] + 1) // 2, (hw[1] + 1) // 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trained, trained_ref, atol=0, rtol=0)
    with pytest.raises(ConfigError):
        pad_before_expand(block.train())


def test_pad_before_expand_keeps_gradients_exact():
    """With gradients on, a rewritten block takes the plain path: backward works (an in-place
    zeroing would break ReLU's saved output) and gives the plain block's gradients."""
    block = pad_before_expand(InvertedResidualBlock(8, 16, 3, 2, 6, 0.0, "relu", 0.0).eval())
    x = torch.randn(1, 8, 10, 10, requires_grad=True)
    block(x).square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    block.pad_input_first = False
    block(x).square().sum().backward()
    torch.testing.assert_close(grad, x.grad, atol=0, rtol=0)


@pytest.mark.parametrize("fusion", ["fastattn", "softmax"])
@pytest.mark.parametrize("inputs", [2, 3])
def test_folded_fusion_weights_give_the_node_output(fusion, inputs):
    """A BiFPN node fusing with its normalised weights folded into floats gives the output of
    the weights renormalised per call; once the weights change (a training step), eval and
    training use the new weights, not the stale copy."""
    torch.manual_seed(inputs)
    node = FuseInputs({i: Resample(8, 8, 0) for i in range(inputs)}, fusion)
    with torch.no_grad():
        node.edge_weights.copy_(torch.tensor([1.5, -0.2, 0.7][:inputs]))  # relu zeroes one
    xs = [torch.randn(2, 8, 6, 5) for _ in range(inputs)]
    with torch.no_grad():
        ref = node.eval()(xs, (6, 5))
        w = node.normalized_weights()
        by_hand = sum(x * wi for x, wi in zip(xs, w, strict=True))
        out = fold_fusion_weights(node)(xs, (6, 5))
        assert node.folded_weights is not None
        node.edge_weights.add_(torch.tensor([0.0, 1.0, -0.5][:inputs]))  # as a step would
        changed = sum(x * wi for x, wi in zip(xs, node.normalized_weights(), strict=True))
        evaluated = node(xs, (6, 5))  # still eval mode, the folded copy now stale
        trained = node.train()(xs, (6, 5))
    torch.testing.assert_close(ref, by_hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert float((changed - ref).abs().max()) > 0.01  # the change matters
    torch.testing.assert_close(evaluated, changed)
    torch.testing.assert_close(trained, changed)
    with pytest.raises(ConfigError):
        fold_fusion_weights(node.train())


def test_class_filter_keeps_the_per_class_detections(lite0):
    img = _image(192, 320, seed=2)
    # candidates above conf fit the top-k budget and the detections fit max_det: class-aware NMS
    # then gives each class the same detections whether other classes are present or not
    opts = dict(conf=0.9, max_det=1000, max_candidates=50000)
    full = Detector(model=lite0, **opts)(img)
    assert 0 < len(full) < 1000
    wanted = [COCO90_NAMES[int(full.labels[0])], int(full.labels[1])]
    ids = {int(full.labels[0]), int(full.labels[1])}
    filtered = Detector(model=lite0, classes=wanted, **opts)(img)
    keep = torch.tensor([int(label) in ids for label in full.labels])
    assert set(filtered.labels.tolist()) <= ids and len(filtered) == int(keep.sum())
    torch.testing.assert_close(filtered.boxes, full.boxes[keep], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="not one of"):
        Detector(model=lite0, classes=["unicorn"])
    with pytest.raises(ConfigError, match="class index"):
        Detector(model=lite0, classes=[90])


def test_half_precision_finds_the_confident_float32_detections(lite0):
    """bf16 keeps 8 mantissa bits per activation; on the fixture's random weights its class logits
    differ from float32's by ~0.4 on average (measured), so near-ties reorder and NMS keeps other
    representatives: judge it by recall of float32's confident detections (score >= 0.9): a bf16
    detection of the same class with IoU >= 0.5 (bf16 at conf 0.05, so only its boxes are judged).
    A broken half path (wrong input scaling, a layer left in another dtype) recalls ~0."""
    img = _image(100, 200, seed=3)
    full = Detector(model=lite0, conf=0.9, max_det=5000)(img)
    half = Detector(model=lite0, conf=0.05, max_det=5000, half=True)
    assert (
        half.dtype == torch.bfloat16
        and next(half.backend.network.parameters()).dtype == torch.bfloat16
    )
    got = half(img)
    assert got.boxes.dtype == torch.float32 and got.scores.dtype == torch.float32
    assert len(full) >= 50  # plenty to judge by
    iou = box_iou(full.boxes, got.boxes)
    found = ((iou >= 0.5) & (full.labels[:, None] == got.labels[None, :])).any(1)
    assert float(found.float().mean()) >= 0.7, (
        f"bf16 recalls {int(found.sum())} of {len(full)} confident detections"
    )


def test_checkpoints_and_names(lite0, tmp_path):
    ours = tmp_path / "best.pt"
    names = [f"c{i}" for i in range(90)]
    torch.save(save_model_dict(lite0, class_names=names, category_ids=list(range(100, 190))), ours)
    img = _image(120, 160, seed=4)
    det = Detector(ours, conf=0.3)
    assert det.names == names and det.category_id(3) == 103
    direct = Detector(model=lite0, conf=0.3)(img)
    _same(direct, Detector.from_checkpoint(ours, conf=0.3)(img))
    assert det(img).names == [names[i] for i in direct.labels.tolist()]

    effdet_file = tmp_path / "effdet.pth"
    torch.save(reference_state_dict(load_reference("effdet_lite0_192x320")), effdet_file)
    with pytest.raises(WeightsError, match="--model NAME --weights"):
        Detector(effdet_file)
    named = Detector.from_name("lite0", weights=effdet_file, image_size=(192, 320), conf=0.3)
    assert (
        named.num_classes == 90 and named.names == list(COCO90_NAMES) and named.category_id(0) == 1
    )
    _same(direct, named(img))
    with pytest.raises(WeightsError, match="no such weights file"):
        Detector(tmp_path / "missing.pt")
    with pytest.raises(DataError, match="no such image"):
        det(str(tmp_path / "missing.png"))
    with pytest.raises(ConfigError, match="image tensor"):
        det(torch.zeros(5, 8, 8))


def test_large_jpeg_is_drafted_and_exif_orientation_applied(lite0, tmp_path):
    """A big JPEG by path is decoded at a reduced size (PIL draft) yet letterboxed by its full
    size; EXIF orientation 6 (rotate 90) gives the displayed (h, w)."""
    img = _image(1200, 1600, seed=6)
    path = tmp_path / "big.jpg"
    Image.fromarray(img).save(path, quality=95)
    det = Detector(model=lite0)
    drafted, scales, sizes, _ = det.preprocess([str(path)])
    full, scales_full, _, _ = det.preprocess([np.array(Image.open(path).convert("RGB"))])
    assert sizes == [(1200, 1600)] and float(scales[0]) == float(scales_full[0]) == pytest.approx(
        0.16
    )  # 192 / 1200
    assert float((drafted - full).abs().mean()) < 2.0 / 127.5  # within ~2 grey levels on average
    from efficientdet.deploy.preprocess import load_path

    assert tuple(load_path(str(path), (192, 320))[0].shape) == (300, 400, 3)  # decoded at 1/4

    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img[:300, :400]).save(rotated, exif=exif)
    result = det(str(rotated))
    assert result.image_size == (400, 300)
    if len(result):
        assert (
            float(result.boxes[:, [0, 2]].max()) <= 300
            and float(result.boxes[:, [1, 3]].max()) <= 400
        )
