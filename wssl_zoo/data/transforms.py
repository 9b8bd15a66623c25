"""Per-method multi-view pretraining transforms with the authors' parameters, and seeding.

Sources (read, not copied; the commits of ``wssl_zoo.pretrain.recipes``):

- W-MSE, htdt/self-supervised: ``datasets/transforms.py`` (``aug_transform``: colour jitter,
  grayscale, random resized crop with ``interpolation=3`` = bicubic, flip, in that order, then
  ``ToTensor`` + ``Normalize``), ``cfg.py`` (defaults: jitter 0.4/0.4/0.4/0.1 with p 0.8,
  grayscale 0.1, crop scale 0.2-1, ratio 3/4-4/3, flip 0.5), ``datasets/{cifar10,cifar100,
  stl10,tiny_in}.py`` (crop 32 / 32 / 64 / 64, normalisation, STL-10 test transform
  ``Resize(70) + CenterCrop(64)``), ``datasets/imagenet.py`` (224 crops, blur radius 0.1-2
  with p 0.5 after the flip) and README (ImageNet-100: ``--crop_s0 0.08 --cj0 0.8 --cj1 0.8
  --cj2 0.8 --cj3 0.2 --gs_p 0.2``).
- CW-RGP, winci-ai/CW-RGP: ``base/datasets/transforms.py`` and ``base/cfg.py`` (W-MSE's
  pipeline and defaults, unchanged), ``base/datasets/in100.py`` (W-MSE's ImageNet pipeline with
  the default parameters), ``ImageNet/train.py`` + ``ImageNet/transform.py`` (MoCo-v2 views:
  crop 0.2-1 bilinear, jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2, blur sigma 0.1-2 p 0.5,
  flip).
- INTL, winci-ai/INTL: ``src/transform.py`` (``ImageNetTransform``: crop 0.08-1 bicubic, jitter
  0.4/0.4/0.2/0.1 p 0.8, grayscale 0.2, blur, solarisation, flip 0.5; ``Multi_Crop``: 2 x 224 +
  192 + 160 + 128 + 96, scales 0.2-1, 0.171-0.857, 0.143-0.714, 0.114-0.571, 0.086-0.429, blur
  0.5 and solarisation 0.1 for every crop), ``cfg.py`` (two views: blur p 1.0 / 0.1,
  solarisation p 0.0 / 0.2), ``cifar/transform.py`` + ``cifar/cfg.py`` (``CifarTransform``: the
  same without blur, solarisation 0.0 / 0.2, 32 px, INTL's CIFAR normalisation).
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import random
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset
from torchvision import transforms as T

from .. import catalogue
from ..catalogue import dataset_stats, eval_stats
from ..registry import METHODS  # the one list of methods

BICUBIC = T.InterpolationMode.BICUBIC
BILINEAR = T.InterpolationMode.BILINEAR


def derive_seed(*values: int) -> int:
    """A stable 63-bit seed from integers: blake2b of their decimal digits.

    The same on every machine, process and Python version (unlike ``hash``), so the trainer
    and the data workers derive identical seeds from ``(seed, epoch, index)`` and the like.
    """
    digits = ",".join(str(operator.index(v)) for v in values)
    digest = hashlib.blake2b(digits.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _dataset(dataset: str) -> str:
    """The catalogue name of a classification dataset (aliases such as the authors' ``tiny_in``,
    ``in100`` accepted); ValueError naming the choices otherwise."""
    try:
        name = catalogue.canonical(dataset)
    except catalogue.UnknownDatasetError:
        name = None
    if name is None or catalogue.get(name).task != "classification":
        named = [n for n in catalogue.names() if n != "imagefolder"] + ["imagefolder"]  # a folder of your own last
        raise ValueError(f"unknown dataset {dataset!r} for the view transforms; choose one of {', '.join(named)}")
    return name



def _check_size(img_size: int) -> None:
    if operator.index(img_size) < 8:
        raise ValueError(f"img_size must be at least 8 pixels, got {img_size}")


# ---------------------------------------------------------------------------- building blocks


class RandomGaussianBlur:
    """PIL Gaussian blur with a radius drawn uniformly from ``sigma`` (SimCLR's blur as in all
    three repositories). The radius comes from Python's ``random.uniform``, as in the authors' code
    (W-MSE datasets/imagenet.py:14, CW-RGP ImageNet/transform.py:13, INTL src/transform.py:13), so
    torch's generator sees the same draws as in their pipelines; :class:`SeededViews` seeds both."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        self.sigma = tuple(sigma)

    def __call__(self, img: Image.Image) -> Image.Image:
        radius = random.uniform(self.sigma[0], self.sigma[1])
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class Solarize:
    """``PIL.ImageOps.solarize`` at its default threshold 128 (INTL ``Solarization``)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FitSquare:
    """Resize (bicubic, shorter side) + centre-crop to ``size`` x ``size``, skipped when the image
    already has that size, so native-size data (CIFAR at 32 px) passes through untouched."""

    def __init__(self, size: int):
        self.size = size
        self._resize = T.Compose([T.Resize(size, interpolation=BICUBIC), T.CenterCrop(size)])

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.size == (self.size, self.size) else self._resize(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [T.ToTensor(), T.Normalize(mean, std)]


class MultiViewTransform:
    """``image -> list of views``, one per transform (each a ``(3, size_k, size_k)`` tensor).

    ``sizes`` lists the output sides; ``mean`` / ``std`` the normalisation the views carry (what
    the exported model must be fed at inference).
    """

    def __init__(self, transforms: Sequence[Callable], sizes: Sequence[int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.transforms = list(transforms)
        if not self.transforms:
            raise ValueError("MultiViewTransform needs at least one transform")
        self.sizes = list(sizes) if sizes is not None else None
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None

    def __call__(self, img: Any) -> list[Any]:
        return [transform(img) for transform in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        body = "\n".join(f"  view {i}: {t!r}".replace("\n", "\n  ") for i, t in enumerate(self.transforms))
        return f"{type(self).__name__}(\n{body}\n)"


# ---------------------------------------------------------------------------- W-MSE and CW-RGP


def wmse_style_view(img_size: int, mean, std, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8,
                    gray_p: float = 0.1, scale=(0.2, 1.0), ratio=(0.75, 4 / 3), flip_p: float = 0.5,
                    blur_p: float = 0.0) -> T.Compose:
    """One view of W-MSE's ``aug_transform`` (``datasets/transforms.py``, copied by CW-RGP's
    ``base/datasets/transforms.py``): jitter and grayscale act on the whole image *before* the
    bicubic random resized crop, then flip, then (ImageNet only) the blur passed as ``extra_t``."""
    steps: list[Callable] = [
        T.RandomApply([T.ColorJitter(*jitter)], p=jitter_p),
        T.RandomGrayscale(p=gray_p),
        T.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio), interpolation=BICUBIC),
        T.RandomHorizontalFlip(p=flip_p),
    ]
    if blur_p > 0:
        steps.append(T.RandomApply([RandomGaussianBlur((0.1, 2.0))], p=blur_p))
    return T.Compose(steps + _to_tensor(mean, std))


def wmse_views(img_size: int, num_views: int, dataset: str) -> MultiViewTransform:
    """W-MSE's ``num_views`` identically distributed views (``MultiSample``).

    Small datasets: ``cfg.py`` defaults (jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.1, crop
    0.2-1). ImageNet-100 / ImageNet / big ImageFolder crops: the README's ImageNet-100 command
    (crop 0.08-1, jitter 0.8/0.8/0.8/0.2, grayscale 0.2) plus ``datasets/imagenet.py``'s blur
    (p 0.5). Normalisation: the authors' per-dataset values (see ``dataset_stats``).
    """
    dataset = _dataset(dataset)
    _check_size(img_size)
    mean, std = dataset_stats(dataset, "wmse")
    if catalogue.is_large(dataset, img_size):
        view = wmse_style_view(img_size, mean, std, jitter=(0.8, 0.8, 0.8, 0.2), gray_p=0.2, scale=(0.08, 1.0),
                               blur_p=0.5)
    else:
        view = wmse_style_view(img_size, mean, std)
    return MultiViewTransform([view] * _views(num_views), [img_size] * num_views, mean, std)


def mocov2_view(img_size: int, mean, std) -> T.Compose:
    """CW-RGP's ImageNet view (``ImageNet/train.py``, MoCo-v2 augmentation): bilinear crop
    0.2-1, jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2, blur sigma 0.1-2 p 0.5, flip 0.5."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=BILINEAR),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([RandomGaussianBlur((0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(p=0.5),
        *_to_tensor(mean, std),
    ])


