"""Batched view augmentation on the training device, for small images (CIFAR / STL / Tiny size).

With ``wssl-zoo pretrain --gpu-augment`` the data loader only decodes images to fixed-size uint8
tensors (:class:`RawImages`) and :class:`BatchViewAugment` makes each view of a whole batch in
one call on the GPU, so CPU workers stop being the bottleneck at 32-96 px.

It reproduces the small-image pipelines of ``wssl_zoo.data.transforms`` (W-MSE
``datasets/transforms.py`` + ``cfg.py``, CW-RGP ``base/``; INTL ``cifar/transform.py`` with
``crop_first=True`` and ``solarize_p``), batched, with per-sample random parameters and no Python
loop over samples:

- random resized crop: torchvision's sampler (10 tries of area in ``scale`` x image area and
  log-uniform aspect ratio, integer box that must fit, else the central fallback crop), resampled
  with ``grid_sample`` (bicubic, clamped to [0, 1]). PIL additionally low-pass filters when it
  shrinks a crop (antialiasing); this module does not, which only matters for crops larger than
  the output (e.g. STL-10's 96 px images at 64 px).
- colour jitter with probability ``jitter_p``: brightness, contrast, saturation and hue, in an
  independent random order per sample as ``ColorJitter`` does, each followed by a clamp to
  [0, 1]. Contrast blends towards the mean luminance of the image it is applied to; hue is shifted
  in HSV computed with tensor ops (PIL shifts an 8-bit hue, so values differ by rounding).
- grayscale (ITU-R 601 luma, PIL's weights) with probability ``gray_p``, horizontal flip with
  probability ``flip_p``, optional solarisation (invert values >= 0.5) with ``solarize_p``,
  normalisation with ``mean`` / ``std``.

Order: W-MSE jitters and greys the whole image, then crops (``crop_first=False``, the default);
INTL crops first. All randomness comes from the ``torch.Generator`` passed in, drawn in a fixed
order, so a batch is reproducible from the generator's seed on a given device.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)
_CROP_TRIES = 10


def _uniform(shape, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=device) * (high - low) + low


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    has_hue = delta > 0
    safe = torch.where(has_hue, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, (g - b) / safe,
                      torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.where(has_hue, torch.remainder(hue / 6.0, 1.0), torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack((hue, sat, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel ``n`` in (5, 3, 1) for (R, G, B) is
    ``v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``."""
    hue, sat, val = x.unbind(1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + hue * 6.0, 6.0)
        out.append(val - val * sat * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1)


