"""What ``import wssl_zoo`` exports: list_models, get_entry, create, load.

Every function that returns a model returns a timm backbone (``num_classes=0``) in eval mode.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .registry import UnknownModelError, ZooEntry, get_entry, list_models

__all__ = ["list_models", "get_entry", "create", "load", "WeightsNotPublishedError", "UnknownModelError"]


class WeightsNotPublishedError(ValueError):
    """The model is registered but wssl-zoo has not published its weights yet."""


def create(name: str, stem: str | None = None) -> nn.Module:
    """The architecture of registry entry ``name`` (or a timm architecture name) at random init.

    ``stem`` overrides the entry's stem (or sets one for a bare timm name; default imagenet).
    Returns the backbone in eval mode; ``model(x)`` maps (B, 3, H, W) to (B, num_features).
    """
    from .encoders import create_backbone

    try:
        entry = get_entry(name)
        arch, default_stem = entry.arch, entry.stem
    except UnknownModelError:
        import timm

        if not timm.is_model(name):
            raise
        arch, default_stem = name, "imagenet"
    return create_backbone(arch, stem or default_stem).eval()


def _not_published(entry: ZooEntry) -> WeightsNotPublishedError:
    """The error for a registered model whose weights wssl-zoo has not published: how to make them."""
    out = f"runs/{entry.name}"
    how = [f"  wssl-zoo pretrain --recipe {entry.recipe} --data ROOT --out {out}"]
    if entry.official.get("url"):
        how.append(f"or convert the authors' checkpoint ({entry.official['url']}):")
        how.append(f"  wssl-zoo convert --from official-{entry.method} CKPT --entry {entry.name} --out {out}")
    return WeightsNotPublishedError(
        f"the weights of {entry.name!r} are not published yet ({entry.path.name} in the registry has no "
        f"pinned revision and file hashes). Make them yourself:\n" + "\n".join(how)
        + f"\nthen load them with wssl_zoo.load({out!r}), or publish and pin them with "
        f"`wssl-zoo publish {out} --repo ORG/NAME`."
    )


def load(name_or_path: str | Path, verify: bool = True) -> nn.Module:
    """A trained backbone in eval mode.

    ``name_or_path`` is a local model directory or ``.safetensors`` file with its
    ``config.json``, a registry name or alias (its published weights, at the pinned revision,
    sha256-checked), or ``hf-hub:org/name[@revision]`` (checked against the repo's ``SHA256SUMS``;
    a repo without one is refused unless ``verify=False``).
    """
    from .modelio import load_model_dir

    spec = str(name_or_path)
    path = Path(spec).expanduser()
    if path.exists():
        return load_model_dir(path)
    if spec.startswith("hf-hub:"):
        from .hub import download_repo

        return load_model_dir(download_repo(spec, verify=verify))
    try:
        entry = get_entry(spec)
    except UnknownModelError as exc:
        if any(sep in spec for sep in ("/", "\\")) or spec.endswith(".safetensors"):
            raise FileNotFoundError(f"{spec}: no such model directory or file") from None
        raise exc
    if not entry.hub.published:
        raise _not_published(entry)
    from .hub import download_entry

    return load_model_dir(download_entry(entry))
