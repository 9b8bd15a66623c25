"""``python -m eval.linear``: a linear classifier on a frozen backbone, under a named protocol.

    python -m eval.linear --model cwrgp_r50 --data /imagenet                     # protocol fast
    python -m eval.linear --model intl_r50 --data /imagenet --protocol intl      # the paper's, augmented
    python -m eval.linear --model runs/intl_c10 --dataset cifar10 --data DATA --protocol small --seeds 3

Protocols (eval/protocols.py): ``fast`` and ``small`` train on features extracted once and
cached on disk; ``intl`` and ``cwrgp`` run the frozen backbone on augmented images every epoch.
The reported accuracy is the test accuracy after the final epoch, never the best epoch.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from wssl_zoo import cliargs

from ._cli import add_common, check_out, record_path, run_main
from .protocols import LinearProtocol, get_protocol, protocol_for_model, with_overrides


def _optimizer(protocol: LinearProtocol, params) -> torch.optim.Optimizer:
    if protocol.optimizer == "sgd":
        return torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum, nesterov=protocol.nesterov,
                               weight_decay=protocol.weight_decay)
    if protocol.optimizer == "adam":
        return torch.optim.Adam(params, lr=protocol.lr, weight_decay=protocol.weight_decay)
    if protocol.optimizer == "lars":  # apex LARC(clip=False) with weight decay 0 is this LARS
        from wssl_zoo.optim import LARS

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


def _topk(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return {"top1": 100.0 * float((top[:, 0] == y).float().mean()),
            f"top{k}": 100.0 * float((top == y[:, None]).any(1).float().mean())}


def train_on_features(protocol: LinearProtocol, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor,
                      yte: torch.Tensor, seed: int, device: torch.device, progress: bool = True) -> dict[str, float]:
    """Train the classifier on cached features; metrics (%) on the test features after the last epoch."""
    from tqdm.auto import tqdm

    if protocol.standardize:
        mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    xtr, ytr, xte, yte = xtr.to(device), ytr.to(device), xte.to(device), yte.to(device)
    classes = int(max(ytr.max(), yte.max())) + 1
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], classes).to(device)
    opt = _optimizer(protocol, clf.parameters())
    n = len(xtr)
    for epoch in tqdm(range(protocol.epochs), desc="linear (cached features)", unit="epoch", disable=not progress,
                      dynamic_ncols=True):
        for group in opt.param_groups:
            group["lr"] = lr_at(protocol, epoch)
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, protocol.batch_size):
            idx = perm[start:start + protocol.batch_size]
            loss = F.cross_entropy(clf(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return _topk(clf(xte), yte)


def train_augmented(protocol: LinearProtocol, weights, model: nn.Module, dataset: str, root: str, seed: int,
                    device: torch.device, workers: int, progress: bool = True, train_subset: int | None = None,
                    normalisation: str = "authors") -> dict[str, float]:
    """The papers' protocol: every epoch runs the frozen backbone (BN in eval mode) on freshly
    augmented images (random-resized crop + flip); the test set uses the deterministic transform."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from wssl_zoo.data import balanced_subset
    from wssl_zoo.data.datasets import TransformedDataset

    from .features import build_split, extract

    size = weights.img_size
    eval_tf = weights.eval_transform(dataset, normalisation)
    norm = [t for t in eval_tf.transforms if isinstance(t, T.Normalize)][0]
    mean, std = norm.mean, norm.std
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    train = build_split(dataset, root, "train")
    if train_subset:
        train = Subset(train, balanced_subset(train.targets, max(1, train_subset // len(train.classes)), seed))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader = DataLoader(TransformedDataset(train, train_tf), batch_size=protocol.batch_size, shuffle=True,
                        num_workers=workers, generator=gen, drop_last=False, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    backbone = model.to(device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    classes = len(build_split(dataset, root, "train").classes)
    clf = nn.Linear(backbone.num_features, classes).to(device)
    with torch.no_grad():  # as the authors: weight N(0, 0.01), bias 0
        clf.weight.normal_(0, 0.01)
        clf.bias.zero_()
    opt = _optimizer(protocol, clf.parameters())
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    bar = tqdm(total=protocol.epochs * len(loader), desc="linear (augmented)", unit="batch",
               disable=not progress, dynamic_ncols=True)
    for epoch in range(protocol.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(protocol, epoch)
        for images, targets in loader:
            with torch.no_grad(), amp:
                feats = backbone(images.to(device, non_blocking=True)).float()
            loss = F.cross_entropy(clf(feats), torch.as_tensor(targets).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
    bar.close()
    test = build_split(dataset, root, "test")
    xte, yte = extract(backbone, TransformedDataset(test, eval_tf), device, 256, workers, progress,
                       desc="test features")
    with torch.no_grad():
        return _topk(clf(xte.to(device)), yte.to(device))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.linear", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--protocol", default="fast", help="fast, small (cached features), intl or cwrgp (augmented "
                   "images every epoch) (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="override the protocol's epochs (recorded as an override)")
    p.add_argument("--lr", type=float, help="override the protocol's learning rate (recorded)")
    p.add_argument("--train-subset", type=int, help="train on a class-balanced subset of about this many "
                   "training images, the same images for every protocol at a given seed (recorded; default: all)")
    return p


def evaluate(args, command: str, seed: int) -> dict:
    """One seed: train and write the record; returns it."""
    from wssl_zoo.weights import resolve

    from .features import cached_features, mark_normalisation
    from .records import dataset_fingerprint, make_record, write_record

    device = cliargs.device(args.device)
    weights = resolve(args.model, seed, verify=not args.allow_unverified)
    model = weights.build()
    # an authors' protocol takes the values for the model it evaluates (e.g. intl -> intl_plain)
    protocol, proto_record = with_overrides(get_protocol(protocol_for_model(args.protocol, weights.recipe), "linear"),
                                            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    proto_record = mark_normalisation(proto_record, args.normalisation)
    start = time.perf_counter()
    extra = {}
    if protocol.features == "cached":
        xtr, ytr, meta = cached_features(weights, model, args.dataset, args.data, "train", device, args.cache_dir,
                                         workers=args.workers, progress=not args.no_progress,
                                         normalisation=args.normalisation)
        xte, yte, meta_te = cached_features(weights, model, args.dataset, args.data, "test", device, args.cache_dir,
                                            workers=args.workers, progress=not args.no_progress,
                                            normalisation=args.normalisation)
        if args.train_subset:  # the same class-balanced images as the augmented protocols' --train-subset
            from wssl_zoo.data import balanced_subset

            keep = torch.tensor(balanced_subset(ytr.tolist(), max(1, args.train_subset // (int(ytr.max()) + 1)), seed))
            xtr, ytr = xtr[keep], ytr[keep]
            proto_record["name"] += f"+train_subset={args.train_subset}"
            proto_record["train_subset"] = args.train_subset
        metrics = train_on_features(protocol, xtr, ytr, xte, yte, seed, device, not args.no_progress)
        fingerprint = meta["fingerprint"]
        extra = dict(cache_hit=meta["cache_hit"] and meta_te["cache_hit"], train_samples=len(xtr), test_samples=len(xte))
    else:
        if args.train_subset:
            proto_record["name"] += f"+train_subset={args.train_subset}"
            proto_record["train_subset"] = args.train_subset
        metrics = train_augmented(protocol, weights, model, args.dataset, args.data, seed, device, args.workers,
                                  not args.no_progress, args.train_subset, normalisation=args.normalisation)
        from .features import build_split

        fingerprint = dataset_fingerprint(build_split(args.dataset, args.data, "train"))
    record = make_record(task="linear", model=weights.spec, weights_sha256=weights.weights_sha256, protocol=proto_record,
                         dataset=dict(name=args.dataset, root=str(args.data), fingerprint=fingerprint),
                         seed=seed, metrics=metrics, wall_seconds=time.perf_counter() - start, command=command,
                         extra=dict(extra, model_label=weights.label, arch=weights.arch, stem=weights.stem))
    path = write_record(record, record_path(args, "linear", weights.label, proto_record["name"], seed, record))
    print(f"linear {proto_record['name']} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
          + f"  ({record['wall_seconds']:.1f} s) -> {path}")
    return record


def run(args, command: str) -> int:
    from .records import aggregate

    check_out(args, args.seeds)
    records = [evaluate(args, command, seed) for seed in range(args.seed, args.seed + args.seeds)]
    if len(records) > 1:
        for name, s in aggregate(records).items():
            print(f"{name}: {s['mean']:.2f} ± {s['std']:.2f} over {s['n']} seeds")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("eval.linear", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
