"""The parity check every exporter runs (deploy/parity.py), on hand-computed cases: the float32
rules (1e-3 relative to each output's scale; TFLite's 1e-3 absolute) and the probe images, whole
pixels (what a uint8-input TFLite file is fed)."""

from __future__ import annotations

import pytest
import torch

from efficientdet.deploy import backends
from efficientdet.deploy.parity import float_parity, probe_batch

REF_CLS = torch.tensor([[10.0, -3.0]])  # an output of scale 10
REF_BOX = torch.tensor([[0.1, -0.05]])  # an output of scale 0.1


class _Constant(torch.nn.Module):
    """A 'model' whose raw outputs are REF_CLS and REF_BOX (one level each)."""

    def forward(self, x):
        return [REF_CLS], [REF_BOX]


@pytest.mark.parametrize(
    ("absolute", "cls_error", "box_error", "measured"),
    [
        (False, 2e-3, 5e-6, 2e-4),  # relative: 2e-3 / 10 (and 5e-6 / 0.1 = 5e-5): within
        (False, 0.0, 5e-4, 5e-3),  # relative: 5e-4 / 0.1: out
        (True, 2e-3, 0.0, 2e-3),  # absolute (TFLite): 2e-3 on the scale-10 output: out
        (True, 0.0, 5e-4, 5e-4),  # absolute: 5e-4 on the scale-0.1 output: within
    ],
)
def test_float_check_relative_or_absolute(monkeypatch, absolute, cls_error, box_error, measured):
    class Exported:  # the file's backend: PyTorch's outputs plus the error
        def raw(self, x):
            return [REF_CLS + cls_error], [REF_BOX + box_error]

    monkeypatch.setattr(backends, "open_exported", lambda path, device: Exported())
    result = float_parity(_Constant(), "m.onnx", torch.zeros(2, 3, 8, 8), absolute)
    assert result.value == pytest.approx(measured, rel=1e-2)
    assert result.passed == (measured <= 1e-3)
    verdict = "within" if measured <= 1e-3 else "exceeds"
    assert f" {verdict} tolerance 0.001 (" in result.line()


def test_random_probe_images_are_whole_pixels_normalised():
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    x = probe_batch((16, 24), mean, std, batch=3)
    assert x.shape == (3, 3, 16, 24)
    pixels = x * torch.tensor(std).reshape(1, 3, 1, 1) + torch.tensor(mean).reshape(1, 3, 1, 1)
    assert (pixels - pixels.round()).abs().max() < 1e-3  # whole pixels after de-normalising
    assert pixels.round().min() >= 0 and pixels.round().max() <= 255
    assert pixels.round().unique().numel() > 200  # spread over the 0-255 range
