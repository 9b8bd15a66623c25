"""Per-method provenance: every hyper-parameter of every recipe and evaluation protocol, with the
authors' value and where it comes from (repository @ commit, file:line or script line).

One module per method (:mod:`.wmse`, :mod:`.cwrgp`, :mod:`.intl`); each defines

- ``RECIPES``: ``{recipe name: {field: Fact}}``, the fields of
  :class:`wssl_zoo.pretrain.recipes.Recipe` (``loss.*`` / ``projector.*`` for the tables) except
  ``name``, ``source``, ``description`` and ``notes``: the recipes' values, held only here;
- ``RECIPE_DOCS``: ``{recipe name: {"description", "source", "notes"}}``, what each recipe is and the
  authors' command it reproduces (``wssl_zoo.pretrain.recipes`` builds every recipe from the two);
- ``PROTOCOLS``: ``{protocol name: {setting: Fact}}``, the settings of the
  :mod:`eval.protocols` dataclasses except ``name``, ``version``, ``source`` and ``kind``: the protocols'
  values, held only here (``eval.protocols`` builds every protocol from them);
- ``PROTOCOL_DOCS``: ``{protocol name: source}``, the one-line source each protocol record carries;
- ``FACTS``: ``{key: Fact}``, the method's facts the library reads through :func:`fact` (projector
  placement, distributed whitening, the authors' normalisations, the converter's stems).

``tests/test_methods.py`` asserts that every recipe and protocol resolves to exactly these
values, so an edit cannot drift from the authors silently. A value that is not the authors'
(a wssl-zoo choice, or a setting the authors' code does not have) says so in its source, starting
with ``wssl-zoo:``. ``wssl-zoo pretrain --recipe X --show`` prints the sources.
"""

from __future__ import annotations

from typing import Any

from . import cwrgp, intl, wmse
from ._common import OPTIMIZERS, OURS_MONITOR, PROTOCOL_META_FIELDS, RECIPE_META_FIELDS, UNUSED, Fact, src  # noqa: F401

# Protocols that are not one author's: wssl-zoo's fast probe, the weighted kNN, SimCLR's fine-tuning.
_FAST = "wssl-zoo: the fast probe (eval/protocols.py), not an authors' protocol"
_KNN200 = "InstDisc (Wu et al. 2018) / solo-learn weighted k-NN"
_SIMCLR = "SimCLR (Chen et al. 2020), appendix B.5"
OTHER_PROTOCOL_DOCS: dict[str, str] = {
    "fast": "wssl-zoo: the INTL protocol's classifier and batch on cached, standardised centre-crop features, cosine "
            "schedule; no augmentation, so no backbone pass per epoch",
    "knn200": "InstDisc / solo-learn weighted k-NN (k=200, T=0.07)",
    "semi_simclr": _SIMCLR,
}
OTHER_PROTOCOLS: dict[str, dict[str, Fact]] = {
    "fast": {k: Fact(v, _FAST) for k, v in dict(
        features="cached", optimizer="sgd", lr=0.1, epochs=100, batch_size=256, weight_decay=0.0, momentum=0.9,
        nesterov=True, schedule="cosine", milestones=(), gamma=0.1, final_lr=0.0, standardize=True).items()},
    "knn200": {k: Fact(v, _KNN200) for k, v in dict(k=200, rule="weighted-cosine", temperature=0.07).items()},
    "semi_simclr": {k: Fact(v, _SIMCLR) for k, v in dict(
        epochs=60, epochs_1pct=60, epochs_10pct=30, batch_size=256, lr_backbone=0.05, lr_head=0.05,
        weight_decay=0.0, momentum=0.9, nesterov=True, schedule="none", milestones=(), gamma=0.1,
        bn_train=True).items()},
}


def _modules():
    return (wmse, cwrgp, intl)


def _module(method: str):
    for module in _modules():
        if module.__name__.rsplit(".", 1)[-1] == method:
            return module
    raise ValueError(f"unknown method {method!r}; the methods are {', '.join(m.__name__.rsplit('.', 1)[-1] for m in _modules())}")


