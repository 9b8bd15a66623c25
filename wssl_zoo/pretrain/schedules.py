"""Learning-rate, EMA-momentum and loss-weight schedules as pure functions of the global step.

Every schedule is a frozen dataclass with ``lr_at(step) -> float``, ``step`` being the 0-based
index of the optimiser step about to be taken (the authors set the lr *before* each step). No
schedule keeps state, so a run resumed at step ``s`` gets exactly the value the uninterrupted
run had at ``s``. The formulas reproduce the authors' arithmetic operation for operation, so the
values are equal to the last bit, not just close:

* :class:`WarmupCosine` — INTL ``main.py`` / ``cifar/main.py`` ``adjust_learning_rate``.
* :class:`WarmupCosineEpoch` — CW-RGP ``ImageNet/train.py`` (``adjust_learning_rate`` once per
  epoch, overridden by ``lr_warmup`` during the first ``warmup_iters`` steps).
* :class:`WMSESchedule` — W-MSE ``train.py`` (htdt/self-supervised) and CW-RGP ``base/train.py``:
  ``--lr_step step`` (``MultiStepLR`` at ``epoch - d`` for ``d`` in ``--drop``), ``cos``
  (``CosineAnnealingWarmRestarts`` with ``--T0``, ``--Tmult``, ``--eta_min``) or ``none``, with
  the 500-iteration warm-up (``--no_lr_warmup`` = ``warmup_steps=0``).
* :class:`WarmupStep` — a plain linear warm-up followed by step decay at given steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

import torch

from ..encoders import momentum_at  # noqa: F401  (re-exported: INTL_M's EMA schedule lives with SSLModel)


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


@dataclass(frozen=True)
class WarmupCosine:
    """INTL's schedule, evaluated per step.

    ``lr(s) = base * (s + 1) / W`` for ``s < W``; then with ``t = s - W`` and ``T = S - W``:
    ``q = 0.5 * (1 + cos(pi * (t + 1) / T))``, ``lr = base * q + (end_lr_factor * base) * (1 - q)``,
    which reaches ``end_lr_factor * base`` at the last step ``S - 1``.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int
    end_lr_factor: float = 0.001

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"WarmupCosine: total_steps must be >= 1, got {self.total_steps}")
        # warmup_steps > total_steps is allowed (short smoke runs): every step is then warm-up,
        # as in INTL's own code.
        if self.warmup_steps < 0:
            raise ValueError(f"WarmupCosine: warmup_steps must be >= 0, got {self.warmup_steps}")

    def lr_at(self, step: int) -> float:
        _check_step(step)
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        step -= self.warmup_steps
        # INTL divides by total - warmup; a run that is all warm-up never reaches this branch
        # inside its steps, the guard only keeps step == total finite.
        max_steps = max(self.total_steps - self.warmup_steps, 1)
        q = 0.5 * (1 + math.cos(math.pi * (step + 1) / max_steps))
        end_lr = self.base_lr * self.end_lr_factor
        return self.base_lr * q + end_lr * (1 - q)


@dataclass(frozen=True)
class WarmupCosineEpoch:
    """CW-RGP ImageNet: ``lr = base * 0.5 * (1 + cos(pi * e / E))`` for the whole epoch ``e``,
    except the first ``W`` steps, where ``lr = base * ((s + 1) / W)``.

    The authors set the cosine value once at the start of each epoch and the warm-up value
    before each of the first ``W`` steps, so the rest of the epoch in which the warm-up ends
    keeps the last warm-up value, ``base * (W / W)``, until the next epoch starts.
    """

    base_lr: float
    epochs: int
    steps_per_epoch: int
    warmup_steps: int = 500

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError(
                f"WarmupCosineEpoch: epochs ({self.epochs}) and steps_per_epoch ({self.steps_per_epoch}) must be >= 1"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"WarmupCosineEpoch: warmup_steps must be >= 0, got {self.warmup_steps}")

    def lr_at(self, step: int) -> float:
        _check_step(step)
        if step < self.warmup_steps:
            return self.base_lr * ((step + 1) / self.warmup_steps)
        epoch = step // self.steps_per_epoch
        if self.warmup_steps and (self.warmup_steps - 1) // self.steps_per_epoch == epoch:
            return self.base_lr * (self.warmup_steps / self.warmup_steps)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))


@dataclass(frozen=True)
class WarmupStep:
    """Linear warm-up ``base * ((s + 1) / W)`` for ``s < W``, then ``base * gamma ** n`` with
    ``n`` the number of ``milestones`` (global steps, repeats count twice) that are ``<= s``."""

    base_lr: float
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"WarmupStep: warmup_steps must be >= 0, got {self.warmup_steps}")
        object.__setattr__(self, "milestones", tuple(sorted(int(m) for m in self.milestones)))

    def lr_at(self, step: int) -> float:
        _check_step(step)
        if step < self.warmup_steps:
            return self.base_lr * ((step + 1) / self.warmup_steps)
        return self.base_lr * self.gamma ** sum(1 for m in self.milestones if m <= step)


