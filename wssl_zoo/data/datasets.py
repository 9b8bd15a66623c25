"""Labelled image datasets that return ``(PIL RGB image, class index)``.

Every dataset here exposes ``.targets`` (``list[int]``, ``-1`` for unlabelled images) and
``.classes`` (``list[str]``), so the pretraining loop, the kNN monitor and the demo treat them
alike:

- ``imagefolder``: ``ROOT/<split>/<class>/**/<image>`` (ImageNet, ImageNet-100, Tiny-ImageNet,
  any custom data). Grayscale, palette, RGBA and CMYK files are converted to RGB; a corrupt or
  truncated file is reported once and replaced by the next readable sample, so one bad file never
  ends a multi-day run. :func:`scan_images` checks a whole folder up front.
- ``cifar10`` / ``cifar100`` / ``stl10``: torchvision's on-disk formats (never downloaded here).
- ``fashion_mnist``: the idx.gz files of Debian's ``dataset-fashion-mnist`` package, read with
  numpy (:func:`read_idx`).

Normalisation statistics (:func:`dataset_stats`) are the ones the authors normalise with:
htdt/self-supervised ``datasets/{cifar10,cifar100,stl10,tiny_in,imagenet}.py`` (W-MSE, and
CW-RGP's ``base/datasets/*.py``, which copies them), INTL ``cifar/transform.py`` and
``src/transform.py``.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATASET_NAMES = ("imagefolder", "cifar10", "cifar100", "stl10", "fashion_mnist")
# Recipe dataset names stored as ImageFolder trees.
IMAGEFOLDER_ALIASES = ("tiny_imagenet", "imagenet100", "imagenet")
# Datasets whose images are used at their native size (no resize/centre crop at evaluation).
SMALL_DATASETS = ("cifar10", "cifar100", "stl10", "fashion_mnist")

# Errors PIL raises on unreadable files: UnidentifiedImageError and truncated data are OSError;
# broken PNG chunks are SyntaxError; a few decoders raise ValueError/EOFError/struct.error/IndexError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                 ZeroDivisionError, Image.DecompressionBombError)

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Standard per-dataset statistics (method-independent).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),  # INTL cifar/transform.py
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),  # INTL cifar/transform.py
    "stl10": ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),  # W-MSE datasets/stl10.py
    "tiny_imagenet": ((0.480, 0.448, 0.398), (0.277, 0.269, 0.282)),  # W-MSE datasets/tiny_in.py
    "imagenet100": IMAGENET_STATS,
    "imagenet": IMAGENET_STATS,
    "imagefolder": IMAGENET_STATS,
    # measured on the 60000 training images of Fashion-MNIST, grey replicated to RGB
    "fashion_mnist": ((0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)),
}
# Where an author's training views (``train_stats``) or evaluation code (``eval_stats``: a quirk that
# shaped the reported numbers, reproduced by default; ``normalisation="train"`` corrects it)
# normalise otherwise than the table above: the method's facts, cited in wssl_zoo/methods/<method>.py.
def _method_stats(key: str) -> dict[str, dict]:
    from ..methods import fact
    from ..registry import METHODS

    return {m: fact(m, key) for m in METHODS}


METHOD_STATS = _method_stats("train_stats")
AUTHORS_EVAL_STATS = _method_stats("eval_stats")
NORMALISATIONS = ("authors", "train")


def dataset_stats(name: str, method: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per RGB channel for normalising ``name``.

    With ``method`` ("wmse", "cwrgp", "intl") the values are exactly those that method's authors
    normalise with (W-MSE and CW-RGP use a different CIFAR std than INTL); without it, the
    standard statistics of the dataset. ``imagefolder`` and unknown names get ImageNet's.
    """
    if method is not None and method not in METHOD_STATS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHOD_STATS)}")
    if method is not None and name in METHOD_STATS[method]:
        return METHOD_STATS[method][name]
    return STATS.get(name, IMAGENET_STATS)


