"""Static int8 quantization of an ONNX export with ONNX Runtime (``--format onnx --int8``).

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantised op, which ONNX Runtime
fuses into int8 kernels): activations uint8 (asymmetric, MinMax ranges), weights int8 symmetric
per output channel (per-channel scales keep the depthwise convolutions of EfficientNet/BiFPN
accurate; per-tensor loses most of their range) in 7 bits, [-64, 64] (``reduce_range``), on the
calibration images of :mod:`efficientdet.deploy.calibration` (the user's data, letterboxed as at
inference). The graph is first shape-inferred and optimised by ``quant_pre_process``, as ONNX
Runtime recommends. The OpenVINO int8 path (NNCF) is in :mod:`efficientdet.deploy.export_openvino`.

Why 7-bit weights: on x86 CPUs without VNNI (AVX2 only) ONNX Runtime's uint8 x int8 kernels
(VPMADDUBSW) add the products of two neighbouring input channels in int16, which saturates when
``255 * (|w1| + |w2|) > 32767``. With 8-bit weights the demo model (Lite0 256, float32 0.5640
mAP) gives 0.5606 on a VNNI CPU but 0.5438 without VNNI (emulated by
``benchmarks/onnx_int8_no_vnni.py``: -0.020, the loss issue #10 reported). With weights in
[-64, 64] a pair sum is at most 32640: 0.5577 with VNNI, 0.5586 emulated without (no pair
saturates; the rest is rounding), within the 0.01 goal on both, at the same speed. Also tried with 8-bit weights: percentile calibration, the stem or the
last convolutions in float (mAP within 0.005 of the above, the saturation stays), entropy
calibration (the same ranges as MinMax), uint8 weights (no saturation, but 9x slower).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .backends.base import require
from .calibration import CalibrationSet


def _reader(calibration: CalibrationSet, input_name: str, batch: int) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over the calibration images, in
    batches of the file's fixed ``batch`` (the last one padded by repeating its first image)."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration.batches(batch))
            self.count = 0  # images read

        def get_next(self) -> dict | None:
            chunk = next(self.items, None)
            if chunk is None:
                return None
            self.count += chunk.shape[0]
            if chunk.shape[0] < batch:
                chunk = np.concatenate([chunk] + [chunk[:1]] * (batch - chunk.shape[0]))
            return {input_name: chunk}

    return Reader()


def quantize_onnx(
    float_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: CalibrationSet,
    batch: int,
) -> dict:
    """Write the int8 QDQ version of the float ONNX file ``float_path`` to ``out_path``; returns
    the ``quantization`` entry of the metadata (the caller writes the metadata afterwards).
    Settings and the reason for 7-bit weights: the module docstring."""
    ort = require("onnxruntime", "--format onnx --int8", "export")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _reader(calibration, "images", batch)
    with tempfile.TemporaryDirectory(prefix="efficientdet-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(os.fspath(float_path), os.fspath(prepared), skip_symbolic_shape=True)
            quantize_static(
                os.fspath(prepared),
                os.fspath(out_path),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,  # 7-bit weights: no int16 saturation without VNNI
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
    return {
        "method": f"onnxruntime {ort.__version__} quantize_static, QDQ, uint8 activations (MinMax), "
        "int8 per-channel symmetric weights in 7 bits (reduce_range)",
        "calibration_source": calibration.source,
        "calibration_images": reader.count,
    }
