"""``python -m eval.linear``: a linear classifier on a frozen backbone, under a named protocol.

    python -m eval.linear --model cwrgp_r50 --data /imagenet                  # the paper's protocol: cwrgp
    python -m eval.linear --model runs/intl_c10 --dataset cifar10 --data DATA # the paper's protocol: small
    python -m eval.linear --model intl_r50 --data /imagenet --protocol fast   # wssl-zoo's quick probe
    torchrun --nproc_per_node 8 -m eval.linear --model intl_r50 --data /imagenet   # the authors' lincls, 8 GPUs

Without ``--protocol`` the model's paper protocol runs (printed with its source): for a registry
entry or a run whose method and pretraining dataset are known, what its authors evaluated such a
model with (``small`` for CIFAR / STL-10 / Tiny-ImageNet models, ``intl`` / ``intl_plain`` /
``cwrgp`` for ImageNet ones); otherwise ``fast``, wssl-zoo's own quick probe, not a paper's.

Protocols (eval/protocols.py): ``fast`` and ``small`` train on features extracted once and cached
on disk; ``intl``, ``intl_plain`` and ``cwrgp`` run the frozen backbone (BatchNorm in eval mode) on
freshly augmented images every epoch. Both kinds run as the authors' lincls under torchrun: DDP,
each process taking protocol batch / world images of every global batch, the protocol's global
batch and learning rate; two processes train the same classifier as one (eval/training.py).
Evaluation runs in float32 unless ``--amp`` (recorded as a protocol override).

The test metrics are measured after every epoch; the record's ``metrics`` are those after the final
epoch (the headline: cards and the leaderboard show them), and ``best_epoch`` / ``best_metrics``
give the best test epoch, which the authors' scripts print (``best_acc1``). A checkpoint next to
the record is written after every epoch (and on SIGTERM / SIGUSR1 after the current step, then
exit status 75): rerun the same command with ``--resume`` to continue.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, Subset

from wssl_zoo import cliargs
from wssl_zoo.data import EpochKeyed, SeededViews, balanced_subset
from wssl_zoo.distributed import is_main, rank_world
from wssl_zoo.evaluation import autocast, rank_rows
from wssl_zoo.optim import LARS
from wssl_zoo.preempt import ignore_stop_signals
from wssl_zoo.weights import resolve

from ._cli import add_checkpoint_flags, add_common, check_out, checkpoint_for, finished_record, record_path, run_main
from .features import build_split, feature_store, mark_overrides
from .protocols import LinearProtocol, get_protocol, paper_linear_protocol, protocol_for_model, with_overrides
from .records import aggregate, dataset_fingerprint, make_record, write_record
from .training import (
    Checkpoint,
    GlobalBatchSampler,
    all_ranks_sum,
    batch_loss,
    best_epoch,
    collate,
    counts_to_metrics,
    fit,
    topk_counts,
)


def _optimizer(protocol: LinearProtocol, params) -> torch.optim.Optimizer:
    if protocol.optimizer == "sgd":
        return torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum, nesterov=protocol.nesterov,
                               weight_decay=protocol.weight_decay)
    if protocol.optimizer == "adam":
        return torch.optim.Adam(params, lr=protocol.lr, weight_decay=protocol.weight_decay)
    if protocol.optimizer == "lars":  # apex LARC(clip=False) with weight decay 0 is this LARS

        return LARS(params, lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay, eta=0.001)
    raise ValueError(f"unknown optimizer {protocol.optimizer!r}")


def lr_at(protocol: LinearProtocol, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based), as each source schedules it (per epoch)."""
    if protocol.schedule == "step":
        return protocol.lr * protocol.gamma ** sum(epoch >= m for m in protocol.milestones)
    if protocol.schedule == "cosine":
        return protocol.final_lr + (protocol.lr - protocol.final_lr) * 0.5 * (1 + math.cos(math.pi * epoch / protocol.epochs))
    if protocol.schedule == "exponential":
        return protocol.lr * (protocol.final_lr / protocol.lr) ** (epoch / protocol.epochs)
    if protocol.schedule == "none":
        return protocol.lr
    raise ValueError(f"unknown schedule {protocol.schedule!r}")


# Rows moved or summed at a time: 16,384 x 2,048 float32 = 128 MiB of host memory (256 MiB as float64)
CHUNK_ROWS = 16384


