"""torchrun target of tests/test_train_lightning.py, and the fit it compares against:
a Lightning fit of the adapter on ``DATA`` (lite0 at 64x64, no augmentation, every BatchNorm
in eval mode, no validation); rank 0 saves the initial and trained (raw) weights and the last logged
``train/loss`` to ``OUT`` (``torch.save``). With ``POISON_RANK``, that rank's second step gets
NaN images: every rank that stops with TrainingDiverged saves its message and step to
``OUT.rankR``. Also the config, Trainer and NaN injection the adapter tests start from
(:func:`tiny_config`, :func:`quiet_trainer`, :class:`PoisonBatch`)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L


def tiny_config(data, **overrides):
    """The adapter tests' TrainConfig: lite0 at 64x64, batch 4, lr 0.01, no loader workers,
    with ``overrides``."""
    from efficientdet.engine.config import TrainConfig

    fields = dict(model="lite0", image_size=64, batch_size=4, lr=0.01, workers=0)
    return TrainConfig(data=str(data), **{**fields, **overrides})


def quiet_trainer(**overrides):
    """An ``L.Trainer`` on one CPU with no logger, progress bar or model summary, with
    ``overrides``."""
    fields = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**fields, **overrides})


class PoisonBatch(L.Callback):
    """Fills the images of the training batch at step ``step`` on rank ``rank`` with NaN;
    ``kept``: the parameters, buffers (BatchNorm statistics) and EMA weights (None without
    EMA) after the last batch before."""

    def __init__(self, step: int, rank: int = 0) -> None:
        self.step, self.rank, self.kept = step, rank, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            batch[0].fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ema = pl_module.ema
        self.kept = {
            "params": {n: p.detach().clone() for n, p in pl_module.model.named_parameters()},
            "buffers": {n: b.detach().clone() for n, b in pl_module.model.named_buffers()},
            "ema": {k: v.clone() for k, v in ema.module.state_dict().items()} if ema else None,
        }


def fit(data: str, out: Path, batch: int, devices: int, poison_rank: int | None = None) -> None:
    import torch

    from efficientdet.engine.lightning import EfficientDetDataModule, EfficientDetModule
    from efficientdet.errors import TrainingDiverged

    cfg = tiny_config(
        data,
        batch_size=batch,
        epochs=2,
        ema=False,
        scale_min=1.0,
        scale_max=1.0,
        flip_prob=0.0,
        freeze_bn=True,
        seed=0,
    )
    L.seed_everything(0, verbose=False)
    dm = EfficientDetDataModule(cfg)
    module = EfficientDetModule(cfg, dm.class_names, dm.category_ids)
    initial = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    trainer = quiet_trainer(
        max_epochs=cfg.epochs,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        enable_checkpointing=False,
        gradient_clip_val=cfg.clip_grad,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[] if poison_rank is None else [PoisonBatch(1, poison_rank)],
    )
    try:
        trainer.fit(module, dm)
    except TrainingDiverged as exc:
        stopped = {"error": str(exc), "global_step": trainer.global_step}
        torch.save(stopped, f"{out}.rank{trainer.global_rank}")
        return
    if trainer.is_global_zero:
        torch.save(
            {
                "initial": initial,
                "model": {k: v.detach().cpu() for k, v in module.model.state_dict().items()},
                "loss": float(trainer.callback_metrics["train/loss"]),
                "world_size": trainer.world_size,
                "global_step": trainer.global_step,
            },
            out,
        )


if __name__ == "__main__":
    poison = int(sys.argv[5]) if len(sys.argv) > 5 else None
    fit(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), poison)
