"""Models, datasets and the on-disk feature cache shared by linear, kNN and spectrum.

Features are extracted once per (weights sha256, architecture and stem, dataset fingerprint,
split, transform) and stored as safetensors under ``$WSSL_ZOO_CACHE`` (default
``~/.cache/wssl_zoo/features``), written atomically. Under torchrun each process extracts its
shard and the shards are gathered, so every rank ends with the whole matrix.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from wssl_zoo.distributed import is_main
from wssl_zoo.evaluation import extract_features as extract
from wssl_zoo.modelio import tensors_sha256
from wssl_zoo.weights import ResolvedWeights

from .records import dataset_fingerprint


def mark_normalisation(proto_record: dict, normalisation: str) -> dict:
    """``--normalisation train`` is not the authors' evaluation: record it as an override of the protocol."""
    if normalisation != "authors":
        proto_record["name"] += f"+normalisation={normalisation}"
        proto_record.setdefault("base_protocol", proto_record["name"].split("+")[0])
        proto_record["overrides"] = {**proto_record.get("overrides", {}), "normalisation": normalisation}
    return proto_record


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


def cache_dir(override: str | None = None) -> Path:
    from wssl_zoo.paths import cache_dir as _cache_dir

    return _cache_dir(override)


def cached_features(weights: ResolvedWeights, model: nn.Module, dataset: str, root: str | None, split: str,
                    device: torch.device, cache: str | None = None, batch_size: int = 256, workers: int = 2,
                    progress: bool = True, normalisation: str = "authors") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(X, y, meta)`` of ``model`` (built from ``weights``) on ``split``, through
    ``weights.eval_transform(dataset, normalisation)``; ``meta["cache_hit"]`` says whether the
    features came from the cache."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    from wssl_zoo.data.datasets import TransformedDataset
    from wssl_zoo.fileio import atomic_write_bytes

    base = build_split(dataset, root, split)
    transform = weights.eval_transform(dataset, normalisation)
    fingerprint = dataset_fingerprint(base)
    key_src = json.dumps(dict(weights=weights.weights_sha256, arch=weights.arch, stem=weights.stem, dataset=dataset,
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
            if stored != tensors_sha256(x, y) or len(x) != len(base) or len(y) != len(base):
                raise ValueError("its checksum or row count does not match")
            return x, y, dict(meta, cache_hit=True)
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed
            warnings.warn(f"{path}: damaged feature cache entry ({exc}); recomputing it")
            path.unlink(missing_ok=True)
    x, y = extract(model, TransformedDataset(base, transform), device, batch_size, workers, progress,
                   desc=f"{split} features")
    if is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        x, y = x.contiguous(), y.contiguous()
        atomic_write_bytes(path, save({"features": x, "labels": y},
                                      metadata={"key": key_src, "sha256": tensors_sha256(x, y)}))
    return x, y, dict(meta, cache_hit=False)
