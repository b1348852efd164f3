"""OpenVINO IR and int8 exports (issue #10): each file checked through its runtime's own API
(openvino.Core, onnx / onnxruntime) against PyTorch, the int8 graphs inspected for their
quantised ops, Detector / val selection by file, the parity refusal, and every bad input as
one error line with exit status 2. Lite0 at 64x64, 6 classes, random weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from efficientdet import Detector, create_model
from efficientdet.cli import main
from efficientdet.deploy.backends import file_kind
from efficientdet.deploy.export import export_onnx
from efficientdet.deploy.export_openvino import export_openvino
from efficientdet.deploy.parity import check_export, detection_recall
from efficientdet.errors import ConfigError, ExportError, WeightsError
from efficientdet.factory import save_model_dict

from .matching import assert_same_detections

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["ellipse", "rectangle", "triangle", "star", "cross", "ring"]


def _flat(model, x):
    """PyTorch raw outputs concatenated over levels: (N, A_all, K), (N, A_all, 4)."""
    with torch.no_grad():
        cls, box = model(x)
    n, k = x.shape[0], model.config.num_classes
    return (
        torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1, k) for c in cls], 1).numpy(),
        torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in box], 1).numpy(),
    )


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def ov():
    """The openvino module, imported as the library imports it (telemetry off): a plain import,
    e.g. at the top of this module when pytest collects it, writes a client id to ~/intel."""
    from efficientdet.deploy.backends.base import require

    return require("openvino", "the OpenVINO tests", "openvino")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """(folder, model, checkpoint path, data.yaml): a 6-class Lite0 at 64 and a tiny dataset."""
    from efficientdet.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("ov")
    torch.manual_seed(0)
    model = create_model("efficientdet_lite0", num_classes=6, image_size=64).eval()
    ckpt = root / "m.pt"
    torch.save(save_model_dict(model, NAMES), ckpt)
    data = write_synthetic_dataset(root / "shapes", 8, 4, seed=0, size=64, progress=False)
    return root, model, ckpt, data


def _export(argv, capsys) -> tuple[int, str]:
    code = main(["export", "--quiet", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _error_line(code: int, text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert code == 2, text
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def ov_fp32(work, tmp_path_factory):
    _, _, ckpt, _ = work
    out = tmp_path_factory.mktemp("ovfp32")
    assert (
        main(
            ["export", "--quiet", "--weights", str(ckpt), "--format", "openvino", "--out", str(out)]
        )
        == 0
    )
    return out / "m.xml"


def test_openvino_fp32_matches_pytorch_in_openvino_itself(work, ov_fp32, ov):
    _, model, _, _ = work
    assert sorted(p.name for p in ov_fp32.parent.iterdir()) == ["m.bin", "m.xml"]  # no temporaries
    core = ov.Core()
    ir = core.read_model(ov_fp32)
    meta = json.loads(ir.get_rt_info("efficientdet").astype(str))
    assert meta["class_names"] == NAMES and meta["image_size"] == [64, 64]
    assert meta["precision"] == "fp32" and meta["model_name"] == "efficientdet_lite0"
    assert meta["weights"]["bytes"] == (ov_fp32.parent / "m.bin").stat().st_size
    compiled = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    got = compiled(x.numpy())
    ref_cls, ref_box = _flat(model, x)
    assert _rel(got["class_logits"], ref_cls) < 1e-3
    assert _rel(got["box_deltas"], ref_box) < 1e-3


def test_openvino_detector_gives_pytorch_detections_for_any_batch(work, ov_fp32):
    _, model, _, data = work
    images = sorted(str(p) for p in (data.parent / "images").glob("*.jpg"))[:3]
    det = Detector(ov_fp32, conf=0.001)
    assert det.backend.name == "openvino" and file_kind(ov_fp32) == "openvino"
    assert det.names == NAMES and det.backend.fixed_batch == 1
    ref = Detector(model=model, conf=0.001, class_names=NAMES)
    for got, want in zip(det(images), ref(images), strict=True):  # 3 images through a batch-1 IR
        assert_same_detections(got, want, score_tol=1e-4, box_tol=1e-2, conf=0.001)


def test_val_takes_the_openvino_file_and_gives_the_checkpoint_metrics(
    work, ov_fp32, tmp_path, capsys
):
    _, _, ckpt, data = work
    metrics = []
    for i, weights in enumerate([ckpt, ov_fp32]):
        out = tmp_path / f"v{i}"
        argv = ["val", "--weights", str(weights), "--data", str(data), "--quiet", "--workers", "0"]
        assert main([*argv, "--conf", "0.001", "--out", str(out)]) == 0
        metrics.append(json.loads((out / "metrics.json").read_text())["stats"])
    capsys.readouterr()
    assert set(metrics[0]) == set(metrics[1]) and "mAP" in metrics[0]
    for key, value in metrics[0].items():
        assert metrics[1][key] == pytest.approx(value, abs=1e-3), key


@pytest.mark.slow
def test_openvino_int8_is_quantised_and_close_to_pytorch(work, tmp_path, capsys, ov):
    _, model, ckpt, data = work
    code, text = _export(
        [
            "--weights",
            str(ckpt),
            "--format",
            "openvino",
            "--int8",
            "--calib-data",
            str(data),
            "--calib-images",
            "4",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, text
    assert "check vs PyTorch" in text
    assert "Statistics collection" not in text  # --quiet silences NNCF's progress bars
    xml = tmp_path / "m_int8.xml"
    ir = ov.Core().read_model(xml)
    ops = {op.get_type_name() for op in ir.get_ops()}
    assert "FakeQuantize" in ops  # NNCF's int8 quantisation points
    meta = json.loads(ir.get_rt_info("efficientdet").astype(str))
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_images"] == 4
    compiled = ov.Core().compile_model(ir, "CPU")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    got = compiled(x.numpy())
    ref_cls, _ = _flat(model, x)
    # int8: close in score terms (sigmoid), not bit-equal
    diff = np.abs(1 / (1 + np.exp(-got["class_logits"])) - 1 / (1 + np.exp(-ref_cls))).max()
    assert diff < 0.1


@pytest.mark.slow
def test_openvino_int8_without_quiet_shows_nncf_progress(work, tmp_path, capsys):
    _, _, ckpt, data = work
    argv = ["export", "--weights", str(ckpt), "--format", "openvino", "--int8"]
    argv += ["--calib-data", str(data), "--calib-images", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Statistics collection" in text and "Applying Fast Bias correction" in text


@pytest.mark.slow
def test_onnx_int8_is_qdq_per_channel_and_keeps_metadata(work, tmp_path, capsys):
    _, model, ckpt, data = work
    code, text = _export(
        [
            "--weights",
            str(ckpt),
            "--format",
            "onnx",
            "--int8",
            "--calib-data",
            str(data),
            "--calib-images",
            "8",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, text
    path = tmp_path / "m_int8.onnx"
    proto = onnx.load(path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    inits = {i.name: i for i in proto.graph.initializer}
    per_channel = [
        n
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 1
        and inits[n.input[1]].dims[0] > 1
    ]
    assert per_channel  # per-channel weight scales
    # 7-bit weights: on CPUs without VNNI ONNX Runtime adds two uint8 x int8 products in int16
    # (VPMADDUBSW), which cannot saturate when 255 * (|w1| + |w2|) <= 32767
    weights = [
        numpy_helper.to_array(i)
        for i in proto.graph.initializer
        if i.data_type == onnx.TensorProto.INT8
    ]
    assert weights and all(
        255 * 2 * int(np.abs(w.astype(np.int32)).max()) <= 32767 for w in weights
    )
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["efficientdet"])
    assert meta["precision"] == "int8" and meta["class_names"] == NAMES
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    cls, box = session.run(None, {"images": x.numpy()})
    ref_cls, ref_box = _flat(model, x)
    assert cls.shape == ref_cls.shape and box.shape == ref_box.shape
    assert np.abs(1 / (1 + np.exp(-cls)) - 1 / (1 + np.exp(-ref_cls))).max() < 0.1
    assert Detector(path).backend.name == "onnxruntime"


@pytest.mark.slow
def test_int8_export_reports_its_calibration_images_the_same_way_for_every_format(
    work, tmp_path, capsys
):
    """An unreadable calibration image is counted and named, not dropped in silence: ONNX and
    OpenVINO say it in the line TFLite uses (before, only TFLite named the source), and the file
    records the images it was calibrated on."""
    _, _, ckpt, data = work
    calib = tmp_path / "calib"
    calib.mkdir()
    for image in sorted((data.parent / "images").glob("*.jpg"))[:2]:
        shutil.copy(image, calib)
    (calib / "broken.jpg").write_bytes(b"not a jpeg")
    argv = ["export", "--weights", str(ckpt), "--format", "onnx", "--int8"]
    assert main([*argv, "--calib-data", str(calib), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "reading 3 calibration images" in captured.err
    line = next(ln for ln in captured.out.splitlines() if ln.startswith("calibrated on"))
    assert line.startswith(f"calibrated on 2 images from {calib}; 1 unreadable, skipped (first: ")
    assert "broken.jpg" in line
    proto = onnx.load(tmp_path / "o" / "m_int8.onnx")
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["efficientdet"])
    assert meta["quantization"]["calibration_images"] == 2


@pytest.mark.slow
def test_a_failing_parity_check_says_the_difference_and_leaves_no_file(work, tmp_path):
    _, model, _, _ = work
    torch.manual_seed(1)
    other = create_model("efficientdet_lite0", num_classes=6, image_size=64).eval()

    def verify(tmp):
        check_export(other, tmp, (64, 64), what="m.xml")

    with pytest.raises(
        ExportError,
        match=r"measured difference [0-9.e+-]+ exceeds tolerance 0.001 .*, no file written",
    ):
        export_openvino(model, tmp_path / "m.xml", NAMES, verify=verify)
    assert list(tmp_path.iterdir()) == []  # neither the pair nor any temporary


def test_detection_recall_counts_one_to_one_same_class_matches():
    t = torch.tensor
    ref = [
        {"boxes": t([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]]), "labels": t([0, 1, 2])},
        {"boxes": t([[5.0, 5, 15, 15]]), "labels": t([3])},
    ]
    found = [
        # IoU 81/100... (0,0,9,9) vs (0,0,10,10): 81/100 = 0.81 -> match; class 1 box shifted
        # by 6 px: IoU 16/184 < 0.5 -> miss; class 2 found only as class 0 -> miss
        {"boxes": t([[0.0, 0, 9, 9], [26, 26, 36, 36], [0, 0, 10, 10]]), "labels": t([0, 1, 0])},
        {"boxes": t([[5.0, 5, 15, 15], [5, 5, 15, 15]]), "labels": t([3, 3])},  # one counts once
    ]
    assert detection_recall(ref, found) == (2, 4)


def test_bad_export_options_are_one_line(work, tmp_path, capsys):
    _, _, ckpt, data = work
    base = ["--weights", str(ckpt), "--out", str(tmp_path / "x")]
    cases = [
        (
            ["--format", "torchscript", "--int8", "--calib-data", str(data)],
            "--int8 is not available for --format torchscript",
        ),
        (["--format", "openvino", "--int8"], "--int8 needs calibration images"),
        (["--format", "onnx", "--calib-data", str(data)], "--calib-data is for int8"),
        (
            ["--format", "openvino", "--nms-in-graph"],
            "--nms-in-graph is available for --format onnx and tflite",
        ),
        (
            ["--format", "onnx", "--int8", "--calib-data", str(data), "--nms-in-graph"],
            "--int8 exports raw outputs",
        ),
        (["--format", "onnx", "--opset", "10"], "--opset 10: need 11 or newer"),
    ]
    for argv, message in cases:
        line = _error_line(*_export(base + argv, capsys))
        assert message in line and "fix:" in line
    assert not (tmp_path / "x").exists()


def test_export_never_writes_into_its_calibration_data_nor_over_a_folder(work, tmp_path, capsys):
    """Found by trying hostile paths: --out at the --calib-data folder (with --exist-ok) wrote the
    export among the user's images, and a folder where the file goes failed only after the whole
    export. Both are now one line before any export work, the folders left as they were."""
    _, _, ckpt, data = work
    calib = tmp_path / "calib"
    calib.mkdir()
    for image in sorted((data.parent / "images").glob("*.jpg"))[:2]:
        shutil.copy(image, calib)
    before = sorted(os.listdir(calib))
    for fmt in ("onnx", "openvino"):
        argv = ["--weights", str(ckpt), "--format", fmt, "--int8", "--calib-data", str(calib)]
        line = _error_line(*_export([*argv, "--out", str(calib), "--exist-ok"], capsys))
        assert f"{calib}: this output folder holds the calibration data {calib}" in line
        assert "fix: give another --out" in line
    assert sorted(os.listdir(calib)) == before

    out = tmp_path / "out"
    for fmt, blocker in (("onnx", "m.onnx"), ("openvino", "m.bin")):
        (out / blocker).mkdir(parents=True)
        argv = ["export", "--weights", str(ckpt), "--format", fmt, "--out", str(out), "--exist-ok"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "exporting" not in err  # refused before the export stage
        assert f"error: {out / blocker}: a folder has the name of the exported file; fix:" in err
        (out / blocker).rmdir()
    assert list(out.iterdir()) == []


def test_calibration_images_that_cannot_be_read_are_one_line_before_any_export(
    work, tmp_path, capsys
):
    _, _, ckpt, _ = work
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        (folder / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    line = _error_line(
        *_export(
            [
                "--weights",
                str(ckpt),
                "--format",
                "openvino",
                "--int8",
                "--calib-data",
                str(folder),
                "--out",
                str(tmp_path / "o"),
            ],
            capsys,
        )
    )
    assert "none of the 3 calibration images could be read" in line
    assert not list((tmp_path / "o").glob("*.xml")) and not list((tmp_path / "o").glob("*.bin"))


def test_foreign_and_lonely_openvino_files_are_refused(ov_fp32, tmp_path, ov):
    # an IR from elsewhere: a tiny graph without our metadata
    param = ov.opset13.parameter([1, 3], np.float32, name="x")
    foreign = tmp_path / "foreign.xml"
    ov.save_model(ov.Model([ov.opset13.relu(param)], [param]), foreign)
    with pytest.raises(WeightsError, match=r"no efficientdet metadata.*fix: export ours"):
        Detector(foreign)
    # .bin missing
    shutil.copy(ov_fp32, tmp_path / "m.xml")
    with pytest.raises(WeightsError, match=r"weights file m\.bin is missing"):
        Detector(tmp_path / "m.xml")


@pytest.mark.slow
def test_kill_between_the_renames_then_a_mismatched_pair(
    work, ov_fp32, tmp_path, monkeypatch, capsys
):
    """The .bin is renamed first: a kill before the .xml rename leaves a .bin alone, which
    nothing opens; put next to another export's .xml, the hash check refuses the pair."""
    from efficientdet.deploy import export_openvino as module

    _, _, _, data = work
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".xml"):
            raise KeyboardInterrupt  # stands in for SIGKILL between the renames
        real_replace(src, dst)

    monkeypatch.setattr(module.os, "replace", replace)
    monkeypatch.setattr("efficientdet.fileio.os.replace", replace)
    torch.manual_seed(5)  # other weights, same shapes as ov_fp32
    other = create_model("efficientdet_lite0", num_classes=6, image_size=64)
    with pytest.raises(KeyboardInterrupt):
        export_openvino(other, tmp_path / "m.xml", NAMES)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]  # temporaries removed, no .xml
    with pytest.raises(WeightsError, match="no such weights file"):
        Detector(tmp_path / "m.xml")
    shutil.copy(ov_fp32, tmp_path / "m.xml")  # the stale .bin next to another export's .xml
    assert (tmp_path / "m.bin").stat().st_size == ov_fp32.with_suffix(".bin").stat().st_size
    with pytest.raises(WeightsError, match=r"is not the weights file this \.xml was exported with"):
        Detector(tmp_path / "m.xml")
    code = main(["val", "--weights", str(tmp_path / "m.xml"), "--data", str(data), "--quiet"])
    assert "m.bin is not the weights file" in _error_line(code, capsys.readouterr().err)