def cwrgp_views(img_size: int, num_views: int, dataset: str) -> MultiViewTransform:
    """CW-RGP's views.

    Small datasets: ``base/`` code = W-MSE's small-image pipeline with its defaults.
    ImageNet-100: ``base/datasets/in100.py`` = W-MSE's ImageNet pipeline (blur p 0.5) with the
    ``base/cfg.py`` defaults (crop 0.2-1, jitter 0.4/0.4/0.4/0.1, grayscale 0.1).
    ImageNet-1k and big ImageFolder crops: the MoCo-v2 pipeline of ``ImageNet/train.py``.
    """
    dataset = _dataset(dataset)
    _check_size(img_size)
    mean, std = dataset_stats(dataset, "cwrgp")
    if dataset == "imagenet100":
        view = wmse_style_view(img_size, mean, std, blur_p=0.5)
    elif catalogue.is_large(dataset, img_size):
        view = mocov2_view(img_size, mean, std)
    else:
        view = wmse_style_view(img_size, mean, std)
    return MultiViewTransform([view] * _views(num_views), [img_size] * num_views, mean, std)


# ---------------------------------------------------------------------------- INTL

# (crop side at 224 px, number of crops, crop scale, blur p, solarisation p): INTL src/transform.py Multi_Crop
INTL_MULTI_CROP = (
    (224, 2, (0.2, 1.0), 0.5, 0.1),
    (192, 1, (0.171, 0.857), 0.5, 0.1),
    (160, 1, (0.143, 0.714), 0.5, 0.1),
    (128, 1, (0.114, 0.571), 0.5, 0.1),
    (96, 1, (0.086, 0.429), 0.5, 0.1),
)
INTL_MULTI_CROP_VIEWS = sum(n for _, n, _, _, _ in INTL_MULTI_CROP)
INTL_BLUR_P = (1.0, 0.1)  # INTL cfg.py --gaussian_prob default
INTL_SOLARIZE_P = (0.0, 0.2)  # INTL cfg.py and cifar/cfg.py --solarization_prob default


