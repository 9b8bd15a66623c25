"""Models, datasets and the on-disk feature cache shared by linear, kNN and spectrum.

Features are extracted once per (weights sha256, architecture and stem, dataset fingerprint,
split, transform, precision) into a folder of per-rank shards under ``$WSSL_ZOO_CACHE`` (default
``~/.cache/wssl_zoo/features``; :func:`wssl_zoo.evaluation.write_feature_shards`): under torchrun
each process writes the rows of its block, batch by batch, to its own ``.npy`` file, and readers
memory-map the shards (:class:`wssl_zoo.evaluation.FeatureShards`), so no process ever holds the
features of another, and none holds the whole matrix unless its consumer asks for it
(:func:`cached_features`). Under torchrun the cache folder must be on a filesystem every node sees,
as ``--data`` is.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from wssl_zoo.data import build_dataset
from wssl_zoo.data.datasets import TransformedDataset, heldout_split
from wssl_zoo.distributed import any_rank, barrier, is_main
from wssl_zoo.evaluation import SHARDS_FORMAT, SHARDS_VERSION, FeatureShards, write_feature_shards
from wssl_zoo.paths import cache_dir as _cache_dir
from wssl_zoo.weights import ResolvedWeights

from .records import dataset_fingerprint


def mark_overrides(proto_record: dict, normalisation: str = "authors", amp: str = "none") -> dict:
    """What is not the authors' evaluation is recorded as an override of the protocol (``+key=value`` in
    its name, ``overrides``), so that the record never passes for the paper's protocol:
    ``--normalisation train`` (the corrected normalisation) and ``--amp bf16|fp16`` (the authors
    evaluate in float32)."""
    for key, value, authors in (("normalisation", normalisation, "authors"), ("amp", amp, "none")):
        if value != authors:
            proto_record["name"] += f"+{key}={value}"
            proto_record.setdefault("base_protocol", proto_record["name"].split("+")[0])
            proto_record["overrides"] = {**proto_record.get("overrides", {}), key: value}
    return proto_record


def mark_normalisation(proto_record: dict, normalisation: str) -> dict:
    """``--normalisation train`` is not the authors' evaluation: record it as an override of the protocol."""
    return mark_overrides(proto_record, normalisation=normalisation)


def build_split(dataset: str, root: str | None, split: str):
    """``split`` is train or test (test = ``val/`` or ``test/`` for an image folder)."""
    if split == "train":
        return build_dataset(dataset, root, "train")
    held = heldout_split(dataset, root)
    if held is None:
        raise FileNotFoundError(f"{root}: no val/ or test/ folder next to train/ (ImageNet layout: ROOT/train/<class>/, "
                                "ROOT/val/<class>/)")
    return held


def cache_dir(override: str | None = None) -> Path:
    return _cache_dir(override)


def feature_store(weights: ResolvedWeights, model: nn.Module, dataset: str, root: str | None, split: str,
                  device: torch.device, cache: str | None = None, batch_size: int = 256, workers: int = 2,
                  progress: bool = True, normalisation: str = "authors", amp: str = "none", base=None,
                  fingerprint: str | None = None) -> tuple[FeatureShards, dict]:
    """``(features, meta)`` of ``model`` (built from ``weights``) on ``split`` through
    ``weights.eval_transform(dataset, normalisation)``, in float32 unless ``amp`` says otherwise:
    the cache entry's :class:`FeatureShards` (extracted first when missing or damaged; collective under
    torchrun). ``meta["cache_hit"]`` says whether the features came from the cache; a damaged entry (a
    file whose size or sha256 does not match its index) is recomputed with a warning. ``base`` /
    ``fingerprint``: the split and its :func:`dataset_fingerprint` when the caller has them already
    (an ImageNet fingerprint stats 1.28 M files)."""
    base = build_split(dataset, root, split) if base is None else base
    transform = weights.eval_transform(dataset, normalisation)
    fingerprint = dataset_fingerprint(base) if fingerprint is None else fingerprint
    key_src = json.dumps(dict(weights=weights.weights_sha256, arch=weights.arch, stem=weights.stem, dataset=dataset,
                              fingerprint=fingerprint, split=split, transform=repr(transform), precision=amp,
                              format=f"{SHARDS_FORMAT}-{SHARDS_VERSION}"), sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    folder = cache_dir(cache) / key
    meta = dict(fingerprint=fingerprint, cache_key=key, cache_dir=str(folder), transform=repr(transform),
                num_samples=len(base), classes=len(getattr(base, "classes", [])), precision=amp)
    store = None
    if is_main() and (folder / "index.json").is_file():  # rank 0 checks every byte; the others trust its verdict
        try:
            store = FeatureShards(folder)
            if len(store) != len(base):
                raise ValueError(f"{len(store)} rows for {len(base)} images")
        except ValueError as exc:
            warnings.warn(f"{folder}: damaged feature cache entry ({exc}); recomputing it")
            store = None
            shutil.rmtree(folder, ignore_errors=True)
    hit = not any_rank(is_main() and store is None)
    if not hit:
        write_feature_shards(folder, model, TransformedDataset(base, transform), device, batch_size, workers, progress,
                             desc=f"{split} features", amp=amp, info=json.loads(key_src))
        store = FeatureShards(folder, verify=False)  # hashed as it was written
    elif store is None:
        barrier()
        store = FeatureShards(folder, verify=False)
    else:
        barrier()
    first = next((s["features"]["file"] for s in store.index["shards"] if s["stop"] > s["start"]), "index.json")
    return store, dict(meta, cache_hit=hit, cache_file=str(folder / first), shards=len(store.index["shards"]))


def cached_features(weights: ResolvedWeights, model: nn.Module, dataset: str, root: str | None, split: str,
                    device: torch.device, cache: str | None = None, batch_size: int = 256, workers: int = 2,
                    progress: bool = True, normalisation: str = "authors",
                    amp: str = "none") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(X (N, F), y (N,), meta)``: :func:`feature_store`'s features as one tensor in memory on every
    rank that calls it (for consumers that need every row: small sets, tests); the eval CLIs read the
    store instead."""
    store, meta = feature_store(weights, model, dataset, root, split, device, cache, batch_size, workers, progress,
                                normalisation, amp)
    return store.tensor(), store.labels, meta
