"""The authors' checkpoints -> wssl-zoo model directories.

``wssl-zoo convert --from official-intl|official-cwrgp|official-wmse CKPT --out DIR`` reads a
checkpoint saved by the official code with ``torch.load(weights_only=True)`` and writes the same
directory as pretraining (``model.safetensors`` with timm key names, timm ``config.json``,
``projector.safetensors``, and ``convert.json`` with the provenance), so ``wssl_zoo.load(DIR)``
and ``wssl-zoo publish DIR`` work on it.

Layouts handled (the checkpoint may be a bare state dict or wrapped in ``state_dict``):

- INTL (``main.py``/``cifar/main.py`` save the DDP-wrapped method): ``module.backbone.*``,
  ``module.projection.*``; INTL_M adds ``module.momentum_backbone.*`` and
  ``module.momentum_projection.*`` (the online branch is taken by default, as the authors'
  ``evaluate.py`` does; ``branch="momentum"`` takes the EMA branch).
- CW-RGP ImageNet (``ImageNet/train.py``, DDP around the method): ``module.model.*`` and
  ``module.head.*``; without DDP the encoder is ``nn.DataParallel``: ``model.module.*``.
- W-MSE and CW-RGP small-data code (``train.py``: the method's state dict, the encoder in
  ``nn.DataParallel``): ``model.module.*`` and ``head.*``.
- A bare torchvision ResNet state dict (``conv1.weight`` ... ``layer4.*``).

Every tensor must be accounted for: backbone tensors map one-to-one onto the timm ResNet (strict:
missing and unexpected keys are named), projector tensors onto :class:`~wssl_zoo.heads.Projector`,
the other branch of INTL_M is dropped by name. Then the converted timm model's features on a
fixed input are compared with those of the network the authors trained, loaded with the original
tensors: torchvision's ResNet with the authors' stem changes, behind INTL's 1-pixel zero pad for
INTL (whose CIFAR checkpoints therefore convert to the ``cifar_pad2`` stem).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from . import catalogue
from .catalogue import dataset_stats
from .encoders import create_backbone
from .fileio import atomic_write_bytes, sha256_file
from .heads import projector_from_state
from .methods import authors_value, fact
from .modelio import build_loaded, save_model_dir
from .outdir import claim
from .registry import METHODS, get_entry

__all__ = ["LAYOUTS", "ConversionError", "convert_checkpoint", "read_checkpoint", "split_state"]


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message names the file and the keys."""


@dataclass(frozen=True)
class Layout:
    """Key prefixes of one codebase, tried in order (the first that matches any key wins)."""

    method: str
    backbone: tuple[str, ...]
    projector: tuple[str, ...]
    momentum_backbone: tuple[str, ...] = ()
    momentum_projector: tuple[str, ...] = ()
    hidden_bias: bool = True  # INTL's hidden projector layers have no bias


def _layouts() -> dict[str, Layout]:
    return {f"official-{m}": Layout(m, **fact(m, "checkpoint_layout")) for m in METHODS}


# --from official-<method>: the key prefixes of each codebase's checkpoints (wssl_zoo.methods, cited there)
LAYOUTS = _layouts()
_TORCHVISION_KEY = re.compile(r"^(conv1|bn1|layer[1-4])\.")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat tensor state dict of a checkpoint, read without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, zip errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not re.search(r"[A-Za-z]{3}", first):  # torch's bare "(101)": the unpickler's bad opcode
            first = f"{type(exc).__name__}: neither a zip archive nor a pickle; corrupt, truncated or another format"
        raise ConversionError(f"{path}: not readable as a weights-only torch checkpoint ({first}). "
                              "Only tensors, numbers and containers are accepted; arbitrary pickled "
                              "objects are refused for safety") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{path}: expected a state dict (or one under 'state_dict'), got {type(obj).__name__}")
    bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {bad[:10]}")
    return dict(obj)