def intl_view(img_size: int, mean, std, blur_p: float, solarize_p: float,
              scale: tuple[float, float] = (0.08, 1.0)) -> T.Compose:
    """One view of INTL's ``ImageNetTransform`` / ``CifarTransform``: bicubic crop, jitter
    0.4/0.4/0.2/0.1 p 0.8, grayscale 0.2, blur, solarisation, flip 0.5. (Their equalisation
    step has p 0 in every recipe and is left out.)"""
    steps: list[Callable] = [
        T.RandomResizedCrop((img_size, img_size), scale=tuple(scale), interpolation=BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur_p > 0:
        steps.append(T.RandomApply([RandomGaussianBlur((0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        steps.append(T.RandomApply([Solarize()], p=solarize_p))
    steps.append(T.RandomHorizontalFlip(p=0.5))
    return T.Compose(steps + _to_tensor(mean, std))


def intl_views(img_size: int, dataset: str, multi_crop: bool = False, num_views: int = 2) -> MultiViewTransform:
    """INTL's views.

    - ImageNet-size data, ``multi_crop=False``: the asymmetric BYOL-style pair of ``cfg.py``
      (blur p 1.0 / 0.1, solarisation p 0.0 / 0.2, crop 0.08-1); views beyond two alternate.
    - ``multi_crop=True``: ``Multi_Crop``'s six crops, 2 x 224 + 192 + 160 + 128 + 96 with their
      scales, blur p 0.5 and solarisation p 0.1 each. At ``img_size`` other than 224 every side is
      scaled by ``img_size / 224`` (a reduced-resolution variant for quick runs, not the paper's).
    - Small datasets: ``cifar/transform.py`` (no blur, solarisation 0.0 / 0.2, crop 0.08-1). The
      authors ran it on CIFAR only; STL-10, Tiny-ImageNet, Fashion-MNIST and small ImageFolder
      crops use the same pipeline with their own normalisation.
    """
    dataset = _dataset(dataset)
    _check_size(img_size)
    mean, std = dataset_stats(dataset, "intl")
    large = catalogue.is_large(dataset, img_size)
    if multi_crop:
        if catalogue.get(dataset).small:
            raise ValueError(f"INTL multi-crop is defined for ImageNet-style data (imagenet, imagenet100, imagefolder), "
                             f"not {dataset}")
        if num_views != INTL_MULTI_CROP_VIEWS:
            raise ValueError(f"INTL multi-crop makes {INTL_MULTI_CROP_VIEWS} crops (2x224, 192, 160, 128, 96), "
                             f"not num_views={num_views}")
        views, sizes = [], []
        for side, count, scale, blur_p, solarize_p in INTL_MULTI_CROP:
            size = side if img_size == 224 else max(8, round(side * img_size / 224))
            views += [intl_view(size, mean, std, blur_p, solarize_p, scale)] * count
            sizes += [size] * count
        return MultiViewTransform(views, sizes, mean, std)
    blur = INTL_BLUR_P if large else (0.0, 0.0)
    views = [intl_view(img_size, mean, std, blur[i % 2], INTL_SOLARIZE_P[i % 2]) for i in range(min(2, _views(num_views)))]
    return MultiViewTransform([views[i % 2] for i in range(num_views)], [img_size] * num_views, mean, std)


def _views(num_views: int) -> int:
    if operator.index(num_views) < 1:
        raise ValueError(f"num_views must be at least 1, got {num_views}")
    return num_views


def build_view_transform(method: str, dataset: str, img_size: int, num_views: int,
                         multi_crop: bool = False) -> MultiViewTransform:
    """The pretraining views of ``method`` on ``dataset`` at ``img_size`` px.

    method: wmse, cwrgp, intl; dataset: cifar10, cifar100, stl10, tiny_imagenet, fashion_mnist,
    imagenet100, imagenet, imagefolder (ImageNet pipelines from 128 px on). ``multi_crop`` only
    for INTL on ImageNet-style data (``num_views`` must then be 6). ValueError otherwise.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if multi_crop and method != "intl":
        raise ValueError(f"multi-crop views are only defined for intl, not {method!r}")
    if method == "wmse":
        return wmse_views(img_size, num_views, dataset)
    if method == "cwrgp":
        return cwrgp_views(img_size, num_views, dataset)
    return intl_views(img_size, dataset, multi_crop=multi_crop, num_views=num_views)


def eval_transform(dataset: str, img_size: int, method: str | None = None,
                   normalisation: str = "authors") -> T.Compose:
    """Deterministic transform for feature extraction (kNN, linear probe): PIL -> ``(3, S, S)``.

    - ImageNet-size (imagenet, imagenet100, imagefolder at >= 128 px): ``Resize(int(S / 0.875))``
      (bilinear, shorter side) + ``CenterCrop(S)``, as INTL ``evaluate.py`` (256 -> 224).
    - STL-10 below its native 96 px: W-MSE's ``Resize(70) + CenterCrop(64)`` (bicubic), scaled to S.
    - Other small data: unchanged when the image is already S x S (CIFAR at 32, Tiny-ImageNet at
      64, STL-10 at 96), otherwise bicubic resize + centre crop (Fashion-MNIST's 28 px to 32).

    Normalised with ``eval_stats(dataset, method, normalisation)``: pass the pretraining method so
    that features are computed as that method's authors evaluate: with the normalisation the views
    were trained with, except where the authors' evaluation code differs (INTL's CIFAR evaluation,
    ``normalisation="authors"``, the default; ``"train"`` takes the views' normalisation there too).
    """
    dataset = _dataset(dataset)
    _check_size(img_size)
    mean, std = eval_stats(dataset, method, normalisation)
    if catalogue.is_large(dataset, img_size):
        resize = [T.Resize(int(img_size / 0.875), interpolation=BILINEAR), T.CenterCrop(img_size)]
    elif dataset == "stl10" and img_size < catalogue.get("stl10").native_size:
        resize = [T.Resize(round(img_size * 70 / 64), interpolation=BICUBIC), T.CenterCrop(img_size)]
    else:
        resize = [FitSquare(img_size)]
    return T.Compose(resize + _to_tensor(mean, std))


# ---------------------------------------------------------------------------- seeding


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside: torch's CPU generator and Python's ``random`` seeded with ``seed``; afterwards both
    are as they were. The random draws of the view pipelines (torchvision's on the CPU generator,
    the blur radius on ``random``) then depend on ``seed`` only."""
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also (lazily) seed every accelerator
        # backend, which costs milliseconds per image and is not restored by fork_rng.
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


class SeededViews(Dataset):
    """``dataset`` seen through ``transform`` with reproducible randomness.

    Sample ``i`` in epoch ``e`` is transformed under torch's and Python's generators seeded with
    ``derive_seed(seed, e, i)`` (:func:`seeded`), so its views do not depend on the number of
    DataLoader workers, on which worker loads it, on the batch order or on whether the run was
    resumed. The caller's generator states are restored afterwards. ``dataset[i]`` ->
    ``(views: list[Tensor], target)``.
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int):
        self.dataset, self.transform = dataset, transform
        self.seed = operator.index(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = operator.index(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        with seeded(derive_seed(self.seed, self.epoch, index)):
            views = self.transform(image)
        return list(views) if isinstance(views, tuple) else views, target


class EpochKeyed(Dataset):
    """``dataset[(epoch, i)]``: sample i of a :class:`SeededViews` with epoch e's augmentation, so
    DataLoader workers need no state sent to them at each epoch (the batch sampler yields the keys:
    the pretraining loop, :class:`eval.training.GlobalBatchSampler` with ``epoch_keys``)."""

    def __init__(self, seeded_views: SeededViews):
        self.seeded = seeded_views

    def __len__(self) -> int:
        return len(self.seeded)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        self.seeded.set_epoch(epoch)
        return self.seeded[index]
