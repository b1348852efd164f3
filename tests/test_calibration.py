"""Calibration images for int8 export: chosen from the user's data, preprocessed as at inference."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from efficientdet.deploy.calibration import calibration_set, evenly_spaced
from efficientdet.deploy.preprocess import preprocess
from efficientdet.errors import DataError

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _images(folder, n, size=(40, 30)):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"im{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_batches_equal_inference_preprocessing(tmp_path):
    paths = _images(tmp_path / "imgs", 5)
    cal = calibration_set(tmp_path / "imgs", (64, 64), MEAN, STD, count=5)
    got = cal.array()
    want, _, _, _ = preprocess(paths, (64, 64), MEAN, STD)
    assert got.dtype == np.float32 and got.shape == (5, 3, 64, 64)
    np.testing.assert_array_equal(got, want.numpy())


def test_raw_pixels_are_the_letterboxed_image_with_mean_padding(tmp_path):
    paths = _images(tmp_path / "imgs", 1, size=(64, 32))  # 64 wide, 32 high: bottom half padded
    raw = calibration_set(tmp_path / "imgs", (64, 64), MEAN, STD, count=1).array(raw_pixels=True)
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(
        raw[0, :, :32, :], np.asarray(Image.open(paths[0])).transpose(2, 0, 1)
    )
    np.testing.assert_array_equal(raw[0, :, 40, 10], np.rint(MEAN).astype(np.uint8))


def test_unreadable_images_are_counted_and_an_all_bad_set_is_refused(tmp_path):
    _images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    cal = calibration_set(tmp_path / "imgs", (32, 32), MEAN, STD, count=10)
    assert cal.array().shape[0] == 3
    assert [p for p, _ in cal.skipped] == [str(tmp_path / "imgs" / "broken.jpg")]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"junk")
    with pytest.raises(
        DataError, match=r"bad: none of the 1 calibration images could be read.*fix:"
    ):
        calibration_set(bad, (32, 32), MEAN, STD).array()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: folder holds no images"):
        calibration_set(tmp_path / "empty", (32, 32), MEAN, STD)
    with pytest.raises(DataError, match="not found"):
        calibration_set(tmp_path / "nope.yaml", (32, 32), MEAN, STD)


def test_dataset_yaml_train_split(tmp_path):
    from efficientdet.data.spec import load_dataset
    from efficientdet.data.synth import write_synthetic_dataset

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", 4, 1, seed=0, size=64, progress=False)
    cal = calibration_set(data_yaml, (64, 64), MEAN, STD, count=2)
    train = sorted(r.path for r in load_dataset(data_yaml, "train").records)
    assert cal.paths == [train[0], train[2]]
    assert cal.array().shape == (2, 3, 64, 64)


def test_evenly_spaced():
    assert evenly_spaced(list("abcdefghij"), 5) == list("acegi")
    assert evenly_spaced(list("abc"), 5) == list("abc")


def test_every_exporter_takes_a_calibration_set_and_refuses_an_array(tmp_path):
    """One public calibration type for ONNX, OpenVINO and TFLite: the CalibrationSet (signature),
    and an array of images is refused in one line naming the fix, before any export work."""
    import typing

    from efficientdet import create_model
    from efficientdet.deploy.calibration import CalibrationSet
    from efficientdet.deploy.export import export_onnx
    from efficientdet.deploy.export_openvino import export_openvino
    from efficientdet.deploy.export_tflite import export_tflite

    exporters = (export_onnx, export_openvino, export_tflite)
    for export in exporters:
        assert typing.get_type_hints(export)["calibration"] == CalibrationSet | None, export
    _images(tmp_path / "imgs", 2)
    array = calibration_set(tmp_path / "imgs", (64, 64), MEAN, STD, count=2).array()
    model = create_model("efficientdet_lite0", num_classes=2, image_size=64)
    for export, name in zip(exporters, ("m.onnx", "m.xml", "m.tflite"), strict=True):
        with pytest.raises(TypeError, match=r"^calibration=ndarray: .*fix: .*calibration_set\("):
            export(model, tmp_path / "out" / name, calibration=array)
    assert not (tmp_path / "out").exists()
