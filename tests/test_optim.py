"""Optimisers and schedules against the authors' formulas: LARS (hand-computed steps, trust ratio, the
excluded group), parameter groups, the recipes' optimisers, warm-up cosine (INTL, CW-RGP), W-MSE's
schedule, momentum and covariance-weight schedules."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, MultiStepLR

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


def test_warmup_cosine_epoch_is_cwrgp_imagenet():
    init_lr = 0.05 * 512 / 256
    expected = cwrgp_imagenet_lrs(init_lr, epochs=8, iters=9, warmup_iters=20)
    s = WarmupCosineEpoch(init_lr, epochs=8, steps_per_epoch=9, warmup_steps=20)
    assert [s.lr_at(k) for k in range(len(expected))] == expected


def test_warmup_step_values():
    s = WarmupStep(0.4, warmup_steps=10, milestones=(50, 30), gamma=0.1)
    assert s.lr_at(0) == 0.4 * (1 / 10) and s.lr_at(9) == 0.4
    assert s.lr_at(29) == 0.4 and s.lr_at(30) == 0.4 * 0.1
    assert s.lr_at(49) == 0.4 * 0.1 and s.lr_at(50) == 0.4 * 0.1**2 and s.lr_at(10**6) == 0.4 * 0.1**2


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
