"""The CUDA paths (issue #16): mixed-precision training steps (bf16, fp16 + GradScaler),
channels_last, the trainer end to end on a GPU, SyncBatchNorm + DDP over NCCL, the half-precision
and compiled Detector, ONNX Runtime's GPU providers (where installed).

Every test is marked ``cuda`` and skips only when CUDA is absent. ``EFFICIENTDET_CUDA_TEST_DEVICE=cpu``
runs the tests that mean something on a CPU there (autocast bf16/fp16, channels_last, the bf16
Detector) so that ``benchmarks/gpu_suite.sh --dry-run`` checks this file on a machine without a
GPU; the CUDA-only ones (GradScaler, NCCL, fp16 Detector, compile) still skip there.

Truth: a float64 run of the same step on the CPU (training numerics), the float32 run (detections,
trainer losses), the PyTorch outputs (ONNX Runtime providers). Tolerances are relative and sized
for bf16 (8-bit mantissa), fp16 and TF32 convolutions (cuDNN's float32 default on Ampere and later).
"""

from __future__ import annotations

import copy
import csv
import os
from pathlib import Path

import pytest
import torch

from efficientdet import Detector, create_model
from efficientdet.detection.boxes import box_iou
from efficientdet.detection.loss import DetectionLoss
from efficientdet.weights import load_weights

from .data_factory import tiny_train_config
from .reference import load_reference, reference_state_dict

DEVICE = os.environ.get("EFFICIENTDET_CUDA_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")
needs_cuda = pytest.mark.skipif(
    not (ON_CUDA and torch.cuda.is_available()), reason="CUDA not available"
)
pytestmark = [
    pytest.mark.cuda,
    needs_cuda if ON_CUDA else pytest.mark.usefixtures("one_torch_thread"),
]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def lite0_weights():
    """Lite0's effdet fixture weights (90 classes): well-conditioned, unlike a random start."""
    return reference_state_dict(load_reference("effdet_lite0_192x320"))


def _lite0(weights, image_size):
    model = create_model("efficientdet_lite0", image_size=image_size)
    load_weights(model, weights)
    return model


# ----------------------------------------------------------------------------- training numerics

HW = (128, 128)
TARGETS = [
    {
        "boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [30.0, 5.0, 120.0, 50.0]]),
        "labels": torch.tensor([1, 4]),
    },
    {"boxes": torch.tensor([[64.0, 64.0, 127.0, 100.0]]), "labels": torch.tensor([17])},
]