@pytest.mark.slow
def test_missing_openvino_names_the_extra(work, tmp_path):
    """openvino blocked at import in a child process: export and run say which extra to install."""
    _, _, ckpt, _ = work
    block = (
        "import sys; sys.modules['openvino'] = None; sys.modules['nncf'] = None; "
        "from efficientdet.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    for argv in (
        [
            "export",
            "--weights",
            str(ckpt),
            "--format",
            "openvino",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        ["predict", "--weights", str(tmp_path / "x.xml"), "--source", str(tmp_path / "a.jpg")],
    ):
        if argv[0] == "predict":
            (tmp_path / "x.xml").write_text("<net/>")
            (tmp_path / "x.bin").write_bytes(b"")
            Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.jpg")
        proc = subprocess.run(
            [sys.executable, "-c", block, *argv], capture_output=True, text=True, timeout=300
        )
        line = _error_line(proc.returncode, proc.stderr)
        assert "pip install 'efficientdet[openvino]'" in line, line


def test_engine_tensorrt_without_cuda_is_one_line(work, tmp_path, monkeypatch):
    """On a machine whose ONNX Runtime has no TensorRT provider (this CPU build; forced here so
    the test means the same everywhere) engine="tensorrt" is one line naming the fix."""
    _, model, _, _ = work
    path = tmp_path / "m.onnx"  # refused before the file is read
    path.write_bytes(b"\x08")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match=r"TensorRT.*not available.*fix: .*onnxruntime-gpu"):
        Detector(path, engine="tensorrt")
    with pytest.raises(ConfigError, match="engine 'tensorrt' runs an exported file"):
        Detector(model=model, engine="tensorrt")
    with pytest.raises(ConfigError, match="engine 'tensorrt' cannot run a openvino file"):
        Detector(_touch_xml(tmp_path), engine="tensorrt")


