"""Lightning adapter: a short fit trains, validates with COCO mAP and exports our checkpoint;
under DDP it takes the step of one process with the total batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning", reason="lightning not installed")

from efficientdet.data.synth import CLASS_NAMES, write_synthetic_dataset  # noqa: E402
from efficientdet.factory import load_model  # noqa: E402

from .lightning_ddp_worker import PoisonBatch, quiet_trainer, tiny_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_lightning_short_fit(tmp_path):
    from efficientdet.engine.lightning import EfficientDetDataModule, EfficientDetModule

    data = write_synthetic_dataset(
        tmp_path / "data", num_train=8, num_val=4, seed=5, size=96, progress=False
    )
    cfg = tiny_config(data, ema_warmup_steps=2, epochs=2)
    dm = EfficientDetDataModule(cfg)
    module = EfficientDetModule(cfg, dm.class_names, dm.category_ids)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = quiet_trainer(
        max_epochs=2,
        enable_checkpointing=False,
        gradient_clip_val=cfg.clip_grad,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 4  # 8 images, batch 4, 2 epochs
    metrics = trainer.callback_metrics
    assert 0.0 <= float(metrics["val/mAP"]) <= 1.0 and torch.isfinite(metrics["train/loss"])
    after = module.model.state_dict()
    assert any(
        not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point()
    )
    assert module.ema is not None and module.ema.updates == 4
    # the schedule ran per step: warm-up then cosine to zero at the last step
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)

    path = module.export_checkpoint(tmp_path / "model.pt")
    model, ckpt = load_model(path)
    assert ckpt["class_names"] == list(CLASS_NAMES) and model.config.image_size == (64, 64)
    for k, v in model.state_dict().items():
        assert torch.equal(v, module.ema.module.state_dict()[k].cpu())


@pytest.mark.slow  # two torchrun processes and a reference fit: ~30-60 s on 2 shared cores
def test_lightning_two_processes_equal_one_process_with_the_total_batch(tmp_path):
    """Lightning DDP (2 gloo ranks of batch 2) against one process of batch 4, as
    tests/test_distributed.py checks our trainer: the losses are normalised by the positive
    anchors of all ranks (``distributed.normalize_over_ranks``), so the averaged DDP gradient
    is the one-batch gradient. 4 images = one step per epoch (the step's batch is the whole
    split in both runs), no augmentation and BatchNorm in eval mode (``freeze_bn``)."""
    import os
    import sys

    from .lightning_ddp_worker import fit
    from .processes import run_process_group

    data = write_synthetic_dataset(
        tmp_path / "data", num_train=4, num_val=2, seed=5, size=64, progress=False
    )
    ddp_out, one_out = tmp_path / "ddp.pt", tmp_path / "one.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    worker = Path(__file__).parent / "lightning_ddp_worker.py"
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *(str(worker), str(data), str(ddp_out), "2", "2"),
    ]
    run_process_group(cmd, env, timeout=400, what="torchrun (Lightning DDP)")
    fit(str(data), one_out, batch=4, devices=1)

    ddp = torch.load(ddp_out, weights_only=True)
    one = torch.load(one_out, weights_only=True)
    assert (ddp["world_size"], one["world_size"]) == (2, 1)
    assert ddp["global_step"] == one["global_step"] == 2
    assert any(  # training moved the weights (an lr of zero would make any runs equal)
        not torch.equal(v, ddp["initial"][k])
        for k, v in ddp["model"].items()
        if v.is_floating_point()
    )
    for key, value in ddp["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, one["model"][key], rtol=1e-4, atol=1e-6, msg=key)
        else:
            assert torch.equal(value, one["model"][key]), key
    assert ddp["loss"] == pytest.approx(one["loss"], rel=1e-4)  # logged: the whole batch's loss


@pytest.mark.slow  # two torchrun processes: ~10-30 s on 2 shared cores
def test_lightning_two_processes_stop_together_at_a_non_finite_loss(tmp_path):
    """Under DDP a NaN loss on one rank stops every rank at the same step with the same line
    (the flag is summed over ranks first): none waits for the other in backward (no hang)."""
    import os
    import sys

    from .processes import run_process_group

    data = write_synthetic_dataset(
        tmp_path / "data", num_train=4, num_val=2, seed=5, size=64, progress=False
    )
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    worker = Path(__file__).parent / "lightning_ddp_worker.py"
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *(str(worker), str(data), str(out), "2", "2", "1"),  # rank 1's second step is NaN
    ]
    run_process_group(cmd, env, timeout=180, what="torchrun (Lightning DDP, NaN on rank 1)")
    assert not out.exists()  # no rank finished the run
    stopped = [torch.load(f"{out}.rank{r}", weights_only=True) for r in (0, 1)]
    assert [s["global_step"] for s in stopped] == [1, 1]  # the NaN step applied on neither
    for s in stopped:
        msg = s["error"]
        assert msg.startswith("epoch 2 batch 1: non-finite training loss on 1 of 2 processes")
        assert "fix: " in msg and "\n" not in msg
    assert "(nan here)" in stopped[1]["error"] and "(nan here)" not in stopped[0]["error"]


def test_lightning_on_a_split_without_annotations_logs_no_map(tmp_path):
    """A validation split without annotations (a COCO image_info JSON, as test-dev ships) has
    no mAP: as our trainer, the adapter says so once, skips validation and logs no ``val/mAP``
    (pycocotools' -1 would be ranked as a score); a callback that would rank epochs by a
    ``val/`` metric is refused before training with one line naming the file and the fix."""
    import json

    from lightning.pytorch.callbacks import ModelCheckpoint

    from efficientdet.data import DetectionDataset, create_loader
    from efficientdet.engine.lightning import EfficientDetDataModule, EfficientDetModule
    from efficientdet.errors import ConfigError

    data = write_synthetic_dataset(
        tmp_path / "data", num_train=4, num_val=2, seed=5, size=64, progress=False
    )
    val = json.loads((data.parent / "val.json").read_text())
    info = data.parent / "image_info_val.json"
    info.write_text(json.dumps({k: v for k, v in val.items() if k != "annotations"}))
    cfg = tiny_config(data, val_data=str(info), epochs=1)
    dm = EfficientDetDataModule(cfg)
    assert not dm.val_data.annotated and len(dm.val_data.records) == 2

    def trainer(**kwargs):
        return quiet_trainer(
            max_epochs=1, num_sanity_val_steps=0, default_root_dir=tmp_path / "runs", **kwargs
        )

    module = EfficientDetModule(cfg, dm.class_names, dm.category_ids)
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="val/mAP", mode="max")
    with pytest.raises(ConfigError) as err:
        trainer(callbacks=[best]).fit(module, datamodule=dm)
    assert str(err.value).startswith(f"{info}: no boxes") and "fix: " in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "best").exists()

    def fit(module, val_batches: int, **loaders):
        t = trainer()  # default checkpointing: the last weights, ranked by nothing
        with pytest.warns(UserWarning) as caught:
            t.fit(module, **loaders)
        said = [str(w.message) for w in caught if "no boxes" in str(w.message)]
        assert len(said) == 1 and said[0].startswith(f"{info}: "), said
        assert "val/mAP is not logged" in said[0]
        assert t.global_step == 1 and sum(t.num_val_batches) == val_batches
        assert not any(k.startswith("val/") for k in t.callback_metrics)
        assert t.checkpoint_callback.best_model_score is None  # nothing ranked
        assert Path(t.checkpoint_callback.best_model_path).is_file()  # the last weights

    module = EfficientDetModule(cfg, dm.class_names, dm.category_ids)
    fit(module, 0, datamodule=dm)  # the datamodule has no val loader for it: no pass
    # a loader of the user's own over the same split: the module's val_data says it is unscored
    module = EfficientDetModule(cfg, dm.class_names, dm.category_ids, val_data=dm.val_data)
    m = module.model.config
    loader = create_loader(
        DetectionDataset(dm.val_data, m.image_size, m.mean, m.std, train=False), 2, shuffle=False
    )
    fit(module, 1, train_dataloaders=dm.train_dataloader(), val_dataloaders=loader)
    assert module._detections == []  # not even detected: nothing would score them


@pytest.mark.parametrize("clip", [1e-4, 0.0])
def test_lightning_clips_at_the_config_norm_by_default(tmp_path, clip):
    """Without ``gradient_clip_val`` on the Trainer, the step is clipped at ``cfg.clip_grad``
    as in our trainer (0: off): one plain SGD step (no momentum, no weight decay, lr constant)
    moves the parameters by lr x the clipped gradient, so by at most lr x clip in norm."""
    from efficientdet.engine.lightning import EfficientDetDataModule, EfficientDetModule

    data = write_synthetic_dataset(
        tmp_path / "data", num_train=4, num_val=1, seed=5, size=64, progress=False
    )
    lr = 0.01
    cfg = tiny_config(
        data,
        lr=lr,
        warmup_lr=lr,
        min_lr_ratio=1.0,
        momentum=0.0,
        weight_decay=0.0,
        epochs=1,
        ema=False,
        clip_grad=clip,
    )
    dm = EfficientDetDataModule(cfg)
    module = EfficientDetModule(cfg, dm.class_names, dm.category_ids)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, dm)
    assert trainer.global_step == 1 and cfg.optimizer == "sgd"
    moved = torch.linalg.vector_norm(
        torch.cat([(p.detach() - before[n]).flatten() for n, p in module.model.named_parameters()])
    )
    if clip:
        assert 0 < moved <= lr * clip * 1.001
    else:  # unclipped: the whole gradient (a fresh detector's is far above 1e-4)
        assert moved > 100 * lr * 1e-4


def _fit_parts(tmp_path, num_train=4, **overrides):
    """(cfg, datamodule, module) on a fresh synthetic set of ``num_train`` images (1 val)."""
    from efficientdet.engine.lightning import EfficientDetDataModule, EfficientDetModule

    data = write_synthetic_dataset(
        tmp_path / "data", num_train=num_train, num_val=1, seed=5, size=64, progress=False
    )
    cfg = tiny_config(data, **overrides)
    dm = EfficientDetDataModule(cfg)
    return cfg, dm, EfficientDetModule(cfg, dm.class_names, dm.category_ids)


@pytest.mark.parametrize(
    "epochs, val_interval, patience, maps, validated",
    [
        # validated at 2, 4, 6, 8: best 0.3 at epoch 4; epoch 6 is 2 epochs later (< 3),
        # epoch 8 is 4 (>= 3): the trainer stops after epoch 8 of 10
        (10, 2, 3, [0.1, 0.3, 0.2, 0.25, 0.9], [2, 4, 6, 8]),
        # every epoch: best 0.2 at epoch 1, epoch 3 is 2 epochs later: stops after 3 of 6
        (6, 1, 2, [0.2, 0.1, 0.2, 0.9], [1, 2, 3]),
        # no patience: every 2 epochs and after the last, as the trainer validates
        (3, 2, None, [0.1, 0.2], [2, 3]),
    ],
)
def test_lightning_validates_and_stops_early_as_the_trainer(
    tmp_path, monkeypatch, epochs, val_interval, patience, maps, validated
):
    """``val_interval`` and ``patience`` mean what they mean in our trainer (loop.py validates
    every ``val_interval`` epochs and after the last; callbacks.EarlyStopping stops at the first
    validation ``patience`` epochs or more after the best): the mAP of each validation is
    scripted, the epochs validated and the epoch the run stops after are worked out by hand."""
    from efficientdet.engine import evaluator
    from efficientdet.engine.lightning import lightning_trainer_kwargs

    cfg, dm, module = _fit_parts(
        tmp_path, epochs=epochs, val_interval=val_interval, patience=patience, ema=False
    )
    seen = []

    def scripted_metrics(coco_gt, detections):
        seen.append(module.current_epoch + 1)
        return {"mAP": maps[len(seen) - 1], "AP50": 0.0}, None

    monkeypatch.setattr(evaluator, "coco_metrics", scripted_metrics)
    trainer = quiet_trainer(
        **lightning_trainer_kwargs(cfg), enable_checkpointing=False, num_sanity_val_steps=0
    )
    trainer.fit(module, dm)
    assert seen == validated
    assert trainer.current_epoch == validated[-1]  # epochs run
    assert float(trainer.callback_metrics["val/mAP"]) == pytest.approx(maps[len(validated) - 1])
    assert trainer.check_val_every_n_epoch == val_interval  # as given, for a later fit


@pytest.mark.parametrize(
    "arg, value, option",
    [
        ("max_epochs", 3, "epochs"),
        ("check_val_every_n_epoch", 2, "val_interval"),
        ("precision", "bf16-mixed", "amp"),
    ],
)
def test_lightning_refuses_a_trainer_that_disagrees_with_the_config(tmp_path, arg, value, option):
    """A Trainer that would run the config otherwise (more epochs, another validation interval
    or precision) is refused before any step, with one line naming the option and the fix."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs
    from efficientdet.errors import ConfigError

    cfg, dm, module = _fit_parts(tmp_path, epochs=1)
    trainer = quiet_trainer(**{**lightning_trainer_kwargs(cfg), arg: value})
    with pytest.raises(ConfigError) as err:
        trainer.fit(module, dm)
    msg = str(err.value)
    assert msg.startswith(f"TrainConfig {option}=") and f"has {arg}={value!r}" in msg
    assert "fix: L.Trainer(**lightning_trainer_kwargs(cfg)" in msg and "\n" not in msg
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    "overrides, limits, field, has, drop",
    [
        ({}, {"max_steps": 1}, "epochs", "max_steps=1", "max_steps"),
        (
            {},
            {"max_time": {"seconds": 90}},
            "epochs",
            "a time limit of 90.0 s",
            "max_time (or a Timer with a duration)",
        ),
        (
            {},
            {"limit_train_batches": 0.5},
            "epochs",
            "limit_train_batches=0.5",
            "limit_train_batches",
        ),
        ({}, {"limit_train_batches": 1}, "epochs", "limit_train_batches=1", "limit_train_batches"),
        # val/mAP (and patience) on part of the validation split
        ({}, {"limit_val_batches": 0.5}, "val_data", "limit_val_batches=0.5", "limit_val_batches"),
        ({}, {"limit_val_batches": 1}, "val_data", "limit_val_batches=1", "limit_val_batches"),
        # Lightning's debugging option sets limit_train_batches: the one given is named
        ({}, {"overfit_batches": 1}, "epochs", "overfit_batches=1", "overfit_batches"),
        # validation inside epochs: patience would count validations, not epochs
        (
            {},
            {"val_check_interval": 0.5},
            "val_interval",
            "val_check_interval=0.5",
            "val_check_interval",
        ),
        (
            {},
            {"val_check_interval": {"minutes": 1}},
            "val_interval",
            "a time-based val_check_interval",
            "val_check_interval",
        ),
        # a floor under the run would hold off the patience stop
        ({"patience": 1}, {"min_steps": 3}, "patience", "min_steps=3", "min_steps"),
        ({"patience": 1}, {"min_epochs": 2}, "patience", "min_epochs=2", "min_epochs"),
    ],
)
def test_lightning_refuses_a_trainer_limit_the_config_cannot_follow(
    tmp_path, overrides, limits, field, has, drop
):
    """A Trainer that stops the run or cuts its epochs short (max_steps, max_time,
    limit_train_batches other than the whole split) would end training part-way through the
    warm-up + cosine schedule the config's ``epochs`` spans; validation on part of the split
    (limit_val_batches) would give a val/mAP ``train`` never reports; validation inside epochs (val_check_interval) would make ``patience`` count
    validations; with ``patience``, a min_steps or min_epochs floor would hold off the stop: each
    is refused before any step, naming what the Trainer holds and the fix."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs
    from efficientdet.errors import ConfigError

    cfg, dm, module = _fit_parts(tmp_path, epochs=2, **overrides)
    trainer = quiet_trainer(**lightning_trainer_kwargs(cfg), **limits, default_root_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        trainer.fit(module, dm)
    msg = str(err.value)
    value = getattr(cfg, field)
    assert msg.startswith(f"TrainConfig {field}={value!r} needs Trainer(")
    assert f"Trainer has {has};" in msg
    assert f"fix: L.Trainer(**lightning_trainer_kwargs(cfg), ...) without {drop}, " in msg
    assert "\n" not in msg and trainer.global_step == 0


def test_lightning_accepts_the_trainer_limits_that_keep_the_schedule(tmp_path):
    """The same options at values that run every batch of every epoch and validate at epoch ends
    are accepted (min_steps and min_epochs floors too, with no patience to hold off): the run
    takes the config's steps and ends its cosine at zero."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs

    cfg, dm, module = _fit_parts(tmp_path, epochs=2, ema=False)
    trainer = quiet_trainer(
        **lightning_trainer_kwargs(cfg),
        max_steps=-1,
        limit_train_batches=1.0,
        min_epochs=3,  # max_epochs still ends the run: a floor above it changes nothing
        min_steps=5,  # without patience nothing stops the run early: a floor changes nothing
        val_check_interval=1.0,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 2  # 4 images, batch 4, 2 epochs
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_lightning_runs_a_fast_dev_run(tmp_path):
    """Lightning's smoke test (fast_dev_run: one epoch of one batch, whatever the config's
    epochs) runs: it is for finding bugs, not a training run whose schedule must hold."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs

    cfg, dm, module = _fit_parts(tmp_path, epochs=3, val_interval=2)
    trainer = quiet_trainer(**lightning_trainer_kwargs(cfg), fast_dev_run=True)
    trainer.fit(module, dm)
    assert trainer.global_step == 1


def test_lightning_checks_memory_on_the_trainers_device(tmp_path, monkeypatch):
    """The memory guard asks about the device the Trainer runs on (its root device), when it
    is known (setup), not at construction: a step that cannot fit on the Trainer's CPU is
    refused before any step."""
    from efficientdet import resources
    from efficientdet.engine.lightning import lightning_trainer_kwargs
    from efficientdet.errors import ResourceError

    asked = []

    def little_memory(device="cpu"):
        asked.append(torch.device(device))
        return 1, "fake: 1 byte"

    monkeypatch.setattr(resources, "available_memory", little_memory)
    cfg, dm, module = _fit_parts(tmp_path, epochs=1)
    assert asked == []  # not at construction: the Trainer's device is not known yet
    trainer = quiet_trainer(**lightning_trainer_kwargs(cfg))
    with pytest.raises(ResourceError) as err:
        trainer.fit(module, dm)
    assert asked == [trainer.strategy.root_device] == [torch.device("cpu")]
    assert "batch 4: training (forward + backward) needs about" in str(err.value)
    assert "available (fake: 1 byte)" in str(err.value) and trainer.global_step == 0


@pytest.mark.parametrize("device", ["mps", "cpu", "auto"])
def test_lightning_runs_where_the_config_device_says_or_refuses(tmp_path, device):
    """``device`` means what it means in ``train``: a config naming a device the Trainer does
    not run on (here MPS, the Trainer on CPU) builds (no device is looked up before the Trainer
    says where it runs) and is refused before any step, naming both devices and the fix; one
    naming the Trainer's device, or leaving the choice open ("auto", as None), trains."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs
    from efficientdet.errors import ConfigError

    cfg, dm, module = _fit_parts(tmp_path, epochs=1, device=device, ema=False)
    trainer = quiet_trainer(
        **lightning_trainer_kwargs(cfg), enable_checkpointing=False, limit_val_batches=0
    )
    assert trainer.strategy.root_device == torch.device("cpu")
    if device == "cpu" or device == "auto":
        trainer.fit(module, dm)
        assert trainer.global_step == 1
        return
    with pytest.raises(ConfigError) as err:
        trainer.fit(module, dm)
    msg = str(err.value)
    assert msg.startswith("TrainConfig device='mps' needs Trainer(accelerator/devices on mps)")
    assert "but the Trainer has root device cpu; fix: L.Trainer(" in msg
    assert msg.endswith(", or leave TrainConfig device unset") and "\n" not in msg
    assert trainer.global_step == 0


@pytest.mark.parametrize("amp, dtype", [("none", torch.float32), ("bf16", torch.bfloat16)])
def test_lightning_runs_the_config_amp(tmp_path, amp, dtype):
    """``amp`` is the Trainer's precision: the network's outputs come out in its dtype."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs

    cfg, dm, module = _fit_parts(tmp_path, epochs=1, amp=amp, ema=False)
    dtypes = []
    module.model.register_forward_hook(lambda m, inputs, out: dtypes.append(out[0][0].dtype))
    trainer = quiet_trainer(
        **lightning_trainer_kwargs(cfg), enable_checkpointing=False, limit_val_batches=0
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 1 and dtypes == [dtype]


def test_lightning_scales_the_lr_with_accumulated_batches(tmp_path):
    """The default lr follows the images per optimizer step, accumulated batches included, and
    the EMA is updated once per optimizer step."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs

    cfg, dm, module = _fit_parts(tmp_path, epochs=1, lr=None, batch_size=2, ema_warmup_steps=0)
    trainer = quiet_trainer(
        **lightning_trainer_kwargs(cfg),
        accumulate_grad_batches=2,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 1  # 4 images, batch 2, 2 batches per step
    # finetune recipe, SGD: 0.08 per 64 images x (2 images x 1 process x 2 batches) = 0.005
    base_lrs = trainer.lr_scheduler_configs[0].scheduler.base_lrs  # one per parameter group
    assert base_lrs == [pytest.approx(0.005)] * len(base_lrs)
    assert module.ema is not None and module.ema.updates == 1


def test_lightning_stops_at_a_non_finite_loss(tmp_path):
    """A batch whose loss is NaN (here: NaN pixels) stops the run with one line, before the
    step: the parameters and EMA weights are those of the last good step, no NaN was logged."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs
    from efficientdet.errors import TrainingDiverged

    cfg, dm, module = _fit_parts(tmp_path, num_train=8, epochs=1, ema_warmup_steps=0)
    poison = PoisonBatch(1)
    trainer = quiet_trainer(
        **lightning_trainer_kwargs(cfg), callbacks=[poison], enable_checkpointing=False
    )
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit(module, dm)
    msg = str(err.value)
    assert msg.startswith("epoch 1 batch 2: non-finite training loss (nan here)")
    assert "fix: " in msg and "\n" not in msg
    assert trainer.global_step == 1 and module.ema.updates == 1
    for name, p in module.model.named_parameters():
        assert torch.equal(p, poison.kept["params"][name]), name
    for key, v in module.ema.module.state_dict().items():
        assert torch.equal(v, poison.kept["ema"][key]), key
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_lightning_keeps_the_last_good_batchnorm_statistics_at_a_non_finite_loss(tmp_path):
    """The NaN batch's forward pass turns the BatchNorm running statistics to NaN before its
    loss is seen; as the trainer's rollback, the adapter puts back the last good step's, so
    what is saved after the stop (Lightning's checkpoint on the exception) and exported (our
    format, read back with load_model) holds them: finite, and not the initial ones."""
    from lightning.pytorch.callbacks import OnExceptionCheckpoint
    from torch import nn

    from efficientdet.engine.lightning import lightning_trainer_kwargs
    from efficientdet.errors import TrainingDiverged

    cfg, dm, module = _fit_parts(tmp_path, num_train=8, epochs=1, ema=False)
    initial = {k: v.clone() for k, v in module.model.named_buffers()}
    bn = next(m for m in module.model.modules() if isinstance(m, nn.BatchNorm2d))
    finite = []  # per forward pass of the first BatchNorm: its running mean after it
    bn.register_forward_hook(lambda m, i, o: finite.append(bool(m.running_mean.isfinite().all())))
    poison = PoisonBatch(1)
    on_exception = OnExceptionCheckpoint(tmp_path / "saved")
    trainer = quiet_trainer(
        **lightning_trainer_kwargs(cfg),
        callbacks=[poison, on_exception],
        limit_val_batches=0,
    )
    with pytest.raises(TrainingDiverged):
        trainer.fit(module, dm)
    assert finite == [True, False]  # the good step, then the NaN batch's forward
    kept = poison.kept["buffers"]
    assert any(not torch.equal(kept[k], initial[k]) for k in kept)  # the good step moved them

    model, _ = load_model(module.export_checkpoint(tmp_path / "model.pt"))
    exported = dict(model.named_buffers())
    assert exported.keys() == kept.keys()
    for key, value in kept.items():
        assert torch.equal(exported[key], value), key
    saved = torch.load(Path(on_exception.ckpt_path), map_location="cpu", weights_only=True)
    for key, value in kept.items():
        assert torch.equal(saved["state_dict"][f"model.{key}"], value), key


def test_lightning_stops_before_a_step_with_a_non_finite_gradient(tmp_path):
    """A finite loss with a non-finite gradient (here: one weight's gradient times inf) would
    make the clipped step write NaN into the weights; as the trainer refuses such a step, the
    adapter stops before it with one line: the parameters and BatchNorm statistics are those of
    the last good step, and the export holds them."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs
    from efficientdet.errors import TrainingDiverged

    class InfiniteGradient(L.Callback):
        """At step 1 the first weight's gradient is multiplied by inf; ``kept``: the
        parameters and buffers after the last batch before."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1:
                next(pl_module.model.parameters()).register_hook(lambda g: g * float("inf"))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.kept = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    cfg, dm, module = _fit_parts(tmp_path, num_train=8, epochs=1, ema=False)
    inf_grad = InfiniteGradient()
    trainer = quiet_trainer(
        **lightning_trainer_kwargs(cfg),
        callbacks=[inf_grad],
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit(module, dm)
    msg = str(err.value)
    assert msg.startswith("epoch 1 batch 2: non-finite gradient norm (") and "\n" not in msg
    assert "fix: " in msg and trainer.global_step == 1 and cfg.clip_grad > 0
    assert torch.isfinite(trainer.callback_metrics["train/loss"])  # the loss itself was finite
    state = module.model.state_dict()
    for key, value in inf_grad.kept.items():
        assert torch.equal(state[key], value), key
    model, _ = load_model(module.export_checkpoint(tmp_path / "model.pt"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, inf_grad.kept[key]), key


def test_lightning_keeps_the_last_steps_batchnorm_statistics_across_accumulated_batches(tmp_path):
    """With accumulate_grad_batches=2 a step is two batches: a NaN in the second stops the run
    before the step, and the BatchNorm statistics are put back to where the last applied step
    left them, not to where the first (finite, never applied) batch of this step moved them."""
    from efficientdet.engine.lightning import lightning_trainer_kwargs
    from efficientdet.errors import TrainingDiverged

    class PoisonFourthBatch(L.Callback):
        """NaN images in batch 4 (the second of step 2); ``kept``: the state after batch 2."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 3:
                batch[0].fill_(float("nan"))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                self.kept = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    cfg, dm, module = _fit_parts(tmp_path, num_train=8, epochs=1, batch_size=2, ema=False)
    poison = PoisonFourthBatch()
    trainer = quiet_trainer(
        **lightning_trainer_kwargs(cfg),
        accumulate_grad_batches=2,
        callbacks=[poison],
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    with pytest.raises(TrainingDiverged, match=r"^epoch 1 batch 4: non-finite training loss"):
        trainer.fit(module, dm)
    assert trainer.global_step == 1
    state = module.model.state_dict()
    for key, value in poison.kept.items():
        assert torch.equal(state[key], value), key


def test_lightning_surfaces_the_model_builders_notes(tmp_path, caplog):
    """What build_model tells the trainer's user (a warning about a frozen random backbone,
    the weights note) reaches the adapter's user: warnings as warnings, notes in the log."""
    import logging

    from efficientdet.engine.builders import build_model
    from efficientdet.engine.lightning import EfficientDetDataModule, EfficientDetModule

    data = write_synthetic_dataset(
        tmp_path / "data", num_train=4, num_val=1, seed=5, size=64, progress=False
    )
    cfg = tiny_config(data, freeze="backbone")
    dm = EfficientDetDataModule(cfg)
    said: list[str] = []
    build_model(tiny_config(data, freeze="backbone"), len(dm.class_names), log=said.append)
    warned = [m.removeprefix("warning: ") for m in said if m.startswith("warning: ")]
    notes = [m for m in said if not m.startswith("warning: ")]
    assert warned and notes  # the trainer's user is told both
    caplog.set_level(logging.INFO)
    with pytest.warns(UserWarning) as caught:
        EfficientDetModule(cfg, dm.class_names, dm.category_ids)
    assert [str(w.message) for w in caught] == warned
    assert [r.getMessage() for r in caplog.records if r.getMessage() in notes] == notes


def test_lightning_maps_a_checkpoints_class_layer_by_name(tmp_path):
    """``weights`` = our checkpoint whose classes are the dataset's in another order: its class
    layer is reordered to the dataset's names, as build_model does for the trainer."""
    from efficientdet.engine.builders import build_model
    from efficientdet.engine.lightning import EfficientDetModule
    from efficientdet.weights.checkpoint import read_checkpoint

    cfg, dm, _ = _fit_parts(tmp_path)
    names = dm.class_names
    path = EfficientDetModule(cfg, names[::-1]).export_checkpoint(tmp_path / "reversed.pt")
    module = EfficientDetModule(tiny_config(cfg.data, weights=str(path)), names)
    trainer_model = build_model(
        tiny_config(cfg.data, weights=str(path)), len(names), class_names=names, log=lambda _: None
    )
    saved = read_checkpoint(path)["model"]
    state = module.model.state_dict()
    assert {k for k, v in state.items() if not torch.equal(v, saved[k])}  # reordered: not as saved
    for key, value in trainer_model.state_dict().items():
        assert torch.equal(state[key], value), key
