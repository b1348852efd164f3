"""TFLite export (litert-torch) checked in the LiteRT interpreter against PyTorch, and in a real
client: MediaPipe's ObjectDetector.

Tests marked ``tflite`` run in the [tflite] env (``make test-tflite``, CI), deselected elsewhere;
the ones with the converter stubbed out run in every env. The conversions (seconds of CPU each at
64x64) are shared by module fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet import Detector, create_model, load_weights
from efficientdet.cli import main
from efficientdet.config import NMSConfig
from efficientdet.data.synth import write_synthetic_dataset
from efficientdet.deploy.backends import file_kind
from efficientdet.deploy.calibration import calibration_set
from efficientdet.deploy.export import _prepare
from efficientdet.deploy.export_tflite import (
    TFLITE_JSON,
    TFLiteGraph,
    convert_float,
    export_tflite,
    read_tflite_metadata,
    with_metadata,
)
from efficientdet.deploy.preprocess import preprocess
from efficientdet.errors import WeightsError
from efficientdet.weights.checkpoint import save_model_dict

from .matching import assert_same_detections
from .reference import load_reference, reference_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")
litert = pytest.mark.tflite  # needs litert-torch / ai-edge-quantizer

NAMES = ["circle", "square", "star"]
HW = (64, 64)
# float16 weights (float32 compute): raw outputs of this random model differ from PyTorch by
# 3e-6 (measured); 1e-3 leaves a wide margin (the trained demo model at 256 px: 1.5e-2 on random
# pixels, and its mAP moved by +0.0002, BENCHMARKS.md)
FP16_TOL = 1e-3
# int8: each activation is rounded to 1/255 of its calibrated range, ~100 times in a row; scores
# (sigmoid, slope <= 1/4) damp the logit error. 0.05 is a score tolerance a detector user can
# live with (the demo's int8 mAP is within 0.01 of float32, BENCHMARKS.md); > 0 shows it is int8
INT8_SCORE_TOL = 0.05


def _error_line(capfd) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A fixed-seed 3-class Lite0 at 64x64 (model, checkpoint) and a synthetic dataset."""
    d = tmp_path_factory.mktemp("tflite")
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=3, image_size=HW).eval()
    ckpt = d / "tiny.pt"
    torch.save(save_model_dict(model, NAMES, [1, 2, 3]), ckpt)
    data = write_synthetic_dataset(d / "data", 8, 4, size=96, progress=False)
    return {"dir": d, "model": model, "ckpt": ckpt, "data": data}


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    """``tiny_ckpt`` and its float32 / float16 / int8 TFLite files (one litert-torch conversion
    shared by the three)."""
    d, model, ckpt, data = (tiny_ckpt[k] for k in ("dir", "model", "ckpt", "data"))
    fused, _ = _prepare(model, HW, True)
    flat = convert_float(TFLiteGraph(fused), HW, uint8_input=False)
    calib = calibration_set(data, HW, model.config.mean, model.config.std, count=8)
    files = {}
    for precision in ("fp32", "fp16", "int8"):
        files[precision] = export_tflite(
            model,
            d / f"tiny_{precision}.tflite",
            NAMES,
            [1, 2, 3],
            precision=precision,
            calibration=calib if precision == "int8" else None,
            float_flatbuffer=flat,
        )
    return {"model": model, "fused": fused, "ckpt": ckpt, "data": data, "flat": flat, **files}


def _val_batch(data_yaml):
    """The synthetic val images, letterboxed and normalised as at inference: (N, 3, 64, 64)."""
    folder = os.path.join(os.path.dirname(data_yaml), "images")
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("val_"))
    batch, _, _, _ = preprocess(paths, HW, (127.0,) * 3, (128.0,) * 3)
    return paths, batch


def _raw_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))


