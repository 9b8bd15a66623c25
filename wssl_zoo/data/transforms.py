"""Per-method multi-view transforms with the authors' parameters, and deterministic seeding.

Sources (read, not copied):
- W-MSE: htdt/self-supervised datasets/transforms.py + cfg.py (jitter 0.4/0.4/0.4/0.1 p 0.8,
  grayscale 0.1, crop scale 0.2-1, ratio 3/4-4/3, bicubic, flip 0.5; ImageNet-100: crop from
  0.08, jitter 0.8/0.8/0.8/0.2, grayscale 0.2). CW-RGP's small-data code is the same.
- CW-RGP ImageNet: ImageNet/transform.py, MoCo-v2 style (crop 0.2-1, jitter 0.4/0.4/0.4/0.1 p 0.8,
  grayscale 0.2, Gaussian blur p 0.5, flip).
- INTL: src/transform.py and cifar/transform.py (crop 0.08-1 bicubic, jitter 0.4/0.4/0.2/0.1
  p 0.8, grayscale 0.2, blur p 1.0/0.1, solarisation p 0/0.2; multi-crop 2x224 + 192, 160, 128,
  96 with scales (0.2-1, 0.171-0.857, 0.143-0.714, 0.114-0.571, 0.086-0.429), blur 0.5,
  solarisation 0.1; CIFAR: no blur).
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable, Sequence

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from .datasets import dataset_stats

BICUBIC = T.InterpolationMode.BICUBIC
SMALL_DATASETS = ("cifar10", "cifar100", "stl10", "tiny_imagenet", "fashion_mnist")


def derive_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (same on every machine and Python version)."""
    digest = hashlib.blake2b(",".join(str(int(v)) for v in values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class GaussianBlur:
    """SimCLR's blur: PIL Gaussian blur with radius uniform in ``sigma``."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        radius = float(torch.empty(1).uniform_(self.sigma[0], self.sigma[1]))
        return img.filter(ImageFilter.GaussianBlur(radius=radius))


class Solarize:
    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img)


class MultiViewTransform:
    """image -> list of views, one per transform."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img):
        return [t(img) for t in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)


def _normalize(dataset: str):
    mean, std = dataset_stats(dataset)
    return [T.ToTensor(), T.Normalize(mean, std)]


def wmse_view(img_size: int, dataset: str) -> T.Compose:
    """One W-MSE view (also CW-RGP's small-dataset view)."""
    big = dataset in ("imagenet100", "imagenet", "imagefolder")
    jitter = (0.8, 0.8, 0.8, 0.2) if big else (0.4, 0.4, 0.4, 0.1)
    return T.Compose([
        T.RandomApply([T.ColorJitter(*jitter)], p=0.8),
        T.RandomGrayscale(p=0.2 if big else 0.1),
        T.RandomResizedCrop(img_size, scale=(0.08 if big else 0.2, 1.0), ratio=(0.75, 4 / 3), interpolation=BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        *_normalize(dataset),
    ])


def mocov2_view(img_size: int, dataset: str) -> T.Compose:
    """CW-RGP's ImageNet view (MoCo-v2 augmentation)."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur()], p=0.5),
        T.RandomHorizontalFlip(),
        *_normalize(dataset),
    ])


def intl_view(img_size: int, dataset: str, blur_p: float, solarize_p: float,
              scale: tuple[float, float] = (0.08, 1.0)) -> T.Compose:
    """One INTL (BYOL-style) view."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=scale, interpolation=BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur()], p=blur_p),
        T.RandomApply([Solarize()], p=solarize_p),
        T.RandomHorizontalFlip(p=0.5),
        *_normalize(dataset),
    ])


MULTI_CROP = [(224, (0.2, 1.0)), (224, (0.2, 1.0)), (192, (0.171, 0.857)), (160, (0.143, 0.714)),
              (128, (0.114, 0.571)), (96, (0.086, 0.429))]


def build_view_transform(method: str, dataset: str, img_size: int, num_views: int,
                         multi_crop: bool = False) -> MultiViewTransform:
    """The pretraining views of ``method`` on ``dataset``; ValueError on unknown combinations."""
    small = dataset in SMALL_DATASETS
    if method == "wmse" or (method == "cwrgp" and small):
        return MultiViewTransform([wmse_view(img_size, dataset) for _ in range(num_views)])
    if method == "cwrgp":
        return MultiViewTransform([mocov2_view(img_size, dataset) for _ in range(num_views)])
    if method == "intl":
        if multi_crop:
            if num_views != len(MULTI_CROP):
                raise ValueError(f"INTL multi-crop has {len(MULTI_CROP)} crops, not num_views={num_views}")
            scale = img_size / 224
            return MultiViewTransform([
                intl_view(max(8, round(size * scale)), dataset, 0.5, 0.1, crop_scale) for size, crop_scale in MULTI_CROP
            ])
        blur = (0.0, 0.0) if small else (1.0, 0.1)
        solar = (0.0, 0.2)
        views = [intl_view(img_size, dataset, blur[i % 2], solar[i % 2]) for i in range(num_views)]
        return MultiViewTransform(views)
    raise ValueError(f"unknown method {method!r}; choose wmse, cwrgp or intl")


def eval_transform(dataset: str, img_size: int) -> T.Compose:
    """Deterministic evaluation transform: resize + centre crop for large images, none for small."""
    if img_size <= 96:
        return T.Compose([T.Resize(img_size, interpolation=BICUBIC), T.CenterCrop(img_size), *_normalize(dataset)])
    return T.Compose([T.Resize(int(round(img_size / 0.875)), interpolation=BICUBIC), T.CenterCrop(img_size),
                      *_normalize(dataset)])


class SeededViews(torch.utils.data.Dataset):
    """Sample i of epoch e always gets the same views, whatever the worker or resumption.

    The transform runs under a forked torch generator seeded with ``derive_seed(seed, e, i)``
    (Python's ``random`` likewise), so the caller's random state is untouched.
    """

    def __init__(self, dataset, transform: Callable, seed: int):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        seed = derive_seed(self.seed, self.epoch, index)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                views = self.transform(image)
            finally:
                random.setstate(py_state)
        return views, target
