"""Named, versioned evaluation protocols (frozen dataclasses).

A protocol's ``name`` and ``version`` go into every record; running a protocol with overrides
(e.g. ``--epochs 2`` on a CPU) records the overrides, and the record's protocol name gets a
``+override`` suffix so that it is never mistaken for the full protocol.

Sources (read, not copied):

- INTL ``evaluate.py`` @ 0aa69af (winci-ai/INTL): frozen backbone, SGD momentum 0.9, weight decay
  0, MultiStepLR at epochs 60 and 80 (gamma 0.1), 100 epochs, RandomResizedCrop(224) + flip for
  training and Resize(256) + CenterCrop(224) for validation; the classifier lr as the issue
  states it (0.4 at batch 256: the script's ``--lr-classifier`` scaled by batch/256). Fine-tuning
  on the 1 % / 10 % subsets (``--weights finetune --train-percent``): backbone lr 0.004 and
  classifier lr 0.2 (per 256 images), 20 epochs, cosine schedule, BN in train mode.
- CW-RGP ``ImageNet/lincls.py`` + ``cfg.py`` @ HEAD (winci-ai/CW-RGP): MoCo-style linear
  classification, SGD momentum 0.9 wrapped in LARC (trust 0.001, no clipping), lr 0.1 x
  batch/256 at batch 1024, weight decay 0, half-cosine over 100 epochs.
- W-MSE ``eval/sgd.py`` (htdt/self-supervised; also CW-RGP ``base/eval/sgd.py``): on
  precomputed features, Adam lr 1e-2 decayed exponentially to 1e-6 over 500 epochs, weight
  decay 5e-6, mini-batches of 1000.
- SimCLR (Chen et al. 2020, appendix B.5) fine-tuning on the 1 % / 10 % ImageNet subsets:
  Nesterov SGD momentum 0.9, lr 0.05 x batch/256, no weight decay, 60 epochs (1 %) or 30 (10 %),
  random crop + flip only.
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
    schedule: str = "cosine"
    bn_train: bool = True
    source: str = ""
    kind: str = field(default="semi", init=False)


PROTOCOLS = {p.name: p for p in (
    LinearProtocol("intl", 1, "augmented", "sgd", 0.4, 100, 256, schedule="step", milestones=(60, 80),
                   source="winci-ai/INTL evaluate.py (--weights freeze, --schedule step)"),
    LinearProtocol("cwrgp", 1, "augmented", "lars", 0.4, 100, 1024, schedule="cosine",
                   source="winci-ai/CW-RGP ImageNet/lincls.py --lars (lr 0.1 x 1024/256)"),
    LinearProtocol("small", 1, "cached", "adam", 1e-2, 500, 1000, weight_decay=5e-6, schedule="exponential",
                   final_lr=1e-6, source="htdt/self-supervised eval/sgd.py"),
    LinearProtocol("fast", 1, "cached", "sgd", 0.1, 100, 256, weight_decay=0.0, nesterov=True, schedule="cosine",
                   standardize=True,
                   source="wssl-zoo: the INTL protocol's classifier and batch on cached, standardised centre-crop "
                          "features, cosine schedule; no augmentation, so no backbone pass per epoch"),
    KNNProtocol("knn5", 1, 5, "majority-euclidean", source="htdt/self-supervised eval/knn.py"),
    KNNProtocol("knn200", 1, 200, "weighted-cosine", 0.07,
                source="InstDisc / solo-learn weighted k-NN (k=200, T=0.07)"),
    SemiProtocol("semi_intl", 1, 20, 20, 20, 256, 0.004, 0.2, schedule="cosine",
                 source="winci-ai/INTL evaluate.py --weights finetune --train-percent {1,10}"),
    SemiProtocol("semi_simclr", 1, 60, 60, 30, 256, 0.05, 0.05, nesterov=True, schedule="none",
                 source="SimCLR (Chen et al. 2020), appendix B.5"),
)}


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