@litert
@pytest.mark.slow  # a litert-torch conversion (shared by the module)
def test_every_precision_runs_in_litert_and_matches_pytorch(tiny):
    paths, x = _val_batch(tiny["data"])
    with torch.no_grad():
        ref = tiny["fused"](x)
    sizes = {}
    for precision in ("fp32", "fp16", "int8"):
        path = tiny[precision]
        sizes[precision] = path.stat().st_size
        assert file_kind(path) == "tflite"
        det = Detector(path)
        assert det.backend.name == "tflite" and det.names == NAMES and det.image_size == HW
        got = det.raw(x)  # batch of 4 through a batch-1 file
        diff = _raw_diff(ref, got)
        # one image alone gives its row of the batch, and a later call leaves it as it was
        first = det.raw(x[:1])
        det.raw(x[1:2])
        assert _raw_diff(first, ([c[:1] for c in got[0]], [b[:1] for b in got[1]])) == 0
        if precision == "fp32":
            assert diff <= 1e-3, diff
        elif precision == "fp16":
            assert diff <= FP16_TOL, diff
        else:
            assert det.backend.input["dtype"] == np.int8  # full-integer: the input is quantised
            score_diff = max(
                float((r.sigmoid() - g.sigmoid()).abs().max())
                for r, g in zip(ref[0], got[0], strict=True)
            )
            assert 0 < score_diff <= INT8_SCORE_TOL, score_diff
    # the weights shrink as promised: float16 about half, int8 about a quarter
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8"] < 0.35 * sizes["fp32"], sizes
    # detections through the whole Detector: float32 file == PyTorch checkpoint
    want = Detector(tiny["ckpt"], conf=0.05)(paths)
    got = Detector(tiny["fp32"], conf=0.05)(paths)
    for w, g in zip(want, got, strict=True):
        if len(w) or len(g):
            assert_same_detections(w, g, score_tol=1e-4, box_tol=0.01, conf=0.05, max_det=100)


@litert
@pytest.mark.slow  # a litert-torch conversion (shared by the module)
def test_metadata_travels_inside_the_file(tiny):
    meta = read_tflite_metadata(tiny["int8"])
    import json

    meta = json.loads(meta)
    assert meta["class_names"] == NAMES and meta["category_ids"] == [1, 2, 3]
    assert meta["image_size"] == list(HW) and meta["mean"] == [127.0] * 3
    assert meta["tflite"] == {"precision": "int8", "uint8_input": False}
    with zipfile.ZipFile(tiny["int8"]) as archive:  # an associated-file zip after the model
        assert archive.namelist() == [TFLITE_JSON]


@litert
@pytest.mark.slow  # a litert-torch conversion (shared by the module)
def test_cli_int8_with_uint8_input_calibrated_on_a_dataset(tiny, tmp_path):
    out = tmp_path / "exp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "efficientdet",
            "export",
            "--weights",
            str(tiny["ckpt"]),
            "--format",
            "tflite",
            "--int8",
            "--uint8-input",
            "--calib-data",
            str(tiny["data"]),
            "--calib-images",
            "6",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "calibrated on 6 images" in proc.stdout and "check vs PyTorch: difference" in proc.stdout
    assert "Calibration" not in proc.stderr  # --quiet silences the quantiser's bars
    path = out / "tiny_int8_uint8.tflite"
    det = Detector(path, conf=0.05)
    assert det.backend.input["dtype"] == np.uint8  # raw 0-255 pixels in, normalised in the graph
    _, x = _val_batch(tiny["data"])
    with torch.no_grad():
        ref = tiny["fused"](x)
    got = det.raw(x)
    score_diff = max(
        float((r.sigmoid() - g.sigmoid()).abs().max()) for r, g in zip(ref[0], got[0], strict=True)
    )
    assert score_diff <= INT8_SCORE_TOL, score_diff


