"""``python -m eval.semi``: semi-supervised fine-tuning on a labelled 1 % or 10 % subset.

    python -m eval.semi --model intl_r50 --data /imagenet --labelled 1pct --split-file 1percent.txt
    python -m eval.semi --model runs/c10 --dataset cifar10 --data DATA --labelled 10pct \\
        --make-split-file splits/cifar10_10pct.txt --percent 10 --seed 0   # write a class-balanced subset, then train

Split files: SimCLR's ImageNet subset files (one image name per line, e.g.
``n01440764_10026.JPEG``; the class is the wnid before ``_``) are checked on load: 12,811 lines
for 1 % and 128,116 for 10 %, and every listed image must exist under ``ROOT/train/<wnid>/``;
otherwise the error lists what is missing. Files written by ``--make-split-file`` hold paths
relative to ``ROOT/train`` (image folders) or sample indices (torchvision datasets).

Recipes (eval/protocols.py): ``semi_intl`` (INTL's ``evaluate.py --weights finetune``, Barlow
Twins style: 20 epochs, separate backbone lr 0.004 and classifier lr 0.2 per 256 images, constant
as INTL's published commands run it, BN in train mode) and ``semi_simclr`` (Nesterov SGD, lr 0.05
per 256 images, 60 epochs for 1 %, 30 for 10 %). Top-1/top-5 on the val/test split are measured
after every epoch (as INTL's ``evaluate.py:219``); the record's ``metrics`` are the final epoch's,
``best_epoch`` / ``best_metrics`` the best one's. Under torchrun the fine-tuning runs as the authors
ran it: DDP without SyncBN (BatchNorm statistics per process), each process taking batch / world
images of every global batch (eval/training.py); the record stores the world size and the
per-process batch, since the result depends on them. float32 unless ``--amp``. A checkpoint next to
the record is written after every epoch (and on SIGTERM / SIGUSR1 after the current step, then exit
status 75): rerun the same command with ``--resume`` to continue. Rank 0 writes the record.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, Subset

from wssl_zoo import cliargs
from wssl_zoo.data import EpochKeyed, SeededViews
from wssl_zoo.data.datasets import TransformedDataset
from wssl_zoo.distributed import barrier, is_main, rank_world
from wssl_zoo.evaluation import autocast, rank_rows
from wssl_zoo.fileio import atomic_write_bytes, sha256_file
from wssl_zoo.preempt import ignore_stop_signals
from wssl_zoo.weights import resolve

from ._cli import add_checkpoint_flags, add_common, check_out, checkpoint_for, finished_record, record_path, run_main
from .features import build_split, mark_overrides
from .protocols import get_protocol, protocol_for_model, with_overrides
from .records import dataset_fingerprint, make_record, write_record
from .training import (
    GlobalBatchSampler,
    all_ranks_sum,
    batch_loss,
    best_epoch,
    collate,
    counts_to_metrics,
    fit,
    topk_counts,
)

IMAGENET_COUNTS = {"1pct": 12811, "10pct": 128116}
_SIMCLR_NAME = re.compile(r"^(n\d{8})_[^/\s]+$")


class SplitFileError(ValueError):
    """A split file does not match the data; the message says what is wrong or missing."""


def read_split_file(path: str | Path, split: str, train) -> list[int]:
    """Indices into ``train`` (an image folder or torchvision dataset) of the images listed in ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such split file")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SplitFileError(f"{path}: the split file is empty")
    if all(_SIMCLR_NAME.match(line) for line in lines):  # SimCLR's ImageNet subset files
        expected = IMAGENET_COUNTS[split]
        if len(lines) != expected:
            raise SplitFileError(f"{path}: {len(lines):,} lines, but SimCLR's ImageNet {split} subset has {expected:,} "
                                 "(1percent.txt: 12,811, 10percent.txt: 128,116)")
        by_name = {Path(p).name: i for i, (p, _) in enumerate(train.samples)}
        by_class = {c: i for i, c in enumerate(train.classes)}
        missing = [line for line in lines if line not in by_name]
        if missing:
            raise SplitFileError(f"{path}: {len(missing):,} listed images are not under {train.folder}: "
                                 + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        wrong = [line for line in lines if train.samples[by_name[line]][1] != by_class.get(_SIMCLR_NAME.match(line)[1])]
        if wrong:
            raise SplitFileError(f"{path}: {len(wrong)} images are not in their wnid's folder: {', '.join(wrong[:20])}")
        return [by_name[line] for line in lines]
    if all(line.isdigit() for line in lines):
        indices = [int(line) for line in lines]
        bad = [i for i in indices if i >= len(train)]
        if bad:
            raise SplitFileError(f"{path}: indices out of range for {len(train):,} images: {bad[:20]}")
        return indices
    if not hasattr(train, "samples"):
        raise SplitFileError(f"{path}: lines must be sample indices for this dataset, got {lines[0]!r}")
    root = Path(train.folder)
    by_rel = {str(Path(p).relative_to(root)): i for i, (p, _) in enumerate(train.samples)}
    missing = [line for line in lines if line not in by_rel]
    if missing:
        raise SplitFileError(f"{path}: {len(missing):,} listed images are not under {root}: "
                             + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    return [by_rel[line] for line in lines]


def make_split_file(train, percent: float, seed: int, out: str | Path) -> list[int]:
    """A class-balanced ``percent`` % subset of ``train`` (fixed ``seed``), written atomically."""
    if not 0 < percent <= 100:
        raise ValueError(f"--percent must be in (0, 100], got {percent}")
    per_class: dict[int, list[int]] = {}
    for i, t in enumerate(train.targets):
        per_class.setdefault(int(t), []).append(i)
    rng = random.Random(seed)
    chosen = []
    for t in sorted(per_class):
        idx = per_class[t]
        chosen += sorted(rng.sample(idx, max(1, round(len(idx) * percent / 100))))
    if hasattr(train, "samples"):
        root = Path(train.folder)
        lines = [str(Path(train.samples[i][0]).relative_to(root)) for i in chosen]
    else:
        lines = [str(i) for i in chosen]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out), ("\n".join(lines) + "\n").encode())
    return chosen