@dataclass(frozen=True)
class WMSESchedule:
    """The W-MSE training loop's lr (also CW-RGP's CIFAR/STL/Tiny-ImageNet loop), per step.

    The authors' loop, with ``W = warmup_steps`` (500; 0 with ``--no_lr_warmup``) and
    ``spe = steps_per_epoch``: before step ``s < W`` the lr is set to ``base * ((s + 1) / W)``,
    ignoring the scheduler; after the warm-up the scheduler's value stays in force:

    * ``lr_step="step"``: ``MultiStepLR(milestones=[epochs - d for d in drops], gamma)`` stepped
      at every epoch end. Milestone ``m`` multiplies the *current* lr by ``gamma`` just before
      step ``m * spe`` (``m = 0``: at construction). A drop that fires while the warm-up is still
      running (``m * spe < W``) is overwritten by the next warm-up step and lost, and
      milestones ``< 0`` never fire — both as in the authors' runs.
    * ``lr_step="cos"``: ``CosineAnnealingWarmRestarts(T_0=T0 or epochs, T_mult=Tmult,
      eta_min)`` stepped after every optimiser step ``k >= W - 1`` with the fractional epoch
      ``k // spe + (k % spe) / spe``, so step ``s > 0`` uses the value computed after step
      ``s - 1`` and step 0 (no warm-up) the initial ``base``.
    * ``lr_step="none"``: ``base`` after the warm-up.
    """

    base_lr: float
    epochs: int
    steps_per_epoch: int
    warmup_steps: int = 500
    lr_step: str = "step"
    drops: tuple[int, ...] = (50, 25)
    gamma: float = 0.2
    T0: int | None = None
    Tmult: int = 1
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        if self.lr_step not in ("step", "cos", "none"):
            raise ValueError(f"WMSESchedule: lr_step must be 'step', 'cos' or 'none', got {self.lr_step!r}")
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError(
                f"WMSESchedule: epochs ({self.epochs}) and steps_per_epoch ({self.steps_per_epoch}) must be >= 1"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"WMSESchedule: warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.T0 is not None and self.T0 < 1:
            raise ValueError(f"WMSESchedule: T0 must be >= 1, got {self.T0}")
        if self.Tmult < 1:
            raise ValueError(f"WMSESchedule: Tmult must be >= 1, got {self.Tmult}")
        object.__setattr__(self, "drops", tuple(int(d) for d in self.drops))

    def lr_at(self, step: int) -> float:
        _check_step(step)
        if step < self.warmup_steps:
            return self.base_lr * ((step + 1) / self.warmup_steps)
        if self.lr_step == "step":
            return self._multistep(step)
        if self.lr_step == "cos":
            if step == 0:
                return self._cosine(0)
            prev = step - 1
            return self._cosine(prev // self.steps_per_epoch + (prev % self.steps_per_epoch) / self.steps_per_epoch)
        return self.base_lr

    def _multistep(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        lr = self.base_lr
        # Chainable MultiStepLR: lr *= gamma ** count at each milestone, in order.
        for milestone, count in sorted(Counter(self.epochs - d for d in self.drops).items()):
            if 0 <= milestone <= epoch and milestone * self.steps_per_epoch >= self.warmup_steps:
                lr = lr * self.gamma ** count
        return lr

    def _cosine(self, epoch: float) -> float:
        # CosineAnnealingWarmRestarts.step(epoch) with an explicit epoch.
        t0 = self.epochs if self.T0 is None else self.T0
        t_i, t_cur = t0, epoch
        if epoch >= t0:
            if self.Tmult == 1:
                t_cur = epoch % t0
            else:
                n = int(math.log((epoch / t0 * (self.Tmult - 1) + 1), self.Tmult))
                t_cur = epoch - t0 * (self.Tmult**n - 1) / (self.Tmult - 1)
                t_i = t0 * self.Tmult**n
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


#: Earlier name of :class:`WMSESchedule` (step decay is its default).
WMSEStep = WMSESchedule

SCHEDULES = {
    "warmup_cosine": WarmupCosine,
    "warmup_cosine_epoch": WarmupCosineEpoch,
    "warmup_step": WarmupStep,
    "wmse": WMSESchedule,
}


def build_schedule(name: str, **kw):
    """The schedule ``name`` (one of :data:`SCHEDULES`) built from keyword arguments."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    cls = SCHEDULES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(kw) - set(fields))
    if unknown:
        raise ValueError(f"schedule {name!r}: unknown argument(s) {unknown}; it takes {list(fields)}")
    missing = [n for n, f in fields.items() if n not in kw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"schedule {name!r}: missing argument(s) {missing}")
    return cls(**kw)


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * group.get("lr_scale", 1.0)``."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale")
        group["lr"] = lr if scale is None else lr * scale


def cov_weight_at(epoch: int, cov_weight: float, stop_epoch: int | None, step_in_epoch: int | None = None) -> float:
    """CW-RGP ImageNet's covariance-loss weight: ``cov_weight`` before ``stop_epoch`` (0-based),
    0 from it on (``--cov_w``, ``--cov_stop``); ``stop_epoch=None`` never stops.

    The authors switch it off in ``model.step(epoch)``, which runs *after* each optimiser step,
    so the first step of epoch ``stop_epoch`` still carries the term. Pass ``step_in_epoch`` to
    get that per-step value; without it the switch is at the epoch boundary.
    """
    if stop_epoch is None or epoch < stop_epoch:
        return cov_weight
    if step_in_epoch is not None and epoch == stop_epoch and step_in_epoch == 0:
        return cov_weight
    return 0.0