@litert
@pytest.mark.slow  # a litert-torch conversion
def test_cli_float32_uint8_input_passes_the_float_check(tiny, tmp_path, capsys):
    """The shared parity check feeds a --uint8-input file whole pixels: held to 1e-3 absolute."""
    out = tmp_path / "exp"
    argv = ["export", "--weights", str(tiny["ckpt"]), "--format", "tflite", "--uint8-input"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    check = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("check vs")]
    assert check and " within tolerance 0.001 (max |exported - PyTorch| per raw output" in check[0]
    _, x = _val_batch(tiny["data"])  # real images, padded with the (whole) mean colour
    with torch.no_grad():
        assert _raw_diff(tiny["model"](x), Detector(out / "tiny_uint8.tflite").raw(x)) <= 1e-3


@litert
@pytest.mark.slow  # a litert-torch conversion (shared by the module)
def test_quantiser_progress_bars_only_with_progress(tiny, tmp_path, capfd):
    """ai-edge-quantizer's bars (calibration, then transformations) show with ``progress`` only
    (the CLI passes ``progress=not --quiet``)."""
    config = tiny["model"].config
    calib = calibration_set(tiny["data"], HW, config.mean, config.std, count=2)
    for progress in (False, True):
        capfd.readouterr()
        export_tflite(
            tiny["model"],
            tmp_path / f"m_{progress}.tflite",
            precision="int8",
            calibration=calib,
            float_flatbuffer=tiny["flat"],
            progress=progress,
        )
        err = capfd.readouterr().err
        assert ("Running Calibration" in err) == progress, err[-500:]
        assert ("Applying Transformations" in err) == progress, err[-500:]


# ----------------------------------------------------------------------------- bad input
@litert
def test_option_pairs_that_do_not_fit_are_one_line(tiny_ckpt, capfd):
    ckpt = str(tiny_ckpt["ckpt"])
    cases = [
        (["--format", "onnx", "--fp16"], "--fp16 is an option of --format tflite"),
        (
            ["--format", "torchscript", "--uint8-input"],
            "--uint8-input is an option of --format tflite",
        ),
        (
            ["--format", "tflite", "--int8"],
            "--int8 needs calibration images; fix: add --calib-data",
        ),
        (
            ["--format", "tflite", "--fp16", "--int8", "--calib-data", "x.yaml"],
            "--fp16 and --int8 together",
        ),
        (["--format", "tflite", "--calib-data", "x.yaml"], "--calib-data is for int8"),
        (["--format", "tflite", "--batch", "2"], "TFLite files take one image (batch 1)"),
    ]
    for argv, message in cases:
        assert main(["export", "--weights", ckpt, *argv]) == 2, argv
        assert message in _error_line(capfd), argv


