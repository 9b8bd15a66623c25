"""Projectors (heads) as each paper's code builds them.

- W-MSE (Ermolov et al., ICML 2021; htdt/self-supervised model.py): Linear(+bias), BN, ReLU,
  Linear — 2 layers, 1024 hidden, 64/128 out.
- CW-RGP (Weng et al., NeurIPS 2022): the same structure, 2 layers of 1024 to 512 on small
  datasets; 3 layers of 2048 to 1024 on ImageNet.
- INTL (Weng et al., ICLR 2024; src/model.py): hidden Linear layers *without* bias + BN + ReLU,
  the last Linear with bias; 3 layers of 8192 on ImageNet, 2048 on CIFAR.
"""

from __future__ import annotations

from torch import nn


class Projector(nn.Sequential):
    """(num_layers - 1) x [Linear, BatchNorm1d, ReLU] then Linear: (B, in_dim) -> (B, out_dim).

    Keys are nn.Sequential indices (``0.weight``, ``1.running_mean``, ...), the layout of the
    authors' ``nn.Sequential`` heads, so their projector weights load without renaming.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                 hidden_bias: bool = True, last_bias: bool = True, batch_norm: bool = True):
        for key, value in dict(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Projector: {key} must be a positive integer, got {value!r}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=hidden_bias))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=last_bias))
        super().__init__(*layers)
        self.in_dim, self.hidden_dim, self.out_dim, self.num_layers = in_dim, hidden_dim, out_dim, num_layers


def wmse_projector(in_dim: int, hidden_dim: int = 1024, out_dim: int = 64, num_layers: int = 2) -> Projector:
    return Projector(in_dim, hidden_dim, out_dim, num_layers, hidden_bias=True, last_bias=True)


def cwrgp_projector(in_dim: int, hidden_dim: int = 1024, out_dim: int = 512, num_layers: int = 2) -> Projector:
    """Small-data CW-RGP; the ImageNet head is ``num_layers=3, hidden_dim=2048, out_dim=1024``."""
    return Projector(in_dim, hidden_dim, out_dim, num_layers, hidden_bias=True, last_bias=True)


def intl_projector(in_dim: int, hidden_dim: int = 8192, out_dim: int = 8192, num_layers: int = 3) -> Projector:
    return Projector(in_dim, hidden_dim, out_dim, num_layers, hidden_bias=False, last_bias=True)


PROJECTORS = {"wmse": wmse_projector, "cwrgp": cwrgp_projector, "intl": intl_projector}


def build_projector(method: str, in_dim: int, **overrides) -> Projector:
    """The projector of ``method`` with the paper's defaults, any of them overridden."""
    if method not in PROJECTORS:
        raise ValueError(f"unknown method {method!r} for a projector; choose one of {sorted(PROJECTORS)}")
    return PROJECTORS[method](in_dim, **overrides)
