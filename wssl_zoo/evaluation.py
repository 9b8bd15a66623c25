"""The evaluation library: features, k-NN, spectrum / effective rank, and the full-batch probe.

One implementation of each rule, named for what it is, used by the ``eval`` CLIs (which add
protocols, caching and records), the pretraining monitor and the demo:

- :func:`extract_features`: backbone features of a labelled dataset (eval mode, no grad, bf16 on
  CUDA; under torchrun each rank does a shard and every rank gets the whole matrix).
- :func:`knn_predict` / :func:`knn_accuracy` with a named ``rule``:
  ``majority-euclidean`` (the W-MSE / CW-RGP papers' 5-NN: ``torch.cdist`` distance, majority vote,
  a tie going to the smallest class index as ``unique(return_counts=True)`` + ``argmax`` in
  CW-RGP ``base/eval/knn.py`` @ 5bbf6ed4df35), ``majority-cosine`` (the same vote on cosine
  similarity: the cheap pretraining monitor, never a paper number) and ``weighted-cosine``
  (InstDisc's weighted k-NN, votes exp(cos / T)).
- :func:`spectrum` and :func:`effective_rank`: eigenvalues of the feature covariance and
  exp(entropy) of their normalised values (Roy & Vetterli, 2007).
- :func:`linear_probe_full_batch`: a full-batch Adam classifier on standardised features; the
  demo's and the monitor's quick probe (the protocol-driven probes are ``eval.linear``'s).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import rank_world

KNN_RULES = ("majority-euclidean", "majority-cosine", "weighted-cosine")


@torch.no_grad()
def extract_features(model: nn.Module, dataset, device: torch.device | str = "cpu", batch_size: int = 256,
                     workers: int = 2, progress: bool = False, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) float32 on the CPU, labels (N,) int64) of ``dataset`` = (image, label) pairs,
    in dataset order. The model runs in eval mode (its train/eval mode is restored after)."""
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    device = torch.device(device)
    rank, world = rank_world()
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(Subset(dataset, indices) if world > 1 else dataset, batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda")
    was_training = model.training
    model = model.to(device).eval()
    feats, labels = [], []
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for images, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress or rank != 0,
                                dynamic_ncols=True, leave=False):
        with amp:
            out = model(images.to(device, non_blocking=True))
        feats.append(out.float().cpu())
        labels.append(torch.as_tensor(targets))
    model.train(was_training)
    x, y = torch.cat(feats), torch.cat(labels).long()
    if world > 1:
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, (indices, x, y))
        order = torch.tensor([i for p in parts for i in p[0]]).argsort()
        x = torch.cat([p[1] for p in parts])[order]
        y = torch.cat([p[2] for p in parts])[order]
    return x, y


