"""Multi-process training: ``torchrun --nproc_per_node 2`` (gloo on CPU) against one process
with the same total batch, and the process-group helpers of ``engine/distributed.py``."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from efficientdet import cli
from efficientdet.data.synth import write_synthetic_dataset
from efficientdet.engine import distributed

from .processes import run_process_group

HERE = Path(__file__).parent
EPOCHS = 3


def _train_args(data: Path, out: Path, batch: int) -> list[str]:
    """Lite0 at 64x64, 4 training images, no augmentation, every BatchNorm in eval mode."""
    return [
        *("train", "--data", str(data), "--model", "lite0", "--image-size", "64"),
        *("--epochs", str(EPOCHS), "--batch", str(batch), "--lr", "0.01", "--ema-warmup", "2"),
        *("--scale-jitter", "1", "1", "--flip-prob", "0", "--freeze-bn"),
        *("--workers", "0", "--device", "cpu", "--seed", "0", "--out", str(out)),
        *("--val-interval", str(EPOCHS), "--quiet", "--no-plots"),  # validate once, at the end
    ]


def _torchrun(args: list[str], logs: Path) -> None:
    """Run tests/ddp_worker.py (``efficientdet`` + ``args``) in 2 processes (what they print is
    in the run's train.log)."""
    logs.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "EFFICIENTDET_TEST_LOG": str(logs),
    }
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        str(HERE / "ddp_worker.py"),
        *args,
    ]
    run_process_group(cmd, env, timeout=400, what="torchrun")


def _assert_disjoint_halves(logs: Path, train_ids: list[int], epochs: int) -> None:
    """Each rank loaded its own half of the split every epoch; together all of it."""
    ids = {r: [int(v) for v in (logs / f"ids_rank{r}.txt").read_text().split()] for r in (0, 1)}
    half = len(train_ids) // 2
    assert len(ids[0]) == len(ids[1]) == half * epochs
    for e in range(epochs):
        seen0 = set(ids[0][half * e : half * (e + 1)])
        seen1 = set(ids[1][half * e : half * (e + 1)])
        assert len(seen0) == len(seen1) == half and not seen0 & seen1, (e, ids)
        assert sorted(seen0 | seen1) == train_ids


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
    ddp_out = tmp_path / "runs" / "ddp"
    _torchrun(_train_args(data, ddp_out, batch=2), logs)
    assert "2 processes (gloo)" in (ddp_out / "train.log").read_text()  # --quiet: not printed

    _assert_disjoint_halves(logs, train_ids, EPOCHS)
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
    pairs = {
        "EMA weights (shipped)": (ddp["model"], one["model"]),
        "raw weights": (ddp["train_state"]["model"], one["train_state"]["model"]),
    }
    for name, (got, want) in pairs.items():
        assert got.keys() == want.keys(), name
        for key, value in got.items():
            if value.is_floating_point():
                torch.testing.assert_close(
                    value, want[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}"
                )
            else:
                assert torch.equal(value, want[key]), f"{name}: {key}"
    # --freeze-bn: the running statistics never moved from a fresh BatchNorm's (0 and 1)
    stats = {k: v for k, v in ddp["train_state"]["model"].items() if k.endswith("running_mean")}
    assert stats and all(not v.any() for v in stats.values())
    # the logged losses are those of the whole batch too; and training did move the weights
    rows = _read_rows(ddp_out)
    assert float(rows[0]["train_loss"]) != float(rows[-1]["train_loss"])
    for a, b in zip(rows, _read_rows(single_out), strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4)
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-9)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL: one per rank)")
def test_two_processes_on_two_gpus(tmp_path):
    """NCCL for the gradients and gloo for the CPU tensors the trainer reduces (losses, flags):
    an NCCL-only group refuses those ("No backend type associated with device type cpu")."""
    data = write_synthetic_dataset(
        tmp_path / "data", num_train=4, num_val=2, seed=5, size=64, progress=False
    )
    train_ids = sorted(
        im["id"] for im in json.loads((data.parent / "train.json").read_text())["images"]
    )
    args = _train_args(data, tmp_path / "runs" / "ddp", batch=2)
    args[args.index("--device") + 1] = "cuda"
    _torchrun(args, tmp_path / "logs")
    log = (tmp_path / "runs" / "ddp" / "train.log").read_text()  # --quiet: not printed
    assert "2 processes" in log and "SyncBatchNorm" in log
    _assert_disjoint_halves(tmp_path / "logs", train_ids, EPOCHS)
    assert (tmp_path / "logs" / "commits_rank0.txt").read_text().split() == [
        str(tmp_path / "runs" / "ddp")
    ] * EPOCHS


def test_backend_per_device():
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    # CPU tensors through gloo, CUDA tensors through NCCL (torch.distributed backend syntax)
    assert distributed.backend_for(torch.device("cuda", 1)) == "cpu:gloo,cuda:nccl"


def test_helpers_in_a_world_of_one():
    assert not distributed.is_active()
    assert distributed.global_normalizer_factor(7.0) == 1.0
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(3) == [3]
