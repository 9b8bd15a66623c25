"""Batched view augmentation on the training device, for small images (CIFAR / STL size).

With ``wssl-zoo pretrain --gpu-augment`` the data loader only decodes images to fixed-size
uint8 tensors and this module makes the views on the GPU, in one batched call per view, so the
CPU workers stop being the bottleneck. It follows the W-MSE / CW-RGP small-image pipeline:
random resized crop (scale 0.2-1, ratio 3/4-4/3, bilinear), colour jitter with probability 0.8
(brightness, contrast, saturation 0.4, applied in that fixed order; hue is left out: a
documented difference from the PIL pipeline), grayscale with probability 0.1, horizontal flip,
normalisation. Randomness comes only from the ``torch.Generator`` passed in, so a step is
reproducible from its seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class BatchViewAugment:
    def __init__(self, img_size: int, mean, std, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                 jitter=(0.4, 0.4, 0.4), jitter_p=0.8, gray_p=0.1, flip_p=0.5):
        self.img_size, self.scale, self.ratio = img_size, scale, ratio
        self.jitter, self.jitter_p, self.gray_p, self.flip_p = jitter, jitter_p, gray_p, flip_p
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def _rand(self, n, gen, device, low=0.0, high=1.0):
        return torch.rand(n, generator=gen, device=device) * (high - low) + low

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """images: (B, 3, H, W) uint8 or float in [0, 1] on any device -> (B, 3, S, S) normalised."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        b, device = x.shape[0], x.device
        # random resized crop as an affine sampling grid (no loop over samples)
        area = self._rand(b, gen, device, *self.scale)
        log_r = self._rand(b, gen, device, math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(log_r)
        w = torch.sqrt(area * aspect).clamp(max=1.0)
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        cx = (self._rand(b, gen, device) * 2 - 1) * (1 - w)
        cy = (self._rand(b, gen, device) * 2 - 1) * (1 - h)
        flip = torch.where(self._rand(b, gen, device) < self.flip_p, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta, (b, 3, self.img_size, self.img_size), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # colour jitter, applied to a random subset of the batch
        apply = (self._rand(b, gen, device) < self.jitter_p).view(b, 1, 1, 1)
        bri, con, sat = self.jitter
        gray_w = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
        y = x * self._rand(b, gen, device, 1 - bri, 1 + bri).view(b, 1, 1, 1)
        mean = (y * gray_w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        y = (y - mean) * self._rand(b, gen, device, 1 - con, 1 + con).view(b, 1, 1, 1) + mean
        lum = (y * gray_w).sum(1, keepdim=True)
        y = (y - lum) * self._rand(b, gen, device, 1 - sat, 1 + sat).view(b, 1, 1, 1) + lum
        x = torch.where(apply, y.clamp(0, 1), x)
        gray = (self._rand(b, gen, device) < self.gray_p).view(b, 1, 1, 1)
        x = torch.where(gray, (x * gray_w).sum(1, keepdim=True).expand_as(x), x)
        return (x - self.mean.to(device)) / self.std.to(device)


class RawImages(torch.utils.data.Dataset):
    """(uint8 tensor (3, S, S), target) of a PIL dataset resized to S, for --gpu-augment."""

    def __init__(self, dataset, size: int):
        from torchvision.transforms import functional as TF

        self.dataset, self.size, self._tf = dataset, size, TF

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key  # accepts the loop's (epoch, index) keys
        image, target = self.dataset[index]
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size))
        return self._tf.pil_to_tensor(image), target
