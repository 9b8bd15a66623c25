"""Optimisers (LARS by hand), schedules against the authors' training loops, atomic checkpoints,
RNG capture and bit-exact resumption."""

from __future__ import annotations

import dataclasses
import math
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, MultiStepLR

from wssl_zoo import fileio, modelio
from wssl_zoo.pretrain import checkpoint as ck
from wssl_zoo.optim import LARS, build_optimizer, param_groups
from wssl_zoo.pretrain.schedules import (
    WarmupCosine,
    WarmupCosineEpoch,
    WarmupStep,
    WMSESchedule,
    WMSEStep,
    apply_lr,
    build_schedule,
    cov_weight_at,
    momentum_at,
)

# ---------------------------------------------------------------------------- optimisers


def test_lars_two_steps_match_hand_computation():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    lr, mu, wd, eta = 0.5, 0.9, 0.1, 0.01
    opt = LARS([{"params": [w], "weight_decay": wd},
                {"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=lr, momentum=mu, eta=eta)

    # step 1: d = g + wd w = (1 + 0.3, 0 + 0.4) = (1.3, 0.4); trust = 0.01 * 5 / ||d||
    w.grad, b.grad = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    opt.step()
    d1 = [1.3, 0.4]
    t1 = eta * 5.0 / math.hypot(*d1)
    buf = [t1 * d1[0], t1 * d1[1]]
    w1 = [3.0 - lr * buf[0], 4.0 - lr * buf[1]]
    assert w.detach().flatten().tolist() == pytest.approx(w1, rel=1e-12)
    assert b.item() == pytest.approx(1.0 - lr * 2.0, rel=1e-12)  # excluded: plain SGD, no trust ratio

    # step 2: momentum buffer mu * buf + trust * d with the new weights
    w.grad, b.grad = torch.tensor([[0.0, 2.0]], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)
    opt.step()
    d2 = [0.0 + wd * w1[0], 2.0 + wd * w1[1]]
    t2 = eta * math.hypot(*w1) / math.hypot(*d2)
    buf = [mu * buf[0] + t2 * d2[0], mu * buf[1] + t2 * d2[1]]
    w2 = [w1[0] - lr * buf[0], w1[1] - lr * buf[1]]
    assert w.detach().flatten().tolist() == pytest.approx(w2, rel=1e-12)
    assert b.item() == pytest.approx(0.0 - lr * (mu * 2.0 + -1.0), rel=1e-12)


def test_lars_zero_norms_use_trust_one():
    w = nn.Parameter(torch.zeros(3))  # ||w|| = 0: the raw update is used
    opt = LARS([w], lr=0.1, momentum=0.0, weight_decay=0.0)
    w.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([-0.1, 0.2, -0.05]))
    w.grad = torch.zeros(3)  # ||d|| = 0: no NaN, no move
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([-0.1, 0.2, -0.05]))


def test_lars_excluded_group_is_exactly_sgd():
    torch.manual_seed(0)
    init = torch.randn(5)
    grads = [torch.randn(5) for _ in range(6)]
    p_lars, p_sgd = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    lars = LARS([{"params": [p_lars], "weight_decay": 1e-2, "lars_exclude": True}], lr=0.3, momentum=0.9)
    sgd = torch.optim.SGD([p_sgd], lr=0.3, momentum=0.9, weight_decay=1e-2)
    for g in grads:
        p_lars.grad, p_sgd.grad = g.clone(), g.clone()
        lars.step()
        sgd.step()
    assert torch.equal(p_lars, p_sgd)
    # the same parameter outside the excluded group moves differently (trust ratio eta*|w|/|d|)
    p_adapted = nn.Parameter(init.clone())
    adapted = LARS([p_adapted], lr=0.3, momentum=0.9, weight_decay=1e-2)
    p_adapted.grad = grads[0].clone()
    adapted.step()
    assert not torch.allclose(p_adapted, init - 0.3 * (grads[0] + 1e-2 * init))


def test_lars_validates_hyperparameters():
    p = [nn.Parameter(torch.ones(2))]
    for kwargs, word in [(dict(lr=-1.0), "lr"), (dict(lr=0.1, momentum=1.0), "momentum"),
                         (dict(lr=0.1, weight_decay=-1.0), "weight_decay"), (dict(lr=0.1, eta=0.0), "eta")]:
        with pytest.raises(ValueError, match=word):
            LARS(p, **kwargs)
    LARS(p, lr=0.0)  # INTL builds its optimiser with lr=0 and lets the schedule set it


def test_param_groups_put_norms_and_biases_in_the_no_decay_group():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4, 2), nn.LayerNorm(2))
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    model.append(frozen)
    model.register_parameter("temperature", nn.Parameter(torch.tensor(0.1)))  # 0-d: no decay either
    no_decay, decay = param_groups(model, 5e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "1.bias", "1.weight", "3.bias", "4.bias", "4.weight", "temperature"]
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "3.weight"]
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True
    assert decay["weight_decay"] == 5e-4 and "lars_exclude" not in decay
    (single,) = param_groups(model, 5e-4, exclude_bias_and_norm=False)
    assert len(single["params"]) == 8 and single["weight_decay"] == 5e-4


