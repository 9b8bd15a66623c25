"""Named, versioned evaluation protocols (frozen dataclasses).

A protocol's ``name`` and ``version`` go into every record; running a protocol with overrides
(e.g. ``--epochs 2`` on a CPU) records the overrides, and the record's protocol name gets a
``+override`` suffix so that it is never mistaken for the full protocol.

Sources (read, not copied; ``INTL`` = github.com/winci-ai/INTL @ 0aa69af20a26, ``CW-RGP`` =
github.com/winci-ai/CW-RGP @ 5bbf6ed4df35):

- INTL ``evaluate.py`` + ``cfg.py`` + ``scripts/ep100_multi-crop_ema.sh``: frozen backbone (BN in
  eval mode), fc initialised N(0, 0.01) / 0, SGD momentum 0.9 with weight decay 0 (hard-coded),
  no Nesterov, ``--lr-classifier 0.4`` x bs/256 at ``--bs 256`` for the multi-crop + EMA models
  (``scripts/ep{100,200,400,800}_multi-crop_ema.sh:14``), 0.2 for the plain 800-epoch model and
  ImageNet-100 (``scripts/ep800.sh:13``, ``scripts/in100.sh:16``, the ``cfg.py:138`` default):
  protocol ``intl_plain``, which :func:`protocol_for_model` picks for those models,
  100 epochs, ``--schedule step`` (the default): MultiStepLR at epochs 60 and 80, gamma 0.1,
  stepped per epoch; RandomResizedCrop(224) + flip for training, Resize(256) + CenterCrop(224) for
  validation. Semi-supervised (``--weights finetune --train-percent 1|10``, SimCLR's subset
  files in ``src/percent/``): 20 epochs, backbone lr 0.004 and classifier lr 0.2 (x bs/256,
  bs 256; the plain 800-epoch model: backbone lr 0.006, ``scripts/ep800.sh:21``, protocol
  ``semi_intl_plain``), model in train mode (BN batch statistics), SGD momentum 0.9, weight decay 0. The
  published commands pass no ``--schedule``, so the default step schedule applies, whose
  milestones (60, 80) lie beyond epoch 20: the learning rates are constant (``--schedule cos``
  would give a per-epoch half cosine).
- CW-RGP ``ImageNet/lincls.py`` + ``ImageNet/cfg.py``: MoCo-style linear classification, SGD
  momentum 0.9 wrapped in apex LARC (trust 0.001, ``clip=False``), ``--lr_eval 0.1`` x
  ``--bs_eval 1024``/256 = 0.4, ``--wd_eval 0``, half-cosine per epoch over 100 epochs,
  RandomResizedCrop(224) + flip / Resize(256) + CenterCrop(224).
- CW-RGP ``base/eval/sgd.py`` (the W-MSE ``eval/sgd.py``): on precomputed features, Adam lr 1e-2
  decayed exponentially to 1e-6 over 500 epochs (ExponentialLR stepped per epoch, gamma =
  (1e-6/1e-2)^(1/500)), weight decay 5e-6, mini-batches of 1000, PyTorch's default fc init.
- CW-RGP ``base/eval/knn.py``: 5-NN, Euclidean distance (``torch.cdist``), majority vote; a tie
  goes to the smallest class index (``unique(return_counts=True)`` then ``argmax``).
- SimCLR (Chen et al. 2020, appendix B.5) fine-tuning on the 1 % / 10 % ImageNet subsets:
  Nesterov SGD momentum 0.9, lr 0.05 x batch/256, no weight decay, no warm-up, 60 epochs (1 %)
  or 30 (10 %), random crop + flip only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LinearProtocol:
    """A linear classifier on a frozen backbone.

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
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "step"  # step | cosine | exponential
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    final_lr: float = 0.0  # for exponential / cosine
    standardize: bool = False  # z-score features with the training statistics (cached only)
    source: str = ""
    kind: str = field(default="linear", init=False)


@dataclass(frozen=True)
class KNNProtocol:
    name: str
    version: int
    k: int
    rule: str  # majority-euclidean | weighted-cosine
    temperature: float = 0.07
    source: str = ""
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
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | step | none
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    bn_train: bool = True
    source: str = ""
    kind: str = field(default="semi", init=False)


