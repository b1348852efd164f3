"""Multi-process training: ``torchrun --nproc_per_node 2`` (gloo on CPU) against one process
with the same total batch, and the process-group helpers of ``engine/distributed.py``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientdet import cli
from efficientdet.data.synth import write_synthetic_dataset
from efficientdet.engine import distributed

HERE = Path(__file__).parent
EPOCHS = 3


def _train_args(data: Path, out: Path, batch: int) -> list[str]:
    """Lite0 at 64x64, 4 training images, no augmentation, every BatchNorm in eval mode."""
    return [
        *("train", "--data", str(data), "--model", "lite0", "--image-size", "64"),
        *("--epochs", str(EPOCHS), "--batch", str(batch), "--lr", "0.01", "--ema-warmup", "2"),
        *("--scale-jitter", "1", "1", "--flip-prob", "0", "--freeze-bn"),
        *("--workers", "0", "--device", "cpu", "--seed", "0", "--out", str(out)),
        *("--quiet", "--no-plots"),
    ]


def _read_rows(run: Path) -> list[dict]:
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # two torchrun processes and a reference run: ~30-60 s on 2 shared cores
@pytest.mark.usefixtures("one_torch_thread")
def test_two_processes_equal_one_process_with_the_total_batch(tmp_path):
    """Two ranks of batch 2 against one process of batch 4, from the same seed.

    Equality must hold here, and only under these settings, because:
    - BatchNorm in eval mode (``--freeze-bn``): in train mode each rank normalises by the
      statistics of its own 2 images, one process by those of all 4 (no SyncBatchNorm on CPU);
    - no augmentation (scale jitter 1..1, no flip): the random streams are per rank;
    - 4 images = one step per epoch: the step's batch is then the whole split in both runs,
      whereas with several steps one process shuffles with its own permutation, not the
      DistributedSampler's (the batches would differ, not the recipe);
    - the losses are normalised by the positives of all ranks
      (``distributed.global_normalizer_factor``), so the averaged DDP gradient is the
      one-batch gradient.
    The rest (optimizer, clip, EMA, warm-up, cosine over 3 steps) is the same code path.
    """
    data = write_synthetic_dataset(
        tmp_path / "data", num_train=4, num_val=2, seed=5, size=64, progress=False
    )
    train_ids = sorted(
        im["id"] for im in json.loads((data.parent / "train.json").read_text())["images"]
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    ddp_out = tmp_path / "runs" / "ddp"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "EFFICIENTDET_TEST_LOG": str(logs),
    }
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        str(HERE / "ddp_worker.py"),
        *_train_args(data, ddp_out, batch=2),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # torchrun and both workers
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun timed out\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:] + stdout[-2000:]
    assert "2 processes (gloo)" in stdout

    # each rank saw its own half of the split every epoch; together all of it
    ids = {r: [int(v) for v in (logs / f"ids_rank{r}.txt").read_text().split()] for r in (0, 1)}
    assert len(ids[0]) == len(ids[1]) == 2 * EPOCHS
    for e in range(EPOCHS):
        seen0, seen1 = set(ids[0][2 * e : 2 * e + 2]), set(ids[1][2 * e : 2 * e + 2])
        assert len(seen0) == len(seen1) == 2 and not seen0 & seen1, (e, ids)
        assert sorted(seen0 | seen1) == train_ids
    # checkpoints: rank 0 commits once per epoch; rank 1 never writes
    assert (logs / "commits_rank0.txt").read_text().split() == [str(ddp_out)] * EPOCHS
    assert not (logs / "commits_rank1.txt").exists()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]  # no ddp2
    assert not [p.name for p in ddp_out.iterdir() if ".tmp" in p.name]

    # one process, batch 4
    single_out = tmp_path / "runs" / "single"
    assert cli.main(_train_args(data, single_out, batch=4)) == 0
    ddp = torch.load(ddp_out / "last.pt", map_location="cpu", weights_only=True)
    one = torch.load(single_out / "last.pt", map_location="cpu", weights_only=True)
    assert ddp["train_state"]["world_size"] == 2 and one["train_state"]["world_size"] == 1
    assert ddp["train_state"]["global_step"] == one["train_state"]["global_step"] == EPOCHS
    for section in ("model", "weights"):  # the shipped EMA weights, the raw trained weights
        got, want = (
            (ddp["model"], one["model"])
            if section == "model"
            else (
                ddp["train_state"]["model"],
                one["train_state"]["model"],
            )
        )
        assert got.keys() == want.keys()
        for key, value in got.items():
            if value.is_floating_point():
                torch.testing.assert_close(value, want[key], rtol=1e-4, atol=1e-6, msg=key)
            else:
                assert torch.equal(value, want[key]), key
    # --freeze-bn: the running statistics never moved from a fresh BatchNorm's (0 and 1)
    stats = {k: v for k, v in ddp["train_state"]["model"].items() if k.endswith("running_mean")}
    assert stats and all(not v.any() for v in stats.values())
    # the logged losses are those of the whole batch too; and training did move the weights
    rows = _read_rows(ddp_out)
    assert float(rows[0]["train_loss"]) != float(rows[-1]["train_loss"])
    for a, b in zip(rows, _read_rows(single_out), strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4)
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-9)


def test_helpers_in_a_world_of_one():
    assert not distributed.is_active()
    assert distributed.global_normalizer_factor(7.0) == 1.0
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(3) == [3]
