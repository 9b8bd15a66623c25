"""The zoo registry: one TOML file per model in ``zoo/models/``, read into frozen dataclasses.

Each entry says what a model is (method, architecture, stem, loss and projector, the recipe it
was trained with), where its weights live (Hub repo, pinned revision, sha256 of every file;
empty until published), where the authors publish their own checkpoint, and the results the
authors report, each labelled with its provenance. Measured results live in ``zoo/results``.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

METHODS = ("wmse", "cwrgp", "intl")
STEMS = ("imagenet", "cifar", "small")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class RegistryError(ValueError):
    """A registry file is malformed; the message names the file and the key."""


class UnknownModelError(KeyError, ValueError):
    """No registered model has that name or alias; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class PaperResult:
    task: str  # linear_top1, knn5_top1, linear_top5, coco_det_ap, ...
    dataset: str
    value: float
    label: str  # provenance, e.g. "reported by the authors"
    source: str
    epochs: int | None = None
    note: str = ""


@dataclass(frozen=True)
class HubInfo:
    repo_id: str
    revision: str = ""  # a 40-hex commit sha once published
    files: Mapping[str, str] = field(default_factory=dict)  # filename -> sha256 ("" until published)

    @property
    def published(self) -> bool:
        return bool(self.revision) and bool(self.files) and all(self.files.values())


@dataclass(frozen=True)
class ZooEntry:
    name: str
    aliases: tuple[str, ...]
    method: str
    variant: str
    description: str
    arch: str
    stem: str
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_dim: int
    embedding_dim: int
    recipe: str
    loss: Mapping[str, Any]
    projector: Mapping[str, Any]
    training: Mapping[str, Any]
    hub: HubInfo
    official: Mapping[str, str]
    paper_results: tuple[PaperResult, ...]
    citation: str
    notes: str
    path: Path

    def paper_result(self, task: str, dataset: str | None = None) -> PaperResult | None:
        for r in self.paper_results:
            if r.task == task and (dataset is None or r.dataset == dataset):
                return r
        return None


def default_registry_dir() -> Path:
    env = os.environ.get("WSSL_ZOO_REGISTRY")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "zoo" / "models"
    if checkout.is_dir():  # a source checkout or an editable install
        return checkout
    return Path(__file__).resolve().parent / "_registry"  # the copy inside an installed wheel