def _touch_xml(folder):
    path = folder / "t.xml"
    path.write_text("<net/>")
    return path


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_tensorrt_engine_gives_the_pytorch_outputs(work, tmp_path):
    """GPU machines only (CI has none): the ONNX file through ONNX Runtime's TensorRT provider."""
    _, model, _, _ = work
    path = export_onnx(model, tmp_path / "m.onnx", NAMES)
    det = Detector(path, engine="tensorrt", conf=0.001)
    assert det.backend.name == "tensorrt"
    assert det.backend.session.get_providers()[0] == "TensorrtExecutionProvider"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    cls, box = det.raw(x)
    with torch.no_grad():
        ref_cls, ref_box = model(x)
    for got, ref in zip(cls + box, ref_cls + ref_box, strict=True):  # TF32 kernels: 1e-2
        assert float((got.cpu() - ref).abs().max() / ref.abs().max()) < 1e-2


@pytest.mark.slow
def test_bench_runs_the_openvino_engine_and_says_which_backend_ran(ov_fp32, tmp_path, capsys):
    """``efficientdet bench --engine openvino`` exports and times the IR; ``--weights m.xml``
    runs the file's own runtime (another --engine is refused): each row names the backend."""
    argv = ["bench", "--repeats", "1", "--warmup", "0", "--parts", "end_to_end", "--in-process"]
    argv += ["--quiet", "--json"]
    out = tmp_path / "a.json"
    engine = ["--model", "efficientdet_lite0", "--image-size", "64", "--engine", "openvino"]
    assert main([*argv, str(out), *engine]) == 0
    out2 = tmp_path / "b.json"
    assert main([*argv, str(out2), "--weights", str(ov_fp32), "--engine", "eager"]) == 2
    assert main([*argv, str(out2), "--weights", str(ov_fp32)]) == 0
    rows = [json.loads(p.read_text())["results"][0] for p in (out, out2)]
    assert [(r["engine"], r["backend"]) for r in rows] == [
        ("openvino", "openvino"),
        ("openvino", "openvino"),
    ]
    assert all(r["median_ms"] > 0 and r["batch"] == 1 for r in rows)
    capsys.readouterr()


