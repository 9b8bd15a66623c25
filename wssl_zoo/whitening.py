"""Whitening transforms of the three papers, as pure tensor functions.

All functions are batched over any number of leading dimensions (sub-batches, views, groups),
so the losses never loop over sub-batches or groups in Python. They compute in float64 when
given float64 and in float32 otherwise, with autocast disabled: whitening needs a Cholesky
factorisation, an eigendecomposition or Newton iterations, none of which is safe in 16 bits.

- :func:`cholesky_whiten`: batch whitening of W-MSE (Ermolov et al., ICML 2021): the
  covariance over the samples of a sub-batch, ``W = inverse(cholesky(C))``.
- :func:`group_channel_whiten`: channel (ZCA) whitening of CW-RGP (Weng et al., NeurIPS 2022):
  the Gram matrix over samples of each random channel group, ``W = S^(-1/2)``.
- :func:`iternorm_whiten`: IterNorm of INTL (Weng et al., ICLR 2024): Newton iterations
  towards ``S^(-1/2)`` of the trace-normalised Gram matrix over samples.
- :func:`gather_with_grad`: concatenation of a tensor over DDP ranks that keeps gradients.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from .distributed import rank_world

__all__ = [
    "compute_dtype",
    "no_autocast",
    "symmetric_gram",
    "cholesky_whiten",
    "group_channel_whiten",
    "iternorm_matrix",
    "iternorm_whiten",
    "gather_with_grad",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype whitening runs in for inputs of ``dtype``: float64 stays, the rest is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def no_autocast(device: torch.device):
    """A context that disables autocast on ``device`` (whitening must not run in fp16/bf16)."""
    if device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _as_compute(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x.dtype))


class _SymmetricGram(torch.autograd.Function):
    """``x x^T / divisor`` whose backward is one matmul, ``(g + g^T) x / divisor``, instead of the
    two that autograd would run for the two uses of ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, divisor: float):
        ctx.save_for_backward(x)
        ctx.divisor = divisor
        return x @ x.mT / divisor

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return ((grad + grad.mT) / ctx.divisor) @ x, None


def symmetric_gram(x: torch.Tensor, divisor: float) -> torch.Tensor:
    """``x x^T / divisor`` for x: (..., m, k) -> (..., m, m), with a single-matmul backward."""
    return _SymmetricGram.apply(x, divisor)


