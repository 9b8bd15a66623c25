"""The zoo registry: one TOML file per model in ``zoo/models/``, read into frozen dataclasses.

Each entry says which model it is (its name, aliases, what variant of the method, and the recipe it
was trained with), where its weights live (Hub repo, pinned revision, sha256 of every file; empty
until published), where the authors publish their own checkpoint, the results the authors report,
each labelled with its provenance, and the citation. Everything the recipe says (method,
architecture, stem, input size, normalisation, loss, projector, training) is the recipe's: the entry
names it (``recipe``) and reads its values from ``wssl_zoo/methods/<method>.py``, where each value
is held once with its source, so a recipe value is never written twice. Measured results live in
``zoo/results``.

The folder is ``zoo/models`` of the source checkout (the copy shipped in the wheel as
``wssl_zoo/_registry`` otherwise); the environment variable ``WSSL_ZOO_REGISTRY`` points
elsewhere. Every file is validated when the registry is read; errors name the file and the key.

Schema of ``zoo/models/<name>.toml`` (all keys required unless marked optional)::

    name, aliases, variant, description, recipe (the ``wssl-zoo pretrain --recipe`` name),
    citation (bibtex), notes (optional)
    [hub]           repo_id ("org/name"), revision ("" or a 40-hex commit)
    [hub.files]     filename = sha256 ("" until published); [hub.sizes] optional, filename = bytes
    [official]      url ("" or https://...), note: where the authors publish their checkpoint
    [[paper_results]]  task, dataset, value, label (provenance, never empty), source;
                       optional epochs, note
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .catalogue import dataset_stats
from .methods import describe_schedule, recipe_definitions, recipe_provenance
from .paths import checkout as _checkout

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

METHODS = ("wmse", "cwrgp", "intl")
# cifar_pad2: INTL's CIFAR network (winci-ai/INTL src/resnet.py:156,276 pads by 1 before a conv1 that
# src/model.py:24 makes 3x3/1 pad 1; see wssl_zoo.encoders).
STEMS = ("imagenet", "cifar", "small", "cifar_pad2")
REGISTRY_ENV = "WSSL_ZOO_REGISTRY"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")

_TOP_KEYS = {"name", "aliases", "variant", "description", "recipe", "hub", "official", "paper_results", "citation",
             "notes"}
# Keys an entry once copied from its recipe: refused with a pointer to where the value lives.
_RECIPE_KEYS = {"method", "arch", "stem", "img_size", "mean", "std", "feature_dim", "embedding_dim", "loss",
                "projector", "training"}
# The projector keys an entry shows (the recipe's projector table has these and more).
_PROJECTOR_SHOWN = ("num_layers", "hidden_dim", "out_dim", "hidden_bias")
_RESULT_REQUIRED = {"task": str, "dataset": str, "value": float, "label": str, "source": str}
_RESULT_OPTIONAL = {"epochs": int, "note": str}


class RegistryError(ValueError):
    """A registry file is malformed; the message names the file and the key."""


class UnknownModelError(KeyError, ValueError):
    """No registered model has that name or alias; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class PaperResult:
    """One number the authors report, with where it was read and how much to trust it."""

    task: str  # linear_top1, knn5_top1, linear_top5, coco_det_ap, ...
    dataset: str
    value: float
    label: str  # provenance, e.g. "reported by the authors"
    source: str  # repository URL @ commit + file and table
    epochs: int | None = None  # pretraining epochs of the model the number belongs to
    note: str = ""


@dataclass(frozen=True)
class HubInfo:
    """Where wssl-zoo publishes the weights: a Hub repo at a pinned commit, every file hashed."""

    repo_id: str
    revision: str = ""  # a 40-hex commit sha once published
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # filename -> sha256
    sizes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # filename -> bytes, if known

    @property
    def published(self) -> bool:
        """True once the revision and the sha256 of every file are pinned."""
        return bool(self.revision) and bool(self.files) and all(self.files.values())


