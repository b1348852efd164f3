"""load_weights(source="automl") on google/automl checkpoint files, checked against what the
official Keras model computes (tests/fixtures/automl_lite0_192x320.pt, made by
benchmarks/official/make_automl_fixture.py from the official code). The name mapping itself
is also checked without TensorFlow in test_official_numerics.py.

Needs TensorFlow: runs in the TF environment (``make test-automl``, part of CI); without
TensorFlow these tests are deselected and counted (tests/conftest.py).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import efficientdet as ed
from efficientdet.errors import WeightsError

from .reference import check_official_outputs, official_lite0

pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.slow,
]  # TensorFlow start-up and checkpoint writes: ~10-30 s each


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def official():
    return official_lite0()


def _fresh():
    return ed.create_model("lite0", image_size=(192, 320), aspect_ratios="official-v2")


def test_name_based_checkpoint_with_moving_averages(tf, official, tmp_path, caplog):
    """The released checkpoints' layout: TF1 names, ExponentialMovingAverage shadows (used, as
    the official restore does), optimizer slots and a step counter (ignored, and counted)."""
    record, variables, x = official
    saved = {}
    for name, value in variables.items():
        saved[name] = tf.Variable(value * 1.5 + 0.25)  # raw weights: not what inference uses
        saved[name + "/ExponentialMovingAverage"] = tf.Variable(value)
        saved[name + "/Momentum"] = tf.Variable(np.zeros_like(value))
    saved["global_step"] = tf.Variable(np.int64(7))
    prefix = tf.compat.v1.train.Saver(var_list=saved).save(
        None, str(tmp_path / "efficientdet-lite0" / "model")
    )
    model = _fresh()
    with caplog.at_level(logging.WARNING, logger="efficientdet"):
        report = ed.load_weights(model, prefix, source="automl")
    assert report.loaded == 588 and report.source == "automl"
    assert "588 variables read from their exponential moving averages" in caplog.text
    assert f"ignored {len(variables) + 1} variables that are not network weights" in caplog.text
    check_official_outputs(model, record, x)
    # a folder holding a checkpoint: its latest one
    model = _fresh()
    ed.load_weights(model, tmp_path / "efficientdet-lite0", source="automl")
    check_official_outputs(model, record, x)


def test_object_based_checkpoint(tf, official, tmp_path):
    """TF2 checkpoints (Keras save_weights in TF format): variables found through the object graph."""
    record, variables, x = official
    holder = tf.train.Checkpoint(
        weights=[tf.Variable(value, name=name) for name, value in variables.items()]
    )
    prefix = holder.write(str(tmp_path / "ckpt"))
    model = _fresh()
    assert ed.load_weights(model, prefix, source="automl").loaded == 588
    check_official_outputs(model, record, x)


def test_other_class_count_loads_all_but_the_class_layer(tf, official, tmp_path):
    record, variables, x = official
    prefix = tf.compat.v1.train.Saver(
        var_list={n: tf.Variable(v) for n, v in variables.items()}
    ).save(None, str(tmp_path / "model"))
    model = ed.create_model(
        "lite0", num_classes=3, image_size=(192, 320), aspect_ratios="official-v2"
    )
    report = ed.load_weights(model, prefix, source="automl")
    assert sorted(report.skipped) == [
        "class_net.predict.conv_pw.bias",
        "class_net.predict.conv_pw.weight",
    ]
    check_official_outputs(model, record, x, kinds=("box",))


def test_unreadable_paths_are_one_line_errors(tf, tmp_path):
    with pytest.raises(
        WeightsError,
        match=r"model: not a TF checkpoint \(model.index not found\); fix: give the prefix",
    ):
        ed.load_weights(_fresh(), tmp_path / "model", source="automl")
    with pytest.raises(WeightsError, match="folder holds no TF checkpoint"):
        ed.load_weights(_fresh(), tmp_path, source="automl")
    (tmp_path / "broken.index").write_bytes(b"not a checkpoint index")
    with pytest.raises(WeightsError, match="not a readable TF checkpoint"):
        ed.load_weights(_fresh(), tmp_path / "broken", source="automl")
    (tmp_path / "w.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="not a readable Keras HDF5 file"):
        ed.load_weights(_fresh(), tmp_path / "w.h5", source="automl")