def _req(data: dict, key: str, typ, where: str):
    if key not in data:
        raise RegistryError(f"{where}: missing key {key!r}")
    value = data[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise RegistryError(f"{where}: key {key!r} must be {typ.__name__}, got {value!r}")
    return value


def _parse_entry(path: Path) -> ZooEntry:
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{where}: invalid TOML ({exc})") from None
    known = {"name", "aliases", "method", "variant", "description", "arch", "stem", "img_size", "mean", "std",
             "feature_dim", "embedding_dim", "recipe", "loss", "projector", "training", "hub", "official",
             "paper_results", "citation", "notes"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {unknown}")
    name = _req(data, "name", str, where)
    if name != path.stem:
        raise RegistryError(f"{where}: key 'name' is {name!r} but the file is named {path.name}")
    if not _NAME.match(name):
        raise RegistryError(f"{where}: key 'name' {name!r} must be lower-case letters, digits and _")
    method = _req(data, "method", str, where)
    if method not in METHODS:
        raise RegistryError(f"{where}: key 'method' is {method!r}, not one of {METHODS}")
    stem = _req(data, "stem", str, where)
    if stem not in STEMS:
        raise RegistryError(f"{where}: key 'stem' is {stem!r}, not one of {STEMS}")
    aliases = tuple(_req(data, "aliases", list, where))
    for a in aliases:
        if not isinstance(a, str) or not _NAME.match(a):
            raise RegistryError(f"{where}: alias {a!r} must be lower-case letters, digits and _")
    loss = _req(data, "loss", dict, where)
    try:
        from .losses import LOSSES

        accepted = set(inspect.signature(LOSSES[method]).parameters)
        bad = sorted(set(loss) - accepted)
        if bad:
            raise RegistryError(f"{where}: [loss] keys {bad} are not parameters of {LOSSES[method].__name__}")
    except ImportError:  # pragma: no cover
        pass
    projector = _req(data, "projector", dict, where)
    for key in ("num_layers", "hidden_dim", "out_dim"):
        _req(projector, key, int, f"{where} [projector]")
    hub_raw = _req(data, "hub", dict, where)
    repo_id = _req(hub_raw, "repo_id", str, f"{where} [hub]")
    if repo_id.count("/") != 1:
        raise RegistryError(f"{where}: [hub] repo_id {repo_id!r} must look like 'org/name'")
    revision = hub_raw.get("revision", "")
    if revision and not _COMMIT.match(revision):
        raise RegistryError(f"{where}: [hub] revision {revision!r} must be empty or a 40-hex commit sha")
    files = hub_raw.get("files", {})
    for fname, digest in files.items():
        if digest and not _SHA256.match(digest):
            raise RegistryError(f"{where}: [hub.files] {fname!r} sha256 {digest!r} must be empty or 64 hex characters")
    results = []
    for i, raw in enumerate(data.get("paper_results", [])):
        w = f"{where} [[paper_results]] #{i + 1}"
        label = _req(raw, "label", str, w)
        if not label.strip():
            raise RegistryError(f"{w}: key 'label' must not be empty")
        results.append(PaperResult(
            task=_req(raw, "task", str, w), dataset=_req(raw, "dataset", str, w),
            value=_req(raw, "value", float, w), label=label, source=_req(raw, "source", str, w),
            epochs=raw.get("epochs"), note=raw.get("note", ""),
        ))
    mean = tuple(float(v) for v in _req(data, "mean", list, where))
    std = tuple(float(v) for v in _req(data, "std", list, where))
    if len(mean) != 3 or len(std) != 3:
        raise RegistryError(f"{where}: keys 'mean' and 'std' need 3 values each")
    return ZooEntry(
        name=name, aliases=aliases, method=method, variant=_req(data, "variant", str, where),
        description=_req(data, "description", str, where), arch=_req(data, "arch", str, where), stem=stem,
        img_size=_req(data, "img_size", int, where), mean=mean, std=std,
        feature_dim=_req(data, "feature_dim", int, where), embedding_dim=_req(data, "embedding_dim", int, where),
        recipe=_req(data, "recipe", str, where), loss=MappingProxyType(dict(loss)),
        projector=MappingProxyType(dict(projector)), training=MappingProxyType(dict(_req(data, "training", dict, where))),
        hub=HubInfo(repo_id=repo_id, revision=revision, files=MappingProxyType(dict(files))),
        official=MappingProxyType(dict(data.get("official", {}))), paper_results=tuple(results),
        citation=_req(data, "citation", str, where), notes=data.get("notes", ""), path=path,
    )


@lru_cache(maxsize=8)
def _load(directory: str) -> tuple[dict[str, ZooEntry], dict[str, str]]:
    folder = Path(directory)
    if not folder.is_dir():
        raise RegistryError(f"registry folder {folder} does not exist (set WSSL_ZOO_REGISTRY)")
    entries: dict[str, ZooEntry] = {}
    owner: dict[str, Path] = {}  # name or alias -> file
    aliases: dict[str, str] = {}
    for path in sorted(folder.glob("*.toml")):
        entry = _parse_entry(path)
        for key in (entry.name, *entry.aliases):
            if key in owner:
                raise RegistryError(f"name or alias {key!r} is used by both {owner[key]} and {path}")
            owner[key] = path
        entries[entry.name] = entry
        aliases.update({a: entry.name for a in entry.aliases})
    if not entries:
        raise RegistryError(f"registry folder {folder} holds no *.toml entries")
    return entries, aliases


def load_registry(directory: str | Path | None = None) -> dict[str, ZooEntry]:
    """All entries of the registry folder (default: ``zoo/models``), validated."""
    return dict(_load(str(directory or default_registry_dir()))[0])


def list_models(method: str | None = None, directory: str | Path | None = None) -> list[str]:
    """Registered model names, sorted; ``method`` filters by wmse / cwrgp / intl."""
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    entries = load_registry(directory)
    return sorted(n for n, e in entries.items() if method is None or e.method == method)


def get_entry(name: str, directory: str | Path | None = None) -> ZooEntry:
    """The entry registered as ``name`` (or one of its aliases)."""
    entries, aliases = _load(str(directory or default_registry_dir()))
    if name in entries:
        return entries[name]
    if name in aliases:
        return entries[aliases[name]]
    close = difflib.get_close_matches(name, list(entries) + list(aliases), n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (wssl_zoo.list_models() lists all)")
