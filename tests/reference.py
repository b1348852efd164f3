"""Access to the effdet reference fixtures (see tests/fixtures/README.md)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_NAMES = ("effdet_d0_256", "effdet_lite0_192x320")


@cache
def load_reference(name: str) -> dict:
    """The recorded effdet outputs; treat as read-only."""
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def reference_state_dict(ref: dict) -> dict[str, torch.Tensor]:
    """The fixture's float16 weights cast to float32 (exact: they were rounded to float16)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in ref["state_dict_fp16"].items()}


@cache
def official_lite0() -> tuple[dict, dict, torch.Tensor]:
    """Treat as read-only: (record of tests/fixtures/automl_lite0_192x320.pt, the effdet lite0 fixture's weights as
    google/automl variables {name: array}, the input (1, 3, 192, 320) the record was made with)."""
    import efficientdet as ed
    from efficientdet.weights.automl import to_automl

    record = torch.load(FIXTURES / "automl_lite0_192x320.pt", weights_only=True)
    ref = load_reference("effdet_lite0_192x320")
    model = ed.create_model("lite0", image_size=ref["image_size_hw"], aspect_ratios="official-v2")
    ed.load_weights(model, reference_state_dict(ref), source="effdet")
    return record, to_automl(model), ref["input"][:1]


def check_official_outputs(model, record: dict, x: torch.Tensor, kinds=("class", "box")) -> None:
    """``model``'s outputs at the recorded positions equal the official Keras model's.

    Tolerance 2e-3 absolute on outputs up to ~10: TensorFlow and torch round differently in
    float32 and these random weights amplify it (up to ~5e-4 seen); a wrong name or layout
    moves outputs by O(1)."""
    with torch.no_grad():
        cls_out, box_out = model.eval()(x)
    for kind, outputs in (("class", cls_out), ("box", box_out)):
        if kind not in kinds:
            continue
        for level, out in enumerate(outputs):
            flat = out.permute(0, 2, 3, 1).reshape(
                -1
            )  # (1, C, H, W) -> (H*W*C,), the official NHWC order
            torch.testing.assert_close(
                flat[record[f"{kind}_index"][level]],
                record[f"{kind}_value"][level],
                atol=2e-3,
                rtol=0,
            )
