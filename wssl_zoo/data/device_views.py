"""Views at device speed: the authors' PIL view pipelines split into a host part that draws every
random parameter and a device part that makes the pixels, for every recipe, at every size,
multi-crop included (``wssl-zoo pretrain --device-views``, also spelled ``--gpu-augment``).

**Host part** (:class:`HostViews`, in the DataLoader workers). Per image it reads the file's
bytes and its size from the header (PIL ``Image.open`` without decoding) and replays the random
calls of the PIL pipeline (``wssl_zoo.data.transforms``: one ``T.Compose`` per view) in their
order, under the seeding of :class:`~wssl_zoo.data.transforms.SeededViews` (torch's CPU generator
and Python's ``random`` seeded with ``derive_seed(seed, epoch, index)``), with torchvision's own
samplers: ``RandomResizedCrop.get_params``, ``ColorJitter.get_params`` (order and factors),
``RandomApply`` / ``RandomGrayscale`` / ``RandomHorizontalFlip``'s ``torch.rand(1)`` and the blur
radius's ``random.uniform``. The parameters are therefore the PIL pipeline's numbers (tested
exactly) and a function of (seed, epoch, index): a resumed run makes the same views. A worker
ships the JPEG bytes and one ``(views, 18)`` float64 row of parameters per image
(:data:`PARAM_COLUMNS`); it decodes nothing, except files that are not baseline RGB JPEG (PNG,
CMYK or grayscale JPEG, progressive JPEG, a JPEG without its end marker): those are decoded by PIL
in the worker as the PIL path does (``load_rgb``), counted per reason and reported once per run.
In-memory datasets (CIFAR's and STL-10's arrays, Fashion-MNIST) ship their pixels.

**Device part** (:class:`DeviceViews`, in the training process). It decodes the batch's JPEGs
(``torchvision.io.decode_jpeg`` on a list: batched nvjpeg on CUDA, hardware-decoded for baseline
JPEG on A100/H100; libjpeg-turbo on the CPU, bit-identical to PIL's decode on the test photos)
and reproduces each PIL operation on 8-bit values held in float tensors, batched, with each
sample's own parameters, quantised after every step as PIL is (an 8-bit image between steps):

- crop + resize + flip, from the image at its native resolution: PIL's two-pass separable
  resampling (``Resample.c``: support scaled by the shrink factor, the authors' filter, bicubic
  a = -0.5 in W-MSE and INTL, bilinear in CW-RGP's ImageNet view; 22-bit fixed-point
  coefficients; each pass rounded to 8 bits, in the installed Pillow's order, see
  :data:`PILLOW_VERTICAL_FIRST`), as two batched matrix products with the coefficients in dense
  per-sample matrices, in float64 so that the fixed-point sums are exact; images of a batch are
  padded to a common size per chunk (the matrices are zero outside each crop, so padding changes
  nothing); the flip reverses the horizontal matrix (it commutes with every colour step and the
  blur, which are mirror-symmetric);
- colour jitter in each sample's own order (``ImageEnhance``: ``Image.blend`` in float32 with
  truncation, the contrast mean of the 8-bit luma rounded, saturation towards the 8-bit luma;
  hue through PIL's 8-bit RGB <-> HSV conversions with torchvision's wrapped uint8 shift),
  grayscale (PIL's fixed-point ITU-R 601 luma), Gaussian blur (PIL's ``GaussianBlur`` is not a
  Gaussian but three passes of an extended box blur per axis, ``BoxBlur.c``, each rounded to 8
  bits: reproduced in integer arithmetic), solarisation (threshold 128), then ``ToTensor`` and
  ``Normalize`` in float32 as torchvision.

Measured on the CPU (``tests/test_device_views.py``), every step equals the PIL step exactly on
real JPEGs and so do whole views of every recipe. The stated tolerance is at most 1 of 255 on at
most 0.1% of the values: room for other devices' arithmetic, which is the same IEEE operations but
has not been compared on a GPU yet. nvjpeg's decode is expected to differ from libjpeg's by a few
levels (its own IDCT and chroma upsampling); ``benchmarks/gpu_check.sh`` measures that difference.

Why PIL's arithmetic on plain tensor ops and not a library: torchvision.transforms.v2, kornia and
DALI implement other definitions of these operations (a true Gaussian blur, other resampling
roundings, HSV or YIQ colour spaces): measured against PIL on photos, they differ on 18-97% of the
values, by up to 11-97 levels (``benchmarks/view_ops_vs_pil.py``, table in ``benchmarks/RESULTS.md``).
Only PIL's own arithmetic lets every view be tested value for value against the authors' pipeline,
and it runs wherever torch runs, with no other dependency. On the CPU it is slower than PIL; it is
meant for GPUs, whose speed ``gpu_check.sh`` measures.
"""

from __future__ import annotations

import copy
import io
import math
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.functional import pil_to_tensor

from .datasets import DECODE_ERRORS, BadImageWarning, ImageFolderDataset, load_rgb
from .transforms import BICUBIC, BILINEAR, MultiViewTransform, RandomGaussianBlur, Solarize, derive_seed, seeded