def knn_predict(xtr: torch.Tensor, ytr: torch.Tensor, xq: torch.Tensor, k: int, rule: str,
                temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Predicted classes (Q,) of the queries ``xq`` (Q, F) from the bank ``xtr`` (N, F), ``ytr`` (N,).

    ``rule`` is one of :data:`KNN_RULES`; ``k`` is capped at N.
    """
    if rule not in KNN_RULES:
        raise ValueError(f"unknown k-NN rule {rule!r}; choose one of {list(KNN_RULES)}")
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    classes = int(ytr.max()) + 1
    k = min(k, len(xtr))
    if rule != "majority-euclidean":
        xtr, xq = F.normalize(xtr, dim=1), F.normalize(xq, dim=1)
    preds = []
    for start in range(0, len(xq), chunk):
        q = xq[start:start + chunk]
        if rule == "majority-euclidean":
            idx = torch.cdist(q, xtr).topk(k, dim=1, largest=False).indices
        else:
            top, idx = (q @ xtr.T).topk(k, dim=1)
        if rule == "weighted-cosine":
            scores = torch.zeros(len(idx), classes).scatter_add_(1, ytr[idx], (top / temperature).exp())
        else:  # majority vote; argmax gives a tie to the smallest class index
            scores = F.one_hot(ytr[idx], classes).sum(1)
        preds.append(scores.argmax(1))
    return torch.cat(preds)


def knn_accuracy(xtr: torch.Tensor, ytr: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor, k: int, rule: str,
                 temperature: float = 0.07) -> float:
    """Top-1 accuracy (%) of :func:`knn_predict` on labelled queries."""
    return 100.0 * float((knn_predict(xtr, ytr, xq, k, rule, temperature) == yq).float().mean())


def spectrum(features: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending, float64, clamped at 0) of the covariance of ``features`` (N, D)."""
    x = features.double()
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(1, len(x) - 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)


def effective_rank(eigenvalues: torch.Tensor) -> float:
    """exp(entropy of the normalised ``eigenvalues``) (Roy & Vetterli, 2007); 0 for a zero spectrum."""
    total = eigenvalues.sum()
    if total <= 0:
        return 0.0
    p = eigenvalues / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def feature_effective_rank(features: torch.Tensor) -> float:
    """:func:`effective_rank` of the :func:`spectrum` of ``features`` (N, D)."""
    return effective_rank(spectrum(features))


def linear_probe_full_batch(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
                            epochs: int = 300, lr: float = 1e-2, weight_decay: float = 5e-6, seed: int = 0,
                            device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (%) of a linear classifier on standardised fixed features (N, F).

    Full-batch Adam with a cosine decay of the lr to 1e-3 x ``lr``, weights N(0, 0.01), reported
    at the final epoch. A quick probe for the demo and the monitor, not a paper protocol.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)
    xtr_s, xte_s = ((xtr - mean) / std).to(device), ((xte - mean) / std).to(device)
    ytr_d = ytr.to(device)
    classes = int(max(ytr.max(), yte.max())) + 1
    clf = nn.Linear(xtr.shape[1], classes)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(clf.weight.shape, generator=gen) * 0.01)
        clf.bias.zero_()
    clf = clf.to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * epoch / epochs)))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(clf(xtr_s), ytr_d).backward()
        opt.step()
    with torch.no_grad():
        pred = clf(xte_s).argmax(dim=1).cpu()
    return 100.0 * float((pred == yte).float().mean())


def heldout_metrics(backbone: nn.Module, dataset: str, root, img_size: int, bank: int, queries: int, seed: int,
                    device, workers: int, method: str | None = None) -> dict[str, float]:
    """The quick held-out check of a backbone (demo, ``python -m wssl_zoo.pretrain.evaluate``):
    on class-balanced subsets of ``bank`` training and ``queries`` held-out images, normalised as
    ``method``'s pretraining views were, the cosine majority k-NN (k=5 and k=20), the full-batch
    linear probe and the effective rank of the bank features. Not a paper protocol."""
    from torch.utils.data import Subset

    from .catalogue import eval_dataset
    from .data.datasets import TransformedDataset, balanced_subset, build_dataset, heldout_split
    from .data.transforms import eval_transform

    name = eval_dataset(dataset)
    held = heldout_split(name, root)
    if held is None:
        raise ValueError(f"{root}: a held-out check needs a val/ or test/ split next to train/")
    train = build_dataset(name, root, "train")
    tf = eval_transform(dataset, img_size, method)
    ncls = len(train.classes)
    bank_set = TransformedDataset(Subset(train, balanced_subset(train.targets, max(1, bank // ncls), seed)), tf)
    query_set = TransformedDataset(Subset(held, balanced_subset(held.targets, max(1, queries // ncls), seed)), tf)
    xb, yb = extract_features(backbone, bank_set, device, workers=workers)
    xq, yq = extract_features(backbone, query_set, device, workers=workers)
    return {
        "monitor_knn5_cos": knn_accuracy(xb, yb, xq, yq, k=5, rule="majority-cosine"),
        "monitor_knn20_cos": knn_accuracy(xb, yb, xq, yq, k=20, rule="majority-cosine"),
        "linear_top1": linear_probe_full_batch(xb, yb, xq, yq, seed=seed, device=device),
        "effective_rank": feature_effective_rank(xb),
        "bank": len(xb), "queries": len(xq),
    }
