"""The package's public names resolve lazily, and ``import efficientdet`` does no heavy work."""

from __future__ import annotations

import subprocess
import sys

import efficientdet as ed


def test_every_public_name_resolves_to_its_object():
    from efficientdet.deploy.detector import Detector
    from efficientdet.engine.evaluator import evaluate
    from efficientdet.engine.trainer import TrainConfig, train

    for name in ed.__all__:
        assert getattr(ed, name) is not None, name
    assert (
        ed.train is train
        and ed.TrainConfig is TrainConfig
        and ed.evaluate is evaluate
        and ed.Detector is Detector
    )


def test_import_does_not_load_torch():
    code = "import sys, efficientdet; print('torch' in sys.modules, efficientdet.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", ed.__version__]