class BatchViewAugment:
    """One random view of every image of a batch: ``aug(images, generator) -> (B, 3, S, S)``.

    Args:
        img_size: output side S.
        mean, std: per-channel normalisation applied last.
        scale, ratio: random resized crop ranges (fraction of the image area, aspect w/h).
        jitter: (brightness, contrast, saturation[, hue]) strengths; 0 disables a component.
        jitter_p, gray_p, flip_p, solarize_p: probabilities of each step.
        crop_first: crop before the colour steps (INTL) instead of after them (W-MSE, CW-RGP).
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], scale=(0.2, 1.0),
                 ratio=(3 / 4, 4 / 3), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8,
                 gray_p: float = 0.1, flip_p: float = 0.5, solarize_p: float = 0.0, crop_first: bool = False):
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if len(jitter) not in (3, 4):
            raise ValueError(f"jitter must be (brightness, contrast, saturation[, hue]), got {jitter}")
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
        jitter = tuple(float(j) for j in jitter) + ((0.0,) if len(jitter) == 3 else ())
        if jitter[3] > 0.5:
            raise ValueError(f"hue jitter must be at most 0.5, got {jitter[3]}")
        self.img_size = int(img_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, got {mean} and {std}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.jitter, self.jitter_p, self.gray_p = jitter, jitter_p, gray_p
        self.flip_p, self.solarize_p, self.crop_first = flip_p, solarize_p, crop_first

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(img_size={self.img_size}, scale={self.scale}, ratio={self.ratio}, "
                f"jitter={self.jitter}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, flip_p={self.flip_p}, "
                f"solarize_p={self.solarize_p}, crop_first={self.crop_first})")

    # ------------------------------------------------------------------ steps

    def _crop_boxes(self, b: int, height: int, width: int, gen, device) -> tuple[torch.Tensor, ...]:
        """Per-sample integer crop boxes ``(top, left, h, w)`` as float tensors (B,)."""
        area = height * width
        target = area * _uniform((b, _CROP_TRIES), self.scale[0], self.scale[1], gen, device)
        log_ratio = _uniform((b, _CROP_TRIES), math.log(self.ratio[0]), math.log(self.ratio[1]), gen, device)
        aspect = torch.exp(log_ratio)
        w_try = torch.round(torch.sqrt(target * aspect))
        h_try = torch.round(torch.sqrt(target / aspect))
        ok = (w_try > 0) & (w_try <= width) & (h_try > 0) & (h_try <= height)
        first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # index of the first try that fits
        w = w_try.gather(1, first).squeeze(1)
        h = h_try.gather(1, first).squeeze(1)
        found = ok.any(dim=1)
        # torchvision's fallback: the largest central crop with the aspect ratio clamped to `ratio`
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fb_w, fb_h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fb_w, fb_h = round(height * self.ratio[1]), height
        else:
            fb_w, fb_h = width, height
        w = torch.where(found, w, torch.full_like(w, fb_w))
        h = torch.where(found, h, torch.full_like(h, fb_h))
        u_top, u_left = torch.rand((2, b), generator=gen, device=device)
        top = torch.where(found, torch.floor(u_top * (height - h + 1)), torch.floor((height - h) / 2))
        left = torch.where(found, torch.floor(u_left * (width - w + 1)), torch.floor((width - w) / 2))
        return top, left, h, w

    def _crop_and_flip(self, x: torch.Tensor, gen) -> torch.Tensor:
        b, _, height, width = x.shape
        device = x.device
        top, left, h, w = self._crop_boxes(b, height, width, gen, device)
        flip = torch.rand(b, generator=gen, device=device) < self.flip_p
        # Affine map from output coordinates in [-1, 1] to input ones (align_corners=False, pixel edges)
        theta = torch.zeros(b, 2, 3, device=device, dtype=x.dtype)
        theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta, [b, 3, self.img_size, self.img_size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
        return out.clamp_(0.0, 1.0)  # bicubic overshoots; PIL clamps to 8 bits likewise

    def _jitter(self, x: torch.Tensor, gen) -> torch.Tensor:
        b, device = x.shape[0], x.device
        apply = torch.rand(b, generator=gen, device=device) < self.jitter_p
        bri, con, sat, hue = self.jitter
        view = (b, 1, 1, 1)
        factors = [  # drawn for every sample so the number of draws never depends on the data
            _uniform(b, max(0.0, 1 - bri), 1 + bri, gen, device).view(view),
            _uniform(b, max(0.0, 1 - con), 1 + con, gen, device).view(view),
            _uniform(b, max(0.0, 1 - sat), 1 + sat, gen, device).view(view),
            _uniform(b, -hue, hue, gen, device).view(view),
        ]
        order = torch.rand((b, 4), generator=gen, device=device).argsort(dim=1)  # a random permutation per sample
        luma = torch.tensor(_LUMA, device=device, dtype=x.dtype).view(1, 3, 1, 1)

        def brightness(y):
            return (y * factors[0]).clamp(0, 1)

        def contrast(y):
            mean = (y * luma).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
            return (factors[1] * y + (1 - factors[1]) * mean).clamp(0, 1)

        def saturation(y):
            grey = (y * luma).sum(1, keepdim=True)
            return (factors[2] * y + (1 - factors[2]) * grey).clamp(0, 1)

        def hue_shift(y):
            hsv = rgb_to_hsv(y)
            shifted = torch.remainder(hsv[:, :1] + factors[3], 1.0)
            return hsv_to_rgb(torch.cat((shifted, hsv[:, 1:]), dim=1)).clamp(0, 1)

        ops = [(i, op) for i, (op, strength) in enumerate(zip((brightness, contrast, saturation, hue_shift), self.jitter))
               if strength > 0]
        y = x
        for slot in range(4):
            chosen = order[:, slot].view(view)
            slot_out = y
            for i, op in ops:
                slot_out = torch.where(chosen == i, op(y), slot_out)
            y = slot_out
        return torch.where(apply.view(view), y, x)

    def _grayscale(self, x: torch.Tensor, gen) -> torch.Tensor:
        b, device = x.shape[0], x.device
        grey_mask = (torch.rand(b, generator=gen, device=device) < self.gray_p).view(b, 1, 1, 1)
        luma = torch.tensor(_LUMA, device=device, dtype=x.dtype).view(1, 3, 1, 1)
        return torch.where(grey_mask, (x * luma).sum(1, keepdim=True).expand_as(x), x)

    def _solarize(self, x: torch.Tensor, gen) -> torch.Tensor:
        b, device = x.shape[0], x.device
        mask = (torch.rand(b, generator=gen, device=device) < self.solarize_p).view(b, 1, 1, 1)
        return torch.where(mask & (x >= 0.5), 1.0 - x, x)  # PIL's threshold 128 of 255

    # ------------------------------------------------------------------ call

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images: ``(B, 3, H, W)`` uint8, or float in [0, 1], on any device; ``generator`` on
        the same device type. Returns ``(B, 3, img_size, img_size)`` float32, normalised."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if generator.device.type != images.device.type:
            raise ValueError(f"the generator is on {generator.device} but the images are on {images.device}; "
                             "create it with torch.Generator(device=images.device)")
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        if self.crop_first:
            x = self._crop_and_flip(x, generator)
        x = self._jitter(x, generator)
        x = self._grayscale(x, generator)
        if self.solarize_p > 0:
            x = self._solarize(x, generator)
        if not self.crop_first:
            x = self._crop_and_flip(x, generator)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def batch_view_augments(method: str, dataset: str, img_size: int, num_views: int) -> list[BatchViewAugment]:
    """One :class:`BatchViewAugment` per view reproducing ``method``'s small-image views.

    W-MSE / CW-RGP: ``cfg.py`` defaults with the authors' normalisation, the same for every view.
    INTL: ``cifar/transform.py`` (crop 0.08-1 first, jitter 0.4/0.4/0.2/0.1, grayscale 0.2,
    solarisation p 0.0 / 0.2 alternating over the views). ImageNet-size data is not handled here.
    """
    from .. import catalogue
    from ..catalogue import dataset_stats
    from .transforms import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if catalogue.is_large(dataset, img_size):
        small = [n for n in catalogue.names() if catalogue.get(n).small]
        raise ValueError(f"GPU-side views cover small-image data ({', '.join(small)}, or imagefolder below "
                         f"{catalogue.LARGE_IMAGE_MIN} px), not {dataset} at {img_size} px")
    mean, std = dataset_stats(dataset, method)
    if method in ("wmse", "cwrgp"):
        return [BatchViewAugment(img_size, mean, std)] * num_views
    pair = [BatchViewAugment(img_size, mean, std, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2,
                             solarize_p=p, crop_first=True) for p in (0.0, 0.2)]
    return [pair[i % 2] for i in range(num_views)]


class RawImages(torch.utils.data.Dataset):
    """``(uint8 tensor (3, S, S), target)`` of a PIL dataset, for ``--gpu-augment``.

    Images that are not already S x S are resized (bicubic) to S x S. Accepts the training loop's
    ``(epoch, index)`` keys as well as plain indices.
    """

    def __init__(self, dataset, size: int):
        from torchvision.transforms import functional as TF

        self.dataset, self.size, self._tf = dataset, int(size), TF

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        from PIL import Image

        index = key[1] if isinstance(key, tuple) else key
        image, target = self.dataset[index]
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return self._tf.pil_to_tensor(image.convert("RGB")), target
