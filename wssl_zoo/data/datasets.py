"""Labelled image datasets that return ``(PIL RGB image, class index)``.

- ``imagefolder``: ``ROOT/<split>/<class>/<image>`` (ImageNet, ImageNet-100, Tiny-ImageNet in
  ImageFolder form, any custom data). Grayscale, palette, RGBA and CMYK files are converted to
  RGB; a corrupt or truncated file is reported once and replaced by the next readable sample,
  so a bad file never kills a run.
- ``cifar10`` / ``cifar100`` / ``stl10``: torchvision's on-disk formats (no download here).
- ``fashion_mnist``: the idx.gz files of Debian's ``dataset-fashion-mnist`` package.
"""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".gif")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# (mean, std) the authors normalise with.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
    "tiny_imagenet": ((0.480, 0.448, 0.398), (0.277, 0.269, 0.282)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fashion_mnist": ((0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)),
}


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for normalisation; ImageNet statistics for ImageNet-like and unknown data."""
    return STATS.get(name, STATS["imagenet"])


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any image file as RGB (grayscale, palette, RGBA and CMYK included)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


class ImageFolderDataset(Dataset):
    """``ROOT/<split>/<class>/*.<image>``, classes sorted by name."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.root = Path(root).expanduser()
        folder = self.root / split
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {self.root} does not exist (expected {self.root}/{split}/<class>/<images>)")
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist: expected the ImageNet layout {self.root}/{split}/<class>/<images>")
        self.classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        if not self.classes:
            raise ValueError(f"{folder} holds no class folders (expected {folder}/<class>/<images>)")
        self.samples: list[tuple[str, int]] = []
        for label, cls in enumerate(self.classes):
            files = sorted(e.path for e in os.scandir(folder / cls)
                           if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise ValueError(f"class folder {folder / cls} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                 "remove it or add images")
            self.samples.extend((f, label) for f in files)
        self.targets = [t for _, t in self.samples]
        self.bad_files: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            if path in self.bad_files:
                continue
            try:
                return load_rgb(path), target
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                self.bad_files.add(path)
                warnings.warn(f"skipping unreadable image {path} ({type(exc).__name__}: {exc}); "
                              "using the next sample instead", stacklevel=2)
        raise ValueError(f"no readable image in {self.root}")


def scan_images(dataset: ImageFolderDataset, progress: bool = True) -> list[str]:
    """Decode every image of ``dataset``; the list of files that fail."""
    from tqdm.auto import tqdm

    bad = []
    for path, _ in tqdm(dataset.samples, desc="checking images", disable=not progress):
        try:
            load_rgb(path)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            bad.append(path)
    return bad


class ArrayImageDataset(Dataset):
    """Images held as a uint8 array (N, H, W) or (N, H, W, 3) with integer labels."""

    def __init__(self, images: np.ndarray, targets, classes: list[str]):
        self.images, self.targets, self.classes = images, [int(t) for t in targets], classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        return img.convert("RGB"), self.targets[index]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an (optionally gzipped) idx file: magic 2051 = images (N, H, W), 2049 = labels (N,)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    if magic == 2051:
        n, h, w = (int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
        body = np.frombuffer(data, dtype=np.uint8, offset=16)
        if body.size != n * h * w:
            raise ValueError(f"{path}: header says {n}x{h}x{w} images but holds {body.size} bytes")
        return body.reshape(n, h, w)
    if magic == 2049:
        n = int.from_bytes(data[4:8], "big")
        body = np.frombuffer(data, dtype=np.uint8, offset=8)
        if body.size != n:
            raise ValueError(f"{path}: header says {n} labels but holds {body.size}")
        return body
    raise ValueError(f"{path}: magic number {magic} is not an idx image (2051) or label (2049) file")


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def fashion_mnist(root: str | None, split: str) -> ArrayImageDataset:
    folder = Path(root or FASHION_MNIST_DIR)
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"fashion_mnist has splits train and test, not {split!r}")
    images = folder / f"{prefix}-images-idx3-ubyte.gz"
    if not images.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {folder}: install it with `apt-get install dataset-fashion-mnist` "
            "(Debian/Ubuntu) or pass --data DIR holding the idx.gz files"
        )
    x, y = read_idx(images), read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if len(x) != len(y):
        raise ValueError(f"{folder}: {len(x)} images but {len(y)} labels in the {split} split")
    return ArrayImageDataset(x, y, FASHION_CLASSES)


def _torchvision(name: str, root: str | None, split: str):
    import torchvision

    if not root:
        raise ValueError(f"{name}: pass --data ROOT (torchvision's folder of the dataset)")
    try:
        if name in ("cifar10", "cifar100"):
            if split not in ("train", "test"):
                raise ValueError(f"{name} has splits train and test, not {split!r}")
            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            ds = cls(root, train=split == "train", download=False)
        else:
            ds = torchvision.datasets.STL10(root, split=split, download=False)
    except RuntimeError as exc:
        sub, cls_name = {"cifar10": ("cifar-10-batches-py", "CIFAR10"), "cifar100": ("cifar-100-python", "CIFAR100"),
                         "stl10": ("stl10_binary", "STL10")}[name]
        raise FileNotFoundError(
            f"{name} not found under {root} (expected {root}/{sub}, torchvision's format; create it with "
            f"torchvision.datasets.{cls_name}(root, download=True) on a machine with internet): {exc}"
        ) from None
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = [int(t) for t in ds.labels]
    ds.targets = [int(t) for t in targets]
    return ds


def build_dataset(name: str, root: str | None, split: str = "train") -> Dataset:
    """A labelled dataset of ``(PIL RGB image, int)`` with ``.targets`` and ``.classes``.

    name: imagefolder (also tiny_imagenet / imagenet100 / imagenet), cifar10, cifar100, stl10
    (splits train, test, unlabeled, train+unlabeled) or fashion_mnist.
    """
    if name in ("imagefolder", "tiny_imagenet", "imagenet100", "imagenet"):
        if not root:
            raise ValueError(f"{name}: pass --data ROOT (ImageFolder layout ROOT/{split}/<class>/)")
        return ImageFolderDataset(root, split)
    if name == "fashion_mnist":
        return fashion_mnist(root, split)
    if name in ("cifar10", "cifar100", "stl10"):
        if root and (Path(root) / split).is_dir():  # the same data as JPEG files in ImageFolder layout
            return ImageFolderDataset(root, split)
        return _RGB(_torchvision(name, root, split))
    raise ValueError(f"unknown dataset {name!r}; choose imagefolder, cifar10, cifar100, stl10 or fashion_mnist")


class _RGB(Dataset):
    def __init__(self, base):
        self.base, self.targets = base, base.targets
        self.classes = list(getattr(base, "classes", sorted(set(self.targets))))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        img, target = self.base[index]
        return img.convert("RGB"), int(target)


def balanced_subset(targets, per_class: int, seed: int) -> list[int]:
    """Sorted indices of up to ``per_class`` samples of every class (labels < 0 are skipped)."""
    targets = torch.as_tensor(list(targets))
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(targets).tolist():
        if cls < 0:
            continue
        idx = (targets == cls).nonzero().flatten()
        chosen += idx[torch.randperm(len(idx), generator=gen)[:per_class]].tolist()
    return sorted(chosen)
