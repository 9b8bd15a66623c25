"""W-MSE loss: Ermolov, Siarohin, Sangineto, Sebe, "Whitening for Self-Supervised
Representation Learning", ICML 2021 (arXiv 2007.06346).

Example::

    loss_fn = WMSELoss(w_size=128)           # CIFAR recipe: D = 64
    loss = loss_fn([z1, z2])                 # z1, z2: (N, 64) projector outputs
    loss.backward()
"""

from __future__ import annotations

import torch

from ..whitening import cholesky_whiten
from ._common import ViewLoss, check_eps, check_positive_int, check_sub_batches, pairwise_view_loss, sync_from_rank0


class WMSELoss(ViewLoss):
    """MSE between positives after Cholesky whitening of each random sub-batch.

    Per whitening iteration the batch is split into random sub-batches of ``w_size`` samples
    (``torch.randperm(N)``, one draw per iteration, shared by all views); each sub-batch of each
    view is whitened with :func:`~wssl_zoo.whitening.cholesky_whiten`; the loss sums the
    normalised MSE (``normalize=True``) or the plain MSE over all view pairs and divides by
    ``w_iter * V (V - 1) / 2``. All sub-batches and views are whitened in one batched call.

    Args:
        w_size: sub-batch size; must divide the batch size N and exceed the embedding dim D.
        w_iter: number of random sub-batch partitions averaged per step.
        eps: shrinkage of the covariance towards the identity.
        normalize: L2-normalise the whitened vectors before the MSE (the paper's default).
        gather_distributed: whiten over the global batch gathered from all DDP ranks.

    Input: a list of V >= 2 tensors (N, D). Output: a scalar (float32, or float64 for float64 input).
    """

    method = "wmse"  # its facts (projector placement, distributed whitening): wssl_zoo.methods.fact

    def __init__(
        self,
        w_size: int = 128,
        w_iter: int = 1,
        eps: float = 0.0,
        normalize: bool = True,
        gather_distributed: bool = False,
    ):
        super().__init__()
        self.w_size = check_positive_int(w_size, "w_size", "WMSELoss")
        self.w_iter = check_positive_int(w_iter, "w_iter", "WMSELoss")
        self.eps = check_eps(eps, "WMSELoss")
        self.normalize = bool(normalize)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return (
            f"w_size={self.w_size}, w_iter={self.w_iter}, eps={self.eps}, "
            f"normalize={self.normalize}, gather_distributed={self.gather_distributed}"
        )

    def _loss(self, h: torch.Tensor) -> torch.Tensor:
        num_views, n, dim = h.shape
        num_sub = check_sub_batches(n, self.w_size, "WMSELoss", self.gather_distributed)
        if self.w_size <= dim:
            raise ValueError(
                f"WMSELoss: w_size={self.w_size} must be larger than the embedding dim D={dim}: "
                f"a covariance of {dim}x{dim} from {self.w_size} samples is singular"
            )
        loss = h.new_zeros(())
        for _ in range(self.w_iter):
            perm = sync_from_rank0(torch.randperm(n), self.gather_distributed).to(h.device)
            sub = h.index_select(1, perm).view(num_views, num_sub, self.w_size, dim)
            # The loss is a mean over samples, so it is computed in sub-batch order.
            z = cholesky_whiten(sub, self.eps).reshape(num_views, n, dim)
            loss = loss + pairwise_view_loss(z, self.normalize)
        return loss / (self.w_iter * num_views * (num_views - 1) // 2)
