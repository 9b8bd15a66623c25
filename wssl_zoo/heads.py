"""Projectors (heads) as each paper's official code builds them.

- W-MSE: Ermolov, Siarohin, Sangineto, Sebe, "Whitening for Self-Supervised Representation
  Learning", ICML 2021 (htdt/self-supervised): Linear (with bias), BatchNorm1d, ReLU, Linear;
  1024 hidden, 64-d embedding by default (128 in some of the paper's runs).
- CW-RGP: Weng, Ni, Huang, Huang, Liu, "An Investigation into Whitening Loss for Self-supervised
  Learning", NeurIPS 2022: the W-MSE structure; 2 layers, 1024 hidden, 512-d embedding on the
  small datasets; ``num_layers=3, hidden_dim=2048, out_dim=1024`` on ImageNet.
- INTL: Weng, Ni, Song, Luo, Anwer, Khan, Khan, Huang, "Modulate Your Spectrum in Self-Supervised
  Learning", ICLR 2024 (src/model.py): hidden Linear layers *without* bias + BatchNorm1d + ReLU,
  the last Linear with bias; 3 layers of 8192 on ImageNet (the CIFAR recipes use smaller widths,
  passed as overrides).

Example::

    head = build_projector("wmse", in_dim=512)                      # 512 -> 1024 -> 64
    head = build_projector("cwrgp", 2048, num_layers=3, hidden_dim=2048, out_dim=1024)
    z = head(features)                                              # (B, 512) -> (B, 64)
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .modelio import build_loaded


class Projector(nn.Sequential):
    """(num_layers - 1) x [Linear, BatchNorm1d, ReLU] then Linear: (B, in_dim) -> (B, out_dim).

    ``num_layers=1`` is a single Linear(in_dim, out_dim). ``batch_norm=False`` drops the BN layers.

    State-dict keys are nn.Sequential indices, the layout of the authors' ``nn.Sequential`` heads,
    so their projector weights load without renaming. With batch norm, hidden block ``i`` (0-based)
    is Linear ``3i`` (``3i.weight``, ``3i.bias`` if ``hidden_bias``), BatchNorm1d ``3i+1``
    (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) and ReLU
    ``3i+2`` (no state); the last Linear is index ``3 (num_layers - 1)``. Without batch norm the
    stride is 2 instead of 3.

    Args:
        in_dim: input feature size (the backbone's ``num_features``).
        hidden_dim: width of the hidden layers (unused when ``num_layers=1``).
        out_dim: embedding size.
        num_layers: number of Linear layers (>= 1).
        hidden_bias: bias in the hidden Linear layers (False for INTL).
        last_bias: bias in the last Linear layer.
        batch_norm: BatchNorm1d after every hidden Linear layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                 hidden_bias: bool = True, last_bias: bool = True, batch_norm: bool = True):
        sizes = dict(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers)
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Projector: {key} must be a positive integer, got {value!r}")
        flags = dict(hidden_bias=hidden_bias, last_bias=last_bias, batch_norm=batch_norm)
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"Projector: {key} must be True or False, got {value!r}")
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
        self.hidden_bias, self.last_bias, self.batch_norm = hidden_bias, last_bias, batch_norm


def wmse_projector(in_dim: int, hidden_dim: int = 1024, out_dim: int = 64, num_layers: int = 2) -> Projector:
    """W-MSE's head: Linear(bias) -> BN -> ReLU -> Linear(bias); 1024 hidden, 64-d output."""
    return Projector(in_dim, hidden_dim, out_dim, num_layers, hidden_bias=True, last_bias=True)


def cwrgp_projector(in_dim: int, hidden_dim: int = 1024, out_dim: int = 512, num_layers: int = 2) -> Projector:
    """CW-RGP's small-data head (W-MSE's structure, 512-d output).

    The ImageNet head is ``cwrgp_projector(2048, hidden_dim=2048, out_dim=1024, num_layers=3)``.
    """
    return Projector(in_dim, hidden_dim, out_dim, num_layers, hidden_bias=True, last_bias=True)


def intl_projector(in_dim: int, hidden_dim: int = 8192, out_dim: int = 8192, num_layers: int = 3) -> Projector:
    """INTL's head: 2 x [Linear(no bias) -> BN -> ReLU] -> Linear(bias); 8192 wide (ImageNet)."""
    return Projector(in_dim, hidden_dim, out_dim, num_layers, hidden_bias=False, last_bias=True)


PROJECTORS: dict[str, Callable[..., Projector]] = {
    "wmse": wmse_projector,
    "cwrgp": cwrgp_projector,
    "intl": intl_projector,
}


def build_projector(method: str, in_dim: int, **overrides) -> Projector:
    """The projector of ``method`` ("wmse", "cwrgp", "intl") with the paper's defaults.

    ``overrides`` may set ``hidden_dim``, ``out_dim`` and ``num_layers``.
    """
    if method not in PROJECTORS:
        raise ValueError(f"unknown method {method!r} for a projector; choose one of {sorted(PROJECTORS)}")
    allowed = ("hidden_dim", "out_dim", "num_layers")
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"build_projector({method!r}): unknown override(s) {unknown}; allowed: {list(allowed)}")
    return PROJECTORS[method](in_dim, **overrides)


def projector_from_state(state: dict, source: str = "projector weights", hidden_bias_default: bool = True) -> Projector:
    """A :class:`Projector` with the layout these tensors imply (layers, widths, biases, batch
    norm), loaded strictly from them, in eval mode. ``state`` uses nn.Sequential indices."""
    linear = sorted({int(k.split(".")[0]) for k, v in state.items() if k.endswith("weight") and v.dim() == 2})
    if not linear:
        raise ValueError(f"{source}: no Linear weight among {sorted(state)[:10]}")
    n = len(linear)
    first, last = state[f"{linear[0]}.weight"], state[f"{linear[-1]}.weight"]
    return build_loaded(lambda: Projector(first.shape[1], first.shape[0] if n > 1 else 1, last.shape[0], n,
                                          hidden_bias=f"{linear[0]}.bias" in state if n > 1 else hidden_bias_default,
                                          last_bias=f"{linear[-1]}.bias" in state,
                                          batch_norm=n > 1 and f"{linear[0] + 1}.running_mean" in state),
                        state, source).eval()