def finetune(protocol, weights, model: nn.Module, dataset: str, train, indices: list[int], test, epochs: int,
             seed: int, device: torch.device, workers: int, job, progress: bool = True,
             normalisation: str = "authors", amp: str = "none"):
    """Fine-tune backbone + linear head on ``indices`` of ``train`` (the training split) for ``epochs``,
    measuring top-1/top-5 (%) on ``test`` (the held-out split) after every epoch; returns
    ``((history, earlier seconds), sampler)`` (:func:`eval.training.fit`).

    As INTL ``evaluate.py --weights finetune``: random-resized crop + flip (drawn from (seed, epoch,
    index)), BatchNorm in train mode with the statistics of each process's own batch (DDP without
    SyncBN, ``evaluate.py:131``), each process taking batch / world images of every global batch
    (``evaluate.py:129``); the last global batch is dropped when a process's part of it would hold a
    single image (train-mode BN cannot normalise one 1x1 feature map). float32 unless ``amp``
    (fp16 with a grad scaler, checkpointed)."""
    world = rank_world()[1]
    size = weights.img_size
    eval_tf = weights.eval_transform(dataset, normalisation)
    norm = [t for t in eval_tf.transforms if isinstance(t, T.Normalize)][0]
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    classes = len(train.classes)
    sampler = GlobalBatchSampler(len(indices), protocol.batch_size, seed, epoch_keys=True,
                                 min_per_rank=2 if protocol.bn_train else 0)
    loader = DataLoader(EpochKeyed(SeededViews(Subset(train, indices), train_tf, seed)), batch_sampler=sampler,
                        num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals)
    mine = rank_rows(len(test))  # each process measures its block of the test split; the counts are summed
    test_loader = DataLoader(Subset(TransformedDataset(test, eval_tf), mine), batch_size=256, num_workers=workers,
                             worker_init_fn=ignore_stop_signals)
    torch.manual_seed(seed)
    model = nn.Sequential(model, nn.Linear(model.num_features, classes))
    with torch.no_grad():  # INTL evaluate.py:73-74
        model[1].weight.normal_(0, 0.01)
        model[1].bias.zero_()
    model = model.to(device)
    scale = protocol.batch_size / 256
    groups = [dict(params=model[1].parameters(), lr=protocol.lr_head * scale, base=protocol.lr_head * scale),
              dict(params=model[0].parameters(), lr=protocol.lr_backbone * scale, base=protocol.lr_backbone * scale)]
    opt = torch.optim.SGD(groups, lr=0, momentum=protocol.momentum, nesterov=protocol.nesterov,
                          weight_decay=protocol.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    net = model if world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)  # no SyncBN: BN statistics per process
    k = min(5, classes)

    def begin_epoch(epoch: int) -> None:
        q = lr_factor(protocol, epoch, epochs)
        for g in opt.param_groups:
            g["lr"] = g["base"] * q
        net.train(protocol.bn_train)

    def step(batch, global_count: int) -> None:
        if batch is None:  # this process's part of the last global batch is empty
            images, targets = torch.zeros(0, 3, size, size), torch.zeros(0, dtype=torch.long)
        else:
            images, targets = batch
        with autocast(device, amp):
            logits = net(images.to(device, non_blocking=True))
        loss = batch_loss(logits, torch.as_tensor(targets).to(device), global_count, world)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def evaluate() -> dict[str, float]:
        model.eval()
        counts = torch.zeros(3, dtype=torch.long)
        with torch.no_grad():
            for images, targets in test_loader:
                with autocast(device, amp):
                    logits = model(images.to(device))
                counts += topk_counts(logits.float(), torch.as_tensor(targets).to(device), k)
        return counts_to_metrics(all_ranks_sum(counts, device), k)

    return fit(job, state=dict(model=model, optimizer=opt, scaler=scaler if amp == "fp16" else None), epochs=epochs,
               sampler=sampler, batches=lambda: loader, step=step, begin_epoch=begin_epoch, evaluate=evaluate,
               progress=progress, desc=f"fine-tune {len(indices)} images",
               stop_device=device if device.type == "cuda" else None), sampler


