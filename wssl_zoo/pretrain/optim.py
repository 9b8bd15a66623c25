"""Optimisers of the three recipes: Adam (W-MSE, CW-RGP small data), SGD (INTL, CW-RGP
ImageNet) and LARS; biases and normalisation weights (every parameter with ndim <= 1) can be
left out of weight decay and of LARS's trust ratio, as INTL's main.py does."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bias_and_norm:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
            {"params": decay, "weight_decay": weight_decay}]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio ``eta * |w| / |g + wd w|`` (You et al., 2017).

    Groups flagged ``lars_exclude`` get neither weight decay nor the trust ratio.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        if lr <= 0:
            raise ValueError(f"LARS: lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9,
                    exclude_bias_and_norm: bool = False) -> torch.optim.Optimizer:
    """adam (torch Adam, L2 weight decay = the authors' adam_l2), sgd or lars."""
    if name == "adam":
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(param_groups(model, weight_decay, exclude_bias_and_norm), lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(param_groups(model, weight_decay, True), lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose adam, sgd or lars")