PROTOCOLS = {p.name: p for p in (
    LinearProtocol("intl", 1, "augmented", "sgd", 0.4, 100, 256, schedule="step", milestones=(60, 80),
                   source="winci-ai/INTL@0aa69af20a26 evaluate.py, cfg.py, scripts/ep100_multi-crop_ema.sh "
                          "(--weights freeze --schedule step --lr-classifier 0.4 --bs 256)"),
    LinearProtocol("intl_plain", 1, "augmented", "sgd", 0.2, 100, 256, schedule="step", milestones=(60, 80),
                   source="winci-ai/INTL@0aa69af20a26 evaluate.py, cfg.py:138, scripts/ep800.sh:11-15, "
                          "scripts/in100.sh:14-18 (--lr-classifier 0.2: the plain 800-epoch model and ImageNet-100)"),
    LinearProtocol("cwrgp", 1, "augmented", "lars", 0.4, 100, 1024, schedule="cosine",
                   source="winci-ai/CW-RGP@5bbf6ed4df35 ImageNet/lincls.py, ImageNet/cfg.py "
                          "(--lars, --lr_eval 0.1 x --bs_eval 1024/256, --wd_eval 0)"),
    LinearProtocol("small", 1, "cached", "adam", 1e-2, 500, 1000, weight_decay=5e-6, schedule="exponential",
                   final_lr=1e-6, source="winci-ai/CW-RGP@5bbf6ed4df35 base/eval/sgd.py (W-MSE eval/sgd.py)"),
    LinearProtocol("fast", 1, "cached", "sgd", 0.1, 100, 256, weight_decay=0.0, nesterov=True, schedule="cosine",
                   standardize=True,
                   source="wssl-zoo: the INTL protocol's classifier and batch on cached, standardised centre-crop "
                          "features, cosine schedule; no augmentation, so no backbone pass per epoch"),
    KNNProtocol("knn5", 2, 5, "majority-euclidean",
                source="winci-ai/CW-RGP@5bbf6ed4df35 base/eval/knn.py (W-MSE eval/knn.py); v2: ties go to the "
                       "smallest class index, as there (v1 gave them to the nearest neighbour's class)"),
    KNNProtocol("knn200", 1, 200, "weighted-cosine", 0.07,
                source="InstDisc / solo-learn weighted k-NN (k=200, T=0.07)"),
    SemiProtocol("semi_intl", 2, 20, 20, 20, 256, 0.004, 0.2, schedule="step", milestones=(60, 80),
                 source="winci-ai/INTL@0aa69af20a26 evaluate.py, cfg.py, scripts/ep100_multi-crop_ema.sh "
                        "(--weights finetune --train-percent 1|10 --epochs 20 --lr-backbone 0.004 "
                        "--lr-classifier 0.2, default --schedule step: constant over 20 epochs); v1 used a cosine"),
    SemiProtocol("semi_intl_plain", 1, 20, 20, 20, 256, 0.006, 0.2, schedule="step", milestones=(60, 80),
                 source="winci-ai/INTL@0aa69af20a26 evaluate.py, cfg.py, scripts/ep800.sh:18-25 "
                        "(the plain 800-epoch model: --lr-backbone 0.006 --lr-classifier 0.2; constant lr)"),
    SemiProtocol("semi_simclr", 1, 60, 60, 30, 256, 0.05, 0.05, nesterov=True, schedule="none",
                 source="SimCLR (Chen et al. 2020), appendix B.5"),
)}


# Authors' protocols whose values depend on the model evaluated: protocol -> {recipe: variant}.
# INTL's plain (no multi-crop, no EMA) models use other learning rates than the multi-crop + EMA
# models the ``intl`` / ``semi_intl`` protocols carry (winci-ai/INTL@0aa69af20a26 scripts/*.sh).
MODEL_VARIANTS = {
    "intl": {"intl_imagenet": "intl_plain", "intl_imagenet100": "intl_plain"},
    "semi_intl": {"intl_imagenet": "semi_intl_plain"},
}


def protocol_for_model(name: str, recipe: str | None) -> str:
    """The protocol to run when ``name`` is asked for a model pretrained with ``recipe`` (the
    recipe name a model directory's ``config.json`` or registry entry records; None: unknown).

    >>> protocol_for_model("intl", "intl_imagenet"), protocol_for_model("intl", "intl_m_imagenet")
    ('intl_plain', 'intl')
    """
    return MODEL_VARIANTS.get(name, {}).get(recipe or "", name)


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