def eval_stats(name: str, method: str | None = None,
               normalisation: str = "authors") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` with which ``method``'s authors normalise ``name`` at evaluation.

    ``normalisation="authors"``: their evaluation code's values (:data:`AUTHORS_EVAL_STATS`; INTL's
    CIFAR evaluation differs from its training views); ``"train"``: the training views' values,
    :func:`dataset_stats` (the corrected behaviour). The two agree everywhere else.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation {normalisation!r}: choose one of {', '.join(NORMALISATIONS)}")
    if normalisation == "authors" and method is not None and name in AUTHORS_EVAL_STATS.get(method, {}):
        return AUTHORS_EVAL_STATS[method][name]
    return dataset_stats(name, method)


# ---------------------------------------------------------------------------- image folders


class BadImageWarning(UserWarning):
    """An image file could not be decoded and was replaced by another sample."""


def load_rgb(path: str | os.PathLike | BinaryIO) -> Image.Image:
    """Fully decode ``path`` (a file name or an open binary file) and return it as RGB (grayscale,
    palette, RGBA, CMYK included).

    Raises one of :data:`DECODE_ERRORS` when the file is not a readable image.
    """
    with Image.open(path) as img:
        img.load()  # decode now, inside the caller's error handling (PIL decodes lazily)
        return img.convert("RGB")


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: str) -> list[str]:
    """Image files below ``folder`` at any depth (like torchvision's ImageFolder), sorted.

    Hidden files and folders (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints``) are skipped.
    """
    found: list[str] = []
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(entry.path)
                elif _is_image(entry.name) and entry.is_file():
                    found.append(entry.path)
    return sorted(found)


class ImageFolderDataset(Dataset):
    """``ROOT/<split>/<class>/<image>`` with classes sorted by folder name, targets 0..C-1.

    Extensions are matched case-insensitively (:data:`IMAGE_EXTENSIONS`); images may sit in
    sub-folders of a class folder (Tiny-ImageNet's ``train/<wnid>/images/``). A split folder
    holding ``val_annotations.txt`` and ``images/`` (Tiny-ImageNet's raw ``val``) is labelled
    from the annotation file. The files are listed once, here.

    ``dataset[i]`` -> ``(PIL RGB image, int)``. An unreadable file is warned about once
    (:class:`BadImageWarning`), recorded in ``bad_files`` (path -> error) and replaced by the
    next index that decodes, so the result for ``i`` is still deterministic.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 loader: Callable[[str], Image.Image] = load_rgb):
        self.root = Path(root).expanduser()
        self.split = split
        self.folder = self.root / split
        self.loader = loader
        layout = f"{self.root}/{split}/<class>/<image files>"
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {self.root} does not exist (expected the ImageFolder layout {layout})")
        if not self.folder.is_dir():
            present = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
            raise FileNotFoundError(
                f"split folder {self.folder} does not exist: expected the ImageFolder layout {layout} "
                f"(folders present in {self.root}: {present or 'none'})"
            )
        if (self.folder / "val_annotations.txt").is_file() and (self.folder / "images").is_dir():
            self.classes, self.samples = self._annotated_split()
        else:
            self.classes, self.samples = self._class_folders(layout)
        self.targets = [target for _, target in self.samples]
        self.bad_files: dict[str, str] = {}

    def _class_folders(self, layout: str) -> tuple[list[str], list[tuple[str, int]]]:
        with os.scandir(self.folder) as entries:
            classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise ValueError(f"{self.folder} holds no class folders: expected {layout}")
        samples: list[tuple[str, int]] = []
        for label, name in enumerate(classes):
            files = _images_under(str(self.folder / name))
            if not files:
                raise ValueError(
                    f"class folder {self.folder / name} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}, "
                    "any case); add images or remove the folder, since an empty class would shift every label after it"
                )
            samples.extend((path, label) for path in files)
        return classes, samples

    def _annotated_split(self) -> tuple[list[str], list[tuple[str, int]]]:
        """Tiny-ImageNet's raw ``val/``: ``images/*.JPEG`` labelled by ``val_annotations.txt``."""
        annotations = self.folder / "val_annotations.txt"
        label_of: dict[str, str] = {}
        for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise ValueError(f"{annotations}:{line_no}: expected '<file>\\t<class>\\t...', got {line!r}")
            label_of[fields[0]] = fields[1]
        classes = sorted(set(label_of.values()))
        index = {name: i for i, name in enumerate(classes)}
        samples = []
        for path in _images_under(str(self.folder / "images")):
            name = os.path.basename(path)
            if name not in label_of:
                raise ValueError(f"{path} is not listed in {annotations}")
            samples.append((path, index[label_of[name]]))
        if not samples:
            raise ValueError(f"{self.folder / 'images'} holds no images")
        return classes, samples

    def __len__(self) -> int:
        return len(self.samples)

    def _record_bad(self, path: str, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self.bad_files[path] = reason
        # warn_explicit at line 0: the warning is one line (no stray source line of the caller below it)
        warnings.warn_explicit(f"skipping unreadable image {path} ({reason}); the next readable sample is used "
                               "instead", BadImageWarning, filename="wssl_zoo.data", lineno=0,
                               module="wssl_zoo.data.datasets")

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images in {self.folder}")
        index %= n
        for offset in range(n):
            path, target = self.samples[(index + offset) % n]
            if path in self.bad_files:
                continue
            try:
                return self.loader(path), target
            except DECODE_ERRORS as exc:
                self._record_bad(path, exc)
        raise RuntimeError(f"none of the {n} images in {self.folder} could be decoded (see the warnings above)")


def _check_file(loader: Callable[[str], Image.Image], path: str) -> str | None:
    try:
        loader(path)
    except DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def scan_images(dataset: ImageFolderDataset, workers: int | None = None, progress: bool = True) -> list[str]:
    """Fully decode every image of ``dataset``; returns the sorted paths that fail.

    Decoding runs on ``workers`` threads (PIL releases the GIL while decoding; default
    ``min(8, CPU count)``, 0 = in this thread) with a tqdm progress bar. The failures are also
    recorded in ``dataset.bad_files``, so training skips them without a warning per worker.
    """
    from tqdm.auto import tqdm

    if not hasattr(dataset, "samples") or not hasattr(dataset, "bad_files"):
        raise TypeError(f"scan_images needs an ImageFolderDataset, got {type(dataset).__name__}")
    loader = getattr(dataset, "loader", load_rgb)
    paths = [path for path, _ in dataset.samples]
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    bad: list[str] = []
    bar = tqdm(total=len(paths), desc=f"checking {getattr(dataset, 'folder', 'images')}", unit="img",
               disable=not progress)

    def note(path: str, error: str | None) -> None:
        if error is not None:
            bad.append(path)
            dataset.bad_files[path] = error
        bar.update()

    try:
        if workers <= 0:
            for path in paths:
                note(path, _check_file(loader, path))
        else:
            window = 1024 * workers  # bounded number of pending futures, even for ImageNet
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for start in range(0, len(paths), window):
                    chunk = paths[start:start + window]
                    for path, error in zip(chunk, pool.map(lambda p: _check_file(loader, p), chunk)):
                        note(path, error)
    finally:
        bar.close()
    return sorted(bad)


# ---------------------------------------------------------------------------- arrays (Fashion-MNIST)


class ArrayImageDataset(Dataset):
    """uint8 images ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` with labels -> ``(PIL RGB, int)``.

    Grey images are replicated to three channels so the RGB transforms apply unchanged.
    """

    def __init__(self, images: np.ndarray, targets: Iterable[int], classes: Sequence[str]):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"expected uint8 images (N, H, W[, 3]), got {images.dtype} {images.shape}")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        if len(self.targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), self.targets[index]


IDX_IMAGES, IDX_LABELS = 2051, 2049


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (gzipped when the name ends in ``.gz``), the MNIST / Fashion-MNIST format.

    Magic 2051 -> uint8 images ``(N, rows, cols)``; magic 2049 -> uint8 labels ``(N,)``. The
    header's sizes are checked against the payload; any mismatch is a ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such idx file")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:  # bad gzip stream or truncated archive
        raise ValueError(f"{path}: cannot be read as {'gzip' if opener is gzip.open else 'raw'} idx data ({exc})") from None
    if len(data) < 8:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an idx header")
    magic, count = struct.unpack(">II", data[:8])
    if magic == IDX_IMAGES:
        if len(data) < 16:
            raise ValueError(f"{path}: idx image header is truncated")
        rows, cols = struct.unpack(">II", data[8:16])
        shape, offset = (count, rows, cols), 16
    elif magic == IDX_LABELS:
        shape, offset = (count,), 8
    else:
        raise ValueError(f"{path}: magic number {magic} is neither an idx image file ({IDX_IMAGES}) "
                         f"nor an idx label file ({IDX_LABELS})")
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: the header announces shape {shape} ({expected} bytes) but "
                         f"{len(data) - offset} bytes follow it")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def fashion_mnist(root: str | os.PathLike | None, split: str) -> ArrayImageDataset:
    """Fashion-MNIST (``train``: 60000, ``test``: 10000 images of 28 x 28) from idx.gz files."""
    folder = Path(root or FASHION_MNIST_DIR).expanduser()
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"fashion_mnist has the splits 'train' and 'test', not {split!r}")
    images, labels = folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [p.name for p in (images, labels) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {folder} lacks {', '.join(missing)}. Install Debian's package with "
            f"`apt-get install dataset-fashion-mnist` (files in {FASHION_MNIST_DIR}) or pass a root folder "
            "holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"
        )
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1:
        raise ValueError(f"{folder}: {images.name} must hold images and {labels.name} labels")
    if len(x) != len(y):
        raise ValueError(f"{folder}: {len(x)} images in {images.name} but {len(y)} labels in {labels.name}")
    if y.size and int(y.max()) >= len(FASHION_CLASSES):
        raise ValueError(f"{labels}: label {int(y.max())} is outside the {len(FASHION_CLASSES)} Fashion-MNIST classes")
    return ArrayImageDataset(x, y, FASHION_CLASSES)


# ---------------------------------------------------------------------------- torchvision formats

# name -> (folder torchvision expects under root, files it checks, torchvision class name)
_TORCHVISION_LAYOUT = {
    "cifar10": ("cifar-10-batches-py",
                ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"], "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"], "CIFAR100"),
    "stl10": ("stl10_binary", ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"], "STL10"),
}
_SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"),
           "stl10": ("train", "test", "unlabeled", "train+unlabeled")}


class TorchvisionImages(Dataset):
    """A torchvision dataset as ``(PIL RGB image, int)`` with ``.targets`` and ``.classes``.

    STL-10's unlabelled images have target -1.
    """

    def __init__(self, base: Dataset):
        self.base = base
        raw = getattr(base, "targets", None)
        if raw is None:
            raw = getattr(base, "labels")
        self.targets = [int(t) for t in raw]
        self.classes = list(getattr(base, "classes", None) or [str(c) for c in sorted({t for t in self.targets if t >= 0})])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image, _ = self.base[index]
        return image.convert("RGB"), self.targets[index]


def _torchvision_dataset(name: str, root: str | os.PathLike | None, split: str) -> TorchvisionImages:
    import torchvision

    sub, files, cls_name = _TORCHVISION_LAYOUT[name]
    how = (f"create it with torchvision.datasets.{cls_name}(ROOT, download=True) on a machine with internet and "
           f"copy ROOT here, or pass --data pointing at the folder that contains {sub}/")
    if split not in _SPLITS[name]:
        raise ValueError(f"{name} has the splits {', '.join(_SPLITS[name])}, not {split!r}")
    if not root:
        raise ValueError(f"{name} needs a root folder (one that contains {sub}/); {how}")
    root = Path(root).expanduser()
    if root.name == sub:  # the caller pointed at the data folder itself
        root = root.parent
    folder = root / sub
    if not folder.is_dir():
        if (root / "train").is_dir():  # an ImageFolder root under a torchvision-dataset recipe
            heldout = any((root / s).is_dir() for s in ("val", "test"))
            raise FileNotFoundError(
                f"{name} not found: {root} is an ImageFolder root (train/<class>/), not torchvision's {sub}/; "
                f"pass --dataset imagefolder" + ("" if heldout else
                                                 " and --eval-every 0 (it has no val/ or test/ split)"))
        raise FileNotFoundError(f"{name} not found: {folder} does not exist (torchvision's format); {how}")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: {folder} lacks {', '.join(missing)}; {how}")
    try:
        if name == "stl10":
            base = torchvision.datasets.STL10(str(root), split=split, download=False)
        else:
            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            base = cls(str(root), train=split == "train", download=False)
    except RuntimeError as exc:  # torchvision's md5 check failed
        raise ValueError(f"{name}: the files in {folder} failed torchvision's integrity check ({exc}); {how}") from None
    return TorchvisionImages(base)


# ---------------------------------------------------------------------------- entry points


def build_dataset(name: str, root: str | os.PathLike | None, split: str = "train") -> Dataset:
    """A labelled dataset of ``(PIL RGB image, int)`` with ``.targets`` and ``.classes``.

    name: ``imagefolder`` (aliases ``tiny_imagenet``, ``imagenet100``, ``imagenet``; split is a
    sub-folder of root), ``cifar10`` / ``cifar100`` (splits train, test), ``stl10`` (train,
    test, unlabeled, train+unlabeled) or ``fashion_mnist`` (train, test; root defaults to
    Debian's package folder). A CIFAR/STL root that holds ``<split>/<class>/`` image folders
    instead of torchvision's files is read as an ImageFolder.
    """
    if name == "imagefolder" or name in IMAGEFOLDER_ALIASES:
        if not root:
            raise ValueError(f"{name} needs a root folder in the ImageFolder layout ROOT/{split}/<class>/<images>")
        return ImageFolderDataset(root, split)
    if name == "fashion_mnist":
        return fashion_mnist(root, split)
    if name in _TORCHVISION_LAYOUT:
        if root and (Path(root).expanduser() / split).is_dir():
            return ImageFolderDataset(root, split)
        return _torchvision_dataset(name, root, split)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)} "
                     f"(or the ImageFolder aliases {', '.join(IMAGEFOLDER_ALIASES)})")


def balanced_subset(targets: Iterable[int], per_class: int, seed: int) -> list[int]:
    """Sorted indices of up to ``per_class`` random samples of every class (seeded).

    Negative labels (STL-10's unlabelled images) are never chosen; a class with fewer than
    ``per_class`` samples contributes all of them.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    labels = torch.as_tensor(list(targets), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for cls in torch.unique(labels).tolist():  # sorted, so the draw order is fixed
        if cls < 0:
            continue
        members = (labels == cls).nonzero().flatten()
        chosen += members[torch.randperm(len(members), generator=gen)[:per_class]].tolist()
    return sorted(chosen)


# ---------------------------------------------------------------------------- evaluation helpers


def heldout_split(name: str, root: str | os.PathLike | None) -> Dataset | None:
    """The labelled held-out split of dataset ``name`` (``test`` for the torchvision datasets and
    Fashion-MNIST; ``ROOT/val`` then ``ROOT/test`` for an image folder), or None when there is none."""
    if name in ("cifar10", "cifar100", "stl10", "fashion_mnist"):
        return build_dataset(name, root, "test")
    for split in ("val", "test"):
        if root and (Path(root) / split).is_dir():
            return build_dataset("imagefolder", root, split)
    return None


class TransformedDataset(Dataset):
    """``(transform(image), target)`` over a dataset of ``(PIL image, target)`` pairs."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, target = self.base[i]
        return self.transform(image), target
