"""EMA (hand-computed updates, warm-up, state round trip), optimizer groups, LR schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from efficientdet.engine.ema import ModelEMA
from efficientdet.engine.optim import build_optimizer, build_scheduler
from efficientdet.errors import ConfigError


class One(nn.Module):
    def __init__(self, value: float = 1.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value]))
        self.register_buffer("count", torch.tensor(0, dtype=torch.long))


def test_ema_hand_computed_without_warmup():
    model = One(1.0)
    ema = ModelEMA(model, decay=0.9, warmup_steps=0)
    assert ema.module is not model and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model.w.fill_(3.0)
        model.count.fill_(7)
    ema.update(model)  # 0.9 * 1 + 0.1 * 3 = 1.2
    assert ema.module.w.item() == pytest.approx(1.2)
    assert ema.module.count.item() == 7  # integer buffers are copied
    ema.update(model)  # 0.9 * 1.2 + 0.1 * 3 = 1.38
    assert ema.module.w.item() == pytest.approx(1.38)
    assert ema.updates == 2
    assert model.w.item() == 3.0  # the model is untouched


def test_ema_warmup_ramp():
    model = One(0.0)
    ema = ModelEMA(model, decay=0.99, warmup_steps=10)
    with torch.no_grad():
        model.w.fill_(10.0)
    ema.update(model)
    d1 = 0.99 * (1 - math.exp(-1 / 10))  # 0.094200...
    assert ema.module.w.item() == pytest.approx((1 - d1) * 10.0, rel=1e-6)
    ema.update(model)
    d2 = 0.99 * (1 - math.exp(-2 / 10))
    assert ema.module.w.item() == pytest.approx(d2 * (1 - d1) * 10.0 + (1 - d2) * 10.0, rel=1e-6)
    # early decays are small, late ones approach the target decay
    assert ema.decay_at(1) < 0.1 and ema.decay_at(10) == pytest.approx(0.99 * (1 - math.exp(-1)))
    assert ema.decay_at(1000) == pytest.approx(0.99, abs=1e-12)


def test_ema_state_round_trip():
    model = One(1.0)
    ema = ModelEMA(model, decay=0.9, warmup_steps=0)
    with torch.no_grad():
        model.w.fill_(3.0)
    ema.update(model)
    state = ema.state_dict()
    fresh = ModelEMA(One(5.0), decay=0.9, warmup_steps=0)
    fresh.load_state_dict(state)
    assert fresh.updates == 1 and fresh.module.w.item() == pytest.approx(1.2)
    ema.update(model)
    fresh.update(model)
    assert fresh.module.w.item() == pytest.approx(ema.module.w.item())


def test_ema_rejects_bad_decay():
    with pytest.raises(ConfigError, match="decay"):
        ModelEMA(One(), decay=1.5)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight 4-D (decay), bias 1-D (no decay)
        self.bn = nn.BatchNorm2d(4)  # weight and bias 1-D (no decay)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        for p in self.frozen.parameters():
            p.requires_grad_(False)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_groups(name):
    net = Net()
    opt = build_optimizer(net, name, lr=0.1)
    wd = {}
    for group in opt.param_groups:
        for p in group["params"]:
            wd[id(p)] = group["weight_decay"]
    assert wd[id(net.conv.weight)] == 4e-5 and wd[id(net.fc.weight)] == 4e-5
    for p in (net.conv.bias, net.bn.weight, net.bn.bias, net.fc.bias):
        assert wd[id(p)] == 0.0
    assert id(net.frozen.weight) not in wd and id(net.frozen.bias) not in wd
    assert len(wd) == 6
    assert isinstance(opt, torch.optim.SGD if name == "sgd" else torch.optim.AdamW)
    if name == "sgd":
        assert all(g["momentum"] == 0.9 for g in opt.param_groups)


def test_optimizer_errors():
    with pytest.raises(ConfigError, match="adam"):
        build_optimizer(Net(), "lamb", lr=0.1)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="frozen"):
        build_optimizer(frozen, "sgd", lr=0.1)


def _lrs(total, warmup, start, min_ratio, base=1.0):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = build_scheduler(opt, total, warmup, start, min_ratio)
    out = []
    for _ in range(total + 2):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_scheduler_warmup_then_cosine():
    lrs = _lrs(total=10, warmup=2, start=0.1, min_ratio=0.0, base=2.0)
    # warm-up: 2 * (0.1 + 0.9 * k / 2) for k = 0, 1
    assert lrs[0] == pytest.approx(0.2) and lrs[1] == pytest.approx(1.1)
    # cosine over 8 steps: k=2 -> 2.0, k=4 -> 2 * 0.5 * (1 + cos(pi/4)), k=6 -> 1.0 (half way), k=10 -> 0
    assert lrs[2] == pytest.approx(2.0)
    assert lrs[4] == pytest.approx(1.0 + math.sqrt(0.5))
    assert lrs[6] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12) and lrs[11] == pytest.approx(0.0, abs=1e-12)
    lrs = _lrs(total=10, warmup=0, start=0.1, min_ratio=0.1)
    assert (
        lrs[0] == pytest.approx(1.0)
        and lrs[5] == pytest.approx(0.55)
        and lrs[10] == pytest.approx(0.1)
    )


def test_scheduler_state_round_trip(tmp_path):
    def make():
        p = nn.Parameter(torch.zeros(2))
        opt = build_optimizer(nn.ParameterList([p]), "sgd", lr=1.0)
        return p, opt, build_scheduler(opt, 20, 5, 0.1, 0.05)

    p, opt, sched = make()
    for _ in range(7):
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    path = tmp_path / "s.pt"
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    _, opt2, sched2 = make()
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    for _ in range(5):
        sched.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    with pytest.raises(ConfigError, match="warmup"):
        build_scheduler(opt, 10, 11)
