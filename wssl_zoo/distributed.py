"""Processes under torchrun: the one place that joins the process group and answers who is who.

Every engine (pretraining, the eval CLIs, detection's torchvision backend) starts with
:func:`setup`, which turns ``--device`` into this process's ``torch.device`` (a bare ``cuda`` is
the ``LOCAL_RANK`` GPU), pins the process to that GPU, and, when ``WORLD_SIZE`` > 1, joins the
process group (NCCL on CUDA, gloo on the CPU). Outside torchrun it is one process of world 1.
The library's helpers (:func:`rank_world`, :func:`is_main`, :func:`barrier`) ask the process group,
so they work in code that did not call :func:`setup` itself (a test harness, a notebook).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .cliargs import device as parse_device


@dataclass(frozen=True)
class Process:
    """This process: ``rank`` of ``world``, its ``local_rank`` on the node and its ``device``.
    ``created`` says whether :func:`setup` created the process group (and :func:`teardown` ends it)."""

    rank: int
    local_rank: int
    world: int
    device: torch.device
    created: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launcher_env() -> tuple[int, int, int]:
    """``(RANK, LOCAL_RANK, WORLD_SIZE)`` as torchrun sets them (0, 0, 1 outside it)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


def setup(device: str | torch.device = "auto") -> Process:
    """This process's :class:`Process`; joins the process group under torchrun (once: a group that
    exists is used as it is). ValueError naming ``--device`` for a device this machine lacks."""
    rank, local_rank, world = launcher_env()
    dev = device if isinstance(device, torch.device) else parse_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return Process(rank=rank, local_rank=local_rank, world=world, device=dev, created=created)


def teardown(process: Process) -> None:
    """End the process group if :func:`setup` created it."""
    if process.created and dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes records, logs and checkpoints."""
    return rank_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if rank_world()[1] > 1:
        dist.barrier()


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on any: one all-reduce of one number, so that all
    ranks take the same branch (stop at the same step, skip the same batch)."""
    if rank_world()[1] == 1:
        return bool(flag)
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
