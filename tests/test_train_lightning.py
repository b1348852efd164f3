"""Lightning adapter: a short fit trains, validates with COCO mAP and exports our checkpoint."""

from __future__ import annotations

import pytest
import torch

L = pytest.importorskip("lightning", reason="lightning not installed")

from efficientdet.data.synth import CLASS_NAMES, write_synthetic_dataset  # noqa: E402
from efficientdet.engine.trainer import TrainConfig  # noqa: E402
from efficientdet.factory import load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_lightning_short_fit(tmp_path):
    from efficientdet.engine.lightning import EfficientDetDataModule, EfficientDetModule

    data = write_synthetic_dataset(
        tmp_path / "data", num_train=8, num_val=4, seed=5, size=96, progress=False
    )
    cfg = TrainConfig(
        data=str(data),
        model="lite0",
        image_size=64,
        batch_size=4,
        lr=0.01,
        workers=0,
        ema_warmup_steps=2,
        epochs=2,
    )
    dm = EfficientDetDataModule(cfg)
    module = EfficientDetModule(cfg, dm.class_names, dm.category_ids)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
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