def cholesky_whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cholesky (batch) whitening of W-MSE.

    For each matrix ``h`` of shape (n, D) in ``x``: ``xn = h - mean_rows(h)``,
    ``C = (1 - eps) * xn^T xn / (n - 1) + eps * I``, ``W = inverse(cholesky(C))`` and the output is
    ``xn W^T``, whose sample covariance is the identity.

    Args:
        x: (..., n, D) embeddings; n must exceed D for the covariance to be invertible.
        eps: shrinkage towards the identity (0 in the papers).

    Returns:
        (..., n, D) whitened embeddings in float32 (float64 for float64 input).

    Raises:
        ValueError: when a covariance is not positive definite (n <= D, or collapsed features).
    """
    with no_autocast(x.device):
        x = _as_compute(x)
        n, d = x.shape[-2], x.shape[-1]
        xn = x - x.mean(dim=-2, keepdim=True)
        cov = symmetric_gram(xn.mT, n - 1)
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        if eps:
            cov = (1 - eps) * cov + eps * eye
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info > 0).any()):
            if x.dtype == torch.float32:
                # A nearly singular covariance can fail in float32 only: the same math in
                # float64 (where the authors' code would have crashed the run).
                return cholesky_whiten(x.double(), eps).float()
            raise ValueError(
                f"Cholesky whitening failed: a sub-batch covariance of size {d}x{d} estimated from "
                f"{n} samples is not positive definite (the embeddings have collapsed or are "
                "rank-deficient); use a larger w_size or eps > 0"
            )
        # xn W^T with W = L^-1, as one triangular solve: (L^-1 xn^T)^T.
        return torch.linalg.solve_triangular(chol, xn.mT, upper=False).mT


def _inverse_sqrt_psd(sym: torch.Tensor) -> torch.Tensor:
    """``sym^(-1/2)`` of symmetric positive-definite matrices (..., m, m).

    The authors compute ``U diag(s^-1/2) U^T`` from an SVD; for a symmetric positive-definite
    matrix the eigendecomposition gives the same matrix function (and, through it, the same
    gradient for symmetric inputs) at half the cost on the CPU. The two differ only at the
    rounding level, which matters only for near-singular Gram matrices (D / groups close to
    w_size), where the authors' own result moves as much under a 1e-16 change of its input.
    """
    eigvals, eigvecs = torch.linalg.eigh(sym)
    # |eigenvalue| is the singular value: a rounding-level negative eigenvalue of a near-singular
    # Gram matrix then behaves exactly as in the authors' SVD instead of turning into NaN.
    return (eigvecs * eigvals.abs().rsqrt().unsqueeze(-2)) @ eigvecs.mT


def group_channel_whiten(
    x: torch.Tensor,
    groups: int,
    channel_perm: torch.Tensor | None = None,
    eps: float = 0.0,
) -> torch.Tensor:
    """Channel (ZCA) whitening with (random) channel groups, as in CW-RGP.

    For each matrix ``h`` of shape (n, D) in ``x``: every sample is centred over its D channels;
    the channels are reordered by ``channel_perm`` and split into ``groups`` consecutive groups of
    ``d = D / groups``; for each group ``X`` (n, d): ``S = (1 - eps) X X^T / (d - 1) + eps I``
    (n, n), ``out = S^(-1/2) X``; the channels are then put back in their original order.

    Args:
        x: (..., n, D) embeddings.
        groups: number of channel groups G (D must be divisible by G, and D / G >= n).
        channel_perm: optional (..., D) int64 channel orders, one per matrix of ``x`` (broadcast
            over leading dimensions); ``None`` keeps the natural channel order.
        eps: shrinkage towards the identity (0 in the paper).

    Returns:
        (..., n, D) whitened embeddings in float32 (float64 for float64 input).
    """
    with no_autocast(x.device):
        x = _as_compute(x)
        n, dim = x.shape[-2], x.shape[-1]
        if dim % groups:
            raise ValueError(f"embedding dim D={dim} is not divisible by groups={groups}")
        group_dim = dim // groups
        xn = x - x.mean(dim=-1, keepdim=True)
        if channel_perm is not None:
            perm = channel_perm.to(x.device).unsqueeze(-2).expand(xn.shape)
            xn = torch.gather(xn, -1, perm)
        lead = xn.shape[:-2]
        xg = xn.reshape(*lead, n, groups, group_dim).transpose(-3, -2).contiguous()  # (..., G, n, d)
        gram = symmetric_gram(xg, group_dim - 1)  # (..., G, n, n)
        if eps:
            gram = (1 - eps) * gram + eps * torch.eye(n, dtype=x.dtype, device=x.device)
        out = (_inverse_sqrt_psd(gram) @ xg).transpose(-3, -2).reshape(*lead, n, dim)
        if channel_perm is not None:
            out = torch.empty_like(out).scatter_(-1, perm, out)
        return out


def iternorm_matrix(
    x: torch.Tensor, iterations: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The IterNorm whitening matrix of INTL, without applying it.

    For each matrix ``h`` of shape (N, D) in ``x``: ``xn = h - mean_over_channels(h)``,
    ``S = xn xn^T / (D - 1)``, ``Sn = S / tr(S)``, ``P_0 = I``,
    ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 Sn`` and ``W = P_T / sqrt(tr S)`` (Newton's iteration towards
    ``S^(-1/2)`` without any factorisation).

    Returns:
        ``(W, S, xn)``: (..., N, N), (..., N, N) and the centred (..., N, D) input, in float32
        (float64 for float64 input). The transformed embeddings are ``W^T xn``.
    """
    with no_autocast(x.device):
        x = _as_compute(x)
        n, dim = x.shape[-2], x.shape[-1]
        lead = x.shape[:-2]
        xn = x - x.mean(dim=-1, keepdim=True)
        flat = xn.reshape(-1, n, dim)
        gram = symmetric_gram(flat, dim - 1)  # (B, N, N)
        inv_trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1).reciprocal().view(-1, 1, 1)
        gram_norm = gram * inv_trace
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        # The first step from P_0 = I is 1.5 I - 0.5 Sn: the same numbers as the general step (every
        # product with I is exact), without its three N x N products and their backward.
        proj = torch.add(eye * 1.5, gram_norm, alpha=-0.5)
        for _ in range(iterations - 1):
            proj = torch.baddbmm(
                proj, torch.linalg.matrix_power(proj, 3), gram_norm, beta=1.5, alpha=-0.5
            )
        whiten = (proj * inv_trace.sqrt()).reshape(*lead, n, n)
        return whiten, gram.reshape(*lead, n, n), xn


def iternorm_whiten(x: torch.Tensor, iterations: int = 4) -> torch.Tensor:
    """IterNorm over samples, the spectral transformation of INTL.

    For each matrix ``h`` of shape (N, D) in ``x`` the output is ``(P_T / sqrt(tr S)) xn`` with the
    matrix of :func:`iternorm_matrix`; it approaches ``S^(-1/2) xn`` as the iterations grow.

    Args:
        x: (..., N, D) embeddings.
        iterations: number T of Newton steps (4 in the paper).

    Returns:
        (..., N, D) transformed embeddings in float32 (float64 for float64 input).
    """
    with no_autocast(x.device):
        whiten, _, xn = iternorm_matrix(x, iterations)
        return whiten.mT @ xn


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of all ranks and keeps this rank's slice.

    Every rank computes the same loss on the gathered batch, so summing over ranks makes each
    rank's input gradient world_size times the gradient of the global loss; DDP's gradient
    averaging then yields exactly the gradient of the global loss.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int):
        ctx.dim = dim
        ctx.size = x.shape[dim]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank = dist.get_rank()
        return grad.narrow(ctx.dim, rank * ctx.size, ctx.size), None


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``x`` from all DDP ranks along ``dim`` (rank order), keeping gradients.

    Without an initialised process group (or with one rank) ``x`` is returned unchanged.
    All ranks must pass tensors of the same shape.
    """
    _, world = rank_world()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x, dim)
