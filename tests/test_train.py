"""Trainer end to end on tiny synthetic data: run folder, checkpoints, exact resume, Ctrl+C,
non-finite losses, bad data, frozen backbone, CLI, DDP with gloo on CPU.

Tiny settings throughout: efficientdet_lite0 at 64x64, 8 training and 4 validation images,
batch 4 (2 steps per epoch), workers 0.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from efficientdet import cli
from efficientdet.data.synth import CLASS_NAMES, write_synthetic_dataset
from efficientdet.detection.loss import DetectionLoss
from efficientdet.engine.trainer import CSV_COLUMNS, TrainConfig, train
from efficientdet.errors import ConfigError, DataError, TrainingDiverged
from efficientdet.factory import load_model

from .data_factory import tiny_train_config, write_corrupt, write_image, write_json
from .processes import run_process_group

SYNTH_CATEGORY_IDS = [1, 3, 7, 10, 15, 22]  # documented in efficientdet.data.synth


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(
        root / "data", num_train=8, num_val=4, seed=3, size=96, progress=False
    )


tiny = tiny_train_config


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory):
    """Two epochs straight through, with non-default anchors (they must travel to the checkpoint)."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    cfg = tiny(synth, out, anchor_scale=2.0, num_scales=2, aspect_ratios=[[1.0, 1.0], [2.0, 0.5]])
    return cfg, train(cfg)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_and_checkpoints(straight):
    cfg, result = straight
    run = Path(cfg.out)
    assert result.run_dir == run and result.stopped == "completed" and result.epochs_completed == 2
    for name in (
        "args.yaml",
        "results.csv",
        "last.pt",
        "best.pt",
        "results.png",
        "pr_curves.png",
        "metrics.json",
    ):
        assert (run / name).is_file(), name
    for png in ("results.png", "pr_curves.png"):
        with Image.open(run / png) as im:
            assert im.format == "PNG" and im.width > 100
    rows = read_csv(run / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert list(rows[0]) == list(CSV_COLUMNS)
    for r in rows:
        assert (
            0.0 <= float(r["mAP"]) <= 1.0
            and float(r["train_loss"]) > 0
            and float(r["epoch_time_s"]) > 0
        )
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])  # cosine decays to 0 at the end

    import yaml

    args = yaml.safe_load((run / "args.yaml").read_text())
    assert (
        args["channels_last"] is None and ", channels_last" in (run / "train.log").read_text()
    )  # CPU default
    assert args["epochs"] == 2 and args["image_size"] == 64 and args["anchor_scale"] == 2.0

    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)  # plain types only
    assert last["format"] == "efficientdet"
    assert last["class_names"] == list(CLASS_NAMES) and last["category_ids"] == SYNTH_CATEGORY_IDS
    anchors = last["config"]["anchors"]
    assert last["config"]["image_size"] == (64, 64)
    assert anchors["anchor_scale"] == 2.0 and anchors["num_scales"] == 2
    assert [list(r) for r in anchors["aspect_ratios"]] == [[1.0, 1.0], [2.0, 0.5]]
    ts = last["train_state"]
    assert ts["epoch"] == 2 and set(ts) >= {
        "model",
        "optimizer",
        "scheduler",
        "ema",
        "rng",
        "best_map",
    }
    # the shipped weights are the EMA weights, the raw ones are kept for resuming
    for k, v in last["model"].items():
        assert torch.equal(v, ts["ema"]["module"][k])
    assert any(
        not torch.equal(last["model"][k], ts["model"][k])
        for k in last["model"]
        if last["model"][k].is_floating_point()
    )
    assert set(last["metrics"]) >= {"mAP", "AP50"}

    model, ckpt = load_model(run / "best.pt")
    assert ckpt["class_names"] == list(CLASS_NAMES)
    assert model.config.anchors.num_anchors == 4 and model.config.image_size == (64, 64)
    out = model(torch.zeros(1, 3, 64, 64))
    assert out[0][0].shape[1] == 4 * len(CLASS_NAMES)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stats"]["mAP"] == pytest.approx(result.best_map)