# The columns of one view's parameter row (float64): what the PIL pipeline drew for that view.
PARAM_COLUMNS = ("top", "left", "height", "width",  # RandomResizedCrop.get_params (i, j, h, w)
                 "flip",  # RandomHorizontalFlip applied (1) or not (0)
                 "jitter",  # RandomApply([ColorJitter]) applied
                 "brightness", "contrast", "saturation", "hue",  # ColorJitter's factors (NaN: component off)
                 "order0", "order1", "order2", "order3",  # ColorJitter's order of the components (fn_idx)
                 "gray",  # RandomGrayscale applied
                 "blur", "radius",  # RandomApply([RandomGaussianBlur]) applied, and its radius
                 "solarize")  # RandomApply([Solarize]) applied
COL = {name: i for i, name in enumerate(PARAM_COLUMNS)}
NUM_PARAMS = len(PARAM_COLUMNS)
_FACTOR0, _ORDER0 = COL["brightness"], COL["order0"]
_FILTERS = {BICUBIC: "bicubic", BILINEAR: "bilinear"}  # the authors' PIL filters
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}  # Resample.c: BICUBIC = {bicubic_filter, 2.0}, BILINEAR = {.., 1.0}
_PRECISION = float(1 << 22)  # Resample.c PRECISION_BITS = 32 - 8 - 2


# ---------------------------------------------------------------------------- the plan (host and device)


@dataclass(frozen=True)
class _Step:
    kind: str  # crop, flip, gray, jitter, blur, solarize
    p: float
    source: Any  # the transform whose ranges the draw reads


@dataclass(frozen=True)
class ViewProgram:
    """One view of a PIL pipeline as the device runs it: its random steps in the PIL order (what
    :meth:`ViewPlan.draw` replays), the colour steps before and after the crop, the crop's output
    side and filter, and the normalisation."""

    size: int
    interpolation: str  # bicubic | bilinear
    draws: tuple[_Step, ...]
    before_crop: tuple[str, ...]
    after_crop: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _compile(view: Any, index: int) -> ViewProgram:
    """The :class:`ViewProgram` of one ``T.Compose`` view; ValueError naming a step it cannot run."""
    steps = getattr(view, "transforms", None)
    if steps is None:
        raise ValueError(f"view {index}: expected a torchvision Compose, got {type(view).__name__}")
    draws: list[_Step] = []
    before: list[str] = []
    after: list[str] = []
    crop: T.RandomResizedCrop | None = None
    norm: T.Normalize | None = None
    tensor = False
    for t in steps:
        if tensor and not isinstance(t, T.Normalize):
            raise ValueError(f"view {index}: {t!r} after ToTensor is not supported by the device views")
        if isinstance(t, T.RandomApply) and len(t.transforms) == 1:
            inner = t.transforms[0]
            kind = ("jitter" if isinstance(inner, T.ColorJitter) else "blur" if isinstance(inner, RandomGaussianBlur)
                    else "solarize" if isinstance(inner, Solarize) else None)
            if kind is None:
                raise ValueError(f"view {index}: the device views do not implement {inner!r}")
            draws.append(_Step(kind, float(t.p), inner))
            (after if crop else before).append(kind)
        elif isinstance(t, T.RandomGrayscale):
            draws.append(_Step("gray", float(t.p), t))
            (after if crop else before).append("gray")
        elif isinstance(t, T.RandomResizedCrop):
            if crop is not None or t.size[0] != t.size[1] or t.interpolation not in _FILTERS:
                raise ValueError(f"view {index}: {t!r}: the device views make one square crop, bicubic or bilinear")
            crop = t
            draws.append(_Step("crop", 1.0, t))
        elif isinstance(t, T.RandomHorizontalFlip):
            if crop is None:
                raise ValueError(f"view {index}: a flip before the crop is not supported by the device views")
            draws.append(_Step("flip", float(t.p), t))  # applied with the crop: it commutes with the later steps
        elif isinstance(t, T.ToTensor):
            tensor = True
        elif isinstance(t, T.Normalize):
            norm = t
        else:
            raise ValueError(f"view {index}: the device views do not implement {t!r}")
    if crop is None or not tensor or norm is None:
        raise ValueError(f"view {index}: the device views need a RandomResizedCrop, ToTensor and Normalize")
    return ViewProgram(size=int(crop.size[0]), interpolation=_FILTERS[crop.interpolation], draws=tuple(draws),
                       before_crop=tuple(before), after_crop=tuple(after),
                       mean=tuple(float(m) for m in norm.mean), std=tuple(float(s) for s in norm.std))