def lr_factor(protocol, epoch: int, epochs: int) -> float:
    """The learning-rate multiplier of ``epoch`` (0-based) as the recipe's source schedules it."""
    if protocol.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    if protocol.schedule == "step":  # MultiStepLR stepped after every epoch
        return protocol.gamma ** sum(epoch >= m for m in protocol.milestones)
    if protocol.schedule == "none":
        return 1.0
    raise ValueError(f"unknown schedule {protocol.schedule!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.semi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--labelled", dest="split", choices=["1pct", "10pct"], help="the labelled fraction (required; "
                   "--split means a dataset split in the other tools, so this one is --labelled)")
    cliargs.add_alias(p, "--split", "split", choices=["1pct", "10pct"])
    p.add_argument("--split-file", metavar="FILE", help="the subset file (SimCLR's for ImageNet); required unless "
                   "--make-split-file writes one")
    p.add_argument("--make-split-file", metavar="OUT", help="write a class-balanced subset of the training split "
                   "(--percent of every class, drawn with --split-seed) to OUT and use it")
    p.add_argument("--percent", type=float, help="with --make-split-file: the labelled percentage of every class "
                   "(default: 1 for --labelled 1pct, 10 for 10pct)")
    p.add_argument("--split-seed", type=int, help="seed of --make-split-file (default: --seed)")
    p.add_argument("--protocol", default="semi_intl", help="semi_intl (default) or semi_simclr")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (recorded)")
    p.add_argument("--make-only", action="store_true", help="with --make-split-file: only write the file")
    add_checkpoint_flags(p, "the fine-tuning")
    return p


