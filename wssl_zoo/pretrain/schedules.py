"""Learning-rate and momentum schedules as pure functions of the global step, so a resumed run
gets exactly the same values."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """INTL main.py: linear warm-up ``base*(s+1)/W``, then cosine to ``end_lr_factor*base``."""

    base_lr: float
    total_steps: int
    warmup_steps: int
    end_lr_factor: float = 0.001

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        step -= self.warmup_steps
        max_steps = max(self.total_steps - self.warmup_steps, 1)
        q = 0.5 * (1 + math.cos(math.pi * (step + 1) / max_steps))
        return self.base_lr * q + self.base_lr * self.end_lr_factor * (1 - q)


@dataclass(frozen=True)
class WarmupCosineEpoch:
    """CW-RGP ImageNet/train.py: cosine set per epoch ``base*0.5*(1+cos(pi*e/E))``, overridden by a
    linear warm-up ``base*(s+1)/W`` during the first W steps."""

    base_lr: float
    epochs: int
    steps_per_epoch: int
    warmup_steps: int

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        epoch = step // self.steps_per_epoch
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))


@dataclass(frozen=True)
class WMSEStep:
    """W-MSE train.py (also CW-RGP base): warm-up ``base*(s+1)/W`` for W steps, then the base lr
    multiplied by ``gamma`` at each epoch ``epochs - d`` for d in ``drops`` (MultiStepLR)."""

    base_lr: float
    epochs: int
    steps_per_epoch: int
    warmup_steps: int = 500
    drops: tuple = (50, 25)
    gamma: float = 0.2

    def lr_at(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        # MultiStepLR milestones epochs - d; one at or below epoch 0 never fires in the authors code
        lr = self.base_lr * self.gamma ** sum(1 for d in self.drops if 0 < self.epochs - d <= epoch)
        if step < self.warmup_steps:
            return lr * (step + 1) / self.warmup_steps
        return lr


def build_schedule(name: str, **kw):
    table = {"warmup_cosine": WarmupCosine, "warmup_cosine_epoch": WarmupCosineEpoch, "wmse": WMSEStep}
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(table)}")
    return table[name](**kw)


def apply_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """INTL's EMA momentum: ``1 - 0.5 (1 + cos(pi s / S)) (1 - base)``."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1))) * (1.0 - base)
