"""Models, datasets and the on-disk feature cache shared by linear, kNN and spectrum.

Features are extracted once per (weights sha256, architecture and stem, dataset fingerprint,
split, transform) and stored as safetensors under ``$WSSL_ZOO_CACHE`` (default
``~/.cache/wssl_zoo/features``), written atomically. Under torchrun each process extracts its
shard and the shards are gathered, so every rank ends with the whole matrix.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .records import dataset_fingerprint

SMALL = ("cifar10", "cifar100", "stl10", "fashion_mnist")


@dataclass
class ModelInfo:
    """A backbone and what identifies it in records."""

    model: nn.Module
    spec: str  # what the user passed
    label: str  # short name for file names and tables
    weights_sha256: str
    arch: str
    stem: str
    method: str | None
    img_size: int
    folder: Path | None  # the model directory (None for random init)


def _state_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _tensors_sha256(*tensors: torch.Tensor) -> str:
    """sha256 over the raw bytes of ``tensors`` (the feature cache's integrity check)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def resolve_model(spec: str, seed: int = 0, verify: bool = True) -> ModelInfo:
    """``spec``: a registry name/alias, a model directory, ``hf-hub:org/name[@rev]``, or
    ``random:ARCH[:STEM[:SIZE]]`` (random init from ``seed``, the baseline every table needs).
    ``verify=False`` accepts an ``hf-hub:`` repo without ``SHA256SUMS``."""
    import wssl_zoo
    from wssl_zoo.hub import resolve_local
    from wssl_zoo.modelio import load_model_dir, read_config, sha256_file

    if spec.startswith("random:"):
        parts = spec.split(":")
        arch = parts[1] if len(parts) > 1 and parts[1] else "resnet18"
        stem = parts[2] if len(parts) > 2 else "imagenet"
        size = int(parts[3]) if len(parts) > 3 else (224 if stem == "imagenet" else 32)
        torch.manual_seed(seed)
        model = wssl_zoo.create(arch, stem=stem)
        return ModelInfo(model, spec, f"random-{arch}-{stem}-{size}px", _state_sha256(model), arch, stem, None, size, None)
    folder = resolve_local(spec, verify=verify)
    if folder.is_file():
        folder = folder.parent
    model = load_model_dir(folder)
    config = read_config(folder)
    section = config.get("wssl_zoo", {})
    label = Path(spec).name if Path(spec).exists() else spec.replace("hf-hub:", "").replace("/", "--")
    return ModelInfo(model, spec, label, sha256_file(folder / "model.safetensors"), config["architecture"],
                     section.get("stem", "imagenet"), section.get("method"),
                     int(config["pretrained_cfg"]["input_size"][-1]), folder)


def build_split(dataset: str, root: str | None, split: str):
    """``split`` is train or test (test = ``val/`` or ``test/`` for an image folder)."""
    from wssl_zoo.data import build_dataset
    from wssl_zoo.data.datasets import heldout_split

    if split == "train":
        return build_dataset(dataset, root, "train")
    held = heldout_split(dataset, root)
    if held is None:
        raise FileNotFoundError(f"{root}: no val/ or test/ folder next to train/ (ImageNet layout: ROOT/train/<class>/, "
                                "ROOT/val/<class>/)")
    return held


def eval_tf(info: ModelInfo, dataset: str):
    """The dataset's deterministic evaluation transform, normalised with the model's own mean and std
    (its ``config.json``: what it was trained with), where the model records them."""
    import torchvision.transforms as T

    from wssl_zoo.data import eval_transform

    tf = eval_transform(dataset if dataset in SMALL else "imagefolder", info.img_size, info.method)
    cfg = getattr(info.model, "pretrained_cfg", None) or {}
    if info.folder is not None and cfg.get("mean") and cfg.get("std"):
        tf = T.Compose([T.Normalize(tuple(cfg["mean"]), tuple(cfg["std"])) if isinstance(t, T.Normalize) else t
                        for t in tf.transforms])
    return tf


def cache_dir(override: str | None = None) -> Path:
    return Path(override or os.environ.get("WSSL_ZOO_CACHE") or Path.home() / ".cache" / "wssl_zoo" / "features")


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def extract(model: nn.Module, dataset, device: torch.device, batch_size: int = 256, workers: int = 2,
            progress: bool = True, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) float32 on the CPU, labels (N,)) in dataset order; AMP (bf16) on CUDA;
    under torchrun each rank does every world-th sample and the results are gathered."""
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    rank, world = _dist()
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    model = model.to(device).eval()
    feats, labels = [], []
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for images, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress or rank != 0, dynamic_ncols=True):
        with amp:
            out = model(images.to(device, non_blocking=True))
        feats.append(out.float().cpu())
        labels.append(torch.as_tensor(targets))
    x, y = torch.cat(feats), torch.cat(labels).long()
    if world > 1:
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, (indices, x, y))
        order = torch.tensor([i for p in parts for i in p[0]])
        x = torch.cat([p[1] for p in parts])[order.argsort()]
        y = torch.cat([p[2] for p in parts])[order.argsort()]
    return x, y


def cached_features(info: ModelInfo, dataset: str, root: str | None, split: str, device: torch.device,
                    cache: str | None = None, batch_size: int = 256, workers: int = 2,
                    progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(X, y, meta)``; ``meta["cache_hit"]`` says whether the features came from the cache."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    from wssl_zoo.data.datasets import TransformedDataset
    from wssl_zoo.modelio import atomic_write_bytes

    base = build_split(dataset, root, split)
    transform = eval_tf(info, dataset)
    fingerprint = dataset_fingerprint(base)
    key_src = json.dumps(dict(weights=info.weights_sha256, arch=info.arch, stem=info.stem, dataset=dataset,
                              fingerprint=fingerprint, split=split, transform=repr(transform)), sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    path = cache_dir(cache) / f"{key}.safetensors"
    meta = dict(fingerprint=fingerprint, cache_key=key, cache_file=str(path), transform=repr(transform),
                num_samples=len(base), classes=len(getattr(base, "classes", [])))
    if path.is_file():
        try:
            data = load_file(str(path))
            x, y = data["features"], data["labels"]
            with safe_open(str(path), "pt") as fh:
                stored = (fh.metadata() or {}).get("sha256")
            if stored != _tensors_sha256(x, y) or len(x) != len(base) or len(y) != len(base):
                raise ValueError("its checksum or row count does not match")
            return x, y, dict(meta, cache_hit=True)
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed
            warnings.warn(f"{path}: damaged feature cache entry ({exc}); recomputing it")
            path.unlink(missing_ok=True)
    x, y = extract(info.model, TransformedDataset(base, transform), device, batch_size, workers, progress,
                   desc=f"{split} features")
    if _dist()[0] == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        x, y = x.contiguous(), y.contiguous()
        atomic_write_bytes(path, save({"features": x, "labels": y},
                                      metadata={"key": key_src, "sha256": _tensors_sha256(x, y)}))
    return x, y, dict(meta, cache_hit=False)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; a bare ``cuda`` is the current device (under
    torchrun, this process's LOCAL_RANK GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)
