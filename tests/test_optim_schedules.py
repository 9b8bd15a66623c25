"""Optimisers, schedules against the authors' formulas, atomic checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wssl_zoo.pretrain import checkpoint as ck
from wssl_zoo.pretrain.optim import LARS, build_optimizer, param_groups
from wssl_zoo.pretrain.schedules import WarmupCosine, WarmupCosineEpoch, WMSEStep, build_schedule, momentum_at


def test_param_groups_exclude_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    no_decay, decay = param_groups(model, 1e-4)
    assert no_decay["weight_decay"] == 0 and len(no_decay["params"]) == 3 and len(decay["params"]) == 1


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.5, momentum=0.9, eta=0.01)
    w.grad, b.grad = torch.tensor([1.0, 0.0]), torch.tensor([2.0])
    opt.step()
    g = torch.tensor([1.0, 0.0]) + 0.1 * torch.tensor([3.0, 4.0])
    trust = 0.01 * 5.0 / g.norm()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.5 * trust * g)
    torch.testing.assert_close(b.detach(), torch.tensor([0.0]))  # plain SGD: 1 - 0.5 * 2


def test_warmup_cosine_is_intls_formula():
    base, total, warm = 0.6, 100, 10
    s = WarmupCosine(base, total, warm)

    def intl(step):  # INTL main.py adjust_learning_rate
        if step < warm:
            return base * (step + 1) / warm
        step -= warm
        q = 0.5 * (1 + math.cos(math.pi * (step + 1) / (total - warm)))
        return base * q + base * 0.001 * (1 - q)

    for step in (0, 5, 9, 10, 50, 99):
        assert s.lr_at(step) == pytest.approx(intl(step), abs=0)
    assert s.lr_at(99) == pytest.approx(base * 0.001)


def test_cwrgp_epoch_cosine_and_wmse_step():
    s = WarmupCosineEpoch(0.1, epochs=10, steps_per_epoch=5, warmup_steps=7)
    assert s.lr_at(0) == pytest.approx(0.1 / 7) and s.lr_at(6) == pytest.approx(0.1)
    # CW-RGP sets the cosine at each epoch start and the warm-up overwrites it step by step, so the
    # rest of the epoch in which warm-up ends keeps the last warm-up value
    assert s.lr_at(7) == pytest.approx(0.1) and s.lr_at(9) == pytest.approx(0.1)
    assert s.lr_at(10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 2 / 10)))
    w = WMSEStep(1e-3, epochs=100, steps_per_epoch=10, warmup_steps=500)
    assert w.lr_at(0) == pytest.approx(1e-3 / 500) and w.lr_at(499) == pytest.approx(1e-3)
    assert w.lr_at(50 * 10) == pytest.approx(2e-4)  # milestone epoch 100 - 50
    assert w.lr_at(75 * 10) == pytest.approx(4e-5)  # milestone epoch 100 - 25
    assert WMSEStep(1e-3, epochs=2, steps_per_epoch=10, warmup_steps=0).lr_at(15) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule("linear")


def test_momentum_schedule():
    assert momentum_at(0, 10, 0.996) == pytest.approx(0.996) and momentum_at(10, 10, 0.996) == pytest.approx(1.0)


def test_atomic_save_survives_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    ck.atomic_save({"a": torch.ones(2)}, path)

    def broken(fd):
        raise OSError("disk full")

    import wssl_zoo.modelio as modelio

    monkeypatch.setattr(modelio.os, "fsync", broken)  # the crash comes after the bytes were written
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_checkpoint_round_trip_continues_bit_identically(tmp_path):
    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        return model, build_optimizer("lars", model, lr=0.1, weight_decay=1e-4)

    data = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(6)]

    def train(model, opt, batches):
        for x in batches:
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()

    m1, o1 = make()
    train(m1, o1, data)
    m2, o2 = make()
    train(m2, o2, data[:3])
    ck.save_checkpoint(tmp_path, ck.TrainState(epoch=1, step=3, model=m2.state_dict(), optimizer=o2.state_dict()))
    m3, o3 = make()
    state = ck.load_checkpoint(tmp_path)
    m3.load_state_dict(state.model)
    o3.load_state_dict(state.optimizer)
    train(m3, o3, data[3:])
    for a, b in zip(m1.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(a, b)


def test_corrupt_checkpoint_message(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"(?s)last.pt: cannot read the checkpoint .* damaged"):
        ck.load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.load_checkpoint(tmp_path / "elsewhere")
