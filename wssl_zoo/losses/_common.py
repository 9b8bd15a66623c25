"""Input checks and pieces shared by the three losses."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..distributed import rank_world
from ..whitening import compute_dtype, gather_with_grad, no_autocast


def stack_views(views: Sequence[torch.Tensor] | torch.Tensor, loss_name: str) -> torch.Tensor:
    """Check the projector outputs of V views and stack them as one (V, N, D) tensor.

    ``views`` is a list of V tensors (N, D), or one (V, N, D) tensor (used as it is, no copy).
    Raises ValueError naming the offending view and value: fewer than 2 views, a view that
    is not a 2-D tensor, views of different shapes. (Non-finite values are diagnosed by
    :func:`check_finite` when the loss comes out non-finite, which costs nothing otherwise.)
    """
    if isinstance(views, torch.Tensor):
        if views.dim() != 3 or views.shape[0] < 2:
            raise ValueError(
                f"{loss_name}: expected a list of V >= 2 tensors (N, D) or one (V, N, D) tensor, "
                f"got a tensor of shape {tuple(views.shape)}"
            )
        with no_autocast(views.device):
            return views.to(compute_dtype(views.dtype))
    if not isinstance(views, (list, tuple)):
        raise ValueError(
            f"{loss_name}: expected a list of V view tensors of shape (N, D), got {type(views).__name__}"
        )
    if len(views) < 2:
        raise ValueError(f"{loss_name}: needs at least 2 views, got {len(views)}")
    for i, v in enumerate(views):
        if not isinstance(v, torch.Tensor) or v.dim() != 2:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"{loss_name}: view {i} must be a 2-D tensor (N, D), got {shape}")
        if v.shape != views[0].shape:
            raise ValueError(
                f"{loss_name}: all views must have the same shape (N, D); view 0 is "
                f"{tuple(views[0].shape)} but view {i} is {tuple(v.shape)}"
            )
    dtype = compute_dtype(views[0].dtype)
    with no_autocast(views[0].device):
        return torch.stack([v.to(dtype) for v in views])


def check_finite(h: torch.Tensor, loss_name: str) -> None:
    """Raise a ValueError naming the views of h (V, N, D) that hold NaN or Inf, if any."""
    bad = [i for i, v in enumerate(h.detach().unbind(0)) if not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(
            f"{loss_name}: non-finite embeddings (NaN or Inf) in view(s) {bad}; the model has "
            "diverged (lower the learning rate, or check the inputs)"
        )


class ViewLoss(nn.Module):
    """Base of the three losses: input checks, the DDP gather and the non-finite diagnosis.

    Subclasses implement ``_loss(h)`` on the stacked (V, N, D) embeddings.
    """

    gather_distributed: bool = False

    def _loss(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _prepare(self, views):
        return views

    def forward(self, views: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        h = maybe_gather(stack_views(self._prepare(views), name), self.gather_distributed)
        try:
            loss = self._loss(h)
        except (ValueError, RuntimeError):
            check_finite(h, name)  # NaN input makes factorisations fail: say why
            raise
        if not bool(torch.isfinite(loss.detach())):
            check_finite(h, name)
        return loss


def maybe_gather(h: torch.Tensor, gather_distributed: bool) -> torch.Tensor:
    """(V, N, D) -> (V, N * world, D) over DDP ranks when asked for and a group is running."""
    return gather_with_grad(h, dim=1) if gather_distributed else h


def sync_from_rank0(t: torch.Tensor, gather_distributed: bool) -> torch.Tensor:
    """Broadcast rank 0's CPU tensor ``t`` to all ranks when statistics are gathered.

    Random sub-batches and channel groups are drawn with ``torch.randperm`` on the CPU default
    generator (the authors' order of draws). Under DDP with gathered statistics every rank must
    whiten the same sub-batches, so each rank draws (keeping its generator in step) and rank 0's
    draw wins.
    """
    if gather_distributed and rank_world()[1] > 1:
        if dist.get_backend() == "nccl":
            buf = t.cuda()
            dist.broadcast(buf, src=0)
            return buf.cpu()
        dist.broadcast(t, src=0)
    return t


def normalized_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``2 - 2 * mean_n <a_n / |a_n|, b_n / |b_n|>`` for a, b: (N, D)."""
    return 2 - 2 * (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1).mean()


def pairwise_view_loss(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Sum over view pairs i < j of the normalised MSE (or plain MSE) between z[i] and z[j].

    z: (V, N, D) whitened embeddings in sample order.
    """
    views = z.unbind(0)  # one backward node for all views (indexing z[i] would add V full-size zero fills)
    loss = z.new_zeros(())
    for i in range(len(views) - 1):
        for j in range(i + 1, len(views)):
            a, b = views[i], views[j]
            loss = loss + (normalized_mse(a, b) if normalize else F.mse_loss(a, b))
    return loss


def check_positive_int(value, name: str, loss_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{loss_name}: {name} must be a positive integer, got {value!r}")
    return value


def check_eps(value, loss_name: str) -> float:
    if not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{loss_name}: eps must be in [0, 1), got {value!r}")
    return float(value)


def check_sub_batches(n: int, w_size: int, loss_name: str, gathered: bool) -> int:
    if n % w_size:
        where = "global batch (gathered over ranks)" if gathered else "batch"
        raise ValueError(
            f"{loss_name}: the {where} size N={n} is not divisible by w_size={w_size}; "
            f"choose a batch size that is a multiple of w_size"
        )
    return n // w_size
