"""The model-directory format: what pretraining writes, converters write and the Hub serves.

A model directory holds

- ``model.safetensors``: the backbone's state dict with timm key names;
- ``config.json``: timm's Hub config (``architecture``, ``num_features``, ``pretrained_cfg`` with
  mean, std, input size and crop) plus a ``wssl_zoo`` section (stem, format version, provenance),
  so ``timm.create_model("hf-hub:org/name", pretrained=True, num_classes=0)`` reads it;
- optionally ``projector.safetensors``.

Every file is written atomically (temporary file in the same folder, fsync, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch
from torch import nn

FORMAT_VERSION = 1
from .registry import STEMS as _STEMS  # the stems of wssl_zoo.encoders.create_backbone


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is durable without this
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (e.g. some network mounts) refuse fsync on a folder
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a binary file that appears at ``path`` only when the ``with`` block completes.

    Writes go to ``.NAME.XXXX.tmp`` in the same folder (created if missing; same filesystem, so
    the rename is atomic). On success: flush, fsync, ``os.replace`` onto ``path``, fsync of the
    folder. On any exception (including KeyboardInterrupt): the temporary file is removed, the
    old ``path`` is untouched, and the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as fh:
        fh.write(data)



def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for key, value in clean.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"refusing to save {path}: tensor {key!r} holds NaN or Inf")
    atomic_write_bytes(path, save(clean, metadata={"format": "pt"}))


def save_model_dir(out_dir, backbone: nn.Module, *, arch: str, stem: str, mean, std, img_size: int,
                   crop_pct: float | None = None, interpolation: str | None = None,
                   projector: nn.Module | None = None, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write ``backbone`` (and ``projector``) as a model directory; returns its path.

    Args:
        out_dir: the folder (created if needed); files already there are replaced one by one.
        backbone: a timm backbone (``num_classes=0``); its ``state_dict()`` is saved with timm's key
            names, so ``timm.create_model(arch, pretrained=True, num_classes=0,
            pretrained_cfg_overlay=dict(file=...))`` loads it (for the imagenet stem).
        arch, stem: how to rebuild it (``wssl_zoo.encoders.create_backbone(arch, stem)``).
        mean, std, img_size: the evaluation preprocessing (3 values each; input (3, img_size, img_size)).
        crop_pct, interpolation: timm's eval crop; default 0.875 / bicubic for the imagenet stem and
            1.0 / bilinear for the small-image stems (images are used at their native size).
        projector: the pretraining projector, saved to ``projector.safetensors`` when given.
        extra_meta: JSON-serialisable provenance added to the ``wssl_zoo`` section of config.json.
    """
    if stem not in _STEMS:
        raise ValueError(f"save_model_dir: unknown stem {stem!r}; choose one of {list(_STEMS)}")
    if len(tuple(mean)) != 3 or len(tuple(std)) != 3:
        raise ValueError(f"save_model_dir: mean and std need 3 values each, got {tuple(mean)} and {tuple(std)}")
    if crop_pct is None:
        crop_pct = 0.875 if stem == "imagenet" else 1.0
    if interpolation is None:
        interpolation = "bicubic" if stem == "imagenet" else "bilinear"
    reserved = {"format_version", "stem"} & set(extra_meta or {})
    if reserved:
        raise ValueError(f"save_model_dir: extra_meta may not set {sorted(reserved)}")
    out = Path(out_dir)
    config = {
        "architecture": arch,
        "num_classes": 0,
        "num_features": int(getattr(backbone, "num_features", 0)),
        "global_pool": "avg",
        "pretrained_cfg": {
            "input_size": [3, int(img_size), int(img_size)],
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            "crop_pct": float(crop_pct),
            "interpolation": interpolation,
            "num_classes": 0,
        },
        "wssl_zoo": {"format_version": FORMAT_VERSION, "stem": stem, **(extra_meta or {})},
    }
    try:
        text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:  # checked before any file is written
        raise ValueError(f"save_model_dir: extra_meta is not JSON-serialisable ({exc})") from None
    out.mkdir(parents=True, exist_ok=True)
    _save_tensors(backbone.state_dict(), out / "model.safetensors")
    if projector is not None:
        _save_tensors(projector.state_dict(), out / "projector.safetensors")
    # config.json last: a directory with a config.json has its weights.
    atomic_write_bytes(out / "config.json", text.encode())
    return out


def read_config(model_dir) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; is {model_dir} a wssl-zoo model directory?")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config.get("architecture"), str):
        raise ValueError(f"{path}: key 'architecture' is missing")
    return config


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Strict load; a ValueError names ``source`` and every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches {shapes}")
        raise ValueError(f"{source} does not match the architecture: " + "; ".join(parts))
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{source}: tensor {key!r} holds NaN or Inf; refusing to load it")
    model.load_state_dict(state, strict=True)
    return model


def load_weights_file(path, arch: str, stem: str = "imagenet", map_location="cpu") -> nn.Module:
    """A backbone of ``arch``/``stem`` with the weights of a bare ``.safetensors`` file, eval mode.

    Loading is strict: a ValueError names the file and lists missing, unexpected and mis-shaped
    keys; a tensor holding NaN or Inf is refused by name.
    """
    from safetensors.torch import load_file

    from .encoders import create_backbone

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several error types
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    model = create_backbone(arch, stem)
    return load_state_into(model, state, str(path)).eval()


def load_model_dir(path, map_location="cpu") -> nn.Module:
    """The backbone stored in a model directory, eval mode.

    ``path`` is the directory or a ``.safetensors`` file in it (its ``config.json`` says the
    architecture and stem; for a file without one use :func:`load_weights_file`). The returned
    model's ``pretrained_cfg`` holds the directory's preprocessing (mean, std, input size, crop).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: not a model directory or a .safetensors file")
        folder, weights = path.parent, path
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json beside it to say the architecture; use "
                                    "wssl_zoo.modelio.load_weights_file(path, arch, stem)")
    elif path.is_dir():
        folder, weights = path, path / "model.safetensors"
    else:
        raise FileNotFoundError(f"{path}: no such model directory")
    config = read_config(folder)
    section = config.get("wssl_zoo", {})
    version = section.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{folder / 'config.json'}: wssl_zoo format_version {version!r} is newer than this "
                         f"wssl-zoo reads ({FORMAT_VERSION}); upgrade wssl-zoo")
    stem = section.get("stem", "imagenet")  # a plain timm Hub config has no wssl_zoo section
    if stem not in _STEMS:
        raise ValueError(f"{folder / 'config.json'}: wssl_zoo stem {stem!r} is not one of {list(_STEMS)}")
    model = load_weights_file(weights, config["architecture"], stem, map_location)
    model.pretrained_cfg = dict(model.pretrained_cfg or {}, **config.get("pretrained_cfg", {}))
    return model


def tensor_sha256(module: nn.Module) -> str:
    """The hex sha256 of a module's state (sorted keys, raw bytes): the identity of weights that
    have no file yet (random init). Files are identified by :func:`sha256_file` of their bytes."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks (checkpoints can be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