class ViewPlan:
    """The device form of a :class:`~wssl_zoo.data.transforms.MultiViewTransform`: one
    :class:`ViewProgram` per view. Built from the PIL pipeline itself, so every value (ranges,
    probabilities, sizes, filters, normalisation) is read from where the recipe defines it."""

    def __init__(self, transform: MultiViewTransform):
        self.views = [_compile(view, i) for i, view in enumerate(transform.transforms)]
        self.sizes = [v.size for v in self.views]

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes})"

    def draw(self, height: int, width: int) -> torch.Tensor:
        """``(views, NUM_PARAMS)`` float64: the random parameters of every view of one image of
        ``height`` x ``width`` pixels, drawn from torch's CPU generator and Python's ``random`` with
        the same calls, in the same order, as the PIL pipeline makes (seed them with
        :func:`~wssl_zoo.data.transforms.seeded`)."""
        nan = float("nan")
        shape = torch.empty(()).expand(3, height, width)  # what get_params reads: the size, no pixels
        rows = []
        for view in self.views:
            row = [0.0] * NUM_PARAMS
            row[_FACTOR0:_FACTOR0 + 4] = [nan] * 4
            for step in view.draws:
                kind = step.kind
                if kind == "crop":
                    row[0:4] = T.RandomResizedCrop.get_params(shape, step.source.scale, step.source.ratio)
                elif kind in ("flip", "gray"):  # RandomHorizontalFlip / RandomGrayscale: torch.rand(1) < p
                    row[COL[kind]] = float(bool(torch.rand(1) < step.p))
                elif bool(step.p < torch.rand(1)):  # RandomApply skips (and draws nothing more)
                    continue
                elif kind == "jitter":
                    j = step.source
                    order, *factors = T.ColorJitter.get_params(j.brightness, j.contrast, j.saturation, j.hue)
                    row[COL["jitter"]] = 1.0
                    row[_FACTOR0:_FACTOR0 + 4] = [nan if f is None else f for f in factors]
                    row[_ORDER0:_ORDER0 + 4] = [float(i) for i in order.tolist()]
                elif kind == "blur":
                    row[COL["blur"]] = 1.0
                    row[COL["radius"]] = random.uniform(step.source.sigma[0], step.source.sigma[1])
                else:  # solarize
                    row[COL["solarize"]] = 1.0
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------- host part


@dataclass
class Encoded:
    """One image as the host part ships it: ``data`` is the JPEG file (``(N,)`` uint8) for the
    device to decode, or pixels ``(3, H, W)`` uint8; ``host_decoded`` says why the host decoded
    a file ("" for JPEG bytes and for in-memory pixels)."""

    data: torch.Tensor
    height: int
    width: int
    host_decoded: str = ""
    path: str = ""

    @property
    def is_jpeg(self) -> bool:
        return self.data.ndim == 1


def _host_decode_reason(img: Image.Image, data: bytes | bytearray) -> str:
    """Why a file must be decoded on the host ("" when the device decodes it): only baseline RGB
    JPEG with its end marker goes to the device (nvjpeg's batched hardware path; torchvision's CUDA
    decoder would decode progressive files on the GPU in software, one by one)."""
    if img.format != "JPEG":
        return f"{img.format or 'unknown'} file"
    if img.mode != "RGB":
        return f"{img.mode} JPEG"
    if img.info.get("progressive") or img.info.get("progression"):
        return "progressive JPEG"
    if b"\xff\xd9" not in data[-64:]:  # no end-of-image marker: maybe truncated; PIL decides, as in the PIL path
        return "JPEG without end marker"
    return ""


def read_encoded(path: str | os.PathLike) -> Encoded:
    """The loader of :class:`HostViews` for image files: the bytes of a baseline RGB JPEG and its
    size from the header, or the pixels PIL decodes (``load_rgb``) for any other file. Raises one
    of :data:`~wssl_zoo.data.datasets.DECODE_ERRORS` for a file PIL cannot read, so the dataset
    skips it as it does on the PIL path."""
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    with Image.open(io.BytesIO(data)) as img:  # reads the header only
        reason = _host_decode_reason(img, data)
        height, width = img.height, img.width
    if not reason:
        return Encoded(torch.frombuffer(data, dtype=torch.uint8), height, width, "", str(path))
    rgb = load_rgb(io.BytesIO(data))
    return Encoded(pil_to_tensor(rgb), rgb.height, rgb.width, reason, str(path))


class HostViews(Dataset):
    """The host part: ``dataset[(epoch, i)]`` -> ``(Encoded, params (views, NUM_PARAMS), target)``.

    ``params`` are what ``transform`` (a :class:`MultiViewTransform` of PIL steps) would draw for
    sample ``i`` in epoch ``e`` under :class:`~wssl_zoo.data.transforms.SeededViews` with the same
    ``seed``. An :class:`ImageFolderDataset` is read with :func:`read_encoded` (its skipping of
    unreadable files kept); other datasets' PIL images are shipped as pixels.
    """

    def __init__(self, dataset: Dataset, transform: MultiViewTransform, seed: int):
        self.plan = ViewPlan(transform)
        if isinstance(dataset, ImageFolderDataset):
            dataset = copy.copy(dataset)  # the same files and skip list, read as bytes
            dataset.loader = read_encoded
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image, target = self.dataset[index]
        if isinstance(image, Image.Image):
            image = Encoded(pil_to_tensor(image.convert("RGB")), image.height, image.width)
        with seeded(derive_seed(self.seed, epoch, index)):
            params = self.plan.draw(image.height, image.width)
        return image, params, target


@dataclass
class EncodedBatch:
    """A batch of the host part, in one shared-memory segment per kind: ``jpeg`` holds the JPEG
    files back to back (``jpeg_ends`` their ends, ``jpeg_slots`` their batch positions), ``pixels``
    the host-decoded images flattened (``pixel_shapes`` (n, 3): C, H, W; ``pixel_slots``);
    ``sizes`` (B, 2) the images' heights and widths; ``params`` is ``(B, views, NUM_PARAMS)``
    float64; ``host_decoded`` and ``paths`` per image."""

    jpeg: torch.Tensor
    jpeg_ends: torch.Tensor
    jpeg_slots: torch.Tensor
    pixels: torch.Tensor
    pixel_shapes: torch.Tensor
    pixel_slots: torch.Tensor
    sizes: torch.Tensor
    params: torch.Tensor
    host_decoded: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.params)

    def pin_memory(self) -> "EncodedBatch":
        """Nothing to pin: the parameters are read on the host and nvjpeg stages the files in its
        own pinned buffers (DataLoader calls this with ``pin_memory=True``)."""
        return self


