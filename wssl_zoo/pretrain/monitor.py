"""Cheap measurements of a backbone during and after pretraining.

- :func:`extract_features`: backbone features of a labelled dataset (eval mode, no grad).
- :func:`knn_accuracy`: k-NN majority vote (cosine or Euclidean). The training monitor runs it with
  cosine distance on subsets and logs ``monitor_knn_cos``: not the papers' 5-NN (Euclidean, full
  sets, ``eval.knn`` protocol ``knn5``), and never published as comparable to it.
- :func:`linear_probe_accuracy`: a linear classifier trained on fixed features (full batch,
  Adam then a cosine decay) — the fast probe of the demo and the monitor.
- :func:`effective_rank`: exp(entropy) of the normalised eigenvalue spectrum of the feature
  covariance (Roy & Vetterli, 2007), the quantity whitening methods are designed to keep high.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) float32 on the CPU, labels (N,) int64) of ``dataset`` = (image, label) pairs."""
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    feats, labels = [], []
    iterator = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=desc, unit="batch", leave=False)
    for images, targets in iterator:
        out = backbone(images.to(device, non_blocking=True))
        feats.append(out.float().cpu())
        labels.append(torch.as_tensor(targets))
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 5,
    metric: str = "cosine",
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy (%) of a k-NN majority vote; ties go to the nearest neighbour's class."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if k < 1 or k > len(train_x):
        raise ValueError(f"k={k} must be between 1 and the number of training samples {len(train_x)}")
    if metric == "cosine":
        train_x, test_x = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    correct = 0
    for start in range(0, len(test_x), chunk):
        q = test_x[start : start + chunk]
        if metric == "cosine":
            idx = (q @ train_x.T).topk(k, dim=1).indices
        else:
            idx = torch.cdist(q, train_x).topk(k, dim=1, largest=False).indices
        votes = F.one_hot(train_y[idx], num_classes).float()
        # Tie-break towards nearer neighbours: weights 1 + tiny decreasing epsilon by rank.
        votes = votes * (1 + 1e-3 * torch.linspace(1, 0, k)).view(1, k, 1)
        pred = votes.sum(dim=1).argmax(dim=1)
        correct += int((pred == test_y[start : start + chunk]).sum())
    return 100.0 * correct / len(test_x)


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 5e-6,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """Top-1 accuracy (%) of a linear classifier on standardised fixed features.

    Full-batch Adam with a cosine learning-rate decay to 1e-3 x lr (the small-dataset probe of
    the W-MSE code uses Adam on precomputed features too), reported at the final epoch.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    xtr = ((train_x - mean) / std).to(device)
    xte = ((test_x - mean) / std).to(device)
    ytr = train_y.to(device)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    clf = nn.Linear(xtr.shape[1], num_classes)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(clf.weight.shape, generator=gen) * 0.01)
        clf.bias.zero_()
    clf = clf.to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * epoch / epochs)))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(clf(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        pred = clf(xte).argmax(dim=1).cpu()
    return 100.0 * float((pred == test_y).float().mean())


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy) of the normalised eigenvalues of the covariance of ``features`` (N, F)."""
    x = features.double()
    x = x - x.mean(dim=0, keepdim=True)
    cov = x.T @ x / max(len(x) - 1, 1)
    eig = torch.linalg.eigvalsh(cov).clamp_min(0)
    total = eig.sum()
    if total <= 0:
        return 0.0
    p = eig / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
