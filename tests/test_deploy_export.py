"""Export: ONNX raw outputs vs PyTorch through onnxruntime (dynamic batch), NMS inside the graph vs
the PyTorch Detector, metadata, TorchScript (torch.jit.load and as a Detector), every backend
through one contract, refusal of foreign files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from efficientdet import Detector, create_model
from efficientdet.config import NMSConfig
from efficientdet.deploy.export import NMSExport, export_onnx, export_torchscript
from efficientdet.detection.anchors import AnchorGenerator
from efficientdet.detection.postprocess import postprocess
from efficientdet.errors import ConfigError, WeightsError
from efficientdet.weights import load_weights

from .matching import assert_same_detections, match
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
    return (
        torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1, k) for c in cls], 1).numpy(),
        torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in box], 1).numpy(),
    )


@pytest.fixture(scope="module")
def lite0():
    return _fixture_model("effdet_lite0_192x320", "efficientdet_lite0")[0]


@pytest.fixture(scope="module")
def lite0_onnx(lite0, tmp_path_factory):
    """(raw file, NMS file): dynamic batch, NMS at conf 0.05."""
    d = tmp_path_factory.mktemp("onnx")
    names = [f"n{i}" for i in range(90)]
    raw = export_onnx(lite0, d / "raw.onnx", names, list(range(1, 91)), dynamic_batch=True)
    nms = export_onnx(
        lite0,
        d / "nms.onnx",
        names,
        list(range(1, 91)),
        nms=True,
        dynamic_batch=True,
        conf=0.05,
        iou=0.5,
        max_det=100,
    )
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
    extra = {"efficientdet.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(
            str(path), _extra_files=extra
        )  # torch's own loader: independent of ours
    meta = json.loads(extra["efficientdet.json"])
    assert (
        meta["model_name"] == "efficientdet_lite0"
        and meta["outputs"] == "raw"
        and meta["image_size"] == [192, 320]
    )
    x = load_reference("effdet_lite0_192x320")["input"]
    with torch.no_grad():
        cls, box = module(x)
    exp_cls, exp_box = _flat(lite0, x)
    np.testing.assert_allclose(cls.numpy(), exp_cls, atol=1e-5, rtol=0)
    np.testing.assert_allclose(box.numpy(), exp_box, atol=1e-5, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == [
        "l0.torchscript.pt"
    ]  # written via a temporary name


def test_torchscript_file_is_a_detector(lite0, tmp_path):
    """Detector(file) picks the TorchScript backend from the file's content (any name) and gives
    the PyTorch detections; names and ids come from the file."""
    names = [f"t{i}" for i in range(90)]
    path = export_torchscript(lite0, tmp_path / "model.bin", names, list(range(101, 191)))
    det = Detector(path, conf=0.05)
    assert det.backend.name == "torchscript" and det.image_size == (192, 320)
    assert det.names[7] == "t7" and det.category_id(0) == 101
    images = _images()
    for e, g in zip(Detector(model=lite0, conf=0.05)(images), det(images), strict=True):
        assert_same_detections(e, g, conf=0.05, max_det=100)
    with pytest.raises(ConfigError, match="float32"):
        Detector(path, half=True)


def test_onnx_metadata(lite0_onnx):
    raw, nms = lite0_onnx
    for path, kind in ((raw, "raw"), (nms, "nms")):
        props = {
            p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props
        }
        meta = json.loads(props["efficientdet"])
        assert meta["format"] == "efficientdet-export" and meta["outputs"] == kind
        assert meta["model_name"] == "efficientdet_lite0" and meta["num_classes"] == 90
        assert meta["class_names"][:2] == ["n0", "n1"] and meta["category_ids"][:2] == [1, 2]
        assert (
            meta["image_size"] == [192, 320]
            and meta["mean"] == [127.0] * 3
            and meta["std"] == [128.0] * 3
        )
        assert "top-left" in meta["letterbox"] and json.loads(props["class_names"])[5] == "n5"
    assert json.loads({p.key: p.value for p in onnx.load(str(nms)).metadata_props}["efficientdet"])[
        "nms"
    ] == {
        "iou_threshold": 0.5,
        "score_threshold": 0.05,
        "max_detections": 100,
        "max_candidates": 5000,
    }


def _images():
    rs = np.random.RandomState(7)
    small = [
        rs.randint(0, 256, (s[0] // 8, s[1] // 8, 3), dtype=np.uint8)
        for s in ((300, 400), (500, 200))
    ]
    return [
        np.array(
            Image.fromarray(a).resize((a.shape[1] * 8, a.shape[0] * 8), Image.Resampling.BICUBIC)
        )
        for a in small
    ]


def test_onnx_nms_inside_gives_the_pytorch_detections(lite0, lite0_onnx):
    raw, nms = lite0_onnx
    images = _images()
    torch_det = Detector(model=lite0, conf=0.05)
    nms_det = Detector(nms, conf=0.05)
    raw_det = Detector(raw, conf=0.05)
    assert (nms_det.backend.name, raw_det.backend.name) == (
        "onnxruntime-nms",
        "onnxruntime",
    ) and nms_det.names[3] == "n3"
    expected = torch_det(images)  # batch of 2 through the dynamic batch axis
    got_nms, got_raw = nms_det(images), raw_det(images)
    for e, n, r in zip(expected, got_nms, got_raw, strict=True):
        # same raw numbers -> NMS in the graph and our Python NMS agree (order-insensitive: ties may swap)
        assert_same_detections(r, n, box_tol=1e-3, conf=0.05, max_det=100)
        # vs PyTorch: raw outputs differ by float rounding (~1e-4), boxes by a few thousandths of a pixel
        assert_same_detections(e, n, box_tol=0.05, conf=0.05, max_det=100)
    # a higher threshold / fewer detections are filtered after the graph: still the same
    assert_same_detections(
        Detector(model=lite0, conf=0.5, max_det=20)(images[0]),
        Detector(nms, conf=0.5, max_det=20)(images[0]),
        conf=0.5,
        max_det=20,
    )
    with pytest.raises(ConfigError, match="IoU"):
        Detector(nms, iou=0.6)
    with pytest.raises(ConfigError, match="score threshold"):
        Detector(nms, conf=0.01)


# every switch that stops ONNX Runtime's telemetry: ours, its test flag, and the CI markers
_ORT_TELEMETRY_OFF = ("ORT_DISABLE_TELEMETRY", "ORT_RUNNING_UNIT_TESTS", "CI", "TF_BUILD")
_ORT_TELEMETRY_OFF += ("GITHUB_ACTIONS", "JENKINS_URL")


def test_running_an_onnx_file_writes_nothing_under_home(lite0_onnx, tmp_path):
    """Found by trying: importing onnxruntime wrote a telemetry device id and event database
    to ~/.cache/Microsoft/DeveloperTools/.onnxruntime. Run as a user would (a fresh HOME and
    cache folder, none of the variables that stop its telemetry), a Detector on an ONNX file
    writes nothing under HOME."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _ORT_TELEMETRY_OFF}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), OMP_NUM_THREADS="1")
    image = tmp_path / "img.png"
    Image.fromarray(_images()[0]).save(image)
    run = "import sys; from efficientdet import Detector; Detector(sys.argv[1])(sys.argv[2])"
    proc = subprocess.run(
        [sys.executable, "-c", run, str(lite0_onnx[0]), str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(home.rglob("*")) == []  # no .cache/Microsoft/DeveloperTools/.onnxruntime


def test_detection_matching_is_order_insensitive_but_strict():
    """The helper above: a permuted copy matches; a moved box, another class or a lost detection does not."""
    from efficientdet.deploy.detector import Detections

    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 30, 30]])
    a = Detections(boxes, torch.tensor([0.9, 0.8, 0.8]), torch.tensor([1, 2, 2]), [], (50, 50))
    perm = torch.tensor([2, 0, 1])
    b = Detections(boxes[perm] + 0.01, a.scores[perm] + 1e-5, a.labels[perm], [], (50, 50))
    assert_same_detections(a, b, conf=0.05)
    for bad in (
        Detections(boxes + torch.tensor([1.0, 0, 1, 0]), a.scores, a.labels, [], (50, 50)),
        Detections(boxes, a.scores, torch.tensor([1, 2, 3]), [], (50, 50)),
        Detections(boxes[:2], a.scores[:2], a.labels[:2], [], (50, 50)),
    ):
        with pytest.raises(AssertionError):
            assert_same_detections(a, bad, conf=0.05)
    assert len(match(a, b, 1e-4, 0.05)[0]) == 3


