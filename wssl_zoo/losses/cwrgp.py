"""CW-RGP loss: Weng, Huang, Zhao, Anwer, Khan, Khan, "An Investigation into Whitening Loss for
Self-supervised Learning", NeurIPS 2022 (arXiv 2210.03586): channel whitening with random
group partition.

Example::

    loss_fn = CWRGPLoss(w_size=64, groups=4)                 # CIFAR recipe, D = 512
    loss = loss_fn([z1, z2, z3, z4])                         # four (N, 512) views
    in1k = CWRGPLoss(w_size=128, groups=2, cov_weight=0.01)  # ImageNet recipe, D = 1024
"""

from __future__ import annotations

import torch

from ..whitening import group_channel_whiten, symmetric_gram
from ._common import ViewLoss, check_eps, check_positive_int, check_sub_batches, pairwise_view_loss, sync_from_rank0


def channel_covariance_loss(h: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """The ImageNet CW-RGP covariance term, summed over views.

    For each view (N, D): centre every sample over its channels, ``C = y y^T / (D - 1)`` (N, N),
    and take ``sum(offdiag(C)^2) / N``. h: (V, N, D) -> scalar.

    ``block``: compute the term on consecutive blocks of ``block`` samples and average over the
    blocks, as the authors' per-GPU computation on 128 samples averaged by DDP
    (CW-RGP ``ImageNet/methods/cwrgp.py:34-36``, ``methods/losses.py:15-23``), so the value does
    not depend on how the batch is split across processes. ``None``: one block of all N samples.
    """
    if block is not None:
        num_views, n, dim = h.shape
        if n % block:
            raise ValueError(f"CWRGPLoss: cov_block={block} does not divide the per-process batch N={n}")
        return channel_covariance_loss(h.reshape(num_views * (n // block), block, dim)) / (n // block)
    n, dim = h.shape[-2], h.shape[-1]
    y = h - h.mean(dim=-1, keepdim=True)
    cov = symmetric_gram(y, dim - 1)
    offdiag_sq = cov.pow(2).sum(dim=(-2, -1)) - cov.diagonal(dim1=-2, dim2=-1).pow(2).sum(-1)
    return (offdiag_sq / n).sum()


class CWRGPLoss(ViewLoss):
    """MSE between positives after channel whitening with random group partition.

    Per whitening iteration: one ``torch.randperm(N)`` splits the batch into sub-batches of
    ``w_size`` (shared by the views); with ``random_groups`` one ``torch.randperm(D)`` per
    (sub-batch, view), drawn sub-batch by sub-batch and view by view, shuffles the channels
    before they are cut into ``groups`` groups. Each (sub-batch, view, group) is ZCA-whitened
    over its samples (:func:`~wssl_zoo.whitening.group_channel_whiten`), all in one batched
    call. The loss is the sum over view pairs of the normalised MSE divided by
    ``w_iter * V (V - 1) / 2``, plus ``cov_weight`` times the channel covariance term of the
    ImageNet recipe (on the un-whitened embeddings, once per step). The trainer sets
    ``cov_weight`` to 0 at the recipe's stop epoch.

    Args:
        w_size: sub-batch size; must divide N, and D / groups must be >= w_size.
        w_iter: number of random partitions averaged per step.
        groups: number of channel groups G; must divide D.
        random_groups: shuffle the channels before grouping (the "RG" of CW-RGP).
        eps: shrinkage of the Gram matrices towards the identity.
        cov_weight: weight of the covariance term (0.01 for the 200-epoch ImageNet recipe).
        cov_block: samples per covariance block (128 in the ImageNet recipes: the authors' per-GPU
            batch); None computes the term over the whole local batch.
        normalize: L2-normalise the whitened vectors before the MSE.
        gather_distributed: whiten over the global batch gathered from all DDP ranks.
    """

    method = "cwrgp"  # its facts (projector placement, distributed whitening): wssl_zoo.methods.fact

    def __init__(
        self,
        w_size: int = 64,
        w_iter: int = 1,
        groups: int = 4,
        random_groups: bool = True,
        eps: float = 0.0,
        cov_weight: float = 0.0,
        cov_block: int | None = None,
        normalize: bool = True,
        gather_distributed: bool = False,
    ):
        super().__init__()
        self.w_size = check_positive_int(w_size, "w_size", "CWRGPLoss")
        self.w_iter = check_positive_int(w_iter, "w_iter", "CWRGPLoss")
        self.groups = check_positive_int(groups, "groups", "CWRGPLoss")
        self.random_groups = bool(random_groups)
        self.eps = check_eps(eps, "CWRGPLoss")
        if float(cov_weight) < 0:
            raise ValueError(f"CWRGPLoss: cov_weight must be >= 0, got {cov_weight!r}")
        self.cov_weight = float(cov_weight)
        self.cov_block = None if cov_block is None else check_positive_int(cov_block, "cov_block", "CWRGPLoss")
        self.normalize = bool(normalize)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return (
            f"w_size={self.w_size}, w_iter={self.w_iter}, groups={self.groups}, "
            f"random_groups={self.random_groups}, eps={self.eps}, cov_weight={self.cov_weight}, "
            f"cov_block={self.cov_block}, "
            f"normalize={self.normalize}, gather_distributed={self.gather_distributed}"
        )

    def _check_shapes(self, n: int, dim: int) -> int:
        if dim % self.groups:
            raise ValueError(
                f"CWRGPLoss: the embedding dim D={dim} is not divisible by groups={self.groups}"
            )
        num_sub = check_sub_batches(n, self.w_size, "CWRGPLoss", self.gather_distributed)
        if dim // self.groups < self.w_size:
            raise ValueError(
                f"CWRGPLoss: each channel group has D/groups={dim // self.groups} channels, fewer "
                f"than w_size={self.w_size} samples, so its {self.w_size}x{self.w_size} Gram matrix "
                "is singular; use fewer groups or a smaller w_size"
            )
        return num_sub

    def _loss(self, h: torch.Tensor) -> torch.Tensor:
        num_views, n, dim = h.shape
        num_sub = self._check_shapes(n, dim)
        loss = h.new_zeros(())
        for _ in range(self.w_iter):
            perm = sync_from_rank0(torch.randperm(n), self.gather_distributed).to(h.device)
            channel_perm = None
            if self.random_groups:
                # One draw per (sub-batch, view), sub-batch-major: the authors' order.
                draws = torch.stack([torch.randperm(dim) for _ in range(num_sub * num_views)])
                draws = sync_from_rank0(draws, self.gather_distributed)
                channel_perm = draws.view(num_sub, num_views, dim).transpose(0, 1).to(h.device)
            sub = h.index_select(1, perm).view(num_views, num_sub, self.w_size, dim)
            # The loss is a mean over samples, so it is computed in sub-batch order.
            z = group_channel_whiten(sub, self.groups, channel_perm, self.eps)
            loss = loss + pairwise_view_loss(z.reshape(num_views, n, dim), self.normalize)
        loss = loss / (self.w_iter * num_views * (num_views - 1) // 2)
        if self.cov_weight != 0:
            loss = loss + self.cov_weight * channel_covariance_loss(h, self.cov_block)
        return loss