def _take(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> tuple[str | None, dict[str, torch.Tensor]]:
    """The first prefix that any key has, and the tensors under it (prefix removed)."""
    for prefix in prefixes:
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return prefix, found
    return None, {}


def split_state(state: dict[str, torch.Tensor], layout: Layout, branch: str = "online") -> dict[str, Any]:
    """Split a checkpoint into backbone, projector and dropped parts; every key lands somewhere.

    Returns ``dict(backbone=..., projector=..., prefixes=..., dropped=[...])``. Unrecognised keys
    raise :class:`ConversionError` naming them.
    """
    if branch not in ("online", "momentum"):
        raise ValueError(f"branch must be 'online' or 'momentum', got {branch!r}")
    remaining = dict(state)
    parts: dict[str, Any] = {"prefixes": {}, "dropped": []}

    def pull(name: str, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
        prefix, found = _take(remaining, prefixes)
        if prefix is not None:
            parts["prefixes"][name] = prefix
            for key in list(remaining):
                if key.startswith(prefix):
                    del remaining[key]
        return found

    # Momentum branches first, so that no shorter prefix of another part can claim their keys.
    mom_backbone = pull("momentum_backbone", layout.momentum_backbone) if layout.momentum_backbone else {}
    mom_projector = pull("momentum_projector", layout.momentum_projector) if layout.momentum_projector else {}
    backbone = pull("backbone", layout.backbone)
    projector = pull("projector", layout.projector)
    if not backbone and all(_TORCHVISION_KEY.match(k) or k.startswith("fc.") for k in remaining):
        backbone, remaining = dict(remaining), {}  # a bare torchvision ResNet state dict
        parts["prefixes"]["backbone"] = ""
    if not backbone:
        others = [name for name, other in LAYOUTS.items() if other is not layout
                  and any(k.startswith(other.backbone) for k in state)]
        hint = f"; these keys look like --from {' or '.join(sorted(others))}" if others else ""
        raise ConversionError(f"no backbone tensors: expected keys starting with one of {list(layout.backbone)}"
                              f" (first keys: {sorted(state)[:3]}){hint}")
    if branch == "momentum":
        if not mom_backbone:
            raise ConversionError("branch='momentum' but the checkpoint has no momentum encoder "
                                  f"(looked for {list(layout.momentum_backbone) or 'none in this layout'})")
        parts["dropped"] += [parts["prefixes"]["backbone"] + k for k in backbone]
        parts["dropped"] += [parts["prefixes"].get("projector", "") + k for k in projector]
        backbone, projector = mom_backbone, mom_projector
    else:
        parts["dropped"] += [parts["prefixes"]["momentum_backbone"] + k for k in mom_backbone]
        parts["dropped"] += [parts["prefixes"]["momentum_projector"] + k for k in mom_projector]
    # Whitening modules built with track_running_stats=True would leave statistics of the loss.
    for key in list(remaining):
        if re.match(r"^(module\.)?(whitening|IterNorm)\.", key):
            parts["dropped"].append(key)
            del remaining[key]
    if remaining:
        raise ConversionError(f"keys that are neither backbone nor projector in a {layout.method} checkpoint: "
                              f"{sorted(remaining)[:20]}" + (f" (+{len(remaining) - 20} more)" if len(remaining) > 20 else ""))
    parts["backbone"], parts["projector"] = backbone, projector
    return parts


_RESNETS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}
_BOTTLENECK = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}


def infer_arch(backbone: dict[str, torch.Tensor]) -> str:
    """The torchvision/timm ResNet name that has these tensors."""
    depth = []
    for layer in range(1, 5):
        blocks = {int(k.split(".")[1]) for k in backbone if k.startswith(f"layer{layer}.")}
        depth.append(len(blocks))
    bottleneck = any(k.endswith("conv3.weight") for k in backbone)
    arch = (_BOTTLENECK if bottleneck else _RESNETS).get(tuple(depth))
    if arch is None:
        raise ConversionError(f"cannot tell the ResNet from blocks per stage {tuple(depth)} "
                              f"({'bottleneck' if bottleneck else 'basic'} blocks); pass --arch")
    if bottleneck and backbone["layer1.0.conv1.weight"].shape[0] == 128:
        arch = arch.replace("resnet", "wide_resnet") + "_2"
    return arch


