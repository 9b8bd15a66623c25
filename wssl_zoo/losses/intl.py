"""INTL loss: Weng, Ni, Yang, Huang, Li, Huang, "Modulate Your Spectrum in Self-Supervised
Learning", ICLR 2024 (arXiv 2305.16789): IterNorm with trace loss.

Example::

    loss_fn = INTLLoss()                        # trace weight from the global batch size
    loss = loss_fn([z1, z2])                    # two (N, 8192) crops
    ema = INTLLoss(momentum=True)               # INTL_M: views[0] from the momentum encoder
    loss = ema([key, q1, q2, q3, q4, q5])       # multi-crop: 1 key + 5 query crops
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..whitening import iternorm_whiten
from ._common import check_positive_int, maybe_gather, normalized_mse, stack_views


def trace_loss(t: torch.Tensor) -> torch.Tensor:
    """INTL's trace loss ``sum_n (var_c(t[n]) - 1)^2`` with the unbiased variance over channels.

    t: (..., N, D) -> (...,).
    """
    return (t.var(dim=-1) - 1).pow(2).sum(dim=-1)


def default_trace_weight(global_batch: int) -> float:
    """The paper's trade-off ``(log2(global_batch) - 3) * 0.01``."""
    return (math.log2(global_batch) - 3) * 0.01


class INTLLoss(nn.Module):
    """Normalised MSE between IterNorm-transformed crops plus a weighted trace loss.

    Every crop is transformed by :func:`~wssl_zoo.whitening.iternorm_whiten` over its batch
    (all crops in one batched call), every crop ``i >= 1`` is paired with crop 0 and
    ``loss = 1/(V-1) sum_{i>=1} [nmse(t_i, t_0) + w (TL(t_i) + TL(t_0))]``.
    With ``momentum=True`` (INTL_M) ``views[0]`` is the key crop from the momentum encoder: it is
    detached and its trace loss is left out: ``1/(V-1) sum_{i>=1} [nmse(t_i, t_0) + w TL(t_i)]``.

    Args:
        iterations: Newton iterations of IterNorm (4 in the paper).
        trace_weight: the trace-loss weight w; ``None`` means ``(log2(global_batch) - 3) * 0.01``
            with the global batch the size of the batch being whitened (N times the world size
            when ``gather_distributed``).
        momentum: INTL_M mode (views[0] is the momentum encoder's key crop).
        gather_distributed: transform over the global batch gathered from all DDP ranks.
    """

    def __init__(
        self,
        iterations: int = 4,
        trace_weight: float | None = None,
        momentum: bool = False,
        gather_distributed: bool = False,
    ):
        super().__init__()
        self.iterations = check_positive_int(iterations, "iterations", "INTLLoss")
        if trace_weight is not None and not math.isfinite(float(trace_weight)):
            raise ValueError(f"INTLLoss: trace_weight must be finite, got {trace_weight!r}")
        self.trace_weight = None if trace_weight is None else float(trace_weight)
        self.momentum = bool(momentum)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return (
            f"iterations={self.iterations}, trace_weight={self.trace_weight}, "
            f"momentum={self.momentum}, gather_distributed={self.gather_distributed}"
        )

    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.momentum and isinstance(views, (list, tuple)) and views:
            views = [views[0].detach(), *views[1:]]
        h = maybe_gather(stack_views(views, "INTLLoss"), self.gather_distributed)
        num_views, n, _ = h.shape
        if n < 2:
            raise ValueError(f"INTLLoss: the batch needs at least 2 samples, got N={n}")
        weight = default_trace_weight(n) if self.trace_weight is None else self.trace_weight
        t = iternorm_whiten(h, self.iterations)
        tl = trace_loss(t)
        loss = h.new_zeros(())
        for i in range(1, num_views):
            term = normalized_mse(t[i], t[0])
            reg = tl[i] if self.momentum else tl[i] + tl[0]
            loss = loss + term + weight * reg
        return loss / (num_views - 1)
