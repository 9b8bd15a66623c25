"""The dataset catalogue: every dataset wssl-zoo reads, described once (no torch here).

Each :class:`DatasetInfo` says how the dataset is read (``reader``), its splits, the labelled split
held out for evaluation, its native image size, its standard normalisation statistics (with their
source), the authors' spellings of its name (``aliases``), its display name in tables and model
cards, and its Hugging Face dataset id. Every ``--dataset`` choice, reader, view pipeline, model
card and the registry read from here; nobody else spells a dataset name list.

The statistics a method's authors normalise with where they differ from the standard ones are the
method's facts (``wssl_zoo/methods/<method>.py``, ``train_stats`` / ``eval_stats``); :func:`dataset_stats`
and :func:`eval_stats` combine the two.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from .methods import fact

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Images of an ``imagefolder`` dataset at this size or above go through the ImageNet pipelines (224-px recipes).
LARGE_IMAGE_MIN = 128
NORMALISATIONS = ("authors", "train")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset. ``reader``: ``imagefolder`` (``ROOT/<split>/<class>/<images>``), ``torchvision``
    (torchvision's files under ``ROOT/<torchvision_folder>``: ``torchvision_files``) or ``idx``
    (Fashion-MNIST's idx.gz files). ``heldout``: the labelled held-out splits, the first one present
    is used. ``native_size``: side in pixels of every image (None: any size). ``large``: the ImageNet
    view and evaluation pipelines (224-px recipes)."""

    name: str
    display: str
    task: str  # classification | detection
    reader: str
    splits: tuple[str, ...]
    heldout: tuple[str, ...]
    stats: Stats | None
    stats_source: str
    native_size: int | None = None
    train_split: str = "train"  # what pretraining reads (STL-10: its unlabelled images too)
    aliases: tuple[str, ...] = ()
    classes: int | None = None
    large: bool = False
    hub_id: str | None = None  # the Hugging Face dataset id in model cards' metadata
    torchvision_class: str | None = None
    torchvision_folder: str | None = None
    torchvision_files: tuple[str, ...] = ()
    default_root: str | None = None  # where the data is when --data is not given

    @property
    def small(self) -> bool:
        """Images used at one native size (CIFAR, STL-10, Tiny-ImageNet, Fashion-MNIST)."""
        return self.native_size is not None


_W = "htdt/self-supervised@d9662c8"
_INTL = "winci-ai/INTL@0aa69af"
CATALOGUE: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("imagefolder", "ImageFolder", "classification", "imagefolder", ("train", "val", "test"),
                ("val", "test"), IMAGENET_STATS, "ImageNet's statistics (torchvision), for any folder of photos"),
    DatasetInfo("cifar10", "CIFAR-10", "classification", "torchvision", ("train", "test"), ("test",),
                ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), f"{_INTL} cifar/transform.py",
                native_size=32, classes=10, hub_id="cifar10", torchvision_class="CIFAR10",
                torchvision_folder="cifar-10-batches-py",
                torchvision_files=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                                   "test_batch", "batches.meta")),
    DatasetInfo("cifar100", "CIFAR-100", "classification", "torchvision", ("train", "test"), ("test",),
                ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)), f"{_INTL} cifar/transform.py",
                native_size=32, classes=100, hub_id="cifar100", torchvision_class="CIFAR100",
                torchvision_folder="cifar-100-python", torchvision_files=("train", "test", "meta")),
    DatasetInfo("stl10", "STL-10", "classification", "torchvision", ("train", "test", "unlabeled", "train+unlabeled"),
                ("test",), ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)), f"{_W} datasets/stl10.py",
                native_size=96, train_split="train+unlabeled", classes=10, hub_id="stl10", torchvision_class="STL10",
                torchvision_folder="stl10_binary",
                torchvision_files=("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin")),
    DatasetInfo("fashion_mnist", "Fashion-MNIST", "classification", "idx", ("train", "test"), ("test",),
                ((0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)),
                "wssl-zoo: measured on the 60,000 training images, grey replicated to RGB",
                native_size=28, classes=10, hub_id="fashion_mnist", torchvision_class="FashionMNIST",
                default_root="/usr/share/datasets/fashion-mnist"),
    DatasetInfo("tiny_imagenet", "Tiny-ImageNet", "classification", "imagefolder", ("train", "val", "test"),
                ("val", "test"), ((0.480, 0.448, 0.398), (0.277, 0.269, 0.282)), f"{_W} datasets/tiny_in.py",
                native_size=64, aliases=("tiny_in",), classes=200),
    DatasetInfo("imagenet100", "ImageNet-100", "classification", "imagefolder", ("train", "val"), ("val", "test"),
                IMAGENET_STATS, f"{_W} datasets/imagenet.py", aliases=("in100",), classes=100, large=True),
    DatasetInfo("imagenet", "ImageNet-1k", "classification", "imagefolder", ("train", "val"), ("val", "test"),
                IMAGENET_STATS, f"{_INTL} src/transform.py:86-87", aliases=("in1k",), classes=1000, large=True,
                hub_id="imagenet-1k"),
    DatasetInfo("coco", "COCO 2017", "detection", "coco", ("train2017", "val2017"), ("val2017",), None, "",
                classes=80, hub_id="detection-datasets/coco"),
    DatasetInfo("voc", "PASCAL VOC 07+12", "detection", "voc", ("trainval", "test"), ("test",), None, "",
                aliases=("voc07+12",), classes=20),
)}


