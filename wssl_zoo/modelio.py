"""The model-directory format: what pretraining writes, converters write and the Hub serves.

A model directory holds

- ``model.safetensors``: the backbone's state dict with timm key names;
- ``config.json``: written by timm's own ``save_config_for_hf`` (``architecture``, ``num_features``,
  ``model_args``, ``pretrained_cfg`` with mean, std, input size, crop, interpolation, ``first_conv``
  and ``classifier``) plus a ``wssl_zoo`` section (architecture, stem, format version, provenance).
  The ``pretrained_cfg`` describes this checkpoint only: nothing of timm's default checkpoint for
  the architecture (its hub id, URL, tag, license, test size) is kept. For the ``imagenet`` stem
  ``timm.create_model("hf-hub:org/name", pretrained=True, num_classes=N, in_chans=C)`` (or
  ``features_only=True``) and ``timm.data.resolve_data_config`` work as for any timm checkpoint.
  The ``cifar``/``small`` stems are not timm architectures: their top-level ``architecture`` is a
  sentence that timm refuses with ``RuntimeError: Unknown model (...)`` naming ``wssl_zoo.load``,
  so timm never builds a network with another stem and loads these weights into it;
- optionally ``projector.safetensors``.

Every file is written atomically (:mod:`wssl_zoo.fileio`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from safetensors.torch import load_file, save
from timm.models._hub import save_config_for_hf
from torch import nn

from .encoders import create_backbone
from .fileio import atomic_write_bytes
from .registry import STEMS as _STEMS  # the stems of wssl_zoo.encoders.create_backbone

FORMAT_VERSION = 1
# pretrained_cfg keys that describe the saved checkpoint (timm derives the rest from the model);
# everything else in timm's default cfg (url, hf_hub_id, tag, license, test_input_size, ...)
# belongs to another checkpoint of the architecture.
_OWN_CFG_KEYS = ("architecture", "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode",
                 "mean", "std", "num_classes", "pool_size", "first_conv", "classifier", "custom_load")


def timm_refusal_name(arch: str, stem: str) -> str:
    """The top-level ``architecture`` of a small-stem config.json: not a timm model name, so
    ``timm.create_model("hf-hub:...")`` stops with ``Unknown model (<this sentence>)``."""
    return (f"{arch} with the wssl-zoo {stem} stem (3x3 stride-1 conv1) is not a timm architecture: "
            f"load it with wssl_zoo.load")


def non_finite_tensors(model_or_state: nn.Module | dict) -> list[str]:
    """Names of the floating-point tensors of a model (or state dict) that hold NaN or Inf, in order.

    A tensor whose sum is finite holds neither (NaN and Inf reach the sum): one reduction per tensor,
    ~35x faster on the CPU than an elementwise ``isfinite`` (a 9.4M-element fp32 conv weight: 2 ms
    against 72 ms, 2026-12-03). Only a tensor whose sum is not finite (NaN, Inf, or finite values
    that overflow the sum) is checked element by element. Tensors under 32 bits are summed in
    float32. One device-to-host transfer per device."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    floats = [(name, t.detach()) for name, t in state.items() if torch.is_tensor(t) and t.is_floating_point()]
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(floats):
        by_device.setdefault(t.device, []).append(i)
    bad = set()
    for indices in by_device.values():
        # float32 sums (MPS has no float64): a float64 sum too large for float32 is checked exactly below
        sums = torch.stack([floats[i][1].sum(dtype=torch.float32 if floats[i][1].element_size() < 4 else None).float()
                            for i in indices])
        for i, ok in zip(indices, torch.isfinite(sums).tolist()):
            if not ok and not bool(torch.isfinite(floats[i][1]).all()):
                bad.add(i)
    return [name for i, (name, _) in enumerate(floats) if i in bad]


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    bad = non_finite_tensors(clean)
    if bad:
        raise ValueError(f"refusing to save {path}: tensor {bad[0]!r} holds NaN or Inf")
    atomic_write_bytes(path, save(clean, metadata={"format": "pt"}))


