"""`efficientdet demo` (the README's main job) end to end on a tiny synthetic dataset."""

import csv
import json

import pytest

from efficientdet import cli


@pytest.mark.slow  # trains 2 epochs at 128 px, evaluates, predicts: ~12 s
def test_demo_trains_evaluates_and_draws_predictions(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "demo"
    code = cli.main(
        [
            "demo",
            "--out",
            str(out),
            "--images",
            "8",
            "--val-images",
            "4",
            "--epochs",
            "2",
            "--image-size",
            "128",
            "--batch",
            "4",
            "--workers",
            "0",
            "--num-predictions",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation mAP@[.5:.95]" in printed and str(out / "predictions") in printed
    assert json.loads((out / "data" / "val.json").read_text())["images"]  # the synthetic dataset
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0.0 <= float(r["mAP"]) <= 1.0 for r in rows)
    for name in ("best.pt", "last.pt", "results.png"):
        assert (out / name).is_file(), name
    drawn = sorted((out / "predictions").glob("*_pred.jpg"))
    assert len(drawn) == 2
    # running again with --exist-ok reuses the folder and its dataset instead of writing it anew
    code = cli.main(
        [
            "demo",
            "--out",
            str(out),
            "--exist-ok",
            "--images",
            "8",
            "--val-images",
            "4",
            "--epochs",
            "1",
            "--image-size",
            "128",
            "--batch",
            "4",
            "--workers",
            "0",
            "--num-predictions",
            "1",
            "--quiet",
        ]
    )
    assert code == 0 and "using the synthetic dataset" in capsys.readouterr().out