def test_fixed_batch_onnx_takes_any_batch(lite0, tmp_path):
    """An ONNX file exported for batch 2 runs 3 images (pieces of 2, the last padded) and 1 image."""
    names = [f"n{i}" for i in range(90)]
    images = [*_images(), _images()[0][:200]]
    expected = Detector(model=lite0, conf=0.1)(images)
    for nms in (False, True):
        path = export_onnx(lite0, tmp_path / f"b2_{nms}.onnx", names, nms=nms, batch=2, conf=0.1)
        det = Detector(path, conf=0.1)
        assert det.backend.fixed_batch == 2
        for e, g in zip(expected, det(images), strict=True):
            assert_same_detections(e, g, conf=0.1, max_det=100)
        assert_same_detections(expected[1], det(images[1]), conf=0.1, max_det=100)


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
    expected = postprocess(
        cls, box, AnchorGenerator(lite0.config.anchors)((192, 320)), cfg, (192, 320), scales, sizes
    )
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
        torch.onnx.export(
            torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False
        )
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
    # raw outputs need the fixed input size: metadata without it is one line (was a TypeError)
    no_size = tmp_path / "no_size.onnx"
    proto = onnx.load(str(lite0_onnx[0]))
    for p in proto.metadata_props:
        if p.key == "efficientdet":
            p.value = json.dumps({**json.loads(p.value), "image_size": None})
    onnx.save(proto, str(no_size))
    with pytest.raises(
        WeightsError, match=r"no_size\.onnx: metadata has no image size; fix: re-export"
    ):
        Detector(no_size)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    with pytest.raises(WeightsError, match="cannot load"):
        Detector(garbage)
    with pytest.raises(ConfigError, match="image size"):
        Detector(lite0_onnx[0], image_size=256)
    # a TorchScript file that is not ours: one line, not "is the file complete?"
    foreign = tmp_path / "foreign.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(
            torch.jit.trace(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8)), str(foreign)
        )
    with pytest.raises(WeightsError, match="no efficientdet metadata"):
        Detector(foreign)