def _step(model, device, amp: str | None = None, channels_last: bool = False, dtype=torch.float32):
    """One training step's forward + loss + backward as the trainer does it (autocast around the
    network, the loss in float32). Returns (loss, gradients of the two prediction layers).

    No loss scale for fp16: this loss's gradients are far above fp16's subnormal range (the
    GradScaler's overflow handling has its own test). Only the prediction layers' gradients
    are compared: deeper ones pass back through train-mode batch norms over a handful of
    values (P6, P7 at 128x128), where rounding differences are amplified in any precision."""
    model = copy.deepcopy(model).to(device, dtype).train()
    x = (torch.rand(2, 3, *HW, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(
        device, dtype
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    targets = [{k: v.to(device) for k, v in t.items()} for t in TARGETS]
    torch.manual_seed(5)  # drop path draws the same numbers in every variant
    with torch.autocast(
        torch.device(device).type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp is not None
    ):
        class_out, box_out = model(x)
    loss = DetectionLoss(model.config.anchors, None, model.config.num_classes)(
        class_out, box_out, targets, HW
    )["loss"]
    loss.backward()
    grads = torch.cat(
        [
            p.grad.detach().double().flatten().cpu()
            for n, p in model.named_parameters()
            if n.startswith(("class_net.predict", "box_net.predict"))
        ]
    )
    return float(loss.detach()), grads


@pytest.fixture(scope="module")
def float64_step(lite0_weights):
    return _step(_lite0(lite0_weights, HW), "cpu", dtype=torch.float64)


@pytest.mark.parametrize(
    "variant, loss_tol, min_cos",
    [
        ("fp32", 1e-2, 0.99),  # cuDNN convolutions in TF32 (10-bit mantissa, as fp16) on the GPU
        ("fp32-channels_last", 1e-2, 0.99),
        ("bf16", 3e-2, 0.98),
        ("fp16", 1e-2, 0.99),
    ],
)
def test_training_step_precision_agrees_with_float64(
    lite0_weights, float64_step, variant, loss_tol, min_cos
):
    amp = variant if variant in AMP_DTYPES else None
    loss, grads = _step(
        _lite0(lite0_weights, HW), DEVICE, amp=amp, channels_last=variant.endswith("channels_last")
    )
    ref_loss, ref_grads = float64_step
    assert torch.isfinite(grads).all()
    assert abs(loss - ref_loss) <= loss_tol * abs(ref_loss), (loss, ref_loss)
    cos = float(torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0))
    assert cos >= min_cos, (
        f"{variant}: head gradients point elsewhere (cosine {cos:.4f} to float64)"
    )


# ----------------------------------------------------------------------------- the trainer on the GPU


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from efficientdet.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(
        root / "data", num_train=8, num_val=4, seed=3, size=96, progress=False
    )


def _epoch_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "results.csv", newline="") as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def fp32_run(synth, tmp_path_factory):
    from efficientdet.engine.trainer import train

    result = train(
        tiny_train_config(
            synth, tmp_path_factory.mktemp("runs") / "fp32", device=DEVICE, plots=False
        )
    )
    return result


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_trainer_mixed_precision_channels_last_tracks_fp32(synth, fp32_run, tmp_path, amp):
    """`efficientdet train --amp X --channels-last` on the GPU: same losses as float32 within
    a few percent, no skipped step, the GradScaler state saved for fp16 (exact resume)."""
    if amp == "fp16" and not ON_CUDA:
        pytest.skip("CUDA not available (fp16 training needs CUDA)")
    from efficientdet.engine.checkpoint import load_checkpoint
    from efficientdet.engine.trainer import train

    result = train(
        tiny_train_config(
            synth, tmp_path / amp, device=DEVICE, amp=amp, channels_last=True, plots=False
        )
    )
    assert result.stopped == "completed"
    assert [row["skipped_steps"] for row in result.history] == [0, 0]
    ours, ref = _epoch_losses(result.run_dir), _epoch_losses(fp32_run.run_dir)
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref, strict=True):
        assert abs(a - b) <= 0.05 * abs(b), (ours, ref)
    state = load_checkpoint(result.run_dir / "last.pt")["train_state"]
    if amp == "fp16":
        assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    else:
        assert state["scaler"] is None


@needs_cuda
def test_grad_scaler_skips_an_overflowing_fp16_step(synth, tmp_path):
    """An fp16 step whose scaled gradients overflow leaves the weights untouched and halves the
    loss scale; the next step trains again (no divergence stop, no NaN in the weights)."""
    from efficientdet.engine.trainer import Trainer

    trainer = Trainer(
        tiny_train_config(
            synth, tmp_path / "run", device=DEVICE, amp="fp16", ema=False, plots=False
        )
    )
    trainer.setup()
    trainer._log_file.close()  # train.log is not needed here
    trainer._log_file = None
    images, targets = next(iter(trainer._make_loader(0)))
    real_loss = trainer.loss_fn

    def overflowing_loss(*args, **kwargs):  # finite in float32, inf once multiplied by the scale
        out = dict(real_loss(*args, **kwargs))
        out["loss"] = out["loss"] * 1e35
        return out

    params = lambda: [p.detach().clone() for p in trainer.model.parameters()]  # noqa: E731
    before, scale = params(), trainer.scaler.get_scale()
    trainer.loss_fn = overflowing_loss
    trainer._train_step(images, targets)
    assert all(torch.equal(a, b) for a, b in zip(before, params(), strict=True)), (
        "an overflowing step changed the weights"
    )
    assert trainer.scaler.get_scale() == scale / 2
    trainer.loss_fn = real_loss
    out = trainer._train_step(images, targets)
    assert out is not None and torch.isfinite(torch.tensor(out["loss"]))
    after = params()
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)), (
        "the next step did not train"
    )
    assert all(torch.isfinite(p).all() for p in after)