def infer_stem(backbone: dict[str, torch.Tensor], stem: str | None, method: str | None = None) -> str:
    """The stem of the network that ``method``'s code trained with these tensors (``stem``: the one asked for)."""
    k = backbone["conv1.weight"].shape[-1] if "conv1.weight" in backbone else None
    if k == 7:
        if stem not in (None, "imagenet"):
            raise ConversionError(f"conv1 is 7x7 (the ImageNet stem) but --stem {stem} was given")
        return "imagenet"
    if k == 3:
        # the stems each codebase builds for a 3x3 conv1 (wssl_zoo.methods; INTL: its padded cifar_pad2)

        allowed = fact(method, "converter_small_stems") if method else ("cifar", "small", "cifar_pad2")
        if stem is None and len(allowed) == 1:
            return allowed[0]
        if stem not in allowed:
            if method == "intl":
                raise ConversionError(f"conv1 is 3x3: INTL's CIFAR network pads by 2 (winci-ai/INTL src/resnet.py:156,"
                                      f"276 + src/model.py:24), the cifar_pad2 stem; --stem {stem} would change its "
                                      "features")
            if stem == "cifar_pad2":
                raise ConversionError("--stem cifar_pad2 is INTL's padded CIFAR stem; the W-MSE / CW-RGP code builds "
                                      "torchvision's conv1 (model.py:23): pass --stem cifar or --stem small")
            raise ConversionError("conv1 is 3x3: pass --stem cifar (CIFAR: no max-pool) or --stem small "
                                  "(STL-10 / Tiny-ImageNet: max-pool kept); the checkpoint does not say which")
        return stem
    raise ConversionError(f"conv1.weight has shape {tuple(backbone['conv1.weight'].shape) if k else 'missing'}; "
                          "not a ResNet stem this converter knows")


class _PaddedResNet(nn.Module):
    """INTL's ResNet: ``nn.ConstantPad2d(1, 0.0)`` before a torchvision ResNet (src/resnet.py:156,276);
    ``resnet`` holds the tensors under torchvision's names."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.pad, self.resnet = nn.ConstantPad2d(1, 0.0), resnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet(self.pad(x))


def torchvision_reference(arch: str, stem: str, method: str | None = None) -> nn.Module:
    """The network the authors' code builds for ``stem``, from torchvision's ResNet (classifier replaced
    by Identity); load it with :func:`load_reference`.

    W-MSE / CW-RGP: torchvision's ResNet with conv1 3x3/1 (``cifar``, ``small``) and no max-pool
    (``cifar``). INTL (``method="intl"``): the same layers behind src/resnet.py's 1-pixel zero pad,
    with conv1 padding 2 for the 7x7/2 conv (src/resnet.py:172-181) and 1 for the CIFAR 3x3 conv
    (src/model.py:24).
    """
    if not hasattr(torchvision.models, arch):
        raise ConversionError(f"torchvision has no {arch}")
    model = getattr(torchvision.models, arch)(weights=None)
    if stem in ("cifar", "small", "cifar_pad2"):
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    elif method == "intl":
        model.conv1.padding = (2, 2)
    if stem in ("cifar", "cifar_pad2"):
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    if method == "intl" or stem == "cifar_pad2":
        return _PaddedResNet(model)
    return model


def load_reference(reference: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strictly load torchvision-named ``state`` into a :func:`torchvision_reference` network."""
    (reference.resnet if isinstance(reference, _PaddedResNet) else reference).load_state_dict(state, strict=True)


def _projector_from(state: dict[str, torch.Tensor], in_dim: int, hidden_bias_default: bool):
    """A :class:`~wssl_zoo.heads.Projector` with the shapes and flags these tensors imply, loaded."""
    try:
        head = projector_from_state(state, "the checkpoint's projector", hidden_bias_default)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    if head.in_dim != in_dim:
        raise ConversionError(f"the projector takes {head.in_dim}-d inputs but the backbone gives {in_dim}")
    return head, dict(num_layers=head.num_layers, hidden_dim=head.hidden_dim, out_dim=head.out_dim,
                      hidden_bias=head.hidden_bias, last_bias=head.last_bias, batch_norm=head.batch_norm)