def fact(method: str, key: str) -> Any:
    """The value of ``method``'s fact ``key`` (its module's ``FACTS``; the source is :func:`fact_source`):

    - ``head_on_concat``: the projector runs once on all views concatenated (else per view);
    - ``gather_distributed``: the authors' whitening sees the global batch of all DDP processes;
    - ``train_stats`` / ``eval_stats``: ``{dataset: (mean, std)}`` where the authors' training views /
      evaluation code normalise otherwise than the standard statistics / the views;
    - ``converter_small_stems``: the stems the authors' code builds for a 3x3 conv1;
    - ``checkpoint_layout``: the key prefixes of the authors' checkpoints (``wssl_zoo.convert.LAYOUTS``);
    - ``protocol_variants`` / ``linear_protocol``: the protocols the authors ran on which models
      (:func:`protocol_variant`, :func:`linear_protocol`).
    """
    return _module(method).FACTS[key].value


def fact_source(method: str, key: str) -> str:
    return _module(method).FACTS[key].source


def recipe_provenance(name: str) -> dict[str, Fact]:
    """``{field: Fact}`` of recipe ``name``; ValueError if no table has it."""
    for module in _modules():
        if name in module.RECIPES:
            return module.RECIPES[name]
    raise ValueError(f"no provenance table has recipe {name!r} (wssl_zoo/methods/)")


def recipe_definitions() -> dict[str, tuple[dict[str, Fact], dict[str, str]]]:
    """Every recipe of every method: ``{name: (its RECIPES table, its RECIPE_DOCS fields)}``, in the
    methods' order. :mod:`wssl_zoo.pretrain.recipes` builds the recipes from these (and nothing else)."""
    out: dict[str, tuple[dict[str, Fact], dict[str, str]]] = {}
    for module in _modules():
        if set(module.RECIPES) != set(module.RECIPE_DOCS):
            raise ValueError(f"{module.__name__}: RECIPES and RECIPE_DOCS name other recipes: "
                             f"{sorted(set(module.RECIPES) ^ set(module.RECIPE_DOCS))}")
        for name, table in module.RECIPES.items():
            out[name] = (table, module.RECIPE_DOCS[name])
    return out


def authors_value(method: str, dataset: str, key: str) -> Any:
    """The value of recipe field ``key`` that ``method``'s authors use on ``dataset`` (every recipe of
    that method and dataset agrees on it), or None when no recipe of theirs trains on ``dataset`` or
    their recipes disagree. E.g. the crop size W-MSE trains STL-10 at: ``authors_value("wmse", "stl10",
    "img_size") == 64``."""
    values = {repr(table[key].value): table[key].value for table in _module(method).RECIPES.values()
              if table["dataset"].value == dataset and key in table}
    return next(iter(values.values())) if len(values) == 1 else None


def describe_schedule(values: dict[str, Any]) -> str:
    """A recipe's learning-rate schedule in words (model cards, ``wssl-zoo info``), from its values
    (``{field: value}``, e.g. a ``RECIPES`` table's)."""
    kind = values["schedule"]
    if kind == "wmse":
        drops = " and ".join(str(d) for d in values["lr_drops"])
        return (f"{values['warmup_steps']} warm-up iterations, lr x {values['drop_gamma']} at {drops} epochs before "
                "the end") if drops else f"{values['warmup_steps']} warm-up iterations, constant lr"
    if kind == "warmup_cosine":
        warmup = (f"{values['warmup_epochs']} warm-up epochs" if values["warmup_epochs"]
                  else f"{values['warmup_steps']} warm-up iterations")
        return f"{warmup}, cosine to 0.001 x lr"
    if kind == "warmup_cosine_epoch":
        return f"{values['warmup_steps']} warm-up iterations, cosine per epoch"
    raise ValueError(f"unknown schedule {kind!r}")