def run(args, command: str) -> int:
    if args.split is None:
        raise ValueError("--labelled is required: 1pct or 10pct, the labelled fraction")

    check_out(args, args.seeds)
    train = build_split(args.dataset, args.data, "train")
    test = None if args.make_only else build_split(args.dataset, args.data, "test")  # checked before any fine-tuning
    percent = args.percent if args.percent is not None else {"1pct": 1, "10pct": 10}[args.split]
    split_seed = args.seed if args.split_seed is None else args.split_seed
    if args.make_split_file:
        if is_main():
            chosen = make_split_file(train, percent, split_seed, args.make_split_file)
            print(f"wrote {len(chosen):,} images ({percent:g} % per class, seed {split_seed}) to {args.make_split_file}")
        barrier()
        if args.make_only:
            return 0
        args.split_file = args.make_split_file
    if not args.split_file:
        raise ValueError("pass --split-file FILE (SimCLR's 1percent.txt / 10percent.txt for ImageNet) or "
                         "--make-split-file OUT")
    indices = read_split_file(args.split_file, args.split, train)
    split_sha256 = sha256_file(args.split_file)
    fingerprint = dataset_fingerprint(train)
    device = cliargs.device(args.device)
    world = rank_world()[1]
    task = f"semi_{args.split}"
    for seed in range(args.seed, args.seed + args.seeds):
        weights = resolve(args.model, seed, verify=not args.allow_unverified)
        protocol, proto_record = with_overrides(get_protocol(protocol_for_model(args.protocol, weights.recipe), "semi"),
                                                epochs=args.epochs, batch_size=args.batch_size)
        proto_record = mark_overrides(proto_record, args.normalisation, args.amp)
        dataset = dict(name=args.dataset, root=str(args.data), fingerprint=fingerprint)
        identity = dict(task=task, weights_sha256=weights.weights_sha256, protocol=proto_record, dataset=dataset,
                        seed=seed)
        path = record_path(args, task, weights.label, proto_record["name"], seed, identity)
        if finished_record(args, path, identity) is not None:
            continue
        job = checkpoint_for(args, path, {"task": task, "model hash": weights.weights_sha256, "protocol": proto_record,
                                          "data fingerprint": {"train": fingerprint, "test": dataset_fingerprint(test)},
                                          "split file": split_sha256, "world size": world, "seed": seed})
        epochs = args.epochs or (protocol.epochs_1pct if args.split == "1pct" else protocol.epochs_10pct)
        start = time.perf_counter()
        (history, earlier), sampler = finetune(
            protocol, weights, weights.build(), args.dataset, train, indices, test, epochs, seed, device, args.workers,
            job, not args.no_progress, normalisation=args.normalisation, amp=args.amp)
        metrics = history[-1]["metrics"]
        best, best_metrics = best_epoch(history)
        record = make_record(task=task, model=weights.spec, weights_sha256=weights.weights_sha256,
                             protocol=proto_record, dataset=dataset, seed=seed, metrics=metrics,
                             wall_seconds=earlier + time.perf_counter() - start, command=command,
                             extra=dict(model_label=weights.label, arch=weights.arch, stem=weights.stem,
                                        split_file=str(args.split_file), split_sha256=split_sha256,
                                        labelled_images=len(indices), world_size=world,
                                        per_process_batch=sampler.per_process_batch, sync_batchnorm=False,
                                        epochs_run=len(history), best_epoch=best, best_metrics=best_metrics))
        path = write_record(record, path)
        job.finish()
        print(f"semi {args.split} {proto_record['name']} seed {seed}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
              + f" (final epoch; best top1 {best_metrics['top1']:.2f} at epoch {best}) -> {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("eval.semi", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
