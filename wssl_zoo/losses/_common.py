"""Input checks and pieces shared by the three losses."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..whitening import compute_dtype, distributed_world, gather_with_grad, no_autocast


def stack_views(views: Sequence[torch.Tensor], loss_name: str) -> torch.Tensor:
    """Check the projector outputs of V views and stack them as one (V, N, D) tensor.

    Raises ValueError naming the offending view and value: fewer than 2 views, a view that
    is not a 2-D tensor, views of different shapes, non-finite values.
    """
    if isinstance(views, torch.Tensor):
        if views.dim() != 3:
            raise ValueError(
                f"{loss_name}: expected a list of V tensors (N, D) or one (V, N, D) tensor, "
                f"got a tensor of shape {tuple(views.shape)}"
            )
        views = list(views.unbind(0))
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
        h = torch.stack([v.to(dtype) for v in views])
    if not bool(torch.isfinite(h).all()):
        bad = [i for i, v in enumerate(views) if not bool(torch.isfinite(v).all())]
        raise ValueError(
            f"{loss_name}: non-finite embeddings (NaN or Inf) in view(s) {bad}; the model has "
            "diverged (lower the learning rate, or check the inputs)"
        )
    return h


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
    if gather_distributed and distributed_world()[1] > 1:
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
    loss = z.new_zeros(())
    for i in range(z.shape[0] - 1):
        for j in range(i + 1, z.shape[0]):
            loss = loss + (normalized_mse(z[i], z[j]) if normalize else F.mse_loss(z[i], z[j]))
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
