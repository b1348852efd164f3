"""Export: ONNX raw outputs vs PyTorch through onnxruntime (dynamic batch), NMS inside the graph vs
the PyTorch Detector, metadata, TorchScript, refusal of foreign ONNX files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from efficientdet import Detector, create_model
from efficientdet.config import NMSConfig
from efficientdet.detection.anchors import AnchorGenerator
from efficientdet.detection.postprocess import postprocess
from efficientdet.deploy.export import NMSExport, export_onnx, export_torchscript, load_torchscript
from efficientdet.errors import ConfigError, WeightsError
from efficientdet.weights import load_weights

from .reference import load_reference, reference_state_dict


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fixture_model(ref_name: str, model_name: str):
    ref = load_reference(ref_name)
    model = create_model(model_name, image_size=ref["image_size_hw"]).eval()
    load_weights(model, reference_state_dict(ref))
    return model, ref


def _flat(model, x):
    """PyTorch raw outputs concatenated over levels: (N, A_all, K), (N, A_all, 4)."""
    with torch.no_grad():
        cls, box = model(x)
    n, k = x.shape[0], model.config.num_classes
    return (torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1, k) for c in cls], 1).numpy(),
            torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in box], 1).numpy())


@pytest.fixture(scope="module")
def lite0():
    return _fixture_model("effdet_lite0_192x320", "efficientdet_lite0")[0]


@pytest.fixture(scope="module")
def lite0_onnx(lite0, tmp_path_factory):
    """(raw file, NMS file): dynamic batch, NMS at conf 0.05."""
    d = tmp_path_factory.mktemp("onnx")
    names = [f"n{i}" for i in range(90)]
    raw = export_onnx(lite0, d / "raw.onnx", names, list(range(1, 91)), dynamic_batch=True)
    nms = export_onnx(lite0, d / "nms.onnx", names, list(range(1, 91)), nms=True, dynamic_batch=True, conf=0.05,
                      iou=0.5, max_det=100)
    return raw, nms


def test_onnx_raw_outputs_match_pytorch_with_dynamic_batch(tmp_path):
    model, ref = _fixture_model("effdet_d0_256", "efficientdet_d0")
    path = export_onnx(model, tmp_path / "d0.onnx", dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["class_logits", "box_deltas"]
    x2 = ref["input"]  # realistic normalised inputs (2, 3, 256, 256)
    for x in (x2[:1], torch.cat([x2, x2[:1].flip(-1)])):  # batch 1 and 3 through the same file
        got_cls, got_box = session.run(None, {"images": x.numpy()})
        exp_cls, exp_box = _flat(model, x)
        assert got_cls.shape == (x.shape[0], 12276, 90) and got_box.shape == (x.shape[0], 12276, 4)
        np.testing.assert_allclose(got_cls, exp_cls, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_box, exp_box, atol=1e-4, rtol=0)


def test_torchscript_gives_the_same_outputs(lite0, tmp_path):
    path = export_torchscript(lite0, tmp_path / "l0.torchscript.pt", fuse=False)
    module, meta = load_torchscript(path)
    assert meta["model_name"] == "efficientdet_lite0" and meta["outputs"] == "raw" and meta["image_size"] == [192, 320]
    x = load_reference("effdet_lite0_192x320")["input"]
    with torch.no_grad():
        cls, box = module(x)
    exp_cls, exp_box = _flat(lite0, x)
    np.testing.assert_allclose(cls.numpy(), exp_cls, atol=1e-5, rtol=0)
    np.testing.assert_allclose(box.numpy(), exp_box, atol=1e-5, rtol=0)


def test_onnx_metadata(lite0_onnx):
    raw, nms = lite0_onnx
    for path, kind in ((raw, "raw"), (nms, "nms")):
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        meta = json.loads(props["efficientdet"])
        assert meta["format"] == "efficientdet-export" and meta["outputs"] == kind
        assert meta["model_name"] == "efficientdet_lite0" and meta["num_classes"] == 90
        assert meta["class_names"][:2] == ["n0", "n1"] and meta["category_ids"][:2] == [1, 2]
        assert meta["image_size"] == [192, 320] and meta["mean"] == [127.0] * 3 and meta["std"] == [128.0] * 3
        assert "top-left" in meta["letterbox"] and json.loads(props["class_names"])[5] == "n5"
    assert json.loads({p.key: p.value for p in onnx.load(str(nms)).metadata_props}["efficientdet"])["nms"] == {
        "iou_threshold": 0.5, "score_threshold": 0.05, "max_detections": 100, "max_candidates": 5000}


def _images():
    rs = np.random.RandomState(7)
    small = [rs.randint(0, 256, (s[0] // 8, s[1] // 8, 3), dtype=np.uint8) for s in ((300, 400), (500, 200))]
    return [np.array(Image.fromarray(a).resize((a.shape[1] * 8, a.shape[0] * 8), Image.Resampling.BICUBIC)) for a in small]


def _assert_same_detections(a, b, box_tol):
    assert len(a) == len(b) > 0
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.boxes, b.boxes, atol=box_tol, rtol=0)


def test_onnx_nms_inside_gives_the_pytorch_detections(lite0, lite0_onnx):
    raw, nms = lite0_onnx
    images = _images()
    torch_det = Detector(model=lite0, conf=0.05)
    nms_det = Detector(nms, conf=0.05)
    raw_det = Detector(raw, conf=0.05)
    assert nms_det.backend == raw_det.backend == "onnxruntime" and nms_det.names[3] == "n3"
    expected = torch_det(images)  # batch of 2 through the dynamic batch axis
    got_nms, got_raw = nms_det(images), raw_det(images)
    for e, n, r in zip(expected, got_nms, got_raw):
        # same raw numbers -> NMS in the graph and our Python NMS agree exactly
        _assert_same_detections(r, n, box_tol=1e-4)
        # vs PyTorch: raw outputs differ by float rounding (~1e-4), boxes by a few thousandths of a pixel
        _assert_same_detections(e, n, box_tol=0.05)
    # a higher threshold / fewer detections are filtered after the graph: still the same
    _assert_same_detections(Detector(model=lite0, conf=0.5, max_det=20)(images[0]),
                            Detector(nms, conf=0.5, max_det=20)(images[0]), box_tol=0.05)
    with pytest.raises(ConfigError, match="IoU"):
        Detector(nms, iou=0.6)
    with pytest.raises(ConfigError, match="score threshold"):
        Detector(nms, conf=0.01)


def test_nms_export_module_matches_postprocess_in_eager(lite0):
    """The graph's logic run eagerly (its NMS op computed by our batched_nms) equals postprocess."""
    x = load_reference("effdet_lite0_192x320")["input"]
    cfg = NMSConfig(score_threshold=0.05, iou_threshold=0.5, max_detections=100)
    module = NMSExport(lite0, (192, 320), cfg).eval()
    scales = torch.tensor([0.5, 0.8])
    sizes = torch.tensor([[384.0, 640.0], [200.0, 400.0]])
    with torch.no_grad():
        boxes, scores, classes, num = module(x, scales, sizes)
        cls, box = lite0(x)
    expected = postprocess(cls, box, AnchorGenerator(lite0.config.anchors)((192, 320)), cfg, (192, 320), scales, sizes)
    for i, e in enumerate(expected):
        d = int(num[i])
        assert d == len(e["scores"]) > 0
        assert torch.equal(classes[i, :d], e["labels"])
        torch.testing.assert_close(scores[i, :d], e["scores"], atol=1e-6, rtol=0)
        torch.testing.assert_close(boxes[i, :d], e["boxes"], atol=1e-4, rtol=0)
        assert float(boxes[i, d:].abs().sum()) == 0.0


def test_foreign_onnx_files_are_refused(tmp_path, lite0_onnx):
    plain = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False)
    with pytest.raises(WeightsError, match="no efficientdet metadata"):
        Detector(plain)
    wrong = tmp_path / "wrong.onnx"
    proto = onnx.load(str(lite0_onnx[0]))
    for p in proto.metadata_props:
        if p.key == "efficientdet":
            p.value = json.dumps({"format": "something-else"})
    onnx.save(proto, str(wrong))
    with pytest.raises(WeightsError, match="re-export"):
        Detector(wrong)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    with pytest.raises(WeightsError, match="cannot load"):
        Detector(garbage)
    with pytest.raises(ConfigError, match="image size"):
        Detector(lite0_onnx[0], image_size=256)