@dataclass(frozen=True)
class ZooEntry:
    """One registered model (the content of ``zoo/models/<name>.toml``). What the recipe says is read
    from the recipe's provenance table (:func:`wssl_zoo.methods.recipe_provenance`) by the properties
    below: ``method``, ``arch``, ``stem``, ``img_size``, ``mean``, ``std`` (the normalisation the
    recipe's views use), ``loss``, ``projector``, ``embedding_dim``, ``feature_dim`` and ``training``."""

    name: str
    aliases: tuple[str, ...]
    variant: str
    description: str
    recipe: str
    hub: HubInfo
    official: Mapping[str, str]
    paper_results: tuple[PaperResult, ...]
    citation: str
    notes: str
    path: Path

    @cached_property
    def _values(self) -> Mapping[str, Any]:
        """``{field or loss.key / projector.key: value}`` of the entry's recipe."""
        return MappingProxyType({key: fact.value for key, fact in recipe_provenance(self.recipe).items()})

    def _table(self, prefix: str, keys: tuple[str, ...] | None = None) -> Mapping[str, Any]:
        table = {k[len(prefix) + 1:]: v for k, v in self._values.items() if k.startswith(prefix + ".")}
        return MappingProxyType({k: table[k] for k in keys if k in table} if keys else table)

    method = property(lambda self: self._values["method"])
    arch = property(lambda self: self._values["arch"])
    stem = property(lambda self: self._values["stem"])
    img_size = property(lambda self: self._values["img_size"])

    @property
    def mean(self) -> tuple[float, ...]:
        """The normalisation of the recipe's views (the dataset's, as the method's authors normalise it)."""
        return tuple(dataset_stats(self._values["dataset"], self.method)[0])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(dataset_stats(self._values["dataset"], self.method)[1])

    @property
    def loss(self) -> Mapping[str, Any]:
        """The keyword arguments of the method's loss class (:func:`wssl_zoo.losses.build_loss`)."""
        return self._table("loss")

    @property
    def projector(self) -> Mapping[str, Any]:
        return self._table("projector", _PROJECTOR_SHOWN)

    @property
    def embedding_dim(self) -> int:
        return self._values["projector.out_dim"]

    @cached_property
    def feature_dim(self) -> int:
        """The width of the backbone's pooled features (timm's ``num_features``; built on the meta device)."""
        import timm  # torch and timm only when asked: the registry is read without them
        import torch  # (with timm, above)

        with torch.device("meta"):  # the width does not depend on the stem
            return int(timm.create_model(self.arch, pretrained=False, num_classes=0).num_features)

    @cached_property
    def training(self) -> Mapping[str, Any]:
        """What the recipe trains on and how: dataset, epochs, batch size, views, optimiser, lr (and its
        scaling), weight decay, the schedule in words, the authors' source; with the covariance stop
        epoch and the EMA momentum where the recipe has them."""
        v = self._values
        out = dict(dataset=v["dataset"], epochs=v["epochs"], batch_size=v["batch_size"], views=v["num_views"],
                   optimizer=v["optimizer"], lr=v["lr"], lr_scaling=v["lr_scaling"], weight_decay=v["weight_decay"],
                   schedule=describe_schedule(v))
        out.update({k: v[k] for k in ("cov_stop_epoch", "ema_momentum") if v.get(k) is not None})
        out["source"] = recipe_definitions()[self.recipe][1]["source"]
        return MappingProxyType(out)

    def paper_result(self, task: str, dataset: str | None = None, epochs: int | None = None) -> PaperResult | None:
        """The first paper result of ``task`` (on ``dataset``, at ``epochs``, where given), or None."""
        for r in self.paper_results:
            if r.task == task and dataset in (None, r.dataset) and epochs in (None, r.epochs):
                return r
        return None


class WeightsNotPublishedError(ValueError):
    """The model is registered but wssl-zoo has not published its weights yet."""


def not_published_error(entry: "ZooEntry") -> WeightsNotPublishedError:
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


def default_registry_dir() -> Path:
    """``$WSSL_ZOO_REGISTRY``, else ``zoo/models`` of the checkout, else the copy in the wheel."""
    env = os.environ.get(REGISTRY_ENV)
    if env:
        return Path(env).expanduser()

    root = _checkout()
    if root is not None and (root / "zoo" / "models").is_dir():  # a source checkout or an editable install
        return root / "zoo" / "models"
    return Path(__file__).resolve().parent / "_registry"  # the copy inside an installed wheel


_TYPE_NAMES = {str: "str (a string)", int: "int (an integer)", float: "float (a number)",
               bool: "bool (true or false)", list: "list (an array)", dict: "dict (a table)"}