def collate_views(samples: Sequence[tuple[Encoded, torch.Tensor, int]]) -> tuple[EncodedBatch, torch.Tensor]:
    """DataLoader ``collate_fn`` of :class:`HostViews`: ``(EncodedBatch, targets (B,))``."""
    jpegs = [(b, s[0]) for b, s in enumerate(samples) if s[0].is_jpeg]
    pixels = [(b, s[0]) for b, s in enumerate(samples) if not s[0].is_jpeg]

    def cat(items):
        return torch.cat([e.data.reshape(-1) for _, e in items]) if items else torch.zeros(0, dtype=torch.uint8)

    batch = EncodedBatch(
        jpeg=cat(jpegs), jpeg_ends=torch.tensor([e.data.numel() for _, e in jpegs], dtype=torch.long).cumsum(0),
        jpeg_slots=torch.tensor([b for b, _ in jpegs], dtype=torch.long),
        pixels=cat(pixels), pixel_shapes=torch.tensor([list(e.data.shape) for _, e in pixels], dtype=torch.long).reshape(-1, 3),
        pixel_slots=torch.tensor([b for b, _ in pixels], dtype=torch.long),
        sizes=torch.tensor([[s[0].height, s[0].width] for s in samples], dtype=torch.long),
        params=torch.stack([s[1] for s in samples]),
        host_decoded=[s[0].host_decoded for s in samples], paths=[s[0].path for s in samples],
    )
    return batch, torch.tensor([int(s[2]) for s in samples], dtype=torch.long)


# ---------------------------------------------------------------------------- PIL's operations on tensors
# ``x``: (N, 3, H, W) float32 holding 8-bit values; per-sample factors (N,) on x's device.


def _floor_div(x: torch.Tensor, shift: float) -> torch.Tensor:
    return torch.floor(x / shift)


def luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` (Convert.c ``L24``): ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``,
    ``(N, 1, H, W)``; every partial sum is below 2**24, exact in float32."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _floor_div(r * 19595.0 + g * 38470.0 + b * 7471.0 + 32768.0, 65536.0)


def blend(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``Image.blend(a, b, alpha)`` (Blend.c): ``a + alpha (b - a)`` in float32, clipped to
    [0, 255] and truncated; ``alpha``: (N,) factors (C float)."""
    alpha = alpha.to(torch.float32).view(-1, 1, 1, 1)
    return torch.clamp(a + alpha * (b - a), 0.0, 255.0).trunc_()


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor, valid=None) -> torch.Tensor:
    """``ImageEnhance.Brightness``: a blend with black."""
    return blend(torch.zeros_like(x[:, :1]), x, factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``ImageEnhance.Contrast``: a blend with the image's mean luma, rounded to an integer
    (``int(mean + 0.5)``). ``valid`` (N, 2): the image's own height and width inside a padded ``x``."""
    lum = luma(x).double()
    if valid is not None:
        rows = torch.arange(x.shape[-2], device=x.device).view(1, 1, -1, 1) < valid[:, 0].view(-1, 1, 1, 1)
        cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, 1, -1) < valid[:, 1].view(-1, 1, 1, 1)
        lum = lum * (rows & cols)
        count = (valid[:, 0] * valid[:, 1]).double()
    else:
        count = torch.full((len(x),), float(x.shape[-2] * x.shape[-1]), dtype=torch.float64, device=x.device)
    mean = torch.floor(lum.sum(dim=(1, 2, 3)) / count + 0.5).float().view(-1, 1, 1, 1)
    return blend(mean.expand_as(x[:, :1]), x, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor, valid=None) -> torch.Tensor:
    """``ImageEnhance.Color``: a blend with the image's 8-bit luma."""
    return blend(luma(x), x, factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("HSV")`` (Convert.c ``rgb2hsv_row``), float and double steps as in C:
    8-bit H, S, V of 8-bit RGB, ``(N, 3, H, W)``."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = torch.maximum(r, torch.maximum(g, b))
    minc = torch.minimum(r, torch.minimum(g, b))
    grey = maxc == minc
    cr = torch.where(grey, torch.ones_like(maxc), maxc - minc)
    s = cr / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / cr, (maxc - g) / cr, (maxc - b) / cr
    d = torch.float64
    h = torch.where(r == maxc, bc - gc,
                    torch.where(g == maxc, ((2.0 + rc.to(d)) - bc.to(d)).float(), ((4.0 + gc.to(d)) - rc.to(d)).float()))
    h = torch.fmod(h.to(d) / 6.0 + 1.0, 1.0).float()
    uh = torch.clamp(torch.trunc(h.to(d) * 255.0), 0, 255).float()
    us = torch.clamp(torch.trunc(s.to(d) * 255.0), 0, 255).float()
    zero = torch.zeros_like(maxc)
    return torch.stack((torch.where(grey, zero, uh), torch.where(grey, zero, us), maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """PIL's HSV -> RGB (Convert.c ``hsv2rgb``), float and double steps as in C."""
    d = torch.float64
    h, s, v = x[:, 0].to(d), x[:, 1].to(d), x[:, 2].to(d)
    i = torch.floor(h * 6.0 / 255.0)
    f = (h * 6.0 / 255.0 - i).float()
    fs = (s / 255.0).float()

    def rnd(y):  # C round() of a non-negative double, then CLIP8
        return torch.clamp(torch.floor(y + 0.5), 0, 255)

    p = rnd(v * (1.0 - fs.to(d)))
    q = rnd(v * (1.0 - (fs * f).to(d)))
    t = rnd(v * (1.0 - fs.to(d) * (1.0 - f.to(d))))
    p, q, t, v = p.float(), q.float(), t.float(), x[:, 2]
    sector = torch.remainder(i, 6.0).float()

    def pick(*by_sector):  # the channel's value in sectors 0..5 (Convert.c's switch)
        out = by_sector[5]
        for k in range(4, -1, -1):
            out = torch.where(sector == k, by_sector[k], out)
        return out

    rgb = torch.stack((pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)), dim=1)
    return torch.where(x[:, 1:2] == 0, x[:, 2:3].expand_as(rgb), rgb)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor, valid=None) -> torch.Tensor:
    """torchvision's PIL ``adjust_hue``: 8-bit HSV, the hue plus ``uint8(int32(factor * 255))``
    modulo 256, back to RGB."""
    shift = torch.remainder(torch.trunc(factor.to(torch.float64) * 255.0), 256.0).float().view(-1, 1, 1)
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + shift, 256.0)
    return hsv_to_rgb(hsv)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``RandomGrayscale`` on PIL: ``convert("L")`` replicated to three channels."""
    return luma(x).expand_as(x).contiguous()


def solarize(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.solarize`` at threshold 128: ``255 - v`` for ``v >= 128``."""
    return torch.where(x >= 128.0, 255.0 - x, x)


def box_blur_params(radius: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL ``GaussianBlur(radius)`` -> the box blur it runs (BoxBlur.c ``_gaussian_blur_radius``
    with 3 passes, ``ImagingHorizontalBoxBlur``'s weights), in C's float32 / double steps:
    ``(r, ww, fw)`` per radius, the integer box radius and the 24-bit weights of the inner and
    the two edge pixels."""
    f32, f64 = np.float32, np.float64
    rad = np.asarray(radius, dtype=f32)  # the C float the radius is passed as
    sigma2 = rad * rad / f32(3)
    big_l = np.sqrt(12.0 * sigma2.astype(f64) + 1.0).astype(f32)
    small_l = np.floor((big_l.astype(f64) - 1.0) / 2.0).astype(f32)
    a = (f32(2) * small_l + f32(1)) * (small_l * (small_l + f32(1)) - f32(3) * sigma2)
    a = a / (f32(6) * (sigma2 - (small_l + f32(1)) * (small_l + f32(1))))
    box = (small_l + a).astype(f32)
    r = box.astype(np.int64)  # (int) truncation
    ww = (f32(1 << 24) / (box * f32(2) + f32(1))).astype(np.int64)  # (UINT32) truncation
    fw = ((1 << 24) - (r * 2 + 1) * ww) // 2
    return r, ww, fw


def gaussian_blur(x: torch.Tensor, radius: np.ndarray) -> torch.Tensor:
    """PIL's ``GaussianBlur`` with a radius per sample: 3 box passes along the width, then 3 along
    the height, each ``(ww * window sum + fw * (two edge pixels) + 2**23) >> 24`` with the border
    pixel repeated (exact in float64)."""
    r, ww, fw = box_blur_params(radius)
    reach = int(r.max()) + 1
    offset = np.abs(np.arange(-reach, reach + 1))[None, :]  # (1, 2 reach + 1)
    taps = np.where(offset <= r[:, None], ww[:, None], np.where(offset == r[:, None] + 1, fw[:, None], 0))
    taps = torch.from_numpy(taps.astype(np.float64)).to(x.device).view(len(x), 1, 1, 1, -1)
    y = x.double()
    for dim in (3, 2):
        for _ in range(3):
            pad = [reach, reach, 0, 0] if dim == 3 else [0, 0, reach, reach]
            padded = torch.nn.functional.pad(y, pad, mode="replicate")
            size = y.shape[dim]
            acc = torch.zeros_like(y)
            for k in range(2 * reach + 1):
                acc += taps[..., k] * padded.narrow(dim, k, size)
            y = _floor_div(acc + float(1 << 23), float(1 << 24))
    return y.float()


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # ColorJitter's fn_idx order


def _subset(mask: torch.Tensor) -> torch.Tensor | None:
    index = mask.nonzero().flatten()
    return index if len(index) else None


def apply_colour(x: torch.Tensor, kinds: Sequence[str], params: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """The colour steps ``kinds`` (in order) on ``x`` (N, 3, H, W) with each sample's parameters
    ``params`` (N, NUM_PARAMS) on the host; the samples each step applies to are chosen on the
    host, so no device synchronisation is needed. ``valid`` (N, 2): image sizes inside a padded ``x``."""
    device = x.device
    for kind in kinds:
        if kind == "jitter":
            factors = params[:, _FACTOR0:_FACTOR0 + 4]
            on = params[:, COL["jitter"]] == 1
            for slot in range(4):
                for comp, op in enumerate(_JITTER_OPS):
                    index = _subset(on & (params[:, _ORDER0 + slot] == comp) & ~factors[:, comp].isnan())
                    if index is not None:
                        dev = index.to(device)
                        sub_valid = valid[index].to(device) if valid is not None else None
                        x[dev] = op(x[dev], factors[index, comp].to(device), sub_valid)
        else:
            index = _subset(params[:, COL[kind]] == 1)
            if index is None:
                continue
            dev = index.to(device)
            if kind == "gray":
                x[dev] = grayscale(x[dev])
            elif kind == "solarize":
                x[dev] = solarize(x[dev])
            else:
                x[dev] = gaussian_blur(x[dev], params[index, COL["radius"]].numpy())
    return x


def _filter(kind: str, t: torch.Tensor) -> torch.Tensor:
    """Resample.c ``bicubic_filter`` (a = -0.5) / ``bilinear_filter`` in double, C's operation order."""
    t = t.abs()
    if kind == "bilinear":
        return torch.where(t < 1.0, 1.0 - t, torch.zeros_like(t))
    near = ((1.5 * t - 2.5) * t) * t + 1.0
    far = ((((t - 5.0) * t + 8.0) * t) - 4.0) * -0.5
    return torch.where(t < 1.0, near, torch.where(t < 2.0, far, torch.zeros_like(t)))


def resample_taps(offset: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, kind: str,
                  flip: torch.Tensor | None = None, longest: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's resampling of the pixels ``offset .. offset + length`` of one axis to ``out_size``
    (Resample.c ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: support scaled when shrinking,
    coefficients normalised and rounded to 22-bit fixed point, kept as integers in float64), as
    ``(positions (N, out_size, K) long, weights (N, out_size, K) float64)``: output pixel ``o`` is
    ``sum_k weights[o, k] * input[positions[o, k]]``; unused taps have weight 0 and a valid
    position; outputs reversed where ``flip``. offset, length: (N,) float64; ``longest``: the
    largest ``length`` when known on the host (saves a device synchronisation)."""
    device = offset.device
    support = _SUPPORT[kind]
    scale = length / out_size
    filterscale = torch.clamp(scale, min=1.0)
    reach = support * filterscale
    inv = 1.0 / filterscale
    center = (torch.arange(out_size, dtype=torch.float64, device=device) + 0.5) * scale[:, None]  # (N, S)
    xmin = torch.clamp(torch.trunc(center - reach[:, None] + 0.5), min=0.0)
    xmax = torch.minimum(torch.trunc(center + reach[:, None] + 0.5), length[:, None])
    longest = float(length.max()) if longest is None else longest
    taps_max = int(math.ceil(_SUPPORT[kind] * max(longest / out_size, 1.0))) * 2 + 1  # Resample.c's ksize
    used = torch.arange(taps_max, dtype=torch.float64, device=device)
    used = used < (xmax - xmin)[..., None]  # (N, S, K)
    j = torch.arange(used.shape[-1], dtype=torch.float64, device=device)
    taps = _filter(kind, ((j + xmin[..., None]) - center[..., None] + 0.5) * inv[:, None, None]) * used
    total = taps[..., 0]
    for k in range(1, taps.shape[-1]):  # C's sequential sum, for the same rounding
        total = total + taps[..., k]
    taps = torch.where(total[..., None] != 0, taps / total[..., None], taps)
    scaled = taps * _PRECISION
    weights = torch.where(taps < 0, torch.trunc(scaled - 0.5), torch.trunc(scaled + 0.5)) * used
    positions = torch.clamp(offset[:, None, None] + xmin[..., None] + j, 0, in_size - 1).long()
    if flip is not None:
        flipped = (flip > 0).view(-1, 1, 1)
        positions = torch.where(flipped, positions.flip(1), positions)
        weights = torch.where(flipped, weights.flip(1), weights)
    return positions, weights


def _resample_axis(x: torch.Tensor, dim: int, taps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One PIL pass along ``dim`` (2: rows, 3: columns) of ``x`` (n, c, H, W) float64, before
    rounding, as a batched product with the dense matrices of ``taps`` (few launches, tensor cores on
    a GPU; on the CPU it measured faster than summing gathered taps: 12.5 against 18 ms for a 300 x
    250 crop of a 640 x 449 photo to 224 px)."""
    positions, weights = taps
    n, c = x.shape[:2]
    matrix = torch.zeros(n, positions.shape[1], x.shape[dim], dtype=torch.float64, device=x.device)
    matrix.scatter_add_(2, positions, weights)
    if dim == 3:  # (n, c H, W) @ (n, W, S)
        return torch.bmm(x.reshape(n, -1, x.shape[3]), matrix.transpose(1, 2)).reshape(n, c, x.shape[2], -1)
    rows = torch.bmm(matrix, x.transpose(1, 2).reshape(n, x.shape[2], -1))  # (n, S, H) @ (n, H, c W)
    return rows.reshape(n, -1, c, x.shape[3]).transpose(1, 2)


def _round_fixed(x: torch.Tensor) -> torch.Tensor:
    """Resample.c: ``clip8((1 << 21) + sum >> 22)``."""
    return torch.clamp(_floor_div(x + _PRECISION / 2, _PRECISION), 0.0, 255.0)


def _pillow_major() -> int:
    return int(PIL.__version__.split(".")[0])


# Pillow 13 (Resample.c ``ImagingResampleInner``) runs the vertical pass first when the height
# shrinks by more than twice as many pixels as the width; earlier Pillow (the authors' 2020-2022
# environments) always ran the horizontal pass first. The two orders differ only in the rounding
# between the passes; the device follows the installed Pillow, so both paths agree on one machine.
PILLOW_VERTICAL_FIRST = _pillow_major() >= 13


def vertical_first(height: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """Whether the installed Pillow resizes a ``height`` x ``width`` crop to ``size`` x ``size``
    with its vertical pass first (bool per crop)."""
    if not PILLOW_VERTICAL_FIRST:
        return torch.zeros(height.shape, dtype=torch.bool)
    shrink_h, shrink_w = height - size, width - size
    return (shrink_h > 0) & (shrink_h > shrink_w * 2)


def resized_crop(x: torch.Tensor, params: torch.Tensor, size: int, kind: str,
                 host: torch.Tensor | None = None) -> torch.Tensor:
    """Crop ``(top, left, height, width)`` of ``params`` (N, NUM_PARAMS; on x's device) out of
    ``x`` (N, 3, H, W) 8-bit values (padding beyond an image is never read), resize it to
    ``size`` x ``size`` as PIL does (one pass per axis, each rounded to 8 bits, in the installed
    Pillow's order, :func:`vertical_first`) and flip it where ``params`` says; ``(N, 3, size,
    size)`` float32. ``host``: the same parameters on the host, where the per-sample decisions are
    made (default: copied from ``params``)."""
    n, c = x.shape[:2]
    host = params.cpu() if host is None else host
    v_first = vertical_first(host[:, 2], host[:, 3], size)
    columns = resample_taps(params[:, 1], params[:, 3], x.shape[3], size, kind, params[:, COL["flip"]],
                            longest=float(host[:, 3].max()))
    rows = resample_taps(params[:, 0], params[:, 2], x.shape[2], size, kind, longest=float(host[:, 2].max()))
    x = x.double()
    out = torch.empty(n, c, size, size, dtype=torch.float32, device=x.device)
    for first_v in (False, True):
        index = _subset(v_first == first_v)
        if index is None:
            continue
        index = index.to(x.device)
        cols, rws = (columns[0][index], columns[1][index]), (rows[0][index], rows[1][index])
        order = ((2, rws), (3, cols)) if first_v else ((3, cols), (2, rws))
        y = x[index]
        for dim, taps in order:
            y = _round_fixed(_resample_axis(y, dim, taps))
        out[index] = y.float()
    return out


# ---------------------------------------------------------------------------- device part


def _chunks(sizes: Sequence[tuple[int, int]], budget: int, waste: float = 1.5) -> list[list[int]]:
    """Batch positions grouped into chunks padded to their largest height and width: sorted by
    size, a chunk grows while its padded pixels stay within ``budget`` and ``waste`` x its images'
    own pixels."""
    order = sorted(range(len(sizes)), key=lambda b: sizes[b])
    chunks: list[list[int]] = []
    current: list[int] = []
    hmax = wmax = area = 0
    for b in order:
        h, w = sizes[b]
        nh, nw, na = max(hmax, h), max(wmax, w), area + h * w
        padded = (len(current) + 1) * nh * nw
        if current and (padded > budget or padded > waste * na):
            chunks.append(current)
            current, nh, nw, na = [], h, w, h * w
        current.append(b)
        hmax, wmax, area = nh, nw, na
    if current:
        chunks.append(current)
    return chunks


class DeviceViews:
    """The device part: ``views = DeviceViews(plan, device)(batch)`` turns an
    :class:`EncodedBatch` into the views, a list of ``(B, 3, S_v, S_v)`` float32 tensors on
    ``device``, normalised, as the PIL pipeline makes them. A JPEG whose header reads but whose
    data neither the device nor PIL decodes (what :func:`read_encoded` cannot see without decoding)
    is warned about once and replaced by a mid-grey image of its size, so the run goes on.

    ``chunk_pixels`` bounds the padded pixels of the images processed together (memory: about
    40 bytes per pixel for the float64 resampling, and 12 per pixel and view for W-MSE's colour
    steps on whole images). ``host_decoded`` counts the images the host
    decoded, per reason; ``images`` all images seen.
    """

    def __init__(self, plan: ViewPlan, device: str | torch.device = "cpu", chunk_pixels: int = 8 << 20):
        self.plan, self.device, self.chunk_pixels = plan, torch.device(device), int(chunk_pixels)
        self.host_decoded: Counter[str] = Counter()
        self.images = 0
        self.undecodable: set[str] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plan!r}, device={self.device})"

    def __call__(self, batch: EncodedBatch) -> list[torch.Tensor]:
        images = self.decode(batch)
        self.images += len(images)
        self.host_decoded.update(reason for reason in batch.host_decoded if reason)
        return self.views(images, batch.params)

    def decode(self, batch: EncodedBatch) -> list[torch.Tensor]:
        """The batch's images as ``(3, H, W)`` uint8 tensors on the device, in batch order."""
        images: list[torch.Tensor | None] = [None] * len(batch)
        starts = torch.cat([torch.zeros(1, dtype=torch.long), batch.jpeg_ends[:-1]]).tolist()
        files = [batch.jpeg[s:e] for s, e in zip(starts, batch.jpeg_ends.tolist())]
        if files:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    decoded = decode_jpeg(files, mode=ImageReadMode.RGB, device=self.device)
                except RuntimeError:  # one bad file fails the whole call: find it
                    decoded = [self._decode_one(f, tuple(batch.sizes[b].tolist()), batch.paths[b], decode_jpeg,
                                                ImageReadMode.RGB) for f, b in zip(files, batch.jpeg_slots.tolist())]
            for b, image in zip(batch.jpeg_slots.tolist(), decoded):
                images[b] = image
        start = 0
        for b, shape in zip(batch.pixel_slots.tolist(), batch.pixel_shapes.tolist()):
            numel = shape[0] * shape[1] * shape[2]
            images[b] = batch.pixels[start:start + numel].view(*shape).to(self.device, non_blocking=True)
            start += numel
        return images  # type: ignore[return-value]

    def _decode_one(self, data: torch.Tensor, size: tuple[int, int], path: str, decode_jpeg, mode) -> torch.Tensor:
        try:
            return decode_jpeg(data, mode=mode, device=self.device)
        except RuntimeError as exc:
            try:  # PIL is more lenient than nvjpeg with damaged files
                return pil_to_tensor(load_rgb(io.BytesIO(data.numpy().tobytes()))).to(self.device)
            except DECODE_ERRORS as pil_exc:
                if path not in self.undecodable:
                    self.undecodable.add(path)
                    warnings.warn_explicit(
                        f"{path}: neither {self.device} ({str(exc).splitlines()[0]}) nor PIL ({pil_exc}) decodes this "
                        "file, whose header reads; its views are made from a mid-grey image of its size. Remove it "
                        "(wssl_zoo.data.scan_images checks a whole folder)", BadImageWarning,
                        filename="wssl_zoo.data", lineno=0, module="wssl_zoo.data.device_views")
                return torch.full((3, *size), 128, dtype=torch.uint8, device=self.device)

    def views(self, images: Sequence[torch.Tensor], params: torch.Tensor) -> list[torch.Tensor]:
        """The views of decoded ``images`` (``(3, H_b, W_b)`` uint8 on the device) with ``params``
        ``(B, views, NUM_PARAMS)`` float64 on the host."""
        n_img = len(images)
        if params.shape != (n_img, len(self.plan), NUM_PARAMS):
            raise ValueError(f"expected parameters of shape {(n_img, len(self.plan), NUM_PARAMS)}, got {tuple(params.shape)}")
        device = self.device
        on_device = params.to(device)
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        outs = [torch.empty(n_img, 3, v.size, v.size, device=device) for v in self.plan.views]
        for chunk in _chunks(sizes, self.chunk_pixels):
            hmax, wmax = max(sizes[b][0] for b in chunk), max(sizes[b][1] for b in chunk)
            x = torch.zeros(len(chunk), 3, hmax, wmax, device=device)
            for k, b in enumerate(chunk):
                x[k, :, :sizes[b][0], :sizes[b][1]] = images[b]
            index = torch.tensor(chunk, dtype=torch.long)
            valid = torch.tensor([sizes[b] for b in chunk], dtype=torch.float64)
            coloured = {}  # W-MSE's colour steps on the whole image: the views with the same steps in one pass
            for steps in {view.before_crop for view in self.plan.views if view.before_crop}:
                members = [v for v, view in enumerate(self.plan.views) if view.before_crop == steps]
                done = apply_colour(x.repeat(len(members), 1, 1, 1), steps,
                                    torch.cat([params[index, v] for v in members]), valid.repeat(len(members), 1))
                coloured.update({v: done[k * len(chunk):(k + 1) * len(chunk)] for k, v in enumerate(members)})
            for v, view in enumerate(self.plan.views):
                outs[v][index.to(device)] = resized_crop(coloured.get(v, x), on_device[index.to(device), v], view.size,
                                                         view.interpolation, host=params[index, v])
        # Views of one size with the same steps after the crop go through them together (each sample
        # still with its own parameters): CW-RGP's four views take one pass instead of four.
        groups: dict[tuple, list[int]] = {}
        for v, view in enumerate(self.plan.views):
            groups.setdefault((view.size, view.after_crop, view.mean, view.std), []).append(v)
        result: list[torch.Tensor] = [torch.empty(0)] * len(self.plan.views)
        for (_, steps, mean, std), members in groups.items():
            y = torch.cat([outs[v] for v in members]) if len(members) > 1 else outs[members[0]]
            y = apply_colour(y, steps, torch.cat([params[:, v] for v in members]))
            mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
            std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
            y = y.div_(255).sub_(mean_t).div_(std_t)  # ToTensor + Normalize, float32 as torchvision
            for k, v in enumerate(members):
                result[v] = y[k * n_img:(k + 1) * n_img]
        return result

    def report(self) -> str:
        """One line: how many images the host decoded, per reason ("" when none)."""
        if not self.host_decoded:
            return ""
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.host_decoded.most_common())
        total = sum(self.host_decoded.values())
        return (f"device views: {total} of {self.images} images were decoded by PIL in the data workers ({reasons}); "
                f"the others were decoded on {self.device}")