def standardisation(store, rows: torch.Tensor, chunk: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (1, F), std (1, F)) float32 of the store's ``rows``, summed in float64 chunk by chunk in a
    fixed order (the same numbers on every rank and for any world size); std unbiased, at least 1e-6."""
    total = torch.zeros(store.dim, dtype=torch.float64)
    squares = torch.zeros(store.dim, dtype=torch.float64)
    for first in range(0, len(rows), chunk):
        x = store.take(rows[first:first + chunk]).double()
        total += x.sum(0)
        squares += (x * x).sum(0)
    n = len(rows)
    mean = total / n
    var = (squares - n * mean * mean) / max(n - 1, 1)
    return mean.float()[None], var.clamp_min(0).sqrt().float().clamp_min(1e-6)[None]


def train_classifier(protocol: LinearProtocol, *, dim: int, classes: int, seed: int, device: torch.device,
                     sampler: GlobalBatchSampler, batches, features_of, test_x: torch.Tensor, test_y: torch.Tensor,
                     job: Checkpoint, authors_init: bool, progress: bool = True, desc: str = "linear"):
    """Train ``nn.Linear(dim, classes)`` under ``protocol`` (DDP under torchrun) on ``features_of(batch)``
    = ``(x (b, dim), y (b,))`` for each of ``batches()``; ``test_x`` / ``test_y``: this rank's test rows
    (on ``device``), evaluated after every epoch. ``authors_init``: weights N(0, 0.01), bias 0 (INTL
    ``evaluate.py:73-74``, CW-RGP ``lincls.py:92-93``), else ``nn.Linear``'s own init (W-MSE ``eval/sgd.py:12``).
    Returns ``(history, earlier seconds)`` of :func:`eval.training.fit`."""
    world = rank_world()[1]
    torch.manual_seed(seed)
    clf = nn.Linear(dim, classes)
    if authors_init:
        with torch.no_grad():
            clf.weight.normal_(0, 0.01)
            clf.bias.zero_()
    clf = clf.to(device)
    net = clf if world == 1 else nn.parallel.DistributedDataParallel(
        clf, device_ids=[device.index] if device.type == "cuda" else None)
    opt = _optimizer(protocol, clf.parameters())
    k = min(5, classes)

    def begin_epoch(epoch: int) -> None:
        for group in opt.param_groups:
            group["lr"] = lr_at(protocol, epoch)

    def step(batch, global_count: int) -> None:
        x, y = features_of(batch)
        loss = batch_loss(net(x), y, global_count, world)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def evaluate() -> dict[str, float]:
        counts = torch.zeros(3, dtype=torch.long)
        with torch.no_grad():
            for first in range(0, len(test_x), 4096):
                counts += topk_counts(clf(test_x[first:first + 4096]), test_y[first:first + 4096], k)
        return counts_to_metrics(all_ranks_sum(counts, device), k)

    return fit(job, state=dict(classifier=clf, optimizer=opt), epochs=protocol.epochs, sampler=sampler,
               batches=batches, step=step, begin_epoch=begin_epoch, evaluate=evaluate, progress=progress, desc=desc,
               stop_device=device if device.type == "cuda" else None)


def _empty(dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(0, dim, device=device), torch.zeros(0, dtype=torch.long, device=device)


def train_on_features(protocol: LinearProtocol, train, train_rows: torch.Tensor, test, seed: int,
                      device: torch.device, job: Checkpoint, progress: bool = True, resident: bool | None = None):
    """The cached protocols: the classifier on the stored features ``train`` (rows ``train_rows``) and
    ``test`` (:class:`wssl_zoo.evaluation.FeatureShards`). The training rows go to the device whole
    when they fit (``resident``; default: on CUDA when they take under half of its free memory), else
    every step takes its rows from the memory-mapped shards (the CPU, or a GPU too small). With
    ``protocol.standardize`` the features are z-scored with the training rows' statistics."""
    ytr = train.labels[train_rows]
    classes = int(max(int(ytr.max()), int(test.labels.max()))) + 1
    mean, std = standardisation(train, train_rows) if protocol.standardize else (None, None)

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return x if mean is None else (x - mean.to(x.device)) / std.to(x.device)

    if resident is None:
        resident = device.type == "cuda" and len(train_rows) * train.dim * 4 < 0.5 * torch.cuda.mem_get_info(device)[0]
    if resident:  # chunk by chunk onto the device, then scaled there
        xtr = torch.empty(len(train_rows), train.dim, device=device)
        for first in range(0, len(train_rows), CHUNK_ROWS):
            xtr[first:first + CHUNK_ROWS] = scaled(train.take(train_rows[first:first + CHUNK_ROWS]).to(device))
    ytr_dev = ytr.to(device)
    sampler = GlobalBatchSampler(len(train_rows), protocol.batch_size, seed)

    def features_of(keys: list[int]):
        if not keys:
            return _empty(train.dim, device)
        idx = torch.tensor(keys)
        if resident:
            idx = idx.to(device)
            return xtr[idx], ytr_dev[idx]
        return scaled(train.take(train_rows[idx]).to(device)), ytr_dev[idx.to(device)]

    mine = rank_rows(len(test))
    test_x = scaled(test.range(mine.start, mine.stop).to(device))
    test_y = test.labels[mine.start:mine.stop].to(device)
    return train_classifier(protocol, dim=train.dim, classes=classes, seed=seed, device=device, sampler=sampler,
                            batches=lambda: sampler, features_of=features_of, test_x=test_x, test_y=test_y, job=job,
                            authors_init=False, progress=progress, desc="linear (cached features)"), sampler


