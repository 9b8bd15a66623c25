"""What ``import wssl_zoo`` exports: list_models, get_entry, create, load.

Every function that returns a model returns a timm backbone (``num_classes=0``) in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from .encoders import create_backbone
from .registry import UnknownModelError, WeightsNotPublishedError, get_entry, list_models
from .weights import resolve

__all__ = ["list_models", "get_entry", "create", "load", "WeightsNotPublishedError", "UnknownModelError"]


def create(name: str, stem: str | None = None) -> nn.Module:
    """The architecture of registry entry ``name`` (or a timm architecture name) at random init.

    ``stem`` overrides the entry's stem (or sets one for a bare timm name; default imagenet).
    Returns the backbone in eval mode; ``model(x)`` maps (B, 3, H, W) to (B, num_features).
    """
    try:
        entry = get_entry(name)
        arch, default_stem = entry.arch, entry.stem
    except UnknownModelError:
        if not timm.is_model(name):
            raise
        arch, default_stem = name, "imagenet"
    return create_backbone(arch, stem or default_stem).eval()


def load(name_or_path: str | Path, seed: int = 0, verify: bool = True) -> nn.Module:
    """A trained backbone in eval mode: :func:`wssl_zoo.weights.resolve` plus ``build()``.

    ``name_or_path`` is a local model directory or ``.safetensors`` file with its
    ``config.json``, a registry name or alias (its published weights, at the pinned revision,
    sha256-checked), ``hf-hub:org/name[@revision]`` (pinned to the commit the revision resolves to, every file
    checked against the hashes the Hub states for it and against the repo's ``SHA256SUMS`` where it has one; a file
    with no stated hash is refused unless ``verify=False``; a repo in our format or any plain timm repo
    with ``model.safetensors``: a supervised baseline's classifier is dropped, with a warning on
    the ``wssl_zoo`` logger, and the backbone returns pooled features like ours), or
    ``random:ARCH[:STEM[:SIZE]]`` (random init drawn from ``seed``). :func:`wssl_zoo.weights.resolve`
    gives the handle itself (sha256, label, normalisation, eval transform) without building the model.
    """
    return resolve(name_or_path, seed, verify=verify).build()
