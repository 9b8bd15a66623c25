"""gather_distributed=True: a 2-rank (gloo, CPU) loss equals the 1-process loss on the
concatenated batch, and DDP's gradient averaging then gives the 1-process gradient."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wssl_zoo.losses import build_loss
from wssl_zoo.pretrain.recipes import RECIPES

from warm import free_port

WORLD = 2


CASES = {
    "wmse": dict(w_size=128, w_iter=2),  # local N=64 < w_size: only the global batch works
    "cwrgp": dict(w_size=16, groups=2, cov_weight=0.01),
    "intl": dict(),
    "intl_m": dict(momentum=True),
    "intl_auto": dict(),  # gather as `wssl-zoo pretrain --gather auto` sets it for INTL (methods/whitening.py:14)
}


def _gather(name: str) -> bool:
    if name != "intl_auto":
        return True
    from wssl_zoo.pretrain.loop import resolve_gather
    from wssl_zoo.pretrain.recipes import RECIPES

    return resolve_gather(RECIPES["intl_cifar10"], "auto", WORLD)


def _method(name: str) -> str:
    return "intl" if name.startswith("intl") else name


def _worker(rank: int, port: int, x: torch.Tensor, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        n_local = x.shape[1] // WORLD
        results = {}
        for name, params in CASES.items():
            local = x[:, rank * n_local : (rank + 1) * n_local].clone().requires_grad_(True)
            # Different generators on purpose: rank 0's random draws must win everywhere.
            torch.manual_seed(123 + 1000 * rank)
            loss = build_loss(_method(name), gather_distributed=_gather(name), **params)(list(local.unbind(0)))
            loss.backward()
            results[name] = (loss.detach(), local.grad)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.gloo
def test_two_rank_gather_equals_one_process_on_concatenated_batch(tmp_path):
    x = torch.randn(3, 128, 64, dtype=torch.float64)
    x = x + 0.5 * torch.randn(1, 128, 64, dtype=torch.float64)
    mp.spawn(_worker, args=(free_port(), x, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    n_local = x.shape[1] // WORLD
    for name, params in CASES.items():
        full = x.clone().requires_grad_(True)
        torch.manual_seed(123)
        loss = build_loss(_method(name), **params)(list(full.unbind(0)))
        loss.backward()
        for r, res in enumerate(ranks):
            rank_loss, rank_grad = res[name]
            assert rank_loss.item() == pytest.approx(loss.item(), abs=1e-12), (name, r)
            expected = full.grad[:, r * n_local : (r + 1) * n_local]
            # DDP averages parameter gradients over ranks, so each rank carries WORLD x its share.
            torch.testing.assert_close(rank_grad / WORLD, expected, rtol=0, atol=1e-13, msg=name)


def test_gather_is_a_no_op_without_process_group():
    x = torch.randn(2, 64, 32)
    torch.manual_seed(0)
    a = build_loss("wmse", w_size=64, gather_distributed=True)(list(x))
    torch.manual_seed(0)
    b = build_loss("wmse", w_size=64)(list(x))
    assert a.item() == b.item()


def test_cwrgp_covariance_term_does_not_depend_on_the_process_split():
    from wssl_zoo.losses import CWRGPLoss
    from wssl_zoo.losses.cwrgp import channel_covariance_loss

    assert RECIPES["cwrgp_imagenet"].loss["cov_block"] == 128
    assert RECIPES["cwrgp_imagenet_100ep"].loss["cov_block"] == 128
    torch.manual_seed(0)
    h = torch.randn(2, 512, 64, dtype=torch.float64)
    one_process = channel_covariance_loss(h, 128)
    four_processes = torch.stack([channel_covariance_loss(h[:, i * 128:(i + 1) * 128], 128) for i in range(4)]).mean()
    two_processes = torch.stack([channel_covariance_loss(h[:, i * 256:(i + 1) * 256], 128) for i in range(2)]).mean()
    assert torch.allclose(one_process, four_processes) and torch.allclose(one_process, two_processes)
    # the old whole-batch term grows with the local batch (about 4x at 512 vs 128)
    assert channel_covariance_loss(h) > 3 * one_process
    loss = CWRGPLoss(w_size=128, groups=1, cov_weight=1.0, cov_block=128)
    assert loss.cov_block == 128 and "cov_block=128" in repr(loss)
    with pytest.raises(ValueError, match="cov_block"):
        channel_covariance_loss(h[:, :200], 128)