def train_augmented(protocol: LinearProtocol, weights, model: nn.Module, train_set, classes: int, test, seed: int,
                    device: torch.device, workers: int, job: Checkpoint, progress: bool = True,
                    normalisation: str = "authors", dataset: str = "imagefolder", amp: str = "none"):
    """The papers' protocol: every epoch runs the frozen backbone (BN in eval mode) on freshly
    augmented images of ``train_set`` (random-resized crop + flip, drawn from (seed, epoch, index));
    ``test`` are the stored features of the test split (the deterministic transform, the same
    frozen backbone: the same every epoch)."""
    eval_tf = weights.eval_transform(dataset, normalisation)
    norm = [t for t in eval_tf.transforms if isinstance(t, T.Normalize)][0]
    # INTL evaluate.py:167-174, CW-RGP lincls.py:196-203
    train_tf = T.Compose([T.RandomResizedCrop(weights.img_size), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(norm.mean, norm.std)])
    sampler = GlobalBatchSampler(len(train_set), protocol.batch_size, seed, epoch_keys=True)
    loader = DataLoader(EpochKeyed(SeededViews(train_set, train_tf, seed)), batch_sampler=sampler,
                        num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals)
    backbone = model.to(device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    dim = backbone.num_features

    def features_of(batch):
        if batch is None:
            return _empty(dim, device)
        images, targets = batch
        with torch.no_grad(), autocast(device, amp):
            feats = backbone(images.to(device, non_blocking=True))
        return feats.float(), torch.as_tensor(targets).to(device)

    mine = rank_rows(len(test))
    return train_classifier(protocol, dim=dim, classes=classes, seed=seed, device=device, sampler=sampler,
                            batches=lambda: loader, features_of=features_of,
                            test_x=test.range(mine.start, mine.stop).to(device),
                            test_y=test.labels[mine.start:mine.stop].to(device), job=job, authors_init=True,
                            progress=progress, desc="linear (augmented)"), sampler


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.linear", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--protocol", default=None,
                   help="small, fast (cached features), intl, intl_plain or cwrgp (augmented images every epoch); "
                   "fast is wssl-zoo's quick probe, not a paper's (default: the model's paper protocol, printed, else "
                   "fast)")
    p.add_argument("--epochs", type=int, help="override the protocol's epochs (recorded as an override)")
    p.add_argument("--lr", type=float, help="override the protocol's learning rate (recorded)")
    p.add_argument("--train-subset", type=int, help="train on a class-balanced subset of about this many "
                   "training images, the same images for every protocol at a given seed (recorded; default: all)")
    add_checkpoint_flags(p, "the evaluation")
    return p