class InterruptAt:
    """Raise KeyboardInterrupt (as Ctrl+C would) after global step ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_step_end(self, trainer) -> None:
        if trainer.global_step == self.n:
            raise KeyboardInterrupt


@pytest.mark.slow  # two tiny runs (interrupted, resumed) beside the shared one: ~11 s
def test_interrupt_then_resume_is_exact(synth, straight, tmp_path, capsys):
    cfg, _ = straight
    out = tmp_path / "resumed run"  # a space: the printed command must still paste as is
    first = train(
        tiny(synth, out, anchor_scale=2.0, num_scales=2, aspect_ratios=[[1.0, 1.0], [2.0, 0.5]]),
        callbacks=[InterruptAt(3)],
    )  # mid-way through epoch 2
    assert first.stopped == "interrupted"
    printed = capsys.readouterr().out
    hint = printed.rsplit("continue with: ", 1)[1].splitlines()[0]
    assert shlex.split(hint) == ["efficientdet", "train", "--resume", str(out)]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["train_state"]["epoch"] == 1 and ckpt["train_state"]["step_in_epoch"] == 1

    resumed = train(TrainConfig(resume=str(out), progress=False))
    assert resumed.stopped == "completed" and resumed.epochs_completed == 2

    a = torch.load(Path(cfg.out) / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    for section in ("model",):
        for k, v in a[section].items():
            assert torch.equal(v, b[section][k]), k
    for k, v in a["train_state"]["model"].items():
        assert torch.equal(v, b["train_state"]["model"][k]), k
    mom_a = a["train_state"]["optimizer"]["state"]
    mom_b = b["train_state"]["optimizer"]["state"]
    assert all(torch.equal(mom_a[i]["momentum_buffer"], mom_b[i]["momentum_buffer"]) for i in mom_a)
    assert (
        a["train_state"]["scheduler"]["last_epoch"]
        == b["train_state"]["scheduler"]["last_epoch"]
        == 4
    )
    rows_a, rows_b = read_csv(Path(cfg.out) / "results.csv"), read_csv(out / "results.csv")
    assert [(r["train_loss"], r["mAP"]) for r in rows_a] == [
        (r["train_loss"], r["mAP"]) for r in rows_b
    ]


def test_resume_refuses_changed_settings_and_missing_run(tmp_path):
    args = cli.build_parser().parse_args(["train", "--resume", str(tmp_path), "--epochs", "5"])
    with pytest.raises(ConfigError, match="--epochs"):
        args.run(args)
    with pytest.raises(ConfigError, match=r"no last\.pt"):
        train(TrainConfig(resume=str(tmp_path / "nothing")))


def test_nonfinite_losses_roll_back_then_stop_keeping_last_good(
    synth, tmp_path, monkeypatch, capsys
):
    original = DetectionLoss.forward
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        out = original(self, *args, **kwargs)
        if calls["n"] >= 2:  # step 2 of epoch 1, then every step
            nan = torch.tensor(float("nan"))
            out = {**out, "loss": out["loss"] * nan, "class_loss": nan}
        return out

    monkeypatch.setattr(DetectionLoss, "forward", flaky)
    out = tmp_path / "nan"
    # 2 steps per epoch: epoch 1 = 1 good + rollback 1; epoch 2 = rollbacks 2, 3 (no step applied);
    # epoch 3 step 1 is the 4th bad step in a row with max_bad_steps=3: stop
    with pytest.raises(
        TrainingDiverged,
        match=r"training diverged at epoch 3 step 1 \(non-finite loss \(nan\)\) "
        r"after 3 rollbacks",
    ) as info:
        train(tiny(synth, out, epochs=4, max_bad_steps=3, warmup_epochs=0))
    assert str(out / "last.pt") in str(info.value) and "fix: lower --lr" in str(info.value)
    printed = capsys.readouterr().out  # quiet (progress=False): the warnings
    assert printed.count("step not applied; weights rolled back") == 3
    # after 1 of 8 steps the cosine factor is (1 + cos(pi / 8)) / 2 = 0.9619; lr 0.01 halved: 0.00481
    assert "learning rate lowered 2x to 0.00481 (rollback 1 of at most 3)" in printed
    assert (
        "epoch 2/4: loss n/a (no step applied: all 2 rolled back)"
        in (out / "train.log").read_text()
    )  # never "loss 0.0000"
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["train_state"]["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    rows = read_csv(out / "results.csv")
    assert [r["skipped_steps"] for r in rows] == ["1", "2"]
    assert (
        float(rows[0]["train_loss"]) > 0 and rows[1]["train_loss"] == ""
    )  # no finished step: no loss


def messy_coco(root: Path, images: int = 6, boxes_on_first: int = 150) -> Path:
    """Good images (the first with ``boxes_on_first`` boxes: no cap per image), plus one missing
    file, one undecodable file and three bad boxes."""
    entries, anns = [], []
    for i in range(images):
        write_image(root / "images" / f"g{i}.png", 80, 64, colour=(40 * i % 255, 90, 160))
        entries.append({"id": i + 1, "file_name": f"g{i}.png", "width": 80, "height": 64})
        n = boxes_on_first if i == 0 else 2
        for j in range(n):
            x, y = (j * 7) % 60, (j * 5) % 44
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1 + j % 2,
                    "bbox": [x, y, 16, 16],
                }
            )
    entries.append({"id": 100, "file_name": "missing.png", "width": 80, "height": 64})
    write_corrupt(root / "images" / "broken.jpg")
    entries.append({"id": 101, "file_name": "broken.jpg", "width": 80, "height": 64})
    anns.append({"id": 1000, "image_id": 101, "category_id": 1, "bbox": [1, 1, 10, 10]})
    anns.append({"id": 1001, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 4]})  # zero width
    anns.append({"id": 1002, "image_id": 1, "category_id": 1, "bbox": [500, 5, 4, 4]})  # outside
    anns.append(
        {"id": 1003, "image_id": 2, "category_id": 9, "bbox": [5, 5, 4, 4]}
    )  # unknown class
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return write_json(
        root / "train.json", {"images": entries, "annotations": anns, "categories": cats}
    )


def test_bad_items_are_counted_and_training_goes_on(tmp_path, capsys):
    data = messy_coco(tmp_path / "messy")
    result = train(tiny(data, tmp_path / "run", epochs=1, ema=False))
    assert result.stopped == "completed"
    out = (tmp_path / "run" / "train.log").read_text()  # quiet (progress=False): not printed
    assert "images: 7 used of 8 listed" in out  # the missing file is skipped at read time
    for kind in ("missing_image", "bad_box_size", "box_outside", "unknown_category"):
        assert kind in out
    assert "anchor fit:" in out  # the doctor's fast checks run before the first epoch
    assert "validating on the training images" in out
    assert "corrupt_image" in out  # met while loading, reported after the first epoch


def test_no_usable_image_is_one_clear_error(tmp_path, capsys):
    doc = {
        "images": [{"id": 1, "file_name": "gone.png", "width": 10, "height": 10}],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}],
    }
    data = write_json(tmp_path / "empty.json", doc)
    with pytest.raises(DataError):
        train(tiny(data, tmp_path / "run"))
    assert not (
        tmp_path / "run"
    ).exists()  # a failed start leaves no run folder (the retry is not run2)
    code = cli.main(
        [
            "train",
            "--data",
            str(data),
            "--model",
            "lite0",
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--out",
            str(tmp_path / "run2"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and str(data) in err[0]
    assert not (tmp_path / "run2").exists()


def test_quiet_prints_only_the_summary_line(synth, tmp_path, capfd):
    """``--quiet``: stdout is the run's last line (where its files are, best mAP: what a script
    reads), stderr is empty (no bars); train.log still has every line."""
    out = tmp_path / "quiet"
    argv = ["train", "--data", str(synth), "--model", "lite0", "--image-size", "64"]
    argv += ["--epochs", "1", "--batch", "4", "--workers", "0", "--out", str(out), "--quiet"]
    argv += ["--no-plots", "--debug-batches", "0", "--debug-interval", "0"]
    capfd.readouterr()
    assert cli.main(argv) == 0
    printed = capfd.readouterr()
    best_map = float(read_csv(out / "results.csv")[0]["mAP"])
    assert printed.out.splitlines() == [
        f"results in {out}: best.pt (mAP {best_map:.4f}, epoch 1), last.pt, results.csv, "
        "metrics.json"
    ]
    assert printed.err == ""
    log = (out / "train.log").read_text()
    assert "epoch 1/1: loss" in log and log.splitlines()[-1] == printed.out.strip()


class Snapshot:
    def on_train_start(self, trainer) -> None:
        self.requires_grad = {n: p.requires_grad for n, p in trainer.model.named_parameters()}
        self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_freeze_backbone_trains_heads_only(synth, tmp_path):
    snap = Snapshot()
    result = train(
        tiny(synth, tmp_path / "frozen", epochs=1, freeze="backbone", ema=False), callbacks=[snap]
    )
    assert not any(v for n, v in snap.requires_grad.items() if n.startswith("backbone."))
    assert all(v for n, v in snap.requires_grad.items() if not n.startswith("backbone."))
    trained = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["model"]
    backbone = [k for k in trained if k.startswith("backbone.")]
    assert backbone and all(
        torch.equal(trained[k], snap.state[k]) for k in backbone
    )  # BN stats too
    for prefix in ("class_net.", "box_net.", "fpn."):
        keys = [k for k in trained if k.startswith(prefix) and trained[k].is_floating_point()]
        assert any(not torch.equal(trained[k], snap.state[k]) for k in keys), prefix


def test_option_errors_are_one_line():
    with pytest.raises(ConfigError, match="--backbone-weights PATH"):
        from efficientdet.engine.trainer import build_model

        build_model(TrainConfig(data="x.yaml", model="d0", backbone_weights="imagenet"), 3)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        from efficientdet.engine.trainer import amp_dtype_for

        amp_dtype_for("fp16", torch.device("cpu"))
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "train",
            "--data",
            "d.yaml",
            "--image-size",
            "96x128",
            "--aspect-ratios",
            "1,1",
            "2",
            "--scale-jitter",
            "0.5",
            "1.5",
            "--ema-decay",
            "0",
        ]
    )
    from efficientdet.engine.train_cli import config_from_args

    cfg = config_from_args(args)
    assert (
        cfg.image_size == [96, 128]
        and cfg.scale_min == 0.5
        and cfg.scale_max == 1.5
        and cfg.ema is False
    )
    assert cfg.aspect_ratios[0] == [1.0, 1.0] and cfg.aspect_ratios[1] == pytest.approx(
        [2**0.5, 2**-0.5]
    )
    with pytest.raises(ConfigError, match=r"big.*HxW"):
        config_from_args(parser.parse_args(["train", "--data", "d.yaml", "--image-size", "big"]))


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--seed", "-1", "seed=-1: need 0 <= seed < 2**32; fix:"),  # was numpy's traceback
        ("--seed", str(2**32), "seed=4294967296: need"),
        (
            "--clip-grad",
            "-1",
            "clip_grad=-1.0: need 0 (off) or a positive norm; fix:",
        ),  # was silently "off"
        ("--weight-decay", "-0.1", "weight_decay=-0.1: need 0 or more; fix:"),
        # were "ema decay=2.0: need 0 <= decay < 1 (e.g. 0.9998)": no flag, no fix, after the data loaded
        (
            "--ema-decay",
            "2",
            "ema_decay=2.0: need 0 <= decay < 1; fix: e.g. --ema-decay 0.9998 (0 = off)",
        ),
        (
            "--ema-warmup",
            "-1",
            "ema_warmup_steps=-1: need 0 or more steps; fix: e.g. --ema-warmup ",
        ),
        # were "epochs=0: need at least 1" and "batch_size=0: ...", without the fix
        ("--epochs", "0", "epochs=0: need at least 1; fix: e.g. --epochs 20"),
        ("--max-bad-steps", "0", "max_bad_steps=0: need at least 1; fix: e.g. --max-bad-steps "),
    ],
)
def test_train_refuses_bad_numbers_in_one_line(capfd, option, value, message):
    assert cli.main(["train", "--data", "d.yaml", option, value]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err


@pytest.mark.slow  # torchrun with two processes: ~25 s on 2 shared cores
def test_ddp_two_processes_gloo(synth, straight, tmp_path):
    """torchrun with 2 CPU processes: one run folder, one checkpoint of the same layout."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "efficientdet",
        "train",
        "--data",
        str(synth),
        "--model",
        "lite0",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch",
        "2",
        "--lr",
        "0.01",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--quiet",
        "--no-plots",
    ]
    stdout = run_process_group(cmd, env, timeout=300, what="DDP run")
    log = (out / "train.log").read_text()  # --quiet prints only the summary line
    assert "gloo" in log and "SyncBatchNorm" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # one run folder, no ddp2
    assert stdout.count(f"results in {out}: ") == 1  # rank 0 prints
    ddp = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    single = torch.load(Path(straight[0].out) / "last.pt", map_location="cpu", weights_only=True)
    assert set(ddp) == set(single) and set(ddp["train_state"]) == set(single["train_state"])
    assert ddp["train_state"]["world_size"] == 2 and len(ddp["train_state"]["rng_per_rank"]) == 2
    assert not any(k.startswith("module.") for k in ddp["model"])
    assert set(ddp["metrics"]) == set(single["metrics"])
    # 8 images, 2 per process and step, 2 processes: 2 steps per epoch
    assert ddp["train_state"]["steps_per_epoch"] == 2
    rows = read_csv(out / "results.csv")
    assert len(rows) == 1 and 0.0 <= float(rows[0]["mAP"]) <= 1.0