def test_build_optimizer_matches_the_authors():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    adam = build_optimizer("adam", model, lr=1e-3, weight_decay=1e-6)
    assert type(adam) is torch.optim.Adam  # L2 in the gradient (adam_l2), not AdamW
    assert len(adam.param_groups) == 1 and adam.param_groups[0]["weight_decay"] == 1e-6
    sgd = build_optimizer("sgd", model, lr=0.1, weight_decay=1e-4)
    assert len(sgd.param_groups) == 1 and sgd.param_groups[0]["momentum"] == 0.9  # CW-RGP ImageNet
    sgd = build_optimizer("sgd", model, lr=0.1, weight_decay=1e-5, exclude_bias_and_norm=True)  # INTL
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.0, 1e-5]
    lars = build_optimizer("lars", model, lr=0.1, weight_decay=1e-6, eta=0.02)
    assert isinstance(lars, LARS) and [g["lars_exclude"] for g in lars.param_groups] == [True, False]
    assert lars.param_groups[1]["eta"] == 0.02
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamw'.*adam, sgd, lars"):
        build_optimizer("adamw", model, lr=0.1, weight_decay=0.0)


# ---------------------------------------------------------------------------- schedules


def intl_lr(base_lr, total_steps, warmup_steps, step):
    """INTL main.py adjust_learning_rate, as written there."""
    if step < warmup_steps:
        lr = base_lr * (step + 1) / warmup_steps
    else:
        step -= warmup_steps
        max_steps = total_steps - warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * (step + 1) / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    return lr


