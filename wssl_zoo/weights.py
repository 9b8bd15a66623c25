"""One resolver for every model spec: :func:`resolve` turns a spec into :class:`ResolvedWeights`.

A spec is one of

- a registry name or alias (``intl_resnet50``, ``intl_r50``): its published weights at the pinned
  revision, sha256-checked (:func:`wssl_zoo.hub.download_entry`);
- a local model directory or a ``.safetensors`` file with its ``config.json`` beside it;
- ``hf-hub:org/name[@rev]``: a Hub repo in our (timm) format, checked against the hashes the Hub
  states for the commit (:func:`wssl_zoo.hub.download_repo`);
- ``random:ARCH[:STEM[:SIZE]]``: the architecture at random init from ``seed`` (the baseline every
  table needs); STEM defaults to ``imagenet``, SIZE to 224 for the imagenet stem and 32 otherwise.

The handle knows the model's entry, folder, config, file sha256, label, normalisation and eval
transform, and builds the backbone (and the projector where the folder has one). Nobody else parses
a spec, hashes weights or makes a label: evaluation, detection, the demo, the converters and
:func:`wssl_zoo.load` all come through here (the torchvision ``Weights`` idea: the weights carry
what is needed to use them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .registry import UnknownModelError, ZooEntry, get_entry

__all__ = ["ResolvedWeights", "resolve", "spec_label", "parse_random_spec", "WeightsNotPublishedError"]

import torch
import torchvision.transforms as T
from safetensors.torch import load_file

from . import encoders, fileio, modelio
from .catalogue import NORMALISATIONS, dataset_stats, eval_dataset, eval_stats
from .data import eval_transform
from .encoders import STEMS
from .heads import projector_from_state
from .hub import download_entry, download_repo
from .modelio import config_arch, load_model_dir, model_dir_files, tensor_sha256
from .registry import WeightsNotPublishedError  # noqa: E402  (re-exported: the error of an unpinned entry)


def parse_random_spec(spec: str) -> tuple[str, str, int]:
    """``random:ARCH[:STEM[:SIZE]]`` -> (arch, stem, size); ValueError naming the bad part."""
    parts = spec.split(":")
    if parts[0] != "random" or len(parts) > 4:
        raise ValueError(f"{spec!r}: expected random:ARCH[:STEM[:SIZE]], e.g. random:resnet18:cifar:32")
    arch = parts[1] if len(parts) > 1 and parts[1] else "resnet18"
    stem = parts[2] if len(parts) > 2 and parts[2] else "imagenet"
    if stem not in STEMS:
        raise ValueError(f"{spec!r}: stem {stem!r} is not one of {list(STEMS)}")
    if len(parts) > 3 and parts[3]:
        if not parts[3].isdigit() or int(parts[3]) < 8:
            raise ValueError(f"{spec!r}: SIZE {parts[3]!r} must be an integer >= 8 (pixels)")
        size = int(parts[3])
    else:
        size = 224 if stem == "imagenet" else 32
    return arch, stem, size


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "-", text).strip("-") or "model"


def spec_label(spec: str | Path) -> str:
    """The short name of a model in tables and file names, without loading it.

    Registry names and aliases give the entry's name, ``hf-hub:org/name@rev`` gives
    ``org--name@rev``, a local folder or file its folder's name, ``random:...`` gives
    ``random-ARCH-STEM-SIZEpx``.
    """
    spec = str(spec)
    if spec.startswith("random:"):
        arch, stem, size = parse_random_spec(spec)
        return f"random-{arch}-{stem}-{size}px"
    if spec.startswith("hf-hub:"):
        return _slug(spec[len("hf-hub:"):].replace("/", "--"))
    path = Path(spec).expanduser()
    if path.exists():
        folder = path.parent if path.is_file() else path
        return _slug(folder.resolve().name)
    try:
        return get_entry(spec).name
    except UnknownModelError:
        return _slug(spec)


@dataclass(frozen=True)
class ResolvedWeights:
    """What a model spec resolves to (see the module docstring); :meth:`build` makes the model.

    ``mean``/``std`` are the normalisation the weights were trained with (from ``config.json``);
    ``None`` for random init, whose normalisation is the dataset's (:meth:`normalisation`).
    """

    spec: str
    kind: str  # "registry" | "local" | "hub" | "random"
    label: str
    arch: str
    stem: str
    method: str | None
    img_size: int
    weights_sha256: str
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    folder: Path | None = None
    weights_file: Path | None = None
    entry: ZooEntry | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # random init: the backbone resolve() drew to hash it, handed out by the first build()
    _drawn: list = field(default_factory=list, repr=False, compare=False)

    @property
    def random_init(self) -> bool:
        return self.kind == "random"

    @property
    def recipe(self) -> str | None:
        """The pretraining recipe (``config.json``'s ``wssl_zoo.recipe``, else the registry entry's),
        or None: the evaluation protocols pick the authors' values by it
        (``eval.protocols.protocol_for_model``)."""
        recipe = self.config.get("wssl_zoo", {}).get("recipe")
        if recipe:
            return str(recipe)
        return (self.entry.recipe or None) if self.entry is not None else None

    @property
    def pretrain_dataset(self) -> str | None:
        """The dataset the weights were pretrained on (``config.json``'s ``wssl_zoo.dataset``, else the
        registry entry's), or None."""
        dataset = self.config.get("wssl_zoo", {}).get("dataset")
        if dataset:
            return str(dataset)
        return self.entry.training.get("dataset") if self.entry is not None else None

    def pixel_stats(self, dataset: str = "imagenet", scale: float = 255.0) -> tuple[list[float], list[float]]:
        """(mean, std) of :meth:`normalisation` on the ``scale`` of the pixels (255: detectron2's
        ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` and the torchvision detection backend), rounded to 4 digits."""
        mean, std = self.normalisation(dataset)
        return [round(scale * float(m), 4) for m in mean], [round(scale * float(s), 4) for s in std]

    def build(self, map_location: str = "cpu") -> nn.Module:
        """The backbone in eval mode (strict load; random init is drawn from ``seed``, so every
        call gives the same tensors, without touching the global RNG: the first call returns the
        backbone :func:`resolve` drew to hash it, later calls draw a new copy)."""
        if self.random_init:
            if self._drawn:
                return self._drawn.pop()
            return _random_backbone(self.arch, self.stem, self.seed)

        assert self.weights_file is not None
        return load_model_dir(self.weights_file, map_location, config=self.config)

    def build_projector(self) -> nn.Module | None:
        """The pretraining projector (``projector.safetensors`` of the folder), or None."""
        if self.folder is None or not (self.folder / "projector.safetensors").is_file():
            return None

        path = self.folder / "projector.safetensors"
        return projector_from_state(load_file(str(path)), str(path))

    def normalisation(self, dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std): the weights' own where recorded, else the dataset's (per method)."""
        if self.mean is not None and self.std is not None:
            return self.mean, self.std

        return dataset_stats(dataset, self.method)

    def eval_transform(self, dataset: str, normalisation: str = "authors"):
        """The dataset's deterministic eval transform at this model's input size, normalised with
        :meth:`normalisation` (what the model was trained with), except that a model trained with
        its authors' normalisation of ``dataset`` is evaluated with their evaluation code's where that
        differs (``normalisation="authors"``, the default: INTL's CIFAR evaluation,
        the methods' ``eval_stats`` facts, :func:`wssl_zoo.catalogue.eval_stats`); ``"train"`` always takes the model's own."""
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"--normalisation {normalisation!r}: choose one of {', '.join(NORMALISATIONS)}")
        small = eval_dataset(dataset) != "imagefolder"
        tf = eval_transform(eval_dataset(dataset), self.img_size, self.method,
                            normalisation)
        if self.mean is None or self.std is None:
            return tf
        mean, std = self.mean, self.std
        if self.method is not None and small and \
                (tuple(mean), tuple(std)) == dataset_stats(dataset, self.method):
            mean, std = eval_stats(dataset, self.method, normalisation)
        return T.Compose([T.Normalize(mean, std) if isinstance(t, T.Normalize) else t
                          for t in tf.transforms])


def _random_backbone(arch: str, stem: str, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return encoders.create_backbone(arch, stem).eval()


def _from_folder(spec: str, kind: str, path: Path, label: str, entry: ZooEntry | None,
                 known_sha256: dict[str, str] | None = None) -> ResolvedWeights:
    """The handle of a model directory; ``known_sha256`` holds the hashes a verified download already
    computed (``{filename: hex}``), so the weights file is hashed once per load."""
    folder, weights = model_dir_files(path)
    config = modelio.read_config(folder)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing; {folder} has a config.json but no weights")
    section = config.get("wssl_zoo", {})
    pcfg = config.get("pretrained_cfg", {})
    try:
        img_size = int(pcfg.get("input_size", [3, 224, 224])[-1])
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{folder / 'config.json'}: pretrained_cfg.input_size is not [C, H, W]") from None
    mean = tuple(float(v) for v in pcfg["mean"]) if pcfg.get("mean") else None
    std = tuple(float(v) for v in pcfg["std"]) if pcfg.get("std") else None
    return ResolvedWeights(spec=spec, kind=kind, label=label, arch=config_arch(config),
                           stem=section.get("stem", "imagenet"), method=section.get("method"), img_size=img_size,
                           weights_sha256=(known_sha256 or {}).get(weights.name) or fileio.sha256_file(weights),
                           mean=mean, std=std, folder=folder,
                           weights_file=weights, entry=entry, config=config)


def resolve(spec: str | Path, seed: int = 0, verify: bool = True) -> ResolvedWeights:
    """The :class:`ResolvedWeights` of ``spec`` (see the module docstring); downloads (verified)
    what a Hub or registry spec needs. ``seed`` draws ``random:`` weights; ``verify=False`` accepts
    ``hf-hub:`` files for which neither the Hub nor ``SHA256SUMS`` states a hash, loaded unchecked.

    Raises FileNotFoundError for a path that does not exist, :class:`UnknownModelError` (listing
    the closest names) for an unknown name, :class:`WeightsNotPublishedError` for a registered
    model without published weights, ValueError for a malformed spec.
    """
    text = str(spec)
    label = spec_label(text)
    if text.startswith("random:"):
        arch, stem, size = parse_random_spec(text)
        model = _random_backbone(arch, stem, seed)
        return ResolvedWeights(spec=text, kind="random", label=label, arch=getattr(model, "wssl_arch", arch),
                               stem=stem, method=None, img_size=size, weights_sha256=tensor_sha256(model), seed=seed,
                               _drawn=[model])
    path = Path(text).expanduser()
    if path.exists():
        return _from_folder(text, "local", path, label, None)
    if text.startswith("hf-hub:"):
        snap = download_repo(text, verify=verify)
        return _from_folder(text, "hub", snap.folder, label, None, snap.sha256)
    try:
        entry = get_entry(text)
    except UnknownModelError:
        if any(sep in text for sep in ("/", "\\")) or text.endswith(".safetensors"):
            raise FileNotFoundError(f"{text}: no such model directory or file") from None
        raise

    snap = download_entry(entry)
    return _from_folder(text, "registry", snap.folder, label, entry, snap.sha256)