def _check_type(value: Any, typ: type, where: str, key: str) -> Any:
    """``value`` if it is a ``typ`` (an int passes as a float); a RegistryError otherwise."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ in (int, float) and isinstance(value, bool)):
        raise RegistryError(f"{where}: key {key!r} must be {_TYPE_NAMES.get(typ, typ.__name__)}, got {value!r}")
    return value


def _req(data: dict, key: str, typ: type, where: str) -> Any:
    if key not in data:
        raise RegistryError(f"{where}: missing key {key!r}")
    return _check_type(data[key], typ, where, key)


def _opt(data: dict, key: str, typ: type, where: str, default: Any) -> Any:
    return _check_type(data[key], typ, where, key) if key in data else default


def _no_unknown(data: dict, known, where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")


def _positive(data: dict, key: str, where: str) -> None:
    if key in data and data[key] <= 0:
        raise RegistryError(f"{where}: key {key!r} must be positive, got {data[key]!r}")


def _typed_table(raw: dict, required: dict, optional: dict, where: str) -> dict:
    types = {**required, **optional}
    _no_unknown(raw, types, where)
    for key in required:
        if key not in raw:
            raise RegistryError(f"{where}: missing key {key!r}")
    # The file's order is kept: model cards list the values in it.
    return {key: _check_type(value, types[key], where, key) for key, value in raw.items()}


def _parse_hub(raw: dict, where: str) -> HubInfo:
    w = f"{where} [hub]"
    _no_unknown(raw, {"repo_id", "revision", "files", "sizes"}, w)
    repo_id = _req(raw, "repo_id", str, w)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise RegistryError(f"{w}: key 'repo_id' {repo_id!r} must look like 'org/name'")
    revision = _opt(raw, "revision", str, w, "")
    if revision and not _COMMIT.match(revision):
        raise RegistryError(f"{w}: revision {revision!r} must be empty or a 40-hex commit sha "
                            "(pin a commit, not a branch or tag)")
    files = _opt(raw, "files", dict, w, {})
    for fname, digest in files.items():
        if not isinstance(digest, str) or (digest and not _SHA256.match(digest)):
            raise RegistryError(f"{where} [hub.files]: {fname!r} sha256 {digest!r} must be empty or 64 "
                                "lower-case hex characters")
    sizes = _opt(raw, "sizes", dict, w, {})
    for fname, size in sizes.items():
        if fname not in files:
            raise RegistryError(f"{where} [hub.sizes]: {fname!r} is not listed in [hub.files]")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RegistryError(f"{where} [hub.sizes]: {fname!r} size {size!r} must be a non-negative integer")
    if revision and not all(files.values()):
        unhashed = sorted(f for f, d in files.items() if not d)
        raise RegistryError(f"{w}: a revision is pinned but [hub.files] {unhashed or '(none)'} have no sha256")
    return HubInfo(repo_id=repo_id, revision=revision, files=MappingProxyType(dict(files)),
                   sizes=MappingProxyType(dict(sizes)))


def _parse_official(raw: dict, where: str) -> Mapping[str, str]:
    w = f"{where} [official]"
    out = _typed_table(raw, {}, {"url": str, "note": str}, w)
    url = out.setdefault("url", "")
    out.setdefault("note", "")
    if url and not url.startswith("https://"):
        raise RegistryError(f"{w}: key 'url' {url!r} must be empty or an https:// address")
    if not url and not out["note"]:
        raise RegistryError(f"{w}: with no 'url', key 'note' must say why (e.g. the authors publish no checkpoint)")
    return MappingProxyType(out)


def _parse_results(raw_list: list, where: str) -> tuple[PaperResult, ...]:
    results = []
    for i, raw in enumerate(raw_list):
        w = f"{where} [[paper_results]] #{i + 1}"
        if not isinstance(raw, dict):
            raise RegistryError(f"{w}: must be a table, got {raw!r}")
        fields = _typed_table(raw, _RESULT_REQUIRED, _RESULT_OPTIONAL, w)
        for key in ("label", "source", "task", "dataset"):
            if not fields[key].strip():
                raise RegistryError(f"{w}: key {key!r} must not be empty")
        if not math.isfinite(fields["value"]):
            raise RegistryError(f"{w}: key 'value' must be finite, got {fields['value']!r}")
        _positive(fields, "epochs", w)
        results.append(PaperResult(**fields))
    return tuple(results)


def _parse_entry(path: Path) -> ZooEntry:
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8
        raise RegistryError(f"{where}: invalid TOML ({exc})") from None
    copied = sorted(_RECIPE_KEYS & set(data))
    if copied:
        raise RegistryError(f"{where}: key(s) {copied} are the recipe's values, held once in wssl_zoo/methods/ with "
                            f"their sources; the entry names its recipe (recipe = ...) instead")
    _no_unknown(data, _TOP_KEYS, where)

    name = _req(data, "name", str, where)
    if name != path.stem:
        raise RegistryError(f"{where}: key 'name' is {name!r} but the file is named {path.name}")
    if not _NAME.match(name):
        raise RegistryError(f"{where}: key 'name' {name!r} must be lower-case letters, digits and _")
    aliases = tuple(_req(data, "aliases", list, where))
    for alias in aliases:
        if not isinstance(alias, str) or not _NAME.match(alias):
            raise RegistryError(f"{where}: key 'aliases': {alias!r} must be lower-case letters, digits and _")
    for key in ("variant", "description", "recipe", "citation"):
        if not _req(data, key, str, where).strip():
            raise RegistryError(f"{where}: key {key!r} must not be empty")
    recipes = recipe_definitions()
    if data["recipe"] not in recipes:
        close = difflib.get_close_matches(data["recipe"], list(recipes), n=3)
        raise RegistryError(f"{where}: key 'recipe' {data['recipe']!r} is not a recipe"
                            + (f"; closest: {', '.join(close)}" if close else "") + " (wssl-zoo pretrain --list-recipes)")
    method = recipes[data["recipe"]][0]["method"].value
    if not name.startswith(method + "_"):
        raise RegistryError(f"{where}: key 'name' {name!r} must start with its recipe's method, {method}_")

    return ZooEntry(
        name=name, aliases=aliases, variant=data["variant"], description=data["description"], recipe=data["recipe"],
        hub=_parse_hub(_req(data, "hub", dict, where), where),
        official=_parse_official(_req(data, "official", dict, where), where),
        paper_results=_parse_results(_opt(data, "paper_results", list, where, []), where),
        citation=data["citation"], notes=_opt(data, "notes", str, where, ""), path=path,
    )


@lru_cache(maxsize=8)
def _load(directory: str) -> tuple[Mapping[str, ZooEntry], Mapping[str, str]]:
    """(name -> entry, alias -> name) of one folder; cached per folder path."""
    folder = Path(directory)
    if not folder.is_dir():
        raise RegistryError(f"registry folder {folder} does not exist (set {REGISTRY_ENV} to point elsewhere)")
    entries: dict[str, ZooEntry] = {}
    owner: dict[str, Path] = {}  # name or alias -> the file that registers it
    aliases: dict[str, str] = {}
    for path in sorted(folder.glob("*.toml")):
        entry = _parse_entry(path)
        for key in (entry.name, *entry.aliases):
            if key in owner:
                if owner[key] == path:
                    raise RegistryError(f"{path}: name or alias {key!r} is listed twice")
                raise RegistryError(f"name or alias {key!r} is used by both {owner[key]} and {path}")
            owner[key] = path
        entries[entry.name] = entry
        aliases.update({a: entry.name for a in entry.aliases})
    if not entries:
        raise RegistryError(f"registry folder {folder} holds no *.toml entries")
    return MappingProxyType(entries), MappingProxyType(aliases)


def clear_cache() -> None:
    """Forget the cached registry folders (after editing a TOML file in a running process)."""
    _load.cache_clear()


def load_registry(directory: str | Path | None = None) -> dict[str, ZooEntry]:
    """All entries of the registry folder (default: :func:`default_registry_dir`), validated."""
    return dict(_load(str(directory or default_registry_dir()))[0])


def list_models(method: str | None = None, directory: str | Path | None = None) -> list[str]:
    """Registered model names, sorted; ``method`` filters by wmse / cwrgp / intl."""
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    entries = load_registry(directory)
    return sorted(n for n, e in entries.items() if method is None or e.method == method)


def get_entry(name_or_alias: str, directory: str | Path | None = None) -> ZooEntry:
    """The entry registered as ``name_or_alias``; :class:`UnknownModelError` lists close names."""
    entries, aliases = _load(str(directory or default_registry_dir()))
    if not isinstance(name_or_alias, str):
        raise UnknownModelError(f"a model name must be a string, got {name_or_alias!r}")
    if name_or_alias in entries:
        return entries[name_or_alias]
    if name_or_alias in aliases:
        return entries[aliases[name_or_alias]]
    close = difflib.get_close_matches(name_or_alias, list(entries) + list(aliases), n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownModelError(f"unknown model {name_or_alias!r}{hint} (wssl_zoo.list_models() lists all)")