@needs_cuda
def test_sync_batchnorm_and_ddp_over_nccl(lite0_weights, tmp_path):
    """The trainer's multi-GPU wrapping (SyncBatchNorm conversion, DDP, NCCL) in a one-process
    group: every BatchNorm is converted, and the step gives the plain model's loss and gradients."""
    import torch.distributed as dist
    from torch import nn

    device = torch.device(DEVICE)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        plain = _lite0(lite0_weights, HW).to(device)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
        assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn > 0
        assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
        ddp = nn.parallel.DistributedDataParallel(synced, device_ids=[device.index])
        results = []
        for net, params in ((plain, plain), (ddp, synced)):
            net.train()
            x = (torch.rand(2, 3, *HW, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(
                device
            )
            targets = [{k: v.to(device) for k, v in t.items()} for t in TARGETS]
            torch.manual_seed(5)
            class_out, box_out = net(x)
            loss = DetectionLoss(plain.config.anchors, None, 90)(class_out, box_out, targets, HW)[
                "loss"
            ]
            loss.backward()
            results.append(
                (
                    loss.detach(),
                    torch.cat(
                        [p.grad.flatten() for p in params.parameters() if p.grad is not None]
                    ),
                )
            )
        (loss_a, grad_a), (loss_b, grad_b) = results
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=0)
        assert float((grad_b - grad_a).norm() / grad_a.norm()) < 1e-3
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- inference


def assert_same_detections(
    ref: dict, got: dict, strong: float, score_tol: float, min_iou: float
) -> None:
    """Order-insensitive: every detection scoring >= ``strong`` in either set has a partner in the
    other with the same class, IoU >= ``min_iou`` and a score within ``score_tol``."""
    for a, b in ((ref, got), (got, ref)):
        keep = a["scores"] >= strong
        assert int(keep.sum()) > 0, "no strong detection to compare"
        iou = box_iou(a["boxes"][keep].float(), b["boxes"].float())
        for i, (label, score) in enumerate(
            zip(a["labels"][keep], a["scores"][keep].float(), strict=True)
        ):
            ok = (
                (b["labels"] == label)
                & (iou[i] >= min_iou)
                & ((b["scores"].float() - score).abs() <= score_tol)
            )
            assert bool(ok.any()), (
                f"class {int(label)} score {float(score):.3f} box {a['boxes'][keep][i].tolist()} has no partner"
            )


@pytest.fixture(scope="module")
def detector_model(lite0_weights):
    return _lite0(lite0_weights, (192, 320)).eval()


def _detect(detector: Detector, images: torch.Tensor) -> list[dict]:
    """Detections of a normalised batch (the fixture's input: its logits spread as a trained
    model's do, so the kept set is not cut by max_det among near-equal scores)."""
    batch = images.to(detector.device, detector.dtype)
    if detector.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    n, _, h, w = images.shape
    return detector.detect_batch(batch, torch.ones(n), [(h, w)] * n)


def _rel(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """||got - ref|| / ||ref|| over all pyramid levels."""
    diff = torch.cat(
        [(g.float().cpu() - r.float().cpu()).flatten() for g, r in zip(got, ref, strict=True)]
    )
    return float(diff.norm() / torch.cat([r.float().cpu().flatten() for r in ref]).norm())


def test_half_precision_detector_matches_float32(detector_model):
    """``Detector(half=True)``: fp16 on CUDA (bf16 on the CPU) gives float32's head outputs within
    the format's rounding, and float32 detections on the host. (The fixture weights score
    thousands of boxes near 1.0, so the kept top-100 is decided by rounding: detections are
    compared where it is not, in the compile test.)"""
    x = load_reference("effdet_lite0_192x320")["input"]
    full = Detector(model=detector_model, device=DEVICE, conf=0.2)
    half = Detector(model=detector_model, device=DEVICE, conf=0.2, half=True)
    assert half.dtype == (torch.float16 if ON_CUDA else torch.bfloat16)
    ref_cls, ref_box = full.raw(x.to(full.device))
    cls, box = half.raw(x.to(half.device, half.dtype))
    assert all(t.dtype == torch.float32 for t in cls + box)
    # The whole network cast (weights too, unlike autocast): rounding compounds through ~30 layers
    # of these random-but-calibrated weights. Measured on a CPU in bf16 (8-bit mantissa): 0.28
    # (classes), 0.60 (boxes); fp16 (11-bit) should be ~8x closer. A wrong layout or a NaN gives > 1.
    tol = 0.1 if ON_CUDA else 0.75
    assert _rel(cls, ref_cls) < tol and _rel(box, ref_box) < tol, (
        _rel(cls, ref_cls),
        _rel(box, ref_box),
    )
    dets = _detect(half, x)
    assert len(dets) == 2 and all(
        d["boxes"].dtype == torch.float32
        and d["boxes"].device.type == "cpu"
        and 0 < len(d["scores"]) <= 100
        for d in dets
    )


@pytest.mark.slow
@needs_cuda
def test_compiled_detector_gives_the_eager_detections(detector_model):
    """``Detector(compile=True)`` (torch.compile, Triton kernels) on the GPU: the eager detections."""
    x = load_reference("effdet_lite0_192x320")["input"]
    eager = Detector(model=detector_model, device=DEVICE, conf=0.2)
    compiled = Detector(model=detector_model, device=DEVICE, conf=0.2, compile=True)
    ref_cls, ref_box = eager.raw(x.to(eager.device))
    cls, box = compiled.raw(x.to(compiled.device))
    assert _rel(cls, ref_cls) < 1e-3 and _rel(box, ref_box) < 1e-3  # float32 (TF32), other kernels
    for a, b in zip(_detect(eager, x), _detect(compiled, x), strict=True):
        assert_same_detections(a, b, strong=0.2, score_tol=2e-3, min_iou=0.95)


def _gpu_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return [
        p
        for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        if p in ort.get_available_providers()
    ]


# Defined only where onnxruntime-gpu is installed: nothing to run (and nothing skipped) otherwise;
# benchmarks/gpu_suite.sh records the installed providers either way.
if ON_CUDA and _gpu_providers():

    @needs_cuda
    @pytest.mark.parametrize("provider", _gpu_providers())
    def test_onnx_gpu_provider_gives_the_pytorch_outputs(detector_model, tmp_path, provider):
        import onnxruntime as ort

        from efficientdet.deploy.export import export_onnx

        path = export_onnx(detector_model, tmp_path / "lite0.onnx")
        x = torch.randn(1, 3, 192, 320, generator=torch.Generator().manual_seed(0))
        session = ort.InferenceSession(str(path), providers=[provider, "CPUExecutionProvider"])
        assert session.get_providers()[0] == provider
        cls, box = session.run(None, {"images": x.numpy()})
        from efficientdet.detection.layout import levels_to_flat

        with torch.inference_mode():
            ref_cls, ref_box = levels_to_flat(*detector_model(x), detector_model.config.num_classes)
        torch.testing.assert_close(torch.from_numpy(cls), ref_cls, atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(torch.from_numpy(box), ref_box, atol=2e-2, rtol=1e-2)