def evaluate(args, command: str, seed: int) -> dict:
    """One seed: train and write the record; returns it."""
    start = time.perf_counter()
    device = cliargs.device(args.device)
    weights = resolve(args.model, seed, verify=not args.allow_unverified)
    if args.protocol:
        name = args.protocol
    else:
        name, why = paper_linear_protocol(weights, args.dataset)
        if is_main():
            print(f"protocol {name}: {why}", flush=True)
    model = weights.build()
    # an authors' protocol takes the values for the model it evaluates (e.g. intl -> intl_plain)
    protocol, proto_record = with_overrides(get_protocol(protocol_for_model(name, weights.recipe), "linear"),
                                            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    proto_record = mark_overrides(proto_record, args.normalisation, args.amp)
    if args.train_subset:  # the same class-balanced images for the cached and the augmented protocols
        proto_record["name"] += f"+train_subset={args.train_subset}"
        proto_record["train_subset"] = args.train_subset
    train_split = build_split(args.dataset, args.data, "train")
    fingerprint = dataset_fingerprint(train_split)
    dataset = dict(name=args.dataset, root=str(args.data), fingerprint=fingerprint)
    identity = dict(task="linear", weights_sha256=weights.weights_sha256, protocol=proto_record, dataset=dataset,
                    seed=seed)
    path = record_path(args, "linear", weights.label, proto_record["name"], seed, identity)
    done = finished_record(args, path, identity)
    if done is not None:
        return done
    opts = dict(workers=args.workers, progress=not args.no_progress, normalisation=args.normalisation, amp=args.amp)
    test, meta_te = feature_store(weights, model, args.dataset, args.data, "test", device, args.cache_dir, **opts)
    if protocol.features == "cached":
        train, meta = feature_store(weights, model, args.dataset, args.data, "train", device, args.cache_dir, **opts,
                                    base=train_split, fingerprint=fingerprint)
        targets = train.labels.tolist()
    else:
        targets = list(train_split.targets)
    classes = int(max(targets)) + 1
    rows = (torch.tensor(balanced_subset(targets, max(1, args.train_subset // classes), seed)) if args.train_subset
            else torch.arange(len(targets)))
    world = rank_world()[1]
    job = checkpoint_for(args, path, {"task": "linear", "model hash": weights.weights_sha256, "protocol": proto_record,
                                      "data fingerprint": {"train": fingerprint, "test": meta_te["fingerprint"]},
                                      "world size": world, "seed": seed})
    if protocol.features == "cached":
        (history, earlier), sampler = train_on_features(protocol, train, rows, test, seed, device, job,
                                                        not args.no_progress)
        extra = dict(cache_hit=meta["cache_hit"] and meta_te["cache_hit"], train_samples=len(rows),
                     test_samples=len(test))
    else:
        train_set = Subset(train_split, rows.tolist()) if args.train_subset else train_split
        (history, earlier), sampler = train_augmented(
            protocol, weights, model, train_set, len(train_split.classes), test, seed, device, args.workers, job,
            not args.no_progress, args.normalisation, args.dataset, args.amp)
        extra = dict(cache_hit=meta_te["cache_hit"], train_samples=len(train_set), test_samples=len(test))
    metrics = history[-1]["metrics"]
    best, best_metrics = best_epoch(history)
    record = make_record(task="linear", model=weights.spec, weights_sha256=weights.weights_sha256, protocol=proto_record,
                         dataset=dataset, seed=seed, metrics=metrics,
                         wall_seconds=earlier + time.perf_counter() - start, command=command,
                         extra=dict(extra, model_label=weights.label, arch=weights.arch, stem=weights.stem,
                                    world_size=world, per_process_batch=sampler.per_process_batch,
                                    epochs_run=len(history), best_epoch=best, best_metrics=best_metrics))
    path = write_record(record, path)
    job.finish()
    if is_main():
        print(f"linear {proto_record['name']} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
              + f" (final epoch; best top1 {best_metrics['top1']:.2f} at epoch {best})"
              + f"  ({record['wall_seconds']:.1f} s) -> {path}", flush=True)
    return record


def run(args, command: str) -> int:
    check_out(args, args.seeds)
    records = [evaluate(args, command, seed) for seed in range(args.seed, args.seed + args.seeds)]
    if len(records) > 1 and is_main():
        for name, s in aggregate(records).items():
            print(f"{name}: {s['mean']:.2f} ± {s['std']:.2f} over {s['n']} seeds")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("eval.linear", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
