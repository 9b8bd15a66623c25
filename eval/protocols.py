"""Named, versioned evaluation protocols (frozen dataclasses).

A protocol's ``name`` and ``version`` go into every record; running a protocol with overrides
(e.g. ``--epochs 2`` on a CPU) records the overrides, and the record's protocol name gets a
``+override`` suffix so that it is never mistaken for the full protocol.

This module holds the protocols' shapes (:class:`LinearProtocol`, :class:`KNNProtocol`,
:class:`SemiProtocol`), names and versions (:data:`VERSIONS`). Every value, with the authors' file
and line it comes from, lives once in ``wssl_zoo/methods/<method>.py`` (``PROTOCOLS``,
``PROTOCOL_DOCS``; wssl-zoo's ``fast`` probe, the weighted k-NN and SimCLR's fine-tuning in
``wssl_zoo/methods/__init__.py``), and :data:`PROTOCOLS` is built from those tables:

- ``intl`` / ``intl_plain``: INTL ``evaluate.py --weights freeze`` (augmented images every epoch,
  frozen backbone, step schedule); ``intl_plain`` is what INTL's scripts run on its plain models,
  picked per model by :func:`protocol_for_model`;
- ``cwrgp``: CW-RGP ``ImageNet/lincls.py`` (MoCo-style, LARC-wrapped SGD, cosine);
- ``small``: W-MSE / CW-RGP ``eval/sgd.py`` on precomputed features (the CIFAR/STL/Tiny protocol);
- ``fast``: wssl-zoo's quick probe on cached features (not a paper's protocol; the default only where no
  paper protocol applies, :func:`paper_linear_protocol`);
- ``knn5`` (the papers' Euclidean 5-NN) and ``knn200`` (the weighted cosine k-NN);
- ``semi_intl`` / ``semi_intl_plain`` (INTL ``evaluate.py --weights finetune``) and ``semi_simclr``.

``python -m wssl_zoo.pretrain --recipe R --show`` prints a recipe's sources; the protocols' are in
the tables named above (``wssl_zoo.methods.protocol_provenance(name)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from wssl_zoo import catalogue
from wssl_zoo.methods import linear_protocol, protocol_definitions, protocol_variant


@dataclass(frozen=True)
class LinearProtocol:
    """A linear classifier on a frozen backbone. No field has a default: every value comes from the
    methods' tables (see the module docstring).

    ``features="cached"``: trained on features extracted once (deterministic transform, no
    augmentation), held in memory or on the GPU. ``features="augmented"``: every epoch runs the
    backbone on freshly augmented images (the papers' ImageNet protocol).
    """

    name: str
    version: int
    features: str  # cached | augmented
    optimizer: str  # sgd | adam | lars
    lr: float  # at batch_size (already scaled)
    epochs: int
    batch_size: int
    weight_decay: float
    momentum: float
    nesterov: bool
    schedule: str  # step | cosine | exponential
    milestones: tuple[int, ...]
    gamma: float
    final_lr: float  # for exponential / cosine
    standardize: bool  # z-score features with the training statistics (cached only)
    source: str
    kind: str = field(default="linear", init=False)


@dataclass(frozen=True)
class KNNProtocol:
    name: str
    version: int
    k: int
    rule: str  # majority-euclidean | weighted-cosine
    temperature: float
    source: str
    kind: str = field(default="knn", init=False)


@dataclass(frozen=True)
class SemiProtocol:
    """Fine-tuning the whole network with a linear head on a labelled subset."""

    name: str
    version: int
    epochs: int
    epochs_1pct: int
    epochs_10pct: int
    batch_size: int
    lr_backbone: float  # per 256 images
    lr_head: float  # per 256 images
    weight_decay: float
    momentum: float
    nesterov: bool
    schedule: str  # cosine | step | none
    milestones: tuple[int, ...]
    gamma: float
    bn_train: bool
    source: str
    kind: str = field(default="semi", init=False)


# The shapes, names and versions of the protocols; their values and sources are wssl_zoo.methods' tables
# (protocol_definitions), held only there. A version changes when a protocol's values change.
VERSIONS: dict[str, tuple[type, int]] = {
    "intl": (LinearProtocol, 1), "intl_plain": (LinearProtocol, 1), "cwrgp": (LinearProtocol, 1),
    "small": (LinearProtocol, 1), "fast": (LinearProtocol, 1),
    "knn5": (KNNProtocol, 2), "knn200": (KNNProtocol, 1),
    "semi_intl": (SemiProtocol, 2), "semi_intl_plain": (SemiProtocol, 1), "semi_simclr": (SemiProtocol, 1),
}


def _build_protocols() -> dict:
    tables = protocol_definitions()
    if set(tables) != set(VERSIONS):
        raise ValueError(f"eval/protocols.py VERSIONS and wssl_zoo/methods' tables name other protocols: "
                         f"{sorted(set(tables) ^ set(VERSIONS))}")
    return {name: cls(name=name, version=version, source=tables[name][1],
                      **{key: fact.value for key, fact in tables[name][0].items()})
            for name, (cls, version) in VERSIONS.items()}


PROTOCOLS = _build_protocols()


def protocol_for_model(name: str, recipe: str | None) -> str:
    """The protocol to run when ``name`` is asked for a model pretrained with ``recipe`` (the
    recipe name a model directory's ``config.json`` or registry entry records; None: unknown): the
    methods' ``protocol_variants`` facts (:func:`wssl_zoo.methods.protocol_variant`).

    >>> protocol_for_model("intl", "intl_imagenet"), protocol_for_model("intl", "intl_m_imagenet")
    ('intl_plain', 'intl')
    """
    return protocol_variant(name, recipe)


OWN_LINEAR = "fast"  # wssl-zoo's quick probe: the default where no paper protocol applies


def paper_linear_protocol(weights, dataset: str) -> tuple[str, str]:
    """``(protocol, why)``: the linear protocol of the paper of the model ``weights`` resolves to, for
    ``eval.linear`` / ``eval.benchmark`` without ``--protocol``. A model whose method and pretraining
    dataset are known (registry entry, or a run's ``config.json``) gets what its authors ran on such a
    model (the methods' ``linear_protocol`` facts: ``small`` for CIFAR / STL-10 / Tiny-ImageNet,
    ``intl`` / ``cwrgp`` for ImageNet; then :func:`protocol_for_model`, e.g. ``intl_plain``); anything
    else (a random init, an unknown folder, an evaluation on another dataset than the pretraining one)
    gets :data:`OWN_LINEAR`, wssl-zoo's quick probe, and ``why`` says so."""
    method, pretrained = weights.method, weights.pretrain_dataset
    ours = f"{OWN_LINEAR!r}, wssl-zoo's quick probe (not a paper protocol)"
    if not method or not pretrained:
        return OWN_LINEAR, f"{ours}: the model's method or pretraining dataset is unknown"
    try:
        pretrained = catalogue.canonical(pretrained)
    except catalogue.UnknownDatasetError:
        return OWN_LINEAR, f"{ours}: pretrained on {pretrained!r}, which no paper evaluates"
    if dataset != "imagefolder" and catalogue.canonical(dataset) != pretrained:
        return OWN_LINEAR, (f"{ours}: the model was pretrained on {catalogue.display_name(pretrained)} and is evaluated "
                            f"on {catalogue.display_name(dataset)}, for which its paper has no linear protocol")
    found = linear_protocol(method, pretrained)
    if found is None:
        return OWN_LINEAR, f"{ours}: the {method} authors published no linear evaluation of {pretrained} models"
    name = protocol_for_model(found[0], weights.recipe)
    return name, (f"the {method} authors' protocol for models pretrained on {catalogue.display_name(pretrained)} "
                  f"({found[1]})")


def get_protocol(name: str, kind: str | None = None):
    if name not in PROTOCOLS or (kind and PROTOCOLS[name].kind != kind):
        names = sorted(n for n, p in PROTOCOLS.items() if kind in (None, p.kind))
        raise ValueError(f"unknown {kind or ''} protocol {name!r}; choose one of {', '.join(names)}".replace("  ", " "))
    return PROTOCOLS[name]


def with_overrides(protocol, **overrides):
    """``(protocol, record dict)``: the protocol with the non-None overrides applied; the record's
    name carries ``+key=value`` for each one that changed something."""
    changes = {k: v for k, v in overrides.items() if v is not None and getattr(protocol, k) != v}
    if changes:
        unknown = set(changes) - {f.name for f in dataclasses.fields(protocol)}
        if unknown:
            raise ValueError(f"protocol {protocol.name!r} has no setting(s) {sorted(unknown)}")
        protocol = dataclasses.replace(protocol, **changes)
    record = dataclasses.asdict(protocol)
    if changes:
        record["name"] = protocol.name + "".join(f"+{k}={v}" for k, v in sorted(changes.items()))
        record["overrides"] = changes
        record["base_protocol"] = protocol.name
    return protocol, record