# an audit hook (PEP 578) reports every name lookup and connection the export makes
_NO_NETWORK = """
import sys
def hook(event, args):
    if event in ("socket.getaddrinfo", "socket.connect"):
        sys.stderr.write(f"network: {event} {args[:2]}\\n")
sys.addaudithook(hook)
from efficientdet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_openvino_int8_export_never_phones_home(work, tmp_path):
    """OpenVINO's and NNCF's telemetry (Google Analytics) stay off: no client id written under
    HOME and no name lookup or connection, in a fresh process (NNCF turns itself off in pytest)."""
    _, _, ckpt, data = work
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    argv = ["export", "--quiet", "--weights", str(ckpt), "--format", "openvino", "--int8"]
    argv += ["--calib-data", str(data), "--calib-images", "2", "--out", str(tmp_path / "out")]
    proc = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "m_int8.xml").is_file()
    assert "network:" not in proc.stderr, proc.stderr
    assert list(home.rglob("*")) == []  # no ~/intel/openvino_ga_cid, stats or consent file


@pytest.mark.slow  # a fresh pytest process: one export and one OpenVINO inference
def test_these_tests_write_nothing_under_home(tmp_path):
    """Found by trying: this module imported openvino when pytest collected it, and the import
    wrote a telemetry client id to ~/intel. Run as a user would (HOME a fresh folder, no CI),
    a test of this module writes nothing under HOME/intel."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    test = f"{__file__}::test_openvino_fp32_matches_pytorch_in_openvino_itself"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PYTEST_ADDOPTS": f"--basetemp={tmp_path / 'basetemp'} --rootdir={tmp_path}"},
    )
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr
    # (ONNX Runtime's import writes its own device id under ~/.cache: not OpenVINO's matter)
    assert not (home / "intel").exists()  # no ~/intel/openvino_ga_cid or stats
