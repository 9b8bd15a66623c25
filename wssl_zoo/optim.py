"""Optimisers of the three papers' recipes and of the evaluation protocols (LARS: CW-RGP's linear
probe); pretraining and evaluation both import them from here.

* **Adam** with L2 weight decay: W-MSE ``train.py`` (``optim.Adam(model.parameters(), lr=cfg.lr,
  weight_decay=cfg.adam_l2)``, htdt/self-supervised) and CW-RGP ``base/train.py``
  (``weight_decay=cfg.weight_decay``). torch's ``Adam(weight_decay=...)`` adds ``wd * w`` to the
  gradient before the moment estimates, which is exactly the authors' ``adam_l2``.
* **SGD** with momentum 0.9: INTL ``main.py`` (ImageNet: biases and normalisation weights, i.e.
  the 1-d parameters, without weight decay), INTL ``cifar/main.py`` and CW-RGP
  ``ImageNet/train.py`` (weight decay on every parameter).
* **LARS** (You et al., 2017) in the form used by BYOL, Barlow Twins and VICReg: the layer-wise
  trust ratio ``eta * ||w|| / ||g + wd * w||`` rescales the update of every parameter outside the
  excluded (bias / normalisation) group, followed by heavy-ball momentum.

Parameters with ``ndim <= 1`` are the biases and the affine weights of BatchNorm / LayerNorm /
GroupNorm; :func:`param_groups` puts them in a group of their own.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .methods import OPTIMIZERS  # the names recipes and protocols use


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True) -> list[dict]:
    """Split the trainable parameters of ``model`` into optimiser groups.

    With ``exclude_bias_and_norm`` (INTL ``main.py``): two groups, ``[no_decay, decay]``.
    ``no_decay`` holds every parameter with ``ndim <= 1`` (biases, BN/LN/GN weights) with
    ``weight_decay=0`` and ``"lars_exclude": True`` (LARS applies no trust ratio to it);
    ``decay`` holds the rest (conv kernels ``(C_out, C_in, k, k)``, linear weights ``(out, in)``)
    with ``weight_decay``. Without it: one group with every parameter and ``weight_decay``.
    Frozen parameters (``requires_grad=False``) are left out. Empty groups are kept so that the
    layout (and hence an optimiser state dict) does not depend on the architecture.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    if not exclude_bias_and_norm:
        return [{"params": params, "weight_decay": weight_decay}]
    no_decay = [p for p in params if p.ndim <= 1]
    decay = [p for p in params if p.ndim > 1]
    return [
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
        {"params": decay, "weight_decay": weight_decay},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling with heavy-ball momentum.

    For every parameter ``w`` with gradient ``g`` of a group with learning rate ``lr``, weight
    decay ``wd``, momentum ``mu`` and trust coefficient ``eta``::

        d = g + wd * w
        if not group["lars_exclude"]:
            d = d * (eta * ||w|| / ||d||   if ||w|| > 0 and ||d|| > 0   else 1)
        buf = d                     (first step)
        buf = mu * buf + d          (later steps)
        w = w - lr * buf

    Groups flagged ``"lars_exclude": True`` are therefore updated exactly like
    ``torch.optim.SGD(momentum=mu, weight_decay=wd)`` (:func:`param_groups` gives them
    ``wd = 0``). The norms are Frobenius norms over the whole tensor (one layer's weight).
    ``lr`` may be 0 at construction: the schedules set it before every step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ):
        if lr < 0:
            raise ValueError(f"LARS: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}")
        if eta <= 0:
            raise ValueError(f"LARS: eta (trust coefficient) must be > 0, got {eta}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["eta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                update = p.grad.add(p, alpha=wd) if wd != 0 else p.grad.clone()
                if not group["lars_exclude"]:
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    # torch.where keeps the ratio on the device: no host sync per parameter.
                    trust = torch.where(
                        (w_norm > 0) & (u_norm > 0), eta * w_norm / u_norm, torch.ones_like(w_norm)
                    )
                    update.mul_(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = update
                else:
                    buf.mul_(mu).add_(update)
                p.add_(buf, alpha=-lr)
        return loss


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    *,
    exclude_bias_and_norm: bool | None = None,
    eta: float = 0.001,
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over the trainable parameters of ``model``.

    ``"adam"``: ``torch.optim.Adam(lr, weight_decay)`` — the authors' ``adam_l2`` (L2 added to
    the gradient, not AdamW's decoupled decay); one group with every parameter, as W-MSE and
    CW-RGP do, unless ``exclude_bias_and_norm=True``.
    ``"sgd"``: ``torch.optim.SGD(lr, momentum)`` over :func:`param_groups`; by default weight
    decay applies to every parameter (INTL CIFAR, CW-RGP ImageNet); pass
    ``exclude_bias_and_norm=True`` for INTL ImageNet.
    ``"lars"``: :class:`LARS` over :func:`param_groups`, biases / norms excluded by default.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if lr < 0:
        raise ValueError(f"{name}: lr must be >= 0, got {lr}")
    if name == "adam":
        groups = param_groups(model, weight_decay, exclude_bias_and_norm=bool(exclude_bias_and_norm))
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        groups = param_groups(model, weight_decay, exclude_bias_and_norm=bool(exclude_bias_and_norm))
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    exclude = True if exclude_bias_and_norm is None else exclude_bias_and_norm
    return LARS(param_groups(model, weight_decay, exclude), lr=lr, momentum=momentum,
                weight_decay=weight_decay, eta=eta)
