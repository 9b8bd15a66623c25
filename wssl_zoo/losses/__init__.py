"""The three whitening losses, one module each, plus a name -> class table.

- :class:`WMSELoss` (``"wmse"``): Ermolov et al., ICML 2021.
- :class:`CWRGPLoss` (``"cwrgp"``): Weng et al., NeurIPS 2022.
- :class:`INTLLoss` (``"intl"``; ``momentum=True`` is INTL_M): Weng et al., ICLR 2024.

Every loss is called as ``loss_fn(views)`` with ``views`` a list of V tensors (N, D) of
projector outputs and returns a scalar.
"""

from __future__ import annotations

from torch import nn

from .cwrgp import CWRGPLoss, channel_covariance_loss
from .intl import INTLLoss, default_trace_weight, trace_loss
from .wmse import WMSELoss

LOSSES: dict[str, type[nn.Module]] = {
    "wmse": WMSELoss,
    "cwrgp": CWRGPLoss,
    "intl": INTLLoss,
}


def build_loss(method: str, **params) -> nn.Module:
    """The loss of ``method`` ("wmse", "cwrgp" or "intl") with keyword ``params``."""
    try:
        cls = LOSSES[method]
    except KeyError:
        raise ValueError(f"unknown loss method {method!r}; choose one of {sorted(LOSSES)}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for the {method!r} loss ({cls.__name__}): {exc}") from None


__all__ = [
    "LOSSES",
    "build_loss",
    "WMSELoss",
    "CWRGPLoss",
    "INTLLoss",
    "channel_covariance_loss",
    "trace_loss",
    "default_trace_weight",
]