def protocol_provenance(name: str) -> dict[str, Fact]:
    """``{setting: Fact}`` of evaluation protocol ``name``; ValueError if no table has it."""
    for table in (*(m.PROTOCOLS for m in _modules()), OTHER_PROTOCOLS):
        if name in table:
            return table[name]
    raise ValueError(f"no provenance table has protocol {name!r} (wssl_zoo/methods/)")


def protocol_definitions() -> dict[str, tuple[dict[str, Fact], str]]:
    """Every evaluation protocol: ``{name: (its PROTOCOLS table, its one-line source)}``, the methods'
    first, then wssl-zoo's and the other papers' (:data:`OTHER_PROTOCOLS`). :mod:`eval.protocols` builds
    the protocols from these (and nothing else)."""
    out: dict[str, tuple[dict[str, Fact], str]] = {}
    for tables, docs, where in [*((m.PROTOCOLS, m.PROTOCOL_DOCS, m.__name__) for m in _modules()),
                                (OTHER_PROTOCOLS, OTHER_PROTOCOL_DOCS, __name__)]:
        if set(tables) != set(docs):
            raise ValueError(f"{where}: PROTOCOLS and PROTOCOL_DOCS name other protocols: {sorted(set(tables) ^ set(docs))}")
        for name, table in tables.items():
            if name in out:
                raise ValueError(f"{where}: protocol {name!r} is defined twice")
            out[name] = (table, docs[name])
    return out


def protocol_variant(name: str, recipe: str | None) -> str:
    """The protocol the authors ran when ``name`` is asked for a model pretrained with ``recipe`` (the
    methods' ``protocol_variants`` facts: INTL evaluates its plain models with other learning rates);
    ``name`` itself otherwise.

    >>> protocol_variant("intl", "intl_imagenet"), protocol_variant("intl", "intl_m_imagenet")
    ('intl_plain', 'intl')
    """
    for module in _modules():
        variant = module.FACTS["protocol_variants"].value.get(name, {}).get(recipe or "")
        if variant:
            return variant
    return name


def linear_protocol(method: str, dataset: str) -> tuple[str, str] | None:
    """``(protocol, source)``: the linear protocol ``method``'s authors evaluated a model pretrained on
    ``dataset`` (a catalogue name) with, before :func:`protocol_variant` (the method's ``linear_protocol``
    fact); None when they published none for that dataset.

    >>> linear_protocol("cwrgp", "imagenet")[0], linear_protocol("intl", "cifar10")[0]
    ('cwrgp', 'small')
    """
    table = _module(method).FACTS["linear_protocol"]
    return (table.value[dataset], table.source) if dataset in table.value else None


def flatten_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe's ``to_dict()`` as ``{field or loss.key / projector.key: value}``, without the
    documentation fields; tuples/lists as tuples."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in RECIPE_META_FIELDS:
            continue
        if key in ("loss", "projector"):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return flat


def show_recipe(recipe) -> dict[str, Any]:
    """``--show``: the resolved recipe's fields plus ``provenance``: per hyper-parameter, the authors' value and source;
    ``"override": true`` where the resolved value is not the table's; and ``method_facts``: the method's
    facts (projector placement, distributed whitening = ``--gather auto``, normalisations) with sources."""
    table = recipe_provenance(recipe.name)
    rows = {}
    for key, value in flatten_recipe(recipe.to_dict()).items():
        fact = table.get(key)
        row: dict[str, Any] = {"value": list(value) if isinstance(value, tuple) else value}
        if fact is None:
            row["source"] = "override: not in the recipe's table"
            row["override"] = True
        else:
            row["source"] = fact.source
            if fact.value != value:
                row["authors_value"] = list(fact.value) if isinstance(fact.value, tuple) else fact.value
                row["override"] = True
        rows[key] = row
    facts = {key: {"value": f.value, "source": f.source} for key, f in _module(recipe.method).FACTS.items()}
    return {**recipe.to_dict(), "provenance": rows, "method_facts": facts}
