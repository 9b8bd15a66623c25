"""timm backbones with the papers' stems, and :class:`SSLModel` (backbone + projector + loss).

Every backbone is ``timm.create_model(arch, num_classes=0)``: it returns pooled features
(B, num_features) and keeps timm's key names, so weights load into plain timm.

Stems (all three papers modify torchvision ResNets this way for small images):

- ``imagenet``: the architecture as timm builds it.
- ``cifar``: first conv 3x3 stride 1 padding 1 without bias, max-pool removed (32 px CIFAR).
- ``small``: first conv 3x3 stride 1, max-pool kept (W-MSE / CW-RGP on STL-10 and Tiny-ImageNet).
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Sequence

import torch
from torch import nn

STEMS = ("imagenet", "cifar", "small")


def _close_arch_names(arch: str) -> list[str]:
    import timm

    return difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.5)


def create_backbone(arch: str, stem: str = "imagenet", **timm_kwargs) -> nn.Module:
    """A timm backbone without classifier (``num_classes=0``), random init, with ``stem``.

    Raises ValueError naming the architecture (with close timm names) or the stem.
    """
    import timm

    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {list(STEMS)}")
    if not timm.is_model(arch):
        close = _close_arch_names(arch)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown timm architecture {arch!r}{hint}")
    model = timm.create_model(arch, pretrained=False, num_classes=0, **timm_kwargs)
    if stem != "imagenet":
        conv1 = getattr(model, "conv1", None)
        if not isinstance(conv1, nn.Conv2d) or not hasattr(model, "maxpool"):
            raise ValueError(
                f"the {stem!r} stem is defined for ResNet-style timm models with a single conv1 and a "
                f"maxpool (resnet18, resnet50, ...); {arch!r} has none; use stem='imagenet'"
            )
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, kernel_size=3, stride=1,
                                padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        if stem == "cifar":
            model.maxpool = nn.Identity()
    model.wssl_arch = arch
    model.wssl_stem = stem
    return model


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """INTL's cosine schedule of the EMA momentum: base at step 0, 1.0 at the last step."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1))) * (1.0 - base)


def _concat_head(loss: nn.Module) -> bool:
    from .losses import INTLLoss

    return not isinstance(loss, INTLLoss)


class SSLModel(nn.Module):
    """Backbone + projector + loss: ``forward(views) -> loss``, the papers' forward passes.

    The backbone runs on every view batch separately (BatchNorm statistics per view, as in the
    authors' ``[model(x) for x in samples]``). W-MSE and CW-RGP run the projector once on the
    concatenation of all views (``head(torch.cat(h))``); INTL runs it per crop. ``head_on_concat``
    overrides that choice. Views may have different resolutions (multi-crop).

    With ``momentum`` (INTL_M), ``views[0]`` goes through a momentum copy of backbone and
    projector without gradient. The trainer calls :meth:`update_momentum` with the scheduled
    coefficient before each forward (the authors update at the start of their forward). Only
    parameters are averaged; the momentum encoder's BatchNorm buffers follow its own batches.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module,
                 momentum: float | None = None, head_on_concat: bool | None = None):
        super().__init__()
        self.backbone, self.projector, self.loss = backbone, projector, loss
        self.head_on_concat = _concat_head(loss) if head_on_concat is None else bool(head_on_concat)
        self.base_momentum = momentum
        if momentum is not None:
            if not 0.0 < momentum < 1.0:
                raise ValueError(f"SSLModel: momentum must be in (0, 1), got {momentum!r}")
            self.momentum_backbone = copy.deepcopy(backbone)
            self.momentum_projector = copy.deepcopy(projector)
            for p in list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters()):
                p.requires_grad_(False)

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """param_k = m * param_k + (1 - m) * param_q for backbone and projector parameters."""
        if self.base_momentum is None:
            raise ValueError("SSLModel: update_momentum needs a model built with momentum=...")
        pairs = list(zip(self.backbone.parameters(), self.momentum_backbone.parameters()))
        pairs += list(zip(self.projector.parameters(), self.momentum_projector.parameters()))
        for q, k in pairs:
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)

    def embed(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Projector outputs of every view (the momentum encoder's for views[0] with momentum)."""
        if not isinstance(views, (list, tuple)) or len(views) < 2:
            raise ValueError(f"SSLModel: expected a list of at least 2 view batches, got {type(views).__name__}"
                             + (f" of length {len(views)}" if isinstance(views, (list, tuple)) else ""))
        rest = views
        key = None
        if self.base_momentum is not None:
            with torch.no_grad():
                key = self.momentum_projector(self.momentum_backbone(views[0]))
            rest = views[1:]
        feats = [self.backbone(v) for v in rest]
        if self.head_on_concat:
            sizes = [len(f) for f in feats]
            out = list(self.projector(torch.cat(feats)).split(sizes))
        else:
            out = [self.projector(f) for f in feats]
        return ([key] if key is not None else []) + out

    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.loss(self.embed(views))