class UnknownDatasetError(ValueError):
    """A dataset name the catalogue does not know; the message lists the names."""


@lru_cache(maxsize=None)
def _by_alias() -> dict[str, str]:
    table = {}
    for info in CATALOGUE.values():
        for key in (info.name, *info.aliases):
            if key in table:
                raise ValueError(f"wssl_zoo/catalogue.py: {key!r} names two datasets")
            table[key] = info.name
    return table


def names(task: str | None = "classification", reader: str | None = None) -> tuple[str, ...]:
    """The canonical names (catalogue order) of the datasets of ``task`` (None: all) read by ``reader``."""
    return tuple(d.name for d in CATALOGUE.values() if task in (None, d.task) and reader in (None, d.reader))


def canonical(name: str) -> str:
    """The catalogue name of ``name`` or one of its aliases; :class:`UnknownDatasetError` listing the names."""
    found = _by_alias().get(str(name))
    if found is None:
        close = difflib.get_close_matches(str(name), list(_by_alias()), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownDatasetError(f"unknown dataset {name!r}; choose one of {', '.join(names(None))}{hint}")
    return found


def get(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (or an alias)."""
    return CATALOGUE[canonical(name)]


def display_name(name: str) -> str:
    """The name tables and cards show (``CIFAR-10``); an unknown name is shown as it is."""
    try:
        return get(name).display
    except UnknownDatasetError:
        return str(name)


def is_large(name: str, img_size: int) -> bool:
    """Whether ``name`` at ``img_size`` px uses the ImageNet pipelines: ImageNet-1k/100, or an
    ``imagefolder`` at :data:`LARGE_IMAGE_MIN` px or more."""
    info = get(name)
    return info.large or (info.name == "imagefolder" and img_size >= LARGE_IMAGE_MIN)


def eval_dataset(name: str) -> str:
    """The dataset whose evaluation transform applies: a dataset used at its native size keeps its name,
    every other image folder (ImageNet, ImageNet-100, your own photos) is an ``imagefolder``."""
    info = get(name)
    return info.name if info.small and info.reader != "imagefolder" else "imagefolder"


# ---------------------------------------------------------------------------- normalisation


def dataset_stats(name: str, method: str | None = None) -> Stats:
    """``(mean, std)`` per RGB channel for normalising ``name``.

    With ``method`` ("wmse", "cwrgp", "intl") the values are exactly those that method's authors
    normalise with (W-MSE and CW-RGP use another CIFAR std than INTL: the method's ``train_stats``
    fact); without it, the dataset's standard statistics. A dataset without statistics of its own
    (detection data, unknown folders) gets ImageNet's.
    """
    quirks = fact(method, "train_stats") if method is not None else {}  # ValueError naming an unknown method
    try:
        info = get(name)
    except UnknownDatasetError:
        return IMAGENET_STATS
    return quirks.get(info.name) or info.stats or IMAGENET_STATS


def eval_stats(name: str, method: str | None = None, normalisation: str = "authors") -> Stats:
    """``(mean, std)`` with which ``method``'s authors normalise ``name`` at evaluation.

    ``normalisation="authors"``: their evaluation code's values (the method's ``eval_stats`` fact: INTL's
    CIFAR evaluation differs from its training views); ``"train"``: the training views' values,
    :func:`dataset_stats` (the corrected behaviour). The two agree everywhere else.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"--normalisation {normalisation!r}: choose one of {', '.join(NORMALISATIONS)}")
    if normalisation == "authors" and method is not None:
        quirks = fact(method, "eval_stats")
        key = get(name).name if name in _by_alias() else name
        if key in quirks:
            return quirks[key]
    return dataset_stats(name, method)
