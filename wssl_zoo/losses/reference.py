"""Plain-loop reference implementations of the three losses.

These compute the same math as :mod:`wssl_zoo.losses` the way the authors' code does: a Python
loop over whitening iterations, sub-batches, views and groups, one matrix factorisation at a
time (an inverse per sub-batch and view for W-MSE, an SVD per group per sub-batch per view for
CW-RGP, one IterNorm per crop for INTL), with the same order of random draws. They are slow
on purpose: the tests use them as an independent second implementation for cases that have no
stored reference numbers, and ``benchmarks/losses.py`` times the batched losses against them.
They take a (V, N, D) tensor and do no input checking.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair_loss(a: torch.Tensor, b: torch.Tensor, normalize: bool) -> torch.Tensor:
    if normalize:
        return 2 - 2 * (F.normalize(a) * F.normalize(b)).sum(dim=-1).mean()
    return F.mse_loss(a, b)


def wmse_loop(
    x: torch.Tensor, w_size: int, w_iter: int = 1, eps: float = 0.0, normalize: bool = True
) -> torch.Tensor:
    """W-MSE with one Cholesky inverse per sub-batch and view. x: (V, N, D) -> scalar."""
    num_views, n, dim = x.shape
    eye = torch.eye(dim, dtype=x.dtype)
    loss = x.new_zeros(())
    for _ in range(w_iter):
        z = torch.empty_like(x)
        for idx in torch.randperm(n).view(-1, w_size):
            for v in range(num_views):
                h = x[v, idx]
                xn = h - h.mean(dim=0)
                cov = (1 - eps) * (xn.T @ xn) / (w_size - 1) + eps * eye
                inv = torch.linalg.inv(torch.linalg.cholesky(cov))
                z[v, idx] = xn @ inv.T
        for i in range(num_views - 1):
            for j in range(i + 1, num_views):
                loss = loss + _pair_loss(z[i], z[j], normalize)
    return loss / (w_iter * num_views * (num_views - 1) // 2)


def cwrgp_loop(
    x: torch.Tensor,
    w_size: int,
    w_iter: int = 1,
    groups: int = 4,
    random_groups: bool = True,
    eps: float = 0.0,
    cov_weight: float = 0.0,
    normalize: bool = True,
) -> torch.Tensor:
    """CW-RGP with one SVD per group per sub-batch per view. x: (V, N, D) -> scalar."""
    num_views, n, dim = x.shape
    d = dim // groups
    eye = torch.eye(w_size, dtype=x.dtype)
    loss = x.new_zeros(())
    for _ in range(w_iter):
        z = torch.empty_like(x)
        for idx in torch.randperm(n).view(-1, w_size):
            for v in range(num_views):
                order = torch.randperm(dim) if random_groups else torch.arange(dim)
                h = x[v, idx]
                xn = (h - h.mean(dim=1, keepdim=True))[:, order]
                out = torch.empty_like(xn)
                for g in range(groups):
                    block = xn[:, g * d : (g + 1) * d]
                    gram = (1 - eps) * (block @ block.T) / (d - 1) + eps * eye
                    u, s, _ = torch.linalg.svd(gram)
                    out[:, g * d : (g + 1) * d] = (u @ torch.diag(s.rsqrt()) @ u.T) @ block
                z[v, idx[:, None], order[None, :]] = out
        for i in range(num_views - 1):
            for j in range(i + 1, num_views):
                loss = loss + _pair_loss(z[i], z[j], normalize)
    loss = loss / (w_iter * num_views * (num_views - 1) // 2)
    if cov_weight:
        cov_term = x.new_zeros(())
        for v in range(num_views):
            y = x[v] - x[v].mean(dim=1, keepdim=True)
            cov = y @ y.T / (dim - 1)
            cov_term = cov_term + (cov - torch.diag(torch.diag(cov))).pow(2).sum() / n
        loss = loss + cov_weight * cov_term
    return loss


def intl_loop(
    x: torch.Tensor, iterations: int = 4, trace_weight: float | None = None, momentum: bool = False
) -> torch.Tensor:
    """INTL / INTL_M with one IterNorm per crop. x: (V, N, D) -> scalar."""
    num_views, n, dim = x.shape
    weight = (math.log2(n) - 3) * 0.01 if trace_weight is None else trace_weight
    crops = list(x.unbind(0))
    if momentum:
        crops[0] = crops[0].detach()
    t, tl = [], []
    for h in crops:
        xn = h - h.mean(dim=1, keepdim=True)
        gram = xn @ xn.T / (dim - 1)
        trace = torch.trace(gram)
        gram_norm = gram / trace
        proj = torch.eye(n, dtype=x.dtype)
        for _ in range(iterations):
            proj = 1.5 * proj - 0.5 * proj @ proj @ proj @ gram_norm
        out = proj @ xn / trace.sqrt()
        t.append(out)
        tl.append(((out - out.mean(dim=1, keepdim=True)).pow(2).sum(dim=1) / (dim - 1) - 1).pow(2).sum())
    loss = x.new_zeros(())
    for i in range(1, num_views):
        reg = tl[i] if momentum else tl[i] + tl[0]
        loss = loss + _pair_loss(t[i], t[0], True) + weight * reg
    return loss / (num_views - 1)