def test_warmup_cosine_is_intls_formula():
    base, total, warm = 0.5 * 512 / 256, 1000, 100
    s = WarmupCosine(base, total, warm)
    for step in (0, 1, warm - 1, warm, warm + (total - warm) // 2 - 1, total - 2, total - 1):
        assert s.lr_at(step) == intl_lr(base, total, warm, step)
    assert s.lr_at(0) == base / warm
    assert s.lr_at(warm - 1) == base  # end of warm-up: the peak
    assert s.lr_at(warm + (total - warm) // 2 - 1) == pytest.approx((base + base * 0.001) / 2)
    assert s.lr_at(total - 1) == base * 0.001  # last step: cos(pi) = -1 exactly
    assert WarmupCosine(base, total, 0).lr_at(0) == intl_lr(base, total, 0, 0)


def cwrgp_imagenet_lrs(init_lr, epochs, iters, warmup_iters):
    """CW-RGP ImageNet/train.py: adjust_learning_rate per epoch, lr_warmup per iteration."""
    group = {"lr": 0.0}
    lrs = []
    for epoch in range(epochs):
        group["lr"] = init_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        for i in range(iters):
            step = i + epoch * iters
            if step < warmup_iters:
                group["lr"] = init_lr * ((step + 1) / warmup_iters)
            lrs.append(group["lr"])
    return lrs


def test_warmup_cosine_epoch_is_cwrgp_imagenet():
    init_lr = 0.05 * 512 / 256
    expected = cwrgp_imagenet_lrs(init_lr, epochs=8, iters=9, warmup_iters=20)
    s = WarmupCosineEpoch(init_lr, epochs=8, steps_per_epoch=9, warmup_steps=20)
    assert [s.lr_at(k) for k in range(len(expected))] == expected


def wmse_lrs(lr, epochs, iters, warmup, lr_step, drop=(50, 25), drop_gamma=0.2, T0=None, Tmult=1, eta_min=0.0):
    """W-MSE train.py's loop with torch's own schedulers; the hard-coded 500 warm-up iterations
    are ``warmup`` here (0 = --no_lr_warmup). Returns the lr of every optimiser step."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([param], lr=lr, weight_decay=1e-6)
    if lr_step == "cos":
        scheduler = CosineAnnealingWarmRestarts(optimizer, T_0=epochs if T0 is None else T0, T_mult=Tmult,
                                                eta_min=eta_min)
    elif lr_step == "step":
        scheduler = MultiStepLR(optimizer, milestones=[epochs - a for a in drop], gamma=drop_gamma)
    lr_warmup = 0 if warmup else 500
    total = 500 if not warmup else warmup
    lrs = []
    for ep in range(epochs):
        for n_iter in range(iters):
            if lr_warmup < total:
                lr_scale = (lr_warmup + 1) / total
                for pg in optimizer.param_groups:
                    pg["lr"] = lr * lr_scale
                lr_warmup += 1
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()  # no gradient: a no-op that keeps the scheduler's order check quiet
            if lr_step == "cos" and lr_warmup >= total:
                scheduler.step(ep + n_iter / iters)
        if lr_step == "step":
            scheduler.step()
    return lrs


@pytest.mark.parametrize("config", [
    dict(epochs=200, iters=7, warmup=500, lr_step="step"),  # the paper's drops at 150 and 175
    dict(epochs=12, iters=5, warmup=20, lr_step="step", drop=(10, 3)),  # a drop inside the warm-up is lost
    dict(epochs=6, iters=4, warmup=0, lr_step="step", drop=(6, 2, 2, 9)),  # epoch-0 and repeated milestones
    dict(epochs=10, iters=6, warmup=15, lr_step="cos"),
    dict(epochs=10, iters=6, warmup=0, lr_step="cos", T0=2, Tmult=2, eta_min=1e-5),
    dict(epochs=9, iters=5, warmup=7, lr_step="cos", T0=3, Tmult=1),
    dict(epochs=4, iters=5, warmup=7, lr_step="none"),
], ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_wmse_schedule_reproduces_the_training_loop(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = wmse_lrs(3e-3, **config)
    cfg = dict(config)
    s = WMSESchedule(3e-3, epochs=cfg.pop("epochs"), steps_per_epoch=cfg.pop("iters"),
                     warmup_steps=cfg.pop("warmup"), lr_step=cfg.pop("lr_step"),
                     drops=cfg.pop("drop", (50, 25)), **cfg)
    got = [s.lr_at(k) for k in range(len(expected))]
    assert got == expected  # exact: same operations in the same order


def test_wmse_schedule_named_values():
    s = build_schedule("wmse", base_lr=1e-3, epochs=200, steps_per_epoch=100, warmup_steps=500,
                       drops=(50, 25), gamma=0.2)
    assert s.lr_at(0) == 1e-3 * (1 / 500)  # warm-up start
    assert s.lr_at(499) == 1e-3  # end of warm-up
    assert s.lr_at(150 * 100 - 1) == 1e-3 and s.lr_at(150 * 100) == 1e-3 * 0.2
    assert s.lr_at(175 * 100) == 1e-3 * 0.2 * 0.2 and s.lr_at(200 * 100 - 1) == 1e-3 * 0.2 * 0.2


def test_wmse_step_is_the_wmse_schedule_and_ignores_milestones_before_the_run():
    assert build_schedule("wmse", base_lr=1.0, epochs=2, steps_per_epoch=10).__class__ is WMSEStep
    # drops (50, 25) with 2 epochs give milestones -48 and -23: never reached, the lr stays put
    assert WMSEStep(1e-3, epochs=2, steps_per_epoch=10, warmup_steps=0).lr_at(15) == 1e-3


def test_warmup_step_values():
    s = WarmupStep(0.4, warmup_steps=10, milestones=(50, 30), gamma=0.1)
    assert s.lr_at(0) == 0.4 * (1 / 10) and s.lr_at(9) == 0.4
    assert s.lr_at(29) == 0.4 and s.lr_at(30) == 0.4 * 0.1
    assert s.lr_at(49) == 0.4 * 0.1 and s.lr_at(50) == 0.4 * 0.1**2 and s.lr_at(10**6) == 0.4 * 0.1**2


def test_schedules_are_frozen_and_validated():
    s = WarmupCosine(0.1, 100, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.base_lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="step must be >= 0"):
        s.lr_at(-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(0.1, 100, -1)
    assert WarmupCosine(0.1, 3, 6).lr_at(2) == 0.1 * 3 / 6  # a run shorter than its warm-up
    with pytest.raises(ValueError, match="lr_step"):
        WMSESchedule(1e-3, epochs=10, steps_per_epoch=5, lr_step="linear")
    with pytest.raises(ValueError, match=r"unknown schedule 'linear'.*warmup_cosine"):
        build_schedule("linear")
    with pytest.raises(ValueError, match=r"'warmup_cosine': unknown argument\(s\) \['epochs'\]"):
        build_schedule("warmup_cosine", base_lr=0.1, total_steps=10, warmup_steps=1, epochs=3)
    with pytest.raises(ValueError, match=r"missing argument\(s\) \['total_steps'\]"):
        build_schedule("warmup_cosine", base_lr=0.1, warmup_steps=1)


def test_apply_lr_respects_lr_scale():
    a, b = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_scale": 0.1}], lr=1.0)
    apply_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5 * 0.1]


def test_momentum_schedule_is_intls():
    total, base = 1000, 0.996
    for step in (0, 1, 500, 999, 1000):
        assert momentum_at(step, total, base) == 1.0 - 0.5 * (1.0 + math.cos(math.pi * step / total)) * (1.0 - base)
    assert momentum_at(0, total, base) == pytest.approx(base, abs=1e-15)
    assert momentum_at(total, total, base) == 1.0
    assert momentum_at(500, total, base) == pytest.approx((1 + base) / 2)


def test_cov_weight_switches_off_at_the_stop_epoch():
    assert cov_weight_at(0, 0.005, 50) == 0.005 and cov_weight_at(49, 0.005, 50) == 0.005
    assert cov_weight_at(50, 0.005, 50) == 0.0 and cov_weight_at(99, 0.005, 50) == 0.0
    assert cov_weight_at(99, 0.005, None) == 0.005
    # the authors zero it in model.step(epoch) after each optimiser step: step 0 of epoch 50 keeps it
    assert cov_weight_at(50, 0.005, 50, step_in_epoch=0) == 0.005
    assert cov_weight_at(50, 0.005, 50, step_in_epoch=1) == 0.0
    assert cov_weight_at(51, 0.005, 50, step_in_epoch=0) == 0.0


# ---------------------------------------------------------------------------- atomic files


def test_atomic_save_survives_a_crash_midway(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    ck.atomic_save({"a": torch.ones(4)}, path)
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")  # bytes reach the temporary file, then the crash
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        ck.atomic_save({"a": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ck.atomic_save({"a": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)  # the crash comes after all bytes were written
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_save({"a": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    ck.atomic_save({"a": torch.zeros(4)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(4))


def test_atomic_save_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = ck.os.fsync, ck.os.replace
    monkeypatch.setattr(ck.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(ck.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    ck.atomic_save({"a": torch.ones(1)}, tmp_path / "x.pt")
    assert events == ["fsync", "replace", "fsync"]


def test_atomic_write_text_and_bytes(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "config.json"
    fileio.atomic_write_text(path, '{"lr": 0.5}\n')
    assert path.read_text() == '{"lr": 0.5}\n'

    def no_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(ck.os, "replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        fileio.atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_text() == '{"lr": 0.5}\n' and [p.name for p in path.parent.iterdir()] == ["config.json"]
    fileio.atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


# ---------------------------------------------------------------------------- RNG and resumption


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    state = ck.capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.randn(2))
    ck.atomic_save(state, tmp_path / "rng.pt")
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    ck.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), random.random(), np.random.randn(2))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])
    with pytest.raises(ValueError, match="unknown part"):
        ck.restore_rng_state({"jax": 0})


def _make_run(optimizer_name: str, seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    opt = build_optimizer(optimizer_name, model, lr=0.0, weight_decay=1e-4, exclude_bias_and_norm=True)
    return model, opt


def _train(model, opt, schedule, steps):
    """Steps whose data, dropout masks and batch order draw on torch, numpy and random."""
    for step in steps:
        x = torch.randn(12, 6) + torch.from_numpy(np.random.randn(1, 6)).float()
        order = list(range(12))
        random.shuffle(order)
        apply_lr(opt, schedule.lr_at(step))
        opt.zero_grad()
        model(x[order]).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("optimizer_name", ["sgd", "lars"])
def test_resumed_training_is_bit_identical(tmp_path, optimizer_name):
    schedule = WarmupCosine(0.2, total_steps=8, warmup_steps=2)

    def seed_all():
        torch.manual_seed(123), random.seed(123), np.random.seed(123)

    seed_all()
    straight, straight_opt = _make_run(optimizer_name, seed=0)
    _train(straight, straight_opt, schedule, range(8))

    seed_all()
    first, first_opt = _make_run(optimizer_name, seed=0)
    _train(first, first_opt, schedule, range(4))
    ck.save_checkpoint(tmp_path, ck.TrainState(epoch=1, step=4, model=first.state_dict(),
                                               optimizer=first_opt.state_dict(), rng=ck.capture_rng_state()))
    del first, first_opt

    torch.manual_seed(7), random.seed(7), np.random.seed(7)  # a fresh process: other RNG, other init
    resumed, resumed_opt = _make_run(optimizer_name, seed=99)
    state = ck.load_checkpoint(tmp_path)
    assert (state.epoch, state.step) == (1, 4)
    resumed.load_state_dict(state.model)
    resumed_opt.load_state_dict(state.optimizer)
    ck.restore_rng_state(state.rng)
    _train(resumed, resumed_opt, schedule, range(state.step, 8))

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight_opt.state.values(), resumed_opt.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_lars_state_dict_round_trip(tmp_path):
    model, opt = _make_run("lars", seed=0)
    _train(model, opt, WarmupCosine(0.1, 4, 1), range(2))
    ck.atomic_save(opt.state_dict(), tmp_path / "opt.pt")
    _, fresh = _make_run("lars", seed=1)
    fresh.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert [g["lars_exclude"] for g in fresh.param_groups] == [True, False]
    assert fresh.param_groups[1]["eta"] == 0.001 and len(fresh.state) == len(opt.state)


# ---------------------------------------------------------------------------- checkpoint files


def _state(step: int, **extra) -> ck.TrainState:
    return ck.TrainState(epoch=step, step=step, model={"w": torch.full((2,), float(step))}, optimizer={},
                         extra=extra)


def test_keep_last_and_numbered_copies(tmp_path):
    for step in range(1, 5):
        ck.save_checkpoint(tmp_path, _state(step), keep_last=3, numbered_every=2)
    ck.save_checkpoint(tmp_path, _state(4, step_in_epoch=3), keep_last=3, numbered_every=2)  # mid-epoch
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0002.pt", "epoch_0004.pt", "last.1.pt",
                                                        "last.2.pt", "last.pt"]
    steps = {p.name: ck.load_checkpoint(p).step for p in folder.iterdir()}
    assert steps == {"last.pt": 4, "last.1.pt": 4, "last.2.pt": 3, "epoch_0002.pt": 2, "epoch_0004.pt": 4}
    assert ck.load_checkpoint(folder / "last.pt").extra == {"step_in_epoch": 3}
    assert ck.load_checkpoint(folder / "epoch_0004.pt").extra == {}  # the numbered copy is the epoch end
    assert ck.load_checkpoint(folder).step == 4  # the checkpoints folder itself works too
    with pytest.raises(ValueError, match="keep_last"):
        ck.save_checkpoint(tmp_path, _state(5), keep_last=0)


def test_damaged_checkpoint_names_the_file_and_the_previous_one(tmp_path):
    ck.save_checkpoint(tmp_path, _state(1), keep_last=2)
    ck.save_checkpoint(tmp_path, _state(2), keep_last=2)
    last = tmp_path / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"(?s)last\.pt: cannot read the checkpoint .*damaged.*last\.1\.pt") as err:
        ck.load_checkpoint(tmp_path)
    assert str(last) in str(err.value)
    assert ck.load_checkpoint(tmp_path / "checkpoints" / "last.1.pt").step == 1

    lone = tmp_path / "other" / "checkpoints" / "last.pt"
    lone.parent.mkdir(parents=True)
    lone.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"(?s)damaged.*no earlier checkpoint exists"):
        ck.load_checkpoint(tmp_path / "other")
    lone.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        ck.load_checkpoint(lone)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nowhere.checkpoints.last\.pt"):
        ck.load_checkpoint(tmp_path / "nowhere")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"foreign\.pt: not a wssl-zoo checkpoint \(missing \['epoch'"):
        ck.load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"epoch": np.int64(3)}, tmp_path / "numpy.pt")
    with pytest.raises(ValueError, match=r"numpy\.pt: holds Python objects.*weights_only=False"):
        ck.load_checkpoint(tmp_path / "numpy.pt")


def test_is_finite_state_flags_nan_weights_and_buffers():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert ck.is_finite_state(model)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    model[1].running_var[1] = float("inf")
    assert not ck.is_finite_state(model)
    assert ck.non_finite_tensors(model) == ["0.weight", "1.running_var"]
    assert ck.is_finite_state({"n": torch.tensor(3), "w": torch.ones(2)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_non_finite_tensors_is_exact_where_the_fast_sum_overflows(dtype):
    """The check sums each tensor first: finite values whose sum overflows (float16's 65504, or
    float32's 3.4e38) are finite, NaN and Inf are found wherever they are, -Inf beside +Inf too."""
    big = torch.finfo(dtype).max
    state = {"huge": torch.full((64,), big, dtype=dtype), "mixed": torch.tensor([big, -big, big], dtype=dtype),
             "ok": torch.randn(5).to(dtype), "count": torch.tensor(7)}
    assert modelio.non_finite_tensors(state) == []
    assert modelio.non_finite_tensors({"w": torch.full((3,), 1e300, dtype=torch.float64)}) == []  # past float32
    for key, value in (("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf"))):
        bad = torch.randn(10).to(dtype)
        bad[3] = value
        state[key] = bad
    both = torch.zeros(4, dtype=dtype)
    both[0], both[1] = float("inf"), float("-inf")  # the sum is NaN, not Inf
    state["both"] = both
    assert modelio.non_finite_tensors(state) == ["nan", "inf", "-inf", "both"]
    assert ck.non_finite_tensors is modelio.non_finite_tensors  # one rule for saving, loading and checkpoints