def save_model_dir(out_dir, backbone: nn.Module, *, arch: str, stem: str, mean, std, img_size: int,
                   crop_pct: float | None = None, interpolation: str | None = None,
                   projector: nn.Module | None = None, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write ``backbone`` (and ``projector``) as a model directory; returns its path.

    Args:
        out_dir: the folder (created if needed); files already there are replaced one by one.
        backbone: a timm backbone (``num_classes=0``); its ``state_dict()`` is saved with timm's key
            names and its ``config.json`` by timm's ``save_config_for_hf`` (see the module docstring).
        arch, stem: how to rebuild it (``wssl_zoo.encoders.create_backbone(arch, stem)``).
        mean, std, img_size: the evaluation preprocessing (3 values each; input (3, img_size, img_size)).
        crop_pct, interpolation: timm's eval crop; default 0.875 for the imagenet stem and 1.0 for the
            small-image stems (images are used at their native size), bilinear for all, as
            ``wssl_zoo.data.transforms.eval_transform`` resizes ImageNet-size images.
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
        interpolation = "bilinear"
    reserved = {"format_version", "stem", "architecture"} & set(extra_meta or {})
    if reserved:
        raise ValueError(f"save_model_dir: extra_meta may not set {sorted(reserved)}")
    section = {"format_version": FORMAT_VERSION, "architecture": arch, "stem": stem, **(extra_meta or {})}
    try:
        json.dumps(section, allow_nan=False)
    except (TypeError, ValueError) as exc:  # checked before any file is written
        raise ValueError(f"save_model_dir: extra_meta is not JSON-serialisable ({exc})") from None
    # timm's helper reads model.pretrained_cfg; give it a view of the backbone whose cfg holds only
    # what describes this checkpoint (not timm's default checkpoint of the architecture).
    view = copy.copy(backbone)
    own = {k: v for k, v in (getattr(backbone, "pretrained_cfg", None) or {}).items() if k in _OWN_CFG_KEYS}
    own["architecture"] = arch if stem == "imagenet" else timm_refusal_name(arch, stem)
    own.setdefault("input_size", (3, int(img_size), int(img_size)))
    view.pretrained_cfg = own
    data_config = dict(input_size=(3, int(img_size), int(img_size)), mean=tuple(float(m) for m in mean),
                       std=tuple(float(x) for x in std), crop_pct=float(crop_pct), interpolation=interpolation)
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(view, str(Path(tmp) / "config.json"), model_config={"wssl_zoo": section},
                           data_config=data_config)
        text = (Path(tmp) / "config.json").read_bytes()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_tensors(backbone.state_dict(), out / "model.safetensors")
    if projector is not None:
        _save_tensors(projector.state_dict(), out / "projector.safetensors")
    # config.json last: a directory with a config.json has its weights.
    atomic_write_bytes(out / "config.json", text)
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


def config_arch(config: dict[str, Any]) -> str:
    """The timm architecture of a config.json: the ``wssl_zoo`` section's (small stems write a
    sentence timm refuses at the top level), else timm's top-level ``architecture``."""
    return config.get("wssl_zoo", {}).get("architecture", config["architecture"])


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
    bad = non_finite_tensors(state)
    if bad:
        raise ValueError(f"{source}: tensor {bad[0]!r} holds NaN or Inf; refusing to load it")
    model.load_state_dict(state, strict=True)
    return model


def _only_state_tensors(model: nn.Module) -> bool:
    """Whether loading a state dict sets every tensor ``model`` holds: no non-persistent buffer
    (timm's relative-position indices), no plain tensor attribute, no parameter shared by two names."""
    covered = set(model.state_dict())
    if any(name not in covered for name, _ in model.named_buffers()):
        return False
    if len(dict(model.named_parameters(remove_duplicate=False))) != len(list(model.parameters())):
        return False
    return not any(isinstance(value, torch.Tensor) for module in model.modules() for value in vars(module).values())


def build_loaded(build: Callable[[], nn.Module], state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """``build()`` holding ``state``, loaded strictly by :func:`load_state_into` (its errors name
    ``source``), on the CPU.

    The network is built on the meta device and given empty CPU storage, so none of the random init
    that ``state`` overwrites is drawn: a ResNet-50 is ready in 0.07 s instead of 0.27 s, an INTL
    ImageNet projector (2048-8192-8192-8192) in 0.02 s instead of 2.3 s (one CPU thread,
    2026-12-03). A network that cannot be built on the meta device, or that holds tensors a state
    dict does not set (see :func:`_only_state_tensors`), is built the ordinary way instead: the
    result is the same either way (tests/test_api.py compares both)."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # noqa: BLE001 - whatever fails on meta, the ordinary build below raises or works
        model = None
    if model is not None and _only_state_tensors(model):
        model = model.to_empty(device="cpu")
    else:
        model = build()
    return load_state_into(model, state, source)


def load_weights_file(path, arch: str, stem: str = "imagenet", map_location="cpu", *,
                      drop_keys: tuple[str, ...] = (), **timm_kwargs) -> nn.Module:
    """A backbone of ``arch``/``stem`` with the weights of a bare ``.safetensors`` file, eval mode.

    Loading is strict: a ValueError names the file and lists missing, unexpected and mis-shaped
    keys; a tensor holding NaN or Inf is refused by name. ``drop_keys`` are removed from the file's
    state dict first (a timm classifier's ``fc.weight``/``fc.bias``); ``timm_kwargs`` go to
    :func:`wssl_zoo.encoders.create_backbone` (``in_chans``, ``img_size``, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several error types
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    for key in drop_keys:
        state.pop(key, None)
    return build_loaded(lambda: create_backbone(arch, stem, **timm_kwargs), state, str(path)).eval()


# model_args of a timm config.json that create_backbone sets itself or refuses
_NOT_PASSED_ARGS = ("num_classes", "pretrained", "features_only", "pretrained_cfg", "pretrained_cfg_overlay")


def _classifier_keys(config: dict[str, Any], model_cfg: dict[str, Any]) -> tuple[str, ...]:
    """The state-dict keys of a plain timm checkpoint's classifier (none when num_classes is 0)."""
    cfg = config.get("pretrained_cfg", {})
    if not config.get("num_classes", cfg.get("num_classes", 0)):
        return ()
    names = cfg.get("classifier", model_cfg.get("classifier")) or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}.{part}" for name in names for part in ("weight", "bias"))


def model_dir_files(path) -> tuple[Path, Path]:
    """(folder, weights file) of a model directory or of a ``.safetensors`` file in one; errors
    name the path and what is missing."""
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
    return folder, weights


def load_model_dir(path, map_location="cpu", config: dict[str, Any] | None = None) -> nn.Module:
    """The backbone stored in a model directory, eval mode.

    ``path`` is the directory or a ``.safetensors`` file in it (its ``config.json`` says the
    architecture and stem; for a file without one use :func:`load_weights_file`). A plain timm
    directory (no ``wssl_zoo`` section, e.g. a supervised ``timm/...`` Hub repo) loads too: its
    classifier is dropped (logged as a warning on the ``wssl_zoo`` logger) and the backbone
    returns pooled features like every other. The returned model's ``pretrained_cfg`` is the
    directory's (mean, std, input size, crop, interpolation), with no field of another checkpoint.
    ``config``: the directory's ``config.json`` when the caller has read it already
    (:class:`wssl_zoo.weights.ResolvedWeights` reads it once per load).
    """
    folder, weights = model_dir_files(path)
    if config is None:
        config = read_config(folder)
    section = config.get("wssl_zoo", {})
    version = section.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{folder / 'config.json'}: wssl_zoo format_version {version!r} is newer than this "
                         f"wssl-zoo reads ({FORMAT_VERSION}); upgrade wssl-zoo")
    stem = section.get("stem", "imagenet")  # a plain timm Hub config has no wssl_zoo section
    if stem not in _STEMS:
        raise ValueError(f"{folder / 'config.json'}: wssl_zoo stem {stem!r} is not one of {list(_STEMS)}")
    arch = config_arch(config)
    kwargs = {k: v for k, v in config.get("model_args", {}).items() if k not in _NOT_PASSED_ARGS}

    default = timm.get_pretrained_cfg(arch.split(".")[0]) if timm.is_model(arch) else None
    default_cfg = default.to_dict() if default is not None else {}
    drop = () if section else _classifier_keys(config, default_cfg)
    model = load_weights_file(weights, arch, stem, map_location, drop_keys=drop, **kwargs)
    if drop:
        logging.getLogger("wssl_zoo").warning(
            "%s: plain timm checkpoint of %s; its classifier (%s) was dropped, the backbone returns "
            "pooled features", folder, arch, ", ".join(drop))
    own = {k: v for k, v in (model.pretrained_cfg or {}).items() if k in ("first_conv", "classifier")}
    own.update({k: v for k, v in config.get("pretrained_cfg", {}).items() if k in _OWN_CFG_KEYS})
    own.update(architecture=arch, num_classes=0)
    model.pretrained_cfg = own
    return model


def tensor_sha256(module: nn.Module) -> str:
    """The hex sha256 of a module's state (sorted keys, raw bytes): the identity of weights that
    have no file yet (random init). Files are identified by :func:`sha256_file` of their bytes."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