@litert
def test_calibration_without_a_readable_image_is_refused_before_converting(
    tiny_ckpt, tmp_path, capfd
):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"not an image")
    argv = ["export", "--weights", str(tiny_ckpt["ckpt"]), "--format", "tflite", "--int8"]
    assert main([*argv, "--calib-data", str(junk), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = _error_line(capfd)
    assert "none of the 1 calibration images could be read" in line and "fix:" in line
    assert not (tmp_path / "o").exists()  # refused before the run folder and the conversion


@litert
def test_missing_converter_names_the_extra(tiny_ckpt, tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import litert_torch -> ImportError
    argv = ["export", "--weights", str(tiny_ckpt["ckpt"]), "--format", "tflite"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'efficientdet[tflite]'" in _error_line(capfd)
    assert not (tmp_path / "o").exists()


def test_a_failing_check_never_touches_the_output_path(tiny_ckpt, tmp_path, monkeypatch, capfd):
    """Fault injection, converter and LiteRT stubbed (runs without litert): the file's raw outputs
    are PyTorch's + 1, so the shared parity check fails. It ran on a temporary file beside the
    output, the output path was never written (an existing file keeps its bytes, a new folder
    stays empty) and no temporary is left behind."""
    from efficientdet.deploy import backends
    from efficientdet.deploy import export_tflite as module

    monkeypatch.setattr(module, "_litert_torch", lambda: None)
    monkeypatch.setattr(module, "convert_float", lambda graph, hw, uint8_input: b"flatbuffer")
    checked = []  # (file checked, its bytes, what the output path held meanwhile)

    class OffByOne:
        def raw(self, x):
            with torch.no_grad():
                cls, box = tiny_ckpt["model"](x)
            return [c + 1 for c in cls], [b + 1 for b in box]

    def open_stub(path, device):
        final = path.parent / "tiny.tflite"
        checked.append((path, path.read_bytes(), final.read_bytes() if final.exists() else None))
        return OffByOne()

    monkeypatch.setattr(backends, "open_exported", open_stub)
    kept, fresh = tmp_path / "kept", tmp_path / "fresh"
    kept.mkdir()
    (kept / "tiny.tflite").write_bytes(b"the user's file")
    argv = ["export", "--weights", str(tiny_ckpt["ckpt"]), "--format", "tflite", "--quiet"]
    for out, before in ((kept, b"the user's file"), (fresh, None)):
        assert main([*argv, "--out", str(out), "--exist-ok"]) == 2
        line = _error_line(capfd)
        path, data, final_then = checked.pop()
        assert path.parent == out and path.name != "tiny.tflite" and path.suffix == ".tflite"
        assert data.startswith(b"flatbuffer") and final_then == before
        if before is None:  # the folder the export made is removed with the failure
            assert not out.exists()
        else:
            assert os.listdir(out) == ["tiny.tflite"]
            assert (out / "tiny.tflite").read_bytes() == before
        assert f"{out / 'tiny.tflite'}: measured difference " in line
        assert "exceeds tolerance 0.001" in line and ", no file written; fix: " in line


@litert
@pytest.mark.slow  # a litert-torch conversion (shared by the module)
def test_a_tflite_file_from_elsewhere_is_one_line(tiny, tmp_path, capfd):
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(tiny["flat"])  # a valid model without our metadata
    assert file_kind(foreign) == "tflite"
    with pytest.raises(
        WeightsError, match=r"foreign.tflite: no efficientdet metadata.*--format tflite"
    ):
        Detector(foreign)
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.png")
    assert main(["predict", "--weights", str(foreign), "--source", str(images)]) == 2
    assert "no efficientdet metadata" in _error_line(capfd)
    broken = tmp_path / "broken.tflite"  # our metadata, the model cut short
    broken.write_bytes(with_metadata(tiny["flat"][:4096], read_tflite_metadata(tiny["fp32"])))
    with pytest.raises(WeightsError, match=r"broken.tflite: the LiteRT interpreter cannot load"):
        Detector(broken)


# ----------------------------------------------------------------------------- NMS + MediaPipe
@pytest.fixture(scope="module")
def lite0_nms(tmp_path_factory):
    """The effdet Lite0 reference weights at 192x320 (90 classes; logits spread like a trained
    model's) exported with TFLite_Detection_PostProcess at conf 0.3."""
    ref = load_reference("effdet_lite0_192x320")
    model = create_model("efficientdet_lite0", image_size=ref["image_size_hw"]).eval()
    load_weights(model, reference_state_dict(ref))
    path = tmp_path_factory.mktemp("nms") / "lite0_nms.tflite"
    nms = NMSConfig(score_threshold=0.3, iou_threshold=0.5, max_detections=25)
    export_tflite(model, path, nms=nms)
    return model, path


def _photo(path, hw):
    """A smooth random photo of exactly the input size (MediaPipe then neither resizes nor pads)."""
    rs = np.random.RandomState(3)
    small = rs.randint(0, 256, (hw[0] // 8, hw[1] // 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize((hw[1], hw[0]), Image.Resampling.BICUBIC).save(path)
    return path


@litert
@pytest.mark.slow
def test_nms_file_in_mediapipe_object_detector_matches_pytorch(lite0_nms, tmp_path):
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core import base_options

    model, path = lite0_nms
    photo = _photo(tmp_path / "photo.png", model.config.image_size)
    want = Detector(model=model, conf=0.3, max_det=25)(str(photo))
    assert len(want) >= 3  # a meaningful comparison

    # our LiteRT backend on the NMS file: the same detections
    ours = Detector(path, conf=0.3, max_det=25)
    assert ours.backend.name == "tflite-nms"
    assert_same_detections(
        want, ours(str(photo)), score_tol=1e-4, box_tol=0.01, conf=0.3, max_det=25
    )

    options = vision.ObjectDetectorOptions(
        base_options=base_options.BaseOptions(model_asset_path=str(path)),
        score_threshold=0.3,
        max_results=25,
    )
    with vision.ObjectDetector.create_from_options(options) as detector:
        result = detector.detect(mp.Image.create_from_file(str(photo)))
    names = list(ours.names)
    # MediaPipe gives whole pixels: origin and size each truncated (static_cast<int>) from the
    # file's boxes (clipped to the input in the graph), so both sides are compared as
    # (x, y, w, h): within 1 px; scores within 0.01; the same classes
    mp_xywh = [
        [
            d.bounding_box.origin_x,
            d.bounding_box.origin_y,
            d.bounding_box.width,
            d.bounding_box.height,
        ]
        for d in result.detections
    ]
    got = SimpleNamespace(
        boxes=torch.tensor(mp_xywh, dtype=torch.float32),
        scores=torch.tensor([d.categories[0].score for d in result.detections]),
        labels=torch.tensor(
            [names.index(d.categories[0].category_name) for d in result.detections]
        ),
    )
    want_xywh = SimpleNamespace(
        boxes=torch.cat([want.boxes[:, :2], want.boxes[:, 2:] - want.boxes[:, :2]], 1),
        scores=want.scores,
        labels=want.labels,
    )
    assert len(got.scores) == len(want)
    assert_same_detections(want_xywh, got, score_tol=0.01, box_tol=1.0, conf=0.3, max_det=25)


@litert
@pytest.mark.slow  # a litert-torch conversion (shared by the module)
def test_nms_results_are_their_own_after_a_later_call(lite0_nms, tmp_path):
    """The tflite-nms backend's boxes, scores and labels of one call are unchanged by the next
    (the interpreter reuses its output buffers for every invoke)."""
    model, path = lite0_nms
    hw = model.config.image_size
    photo = _photo(tmp_path / "a.png", hw)
    mirrored = tmp_path / "b.png"
    Image.open(photo).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(mirrored)
    backend = Detector(path, conf=0.3, max_det=25).backend
    x, scales, sizes, _ = preprocess([photo, mirrored], hw, model.config.mean, model.config.std)
    sizes_t = torch.tensor(sizes)
    (first,) = backend.detections(x[:1], scales[:1], sizes_t[:1])
    kept = {k: v.clone() for k, v in first.items()}
    (second,) = backend.detections(x[1:], scales[1:], sizes_t[1:])
    assert len(kept["scores"]) >= 3 and not torch.equal(second["boxes"], kept["boxes"])
    for key, value in kept.items():
        assert torch.equal(first[key], value), key


@litert
@pytest.mark.slow  # two litert-torch conversions of a 64x64 model
def test_bench_times_the_tflite_engines_in_litert(tmp_path, capsys):
    """``efficientdet bench --engine tflite tflite-int8`` exports each file and times it in the
    LiteRT interpreter: each row names the backend that ran and the file's precision."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--repeats", "1", "--warmup", "0", "--parts", "end_to_end", "--in-process"]
    argv += ["--quiet", "--json", str(out), "--model", "efficientdet_lite0", "--image-size", "64"]
    assert main([*argv, "--engine", "tflite", "tflite-int8"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["engine"], r["backend"]) for r in rows] == [
        ("tflite", "tflite"),
        ("tflite-int8", "tflite"),
    ]
    assert all(r["median_ms"] > 0 for r in rows)
    capsys.readouterr()
