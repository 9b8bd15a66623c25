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

Which datasets exist, their splits, held-out split, native size and normalisation statistics are
the dataset catalogue's (:mod:`wssl_zoo.catalogue`, re-exported here: ``dataset_stats``,
``eval_stats``); this module reads the files.
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
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .. import catalogue
from ..catalogue import dataset_stats, eval_stats  # noqa: F401  (re-exported: the data package's API)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")

# Errors PIL raises on unreadable files: UnidentifiedImageError and truncated data are OSError;
# broken PNG chunks are SyntaxError; a few decoders raise ValueError/EOFError/struct.error/IndexError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                 ZeroDivisionError, Image.DecompressionBombError)


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
    default = catalogue.get("fashion_mnist").default_root
    folder = Path(root or default).expanduser()
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"fashion_mnist has the splits 'train' and 'test', not {split!r}")
    images, labels = folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [p.name for p in (images, labels) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {folder} lacks {', '.join(missing)}. Install Debian's package with "
            f"`apt-get install dataset-fashion-mnist` (files in {default}) or pass a root folder "
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
    info = catalogue.get(name)
    sub, files, cls_name = info.torchvision_folder, info.torchvision_files, info.torchvision_class
    how = (f"create it with torchvision.datasets.{cls_name}(ROOT, download=True) on a machine with internet and "
           f"copy ROOT here, or pass --data pointing at the folder that contains {sub}/")
    if split not in info.splits:
        raise ValueError(f"{name} has the splits {', '.join(info.splits)}, not {split!r}")
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
        cls = getattr(torchvision.datasets, cls_name)
        if "unlabeled" in info.splits:  # STL-10 names its splits; CIFAR has train=True/False
            base = cls(str(root), split=split, download=False)
        else:
            base = cls(str(root), train=split == "train", download=False)
    except RuntimeError as exc:  # torchvision's md5 check failed
        raise ValueError(f"{name}: the files in {folder} failed torchvision's integrity check ({exc}); {how}") from None
    return TorchvisionImages(base)


# ---------------------------------------------------------------------------- entry points


def build_dataset(name: str, root: str | os.PathLike | None, split: str = "train") -> Dataset:
    """A labelled dataset of ``(PIL RGB image, int)`` with ``.targets`` and ``.classes``.

    ``name``: a classification dataset of the catalogue (:func:`wssl_zoo.catalogue.names`) or an
    alias. Its ``reader`` decides: image folders (``imagefolder``, ``imagenet``, ``imagenet100``,
    ``tiny_imagenet``; ``split`` is a sub-folder of ``root``), torchvision's files (``cifar10`` /
    ``cifar100``: train, test; ``stl10``: train, test, unlabeled, train+unlabeled) or idx files
    (``fashion_mnist``: train, test; ``root`` defaults to Debian's package folder). A CIFAR/STL
    root that holds ``<split>/<class>/`` image folders instead of torchvision's files is read as an
    ImageFolder.
    """
    info = catalogue.get(name)
    if info.task != "classification":
        raise ValueError(f"{name} is a {info.task} dataset; choose one of {', '.join(catalogue.names())}")
    if info.reader == "imagefolder":
        if not root:
            raise ValueError(f"{name} needs a root folder in the ImageFolder layout ROOT/{split}/<class>/<images>")
        return ImageFolderDataset(root, split)
    if info.reader == "idx":
        return fashion_mnist(root, split)
    if root and (Path(root).expanduser() / split).is_dir():
        return ImageFolderDataset(root, split)
    return _torchvision_dataset(info.name, root, split)


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
    """The labelled held-out split of dataset ``name`` (its catalogue ``heldout`` splits: ``test`` for
    the torchvision datasets and Fashion-MNIST; ``ROOT/val`` then ``ROOT/test`` for an image folder),
    or None when there is none."""
    info = catalogue.get(name)
    if info.reader != "imagefolder":
        return build_dataset(info.name, root, info.heldout[0])
    for split in info.heldout:
        if root and (Path(root) / split).is_dir():
            return build_dataset(info.name, root, split)
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
