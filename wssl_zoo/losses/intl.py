"""INTL loss: Weng, Ni, Song, Luo, Anwer, Khan, Khan, Huang, "Modulate Your Spectrum in Self-Supervised
Learning", ICLR 2024 (arXiv 2305.16789): IterNorm with trace loss.

Example::

    loss_fn = INTLLoss()                        # trace weight from the global batch size
    loss = loss_fn([z1, z2])                    # two (N, 8192) crops
    ema = INTLLoss(momentum=True)               # INTL_M: views[0] from the momentum encoder
    loss = ema([key, q1, q2, q3, q4, q5])       # multi-crop: 1 key + 5 query crops
"""

from __future__ import annotations

import math

import torch

from ..whitening import iternorm_matrix, no_autocast
from ._common import ViewLoss, check_positive_int


def trace_loss(t: torch.Tensor) -> torch.Tensor:
    """INTL's trace loss ``sum_n (var_c(t[n]) - 1)^2`` with the unbiased variance over channels.

    t: (..., N, D) -> (...,). (:class:`INTLLoss` computes the same from N x N matrices.)
    """
    return (t.var(dim=-1) - 1).pow(2).sum(dim=-1)


def default_trace_weight(global_batch: int) -> float:
    """The paper's trade-off ``(log2(global_batch) - 3) * 0.01``."""
    return (math.log2(global_batch) - 3) * 0.01


class INTLLoss(ViewLoss):
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

    method = "intl"  # its facts (projector placement, distributed whitening): wssl_zoo.methods.fact

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

    def _prepare(self, views):
        if not self.momentum:
            return views
        if isinstance(views, torch.Tensor) and views.dim() == 3:
            return torch.cat([views[:1].detach(), views[1:]])
        if isinstance(views, (list, tuple)) and views and isinstance(views[0], torch.Tensor):
            return [views[0].detach(), *views[1:]]
        return views

    def _loss(self, h: torch.Tensor) -> torch.Tensor:
        num_views, n, _ = h.shape
        if n < 2:
            raise ValueError(f"INTLLoss: the batch needs at least 2 samples, got N={n}")
        weight = default_trace_weight(n) if self.trace_weight is None else self.trace_weight
        with no_autocast(h.device):
            cos, var = _paired_cosines_and_variances(h, self.iterations)
        nmse = 2 - 2 * cos.mean(dim=-1)  # (V-1,): crop i >= 1 against crop 0
        tl = (var - 1).pow(2).sum(dim=-1)  # (V,): trace loss of every crop
        reg = tl[1:] if self.momentum else tl[1:] + tl[0]
        return (nmse + weight * reg).sum() / (num_views - 1)


def _paired_cosines_and_variances(h: torch.Tensor, iterations: int):
    """The only statistics of the transformed crops ``t_v = W_v^T xn_v`` that INTL's loss needs,
    computed from N x N matrices so that no (N, D) tensor other than the input is materialised
    (the authors' code materialises every t_v and normalises it; here that work is N x N).

    Rows of ``xn_v`` have zero channel mean, hence so do the rows of ``t_v``, so
    ``var_c(t_v[n]) = (W_v^T S_v W_v)[n, n]`` and ``|t_v[n]|^2 = (D - 1) var_c(t_v[n])``; and
    ``<t_i[n], t_0[n]> = (W_i^T xn_i xn_0^T W_0)[n, n]``.

    h: (V, N, D) -> (cosines (V-1, N) of crops i >= 1 with crop 0, variances (V, N)).
    """
    dim = h.shape[-1]
    whiten, gram, xn = iternorm_matrix(h, iterations)  # (V, N, N), (V, N, N), (V, N, D)
    var = ((whiten.mT @ gram) * whiten.mT).sum(dim=-1)  # diag(W^T S W)
    first, rest = xn.split([1, xn.shape[0] - 1])  # split: one backward copy, no zero fills
    cross = rest @ first.mT  # (V-1, N, N)
    dots = ((whiten[1:].mT @ cross) * whiten[0].mT).sum(dim=-1)  # diag(W_i^T C_i0 W_0)
    norms = (var * (dim - 1)).clamp_min(1e-24).sqrt()  # F.normalize's eps=1e-12 on the norm
    return dots / (norms[1:] * norms[0]), var
