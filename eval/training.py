"""What the evaluations that train share (``eval.linear``, cached and augmented, and ``eval.semi``):
the data order, the checkpoint next to the record, resumption, stopping on a signal, and the
per-epoch test metrics (final and best).

**Data order.** :class:`GlobalBatchSampler` draws each epoch's order from ``(seed, epoch)`` alone
and cuts it into global batches of the protocol's batch size; rank r of W takes the r-th
contiguous part of each global batch (:func:`wssl_zoo.evaluation.rank_rows`), so the per-process
batch is the protocol's batch / W, as in the authors' lincls (INTL ``evaluate.py:129`` ``cfg.bs =
int(cfg.bs / ngpus_per_node)``; CW-RGP ``ImageNet/lincls.py:132``), and W processes see exactly
the samples of one process at the same global batch. Together with augmentations drawn from
``(seed, epoch, index)`` (:class:`wssl_zoo.data.SeededViews`) this makes two ranks train the same
classifier as one process, and a resumed run the same as an uninterrupted one. Unlike torch's
``DistributedSampler`` (the authors' ``evaluate.py:195``, ``lincls.py:206``), whose order depends on
the world size and which pads each rank's share with repeated samples, no sample is repeated.

**Loss.** Each rank sums the cross-entropy of its samples and divides by the number of samples in
the *global* batch (times W, which DDP's gradient average divides out): the gradient of the global
batch's mean loss, even when the last global batch splits unevenly over the ranks (the authors'
per-rank mean averaged over ranks gives the same when the shares are equal).

**Checkpoints** (:class:`Checkpoint`): one file next to the record the evaluation will write
(``<record>.ckpt``), so the same command finds it again; written atomically by rank 0 after every
epoch and, on SIGTERM / SIGUSR1 / Ctrl-C, after the step in progress (then the job exits with
status 75 and the command that resumes, :mod:`wssl_zoo.preempt`). It holds the model, optimiser
(and grad scaler) state, the epoch and step reached, the test metrics of every finished epoch and
the evaluation's identity (model hash, protocol, data fingerprints, world size, seed, ...):
``--resume`` continues from it and refuses one whose identity differs, naming the field; without
``--resume`` an existing checkpoint is refused, naming it; ``--resume`` with no checkpoint starts
fresh and says so. The checkpoint is deleted once the record is written (``--keep-checkpoint``
keeps it as ``<record>.final.ckpt``: the trained classifier or network, e.g. to compare runs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Sampler, default_collate
from tqdm.auto import tqdm

from wssl_zoo.data import derive_seed
from wssl_zoo.distributed import is_main, rank_world
from wssl_zoo.evaluation import rank_rows
from wssl_zoo.fileio import atomic_open
from wssl_zoo.preempt import Preempted, StopOnSignal, resume_command, stopped_message

CHECKPOINT_FORMAT = 1


class GlobalBatchSampler(Sampler[list]):
    """This rank's part of every global batch of one epoch (see the module docstring).

    ``n`` samples, ``batch_size`` the global batch; the order of epoch e is
    ``randperm(n)`` seeded by ``derive_seed(seed, e)``. Yields lists of dataset keys: ``(epoch, index)``
    pairs with ``epoch_keys`` (for :class:`wssl_zoo.data.EpochKeyed`), else indices. The last, partial global batch is
    kept (the authors' loaders keep it), except that with ``min_per_rank`` it is dropped when a rank's
    part of it would be smaller (train-mode BatchNorm cannot normalise one sample); a rank's part of it
    may be empty (``[]``, see :func:`collate`). :meth:`set_epoch` picks the epoch and the step to start
    at (a resumed epoch starts mid-way)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int | None = None, world: int | None = None,
                 epoch_keys: bool = False, min_per_rank: int = 0):
        if rank is None or world is None:
            rank, world = rank_world()
        if batch_size < world:
            raise ValueError(f"--batch-size {batch_size} is smaller than the {world} processes: each needs at least one "
                             "sample of every global batch")
        self._derive = derive_seed
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch_keys, self.min_per_rank = epoch_keys, min_per_rank
        full, rest = divmod(n, batch_size)
        keep_last = rest > 0 and (min_per_rank == 0 or rest // world >= min_per_rank)
        self.steps = full + (1 if keep_last else 0)
        if self.steps == 0:
            raise ValueError(f"{n} samples are too few for one global batch of {batch_size} over {world} processes "
                             "(lower --batch-size or add data)")
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def global_count(self, step: int) -> int:
        """Samples in the global batch of ``step``."""
        return min(self.batch_size, self.n - step * self.batch_size)

    @property
    def per_process_batch(self) -> int:
        """The largest part of a global batch any rank takes (the batch / world, rounded up)."""
        return len(rank_rows(self.batch_size, 0, self.world))

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self):
        gen = torch.Generator().manual_seed(self._derive(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=gen)
        for step in range(self.start_step, self.steps):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            rows = rank_rows(len(batch), self.rank, self.world)
            mine = batch[rows.start:rows.stop].tolist()
            yield [(self.epoch, i) for i in mine] if self.epoch_keys else mine


def collate(batch: list):
    """``default_collate``, and None for a rank's empty part of the last global batch."""
    return default_collate(batch) if batch else None


def batch_loss(logits: torch.Tensor, targets: torch.Tensor, global_count: int, world: int) -> torch.Tensor:
    """This rank's share of the global batch's mean cross-entropy, scaled for DDP's average over
    ``world`` ranks (see the module docstring); 0 (with a gradient) for an empty part."""
    return F.cross_entropy(logits.float(), targets, reduction="sum") * (world / global_count)


def topk_counts(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """``[samples, top-1 hits, top-k hits]`` (int64, CPU) of ``logits`` (n, C) against ``targets`` (n,)."""
    top = logits.topk(k, dim=1).indices
    hit = top == targets[:, None]
    return torch.tensor([len(targets), int(hit[:, 0].sum()), int(hit.any(1).sum())], dtype=torch.long)


def counts_to_metrics(counts: torch.Tensor, k: int) -> dict[str, float]:
    """Summed :func:`topk_counts` of every rank -> ``{"top1": %, "top<k>": %}``."""
    n, top1, topk = (int(v) for v in counts)
    return {"top1": 100.0 * top1 / max(n, 1), f"top{k}": 100.0 * topk / max(n, 1)}


def all_ranks_sum(counts: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``counts`` summed over the ranks (itself in one process)."""
    if rank_world()[1] == 1:
        return counts
    on = counts.to(device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(on)
    return on.cpu()


def best_epoch(history: list[dict]) -> tuple[int, dict[str, float]]:
    """``(epoch, metrics)`` of the epoch with the highest top-1, the first such one as the authors'
    ``is_best = acc1 > best_acc1`` (INTL ``evaluate.py:225-226``, CW-RGP ``ImageNet/lincls.py:240-241``)."""
    best = max(history, key=lambda h: (h["metrics"]["top1"], -h["epoch"]))
    return best["epoch"], dict(best["metrics"])


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 90 else text[:87] + "..."


class Checkpoint:
    """The checkpoint of one evaluation (see the module docstring).

    ``path``: where it lives (next to the record); ``identity``: ``{field: value}`` that a resumed run
    must match (the field names are what the refusal names: "model hash", "protocol", "data
    fingerprint", "world size", ...); ``resume``: ``--resume`` was given; ``resume_with``: the
    command that resumes (for the stop message)."""

    def __init__(self, path: Path, identity: dict[str, Any], resume: bool, resume_with: str, keep: bool = False):
        self.path, self.identity, self.resume, self.resume_with = Path(path), identity, resume, resume_with
        self.keep = keep

    @property
    def final_path(self) -> Path:
        """Where ``--keep-checkpoint`` leaves the last checkpoint (the trained state) once the record is written."""
        return self.path.with_name(self.path.name.removesuffix(".ckpt") + ".final.ckpt")

    def _read(self) -> tuple[str, Any]:
        """Rank 0's verdict: ``("fresh", note)``, ``("resume", checkpoint)`` or ``("error", message)``."""
        if not self.path.is_file():
            note = (f"--resume: no checkpoint at {self.path}: nothing to resume, starting fresh" if self.resume else None)
            return "fresh", note
        try:
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to remove
            return "error", f"{self.path}: not a readable checkpoint ({type(exc).__name__}: {exc}); delete it to start over"
        where = f"epoch {ckpt.get('epoch', '?')}, step {ckpt.get('step', '?')} of {ckpt.get('epochs', '?')} epochs"
        if not self.resume:
            return "error", (f"{self.path}: a checkpoint of this evaluation is there ({where}); pass --resume to continue "
                             "it, or delete it to start over")
        old = ckpt.get("identity", {})
        for field, value in self.identity.items():
            if old.get(field) != value:
                return "error", (f"{self.path}: the checkpoint was written with another {field} ({_shown(old.get(field))}; "
                                 f"this run: {_shown(value)}); refusing to resume: run the original command with "
                                 "--resume, or delete the checkpoint to start over")
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            return "error", f"{self.path}: checkpoint format {ckpt.get('format')!r}, this code reads {CHECKPOINT_FORMAT}"
        return "resume", ckpt

    def start(self, state: dict[str, Any]) -> tuple[int, int, list[dict], float]:
        """Load the checkpoint into ``state`` (``{name: object with state_dict / load_state_dict}``) when
        resuming; ``(epoch, step, history, seconds so far)``. Rank 0 reads the file and broadcasts it, so
        the other ranks need not see the folder. Raises ValueError as :meth:`_read` says."""
        rank, world = rank_world()
        verdict = [self._read() if rank == 0 else None]
        if world > 1:
            dist.broadcast_object_list(verdict, src=0)
        kind, payload = verdict[0]
        if kind == "error":
            raise ValueError(payload)
        if kind == "fresh":
            if payload and rank == 0:
                print(payload, flush=True)
            return 0, 0, [], 0.0
        for name, obj in state.items():
            if obj is not None:
                obj.load_state_dict(payload["state"][name])
        if rank == 0:
            print(f"resuming from {self.path} at epoch {payload['epoch'] + 1}, step {payload['step']}", flush=True)
        return int(payload["epoch"]), int(payload["step"]), list(payload["history"]), float(payload["seconds"])

    def save(self, state: dict[str, Any], epoch: int, step: int, epochs: int, history: list[dict], seconds: float) -> None:
        """Rank 0 writes the checkpoint atomically: ``epoch`` epochs and ``step`` steps of the next done."""
        if not is_main():
            return
        data = dict(format=CHECKPOINT_FORMAT, identity=self.identity, epoch=epoch, step=step, epochs=epochs,
                    history=history, seconds=seconds,
                    state={name: obj.state_dict() for name, obj in state.items() if obj is not None})
        with atomic_open(self.path) as fh:
            torch.save(data, fh)

    def finish(self) -> None:
        """The record is written: the checkpoint has served; rank 0 removes it, or with ``keep`` renames it to
        :attr:`final_path` (no longer a run to resume, so the same command runs again without ``--resume``)."""
        if not is_main():
            return
        if self.keep and self.path.is_file():
            self.path.replace(self.final_path)
        else:
            self.path.unlink(missing_ok=True)


def fit(job: Checkpoint, *, state: dict[str, Any], epochs: int, sampler: GlobalBatchSampler,
        batches: Callable[[], Iterable], step: Callable[[Any, int], None], begin_epoch: Callable[[int], None],
        evaluate: Callable[[], dict[str, float]], progress: bool = True, desc: str = "train",
        stop_device: torch.device | None = None) -> tuple[list[dict], float]:
    """Train ``epochs`` epochs, resumable; returns ``(history, seconds)``: the test metrics after every
    epoch (``[{"epoch": e (1-based), "metrics": {...}}]``) and the training time of every run of it.

    Per epoch: ``begin_epoch(epoch)`` (learning rate, modes), ``sampler.set_epoch``, then
    ``step(batch, global_count)`` for each of ``batches()`` (an iterable over the sampler); after the
    epoch ``evaluate()`` and the checkpoint. Between steps a stop signal on any rank
    (:class:`wssl_zoo.preempt.StopOnSignal`) writes the checkpoint and raises :class:`Preempted`."""
    start_epoch, start_step, history, before = job.start(state)
    began = time.perf_counter()
    bar = tqdm(total=epochs * sampler.steps, initial=start_epoch * sampler.steps + start_step, desc=desc, unit="batch",
               disable=not progress or not is_main(), dynamic_ncols=True)

    def seconds() -> float:
        return before + time.perf_counter() - began

    try:
        with StopOnSignal() as stop:
            for epoch in range(start_epoch, epochs):
                first = start_step if epoch == start_epoch else 0
                begin_epoch(epoch)
                sampler.set_epoch(epoch, first)
                done = first
                for batch in batches():
                    step(batch, sampler.global_count(done))
                    done += 1
                    bar.update()
                    if done < sampler.steps and stop.requested(stop_device):
                        job.save(state, epoch, done, epochs, history, seconds())
                        raise Preempted(stopped_message(stop.signal_name, f"at epoch {epoch + 1}, step {done} of "
                                                        f"{sampler.steps}", str(job.path), job.resume_with))
                history.append(dict(epoch=epoch + 1, metrics=evaluate()))
                job.save(state, epoch + 1, 0, epochs, history, seconds())
                if epoch + 1 < epochs and stop.requested(stop_device):
                    raise Preempted(stopped_message(stop.signal_name, f"after epoch {epoch + 1}", str(job.path),
                                                    job.resume_with))
    finally:
        bar.close()
    return history, seconds()


def resume_with(module: str, argv: list[str]) -> str:
    """The command that resumes an evaluation: the same arguments and ``--resume``; under torchrun the
    same torchrun options in front."""
    world = rank_world()[1]
    prog = f"python -m {module}" if world == 1 else f"torchrun <the same options, {world} processes> -m {module}"
    return resume_command(prog, argv)