def check_features(timm_model: nn.Module, reference: nn.Module, img_size: int, seed: int = 0) -> float:
    """Max |difference| of the pooled features of the two models on a fixed input (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, img_size, img_size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        a = timm_model.double().eval()(x)
        b = reference.double().eval()(x)
    timm_model.float(), reference.float()
    if a.shape != b.shape:
        raise ConversionError(f"feature shapes differ: timm {tuple(a.shape)} vs torchvision {tuple(b.shape)}")
    return float((a - b).abs().max())


def convert_checkpoint(layout_name: str, ckpt: str | Path, out: str | Path, *, entry: str | None = None,
                       arch: str | None = None, stem: str | None = None, dataset: str | None = None,
                       img_size: int | None = None, branch: str = "online", tolerance: float = 1e-9,
                       overwrite: bool = False) -> dict:
    """Convert ``ckpt`` (saved by the official code of ``layout_name``) into the model directory ``out``.

    Architecture, stem and preprocessing come from the registry ``entry`` when given (and are
    checked against the tensors), otherwise from the tensors plus ``dataset``. Returns the
    provenance written to ``out/convert.json``. ``out`` must be new, empty or this same
    conversion's earlier output; ``overwrite`` deletes anything else in it first (a stale
    projector, training logs or checkpoints would otherwise be published with the new weights).
    """
    if layout_name not in LAYOUTS:
        raise ValueError(f"--from {layout_name!r}: choose one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[layout_name]
    ckpt = Path(ckpt)
    state = read_checkpoint(ckpt)
    try:
        parts = split_state(state, layout, branch)
    except ConversionError as exc:
        raise ConversionError(f"{ckpt}: {exc}") from None
    backbone_state = parts["backbone"]
    e = get_entry(entry) if entry else None
    if e is not None and e.method != layout.method:
        raise ConversionError(f"--entry {e.name} is a {e.method} model but --from {layout_name} reads {layout.method} checkpoints")
    found_arch = infer_arch(backbone_state) if "layer1.0.conv1.weight" in backbone_state else None
    arch = arch or (e.arch if e else None) or found_arch
    if found_arch and arch != found_arch:
        raise ConversionError(f"{ckpt}: the tensors are a {found_arch}, not the requested {arch}")
    stem = infer_stem(backbone_state, stem or (e.stem if e else None), layout.method)
    if e is not None and stem != e.stem:
        raise ConversionError(f"{ckpt}: the checkpoint has the {stem} stem but entry {e.name} has {e.stem}")
    dataset = dataset or (e.training.get("dataset") if e else None) or ("imagenet" if stem == "imagenet" else None)
    if dataset is None:
        raise ConversionError("a small-image stem: pass --dataset (cifar10, cifar100, stl10, tiny_imagenet) "
                              "to set the normalisation and input size")
    mean, std = (e.mean, e.std) if e else dataset_stats(dataset, layout.method)
    # the crop size the authors train this dataset at, else the dataset's native size, else ImageNet's
    img_size = img_size or (e.img_size if e else authors_value(layout.method, dataset, "img_size")
                            or catalogue.get(dataset).native_size or 224)

    backbone_state = {k: v for k, v in backbone_state.items()}
    try:
        timm_model = build_loaded(lambda: create_backbone(arch, stem), backbone_state,
                                  f"{ckpt} (backbone, prefix {parts['prefixes']['backbone']!r})")
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    reference = torchvision_reference(arch, stem, layout.method)
    load_reference(reference, backbone_state)
    diff = check_features(timm_model, reference, img_size)
    if diff > tolerance:
        raise ConversionError(f"{ckpt}: the converted timm {arch} differs from the authors' {arch} by "
                              f"{diff:.3g} on a fixed input (tolerance {tolerance}); not written")

    projector = proj_cfg = None
    if parts["projector"]:
        projector, proj_cfg = _projector_from(parts["projector"], timm_model.num_features, layout.hidden_bias)
    provenance = dict(
        layout=layout_name, method=layout.method, source_file=ckpt.name, source_sha256=sha256_file(ckpt),
        entry=e.name if e else None, arch=arch, stem=stem, dataset=dataset, branch=branch,
        prefixes=parts["prefixes"], dropped_keys=sorted(parts["dropped"]), backbone_tensors=len(backbone_state),
        projector=proj_cfg, feature_check=dict(max_abs_diff=diff, tolerance=tolerance, input=f"2x3x{img_size}x{img_size} "
                                               "float64 normal(seed 0)", reference=f"torchvision.models.{arch}"
                                               + (" behind INTL's ConstantPad2d(1)" if layout.method == "intl" else "")),
    )
    extra = dict(method=layout.method, dataset=dataset, converted_from=layout_name,
                 source_sha256=provenance["source_sha256"])
    if e is not None:
        extra["registry_name"] = e.name
        if e.recipe:
            extra["recipe"] = e.recipe  # eval.protocols.protocol_for_model picks the authors' values by it

    out = Path(out)
    job = dict(layout=layout_name, source_sha256=provenance["source_sha256"], entry=entry, arch=arch, stem=stem,
               dataset=dataset, img_size=img_size, branch=branch)
    claim(out, "convert", job, overwrite=overwrite)
    atomic_write_bytes(out / "convert.json", (json.dumps(provenance, indent=2, sort_keys=True) + "\n").encode())
    # config.json is written last: a directory with one is complete.
    save_model_dir(out, timm_model, arch=arch, stem=stem, mean=mean, std=std, img_size=img_size,
                   projector=projector, extra_meta=extra)
    return provenance
