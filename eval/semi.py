"""``python -m eval.semi``: semi-supervised fine-tuning on a labelled 1 % or 10 % subset.

    python -m eval.semi --model intl_r50 --data /imagenet --split 1pct --split-file 1percent.txt
    python -m eval.semi --model runs/c10 --dataset cifar10 --data DATA --split 10pct \\
        --make-split-file splits/cifar10_10pct.txt --percent 10 --seed 0   # write a class-balanced subset, then train

Split files: SimCLR's ImageNet subset files (one image name per line, e.g.
``n01440764_10026.JPEG``; the class is the wnid before ``_``) are checked on load: 12,811 lines
for 1 % and 128,116 for 10 %, and every listed image must exist under ``ROOT/train/<wnid>/``;
otherwise the error lists what is missing. Files written by ``--make-split-file`` hold paths
relative to ``ROOT/train`` (image folders) or sample indices (torchvision datasets).

Recipes (eval/protocols.py): ``semi_intl`` (INTL's ``evaluate.py --weights finetune``, Barlow
Twins style: 20 epochs, separate backbone lr 0.004 and classifier lr 0.2 per 256 images, constant
as INTL's published commands run it, BN in train mode) and ``semi_simclr`` (Nesterov SGD, lr 0.05
per 256 images, 60 epochs for 1 %, 30 for 10 %). The accuracy is measured after the final epoch on
the val/test split. Under torchrun the fine-tuning runs with DDP (each process takes
batch/world images of its DistributedSampler shard); rank 0 writes the record.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wssl_zoo import cliargs

from ._cli import add_common, check_out, record_path, run_main
from .protocols import get_protocol, protocol_for_model, with_overrides

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
    from wssl_zoo.fileio import atomic_write_bytes

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


def finetune(protocol, weights, model: nn.Module, dataset: str, root: str, indices: list[int], split: str, seed: int,
             device: torch.device, workers: int, progress: bool = True, epochs: int | None = None,
             normalisation: str = "authors") -> dict[str, float]:
    """Fine-tune backbone + linear head on ``indices`` of the training split; top-1/top-5 (%) on the
    held-out split after the last epoch. ``epochs`` defaults to the recipe's for ``split``."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from wssl_zoo.data.datasets import TransformedDataset

    from .features import build_split
    from .linear import _topk

    epochs = epochs or (protocol.epochs_1pct if split == "1pct" else protocol.epochs_10pct)
    size = weights.img_size
    eval_tf = weights.eval_transform(dataset, normalisation)
    norm = [t for t in eval_tf.transforms if isinstance(t, T.Normalize)][0]
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    train = build_split(dataset, root, "train")
    classes = len(train.classes)
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if distributed else 1
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    subset = TransformedDataset(Subset(train, indices), train_tf)
    # under torchrun every process takes batch_size / world images of its DistributedSampler shard
    sampler = torch.utils.data.DistributedSampler(subset, seed=seed, shuffle=True) if distributed else None
    per_rank = max(1, protocol.batch_size // world)
    loader = DataLoader(subset, batch_size=per_rank, shuffle=sampler is None, sampler=sampler,
                        generator=gen if sampler is None else None, num_workers=workers,
                        # as INTL's loader the last partial batch is kept, unless it would hold a single
                        # image (BN in train mode cannot normalise one 1x1 feature map)
                        drop_last=(len(indices) // world) % per_rank == 1, pin_memory=device.type == "cuda")
    model = nn.Sequential(model, nn.Linear(model.num_features, classes)).to(device)
    with torch.no_grad():
        model[1].weight.normal_(0, 0.01)
        model[1].bias.zero_()
    scale = protocol.batch_size / 256
    groups = [dict(params=model[1].parameters(), lr=protocol.lr_head * scale, base=protocol.lr_head * scale),
              dict(params=model[0].parameters(), lr=protocol.lr_backbone * scale, base=protocol.lr_backbone * scale)]
    opt = torch.optim.SGD(groups, lr=0, momentum=protocol.momentum, nesterov=protocol.nesterov,
                          weight_decay=protocol.weight_decay)
    ddp = None
    if distributed:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = ddp or model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    bar = tqdm(total=epochs * len(loader), desc=f"fine-tune {split}", unit="batch", disable=not progress,
               dynamic_ncols=True)
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        q = lr_factor(protocol, epoch, epochs)
        for g in opt.param_groups:
            g["lr"] = g["base"] * q
        net.train(protocol.bn_train)
        for images, targets in loader:
            with amp:
                logits = net(images.to(device, non_blocking=True))
            loss = F.cross_entropy(logits.float(), torch.as_tensor(targets).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
    bar.close()
    model.eval()
    test = build_split(dataset, root, "test")
    test_loader = DataLoader(TransformedDataset(test, eval_tf), batch_size=256, num_workers=workers)
    logits, labels = [], []
    with torch.no_grad():
        for images, targets in test_loader:
            with amp:
                logits.append(model(images.to(device)).float().cpu())
            labels.append(torch.as_tensor(targets))
    return _topk(torch.cat(logits), torch.cat(labels))


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
    p.add_argument("--split", required=True, choices=["1pct", "10pct"], help="the labelled fraction")
    p.add_argument("--split-file", metavar="FILE", help="the subset file (SimCLR's for ImageNet); required unless "
                   "--make-split-file writes one")
    p.add_argument("--make-split-file", metavar="OUT", help="write a class-balanced subset of the training split "
                   "(--percent of every class, drawn with --split-seed) to OUT and use it")
    p.add_argument("--percent", type=float, help="with --make-split-file: the labelled percentage of every class "
                   "(default: 1 for --split 1pct, 10 for 10pct)")
    p.add_argument("--split-seed", type=int, help="seed of --make-split-file (default: --seed)")
    p.add_argument("--protocol", default="semi_intl", help="semi_intl (default) or semi_simclr")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (recorded)")
    p.add_argument("--make-only", action="store_true", help="with --make-split-file: only write the file")
    return p


def run(args, command: str) -> int:
    from wssl_zoo.weights import resolve

    from .features import build_split, mark_normalisation
    from .records import dataset_fingerprint, make_record, write_record

    check_out(args, args.seeds)
    train = build_split(args.dataset, args.data, "train")
    if not args.make_only:  # every split the run needs is checked before any fine-tuning
        build_split(args.dataset, args.data, "test")
    percent = args.percent if args.percent is not None else {"1pct": 1, "10pct": 10}[args.split]
    split_seed = args.seed if args.split_seed is None else args.split_seed
    if args.make_split_file:
        from wssl_zoo.distributed import barrier, is_main

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
    device = cliargs.device(args.device)
    for seed in range(args.seed, args.seed + args.seeds):
        weights = resolve(args.model, seed, verify=not args.allow_unverified)
        protocol, proto_record = with_overrides(get_protocol(protocol_for_model(args.protocol, weights.recipe), "semi"),
                                                epochs=args.epochs, batch_size=args.batch_size)
        proto_record = mark_normalisation(proto_record, args.normalisation)
        start = time.perf_counter()
        metrics = finetune(protocol, weights, weights.build(), args.dataset, args.data, indices, args.split, seed, device,
                           args.workers, not args.no_progress, epochs=args.epochs, normalisation=args.normalisation)
        from wssl_zoo.fileio import sha256_file

        record = make_record(task=f"semi_{args.split}", model=weights.spec, weights_sha256=weights.weights_sha256,
                             protocol=proto_record, dataset=dict(name=args.dataset, root=str(args.data),
                                                                 fingerprint=dataset_fingerprint(train)),
                             seed=seed, metrics=metrics, wall_seconds=time.perf_counter() - start, command=command,
                             extra=dict(model_label=weights.label, arch=weights.arch, stem=weights.stem,
                                        split_file=str(args.split_file), split_sha256=sha256_file(args.split_file),
                                        labelled_images=len(indices)))
        path = write_record(record, record_path(args, f"semi_{args.split}", weights.label, proto_record["name"], seed, record))
        print(f"semi {args.split} {proto_record['name']} seed {seed}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) + f" -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("eval.semi", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