def test_predict_and_bench_take_exported_files(lite0, lite0_onnx, tmp_path, capsys):
    """The CLI commands accept the TorchScript file export writes (before: 'is the file complete?'):
    predict gives the Detector's detections in predictions.json; bench times the file's backend."""
    from efficientdet.cli import main

    names = [f"n{i}" for i in range(90)]
    ts = export_torchscript(lite0, tmp_path / "l0.torchscript.pt", names, list(range(1, 91)))
    image = tmp_path / "img.png"
    Image.fromarray(_images()[0]).save(image)
    assert (
        main(
            [
                "predict",
                "--weights",
                str(ts),
                "--source",
                str(image),
                "--conf",
                "0.3",
                "--out",
                str(tmp_path / "p"),
                "--no-save",
            ]
        )
        == 0
    )
    assert "torchscript" in capsys.readouterr().out
    rows = json.loads((tmp_path / "p" / "predictions.json").read_text())
    got = Detector(ts, conf=0.3)(str(image))
    from efficientdet.deploy.detector import Detections

    written = Detections(
        torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)]),
        torch.tensor([r["score"] for r in rows]),
        torch.tensor([r["category_id"] - 1 for r in rows]),
        [],
        got.image_size,
    )  # category ids 1..90 -> labels; JSON rounds to 0.01 px, 1e-5
    assert len(rows) == len(got) > 0
    assert_same_detections(got, written, score_tol=2e-5, box_tol=0.011, conf=0.3)
    for weights, backend in ((ts, "torchscript"), (lite0_onnx[0], "onnxruntime")):
        out = tmp_path / f"bench_{backend}.json"
        assert (
            main(
                [
                    "bench",
                    "--model",
                    "lite0",
                    "--weights",
                    str(weights),
                    "--batch",
                    "1",
                    "--repeats",
                    "1",
                    "--warmup",
                    "0",
                    "--threads",
                    "1",
                    "--parts",
                    "end_to_end",
                    "--json",
                    str(out),
                    "--in-process",
                ]
            )
            == 0
        )
        result = json.loads(out.read_text())["results"]
        assert [(r["engine"], r["part"]) for r in result] == [(backend, "end_to_end")]
        assert result[0]["median_ms"] > 0
    capsys.readouterr()
    assert (
        main(["export", "--weights", str(ts), "--format", "onnx", "--quiet"]) == 2
    )  # not a traceback
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already an exported file" in err and "fix:" in err
