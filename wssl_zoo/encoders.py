"""timm backbones with the papers' small-image stems, and :class:`SSLModel` (backbone + projector + loss).

Papers:

- W-MSE: Ermolov, Siarohin, Sangineto, Sebe, "Whitening for Self-Supervised Representation
  Learning", ICML 2021 (code: htdt/self-supervised).
- CW-RGP: Weng, Ni, Huang, Huang, Liu, "An Investigation into Whitening Loss for Self-supervised
  Learning", NeurIPS 2022.
- INTL: Weng, Ni, Song, Luo, Anwer, Khan, Khan, Huang, "Modulate Your Spectrum in Self-Supervised
  Learning", ICLR 2024.

Every backbone is ``timm.create_model(arch, pretrained=False, num_classes=0)``: calling it on a
(B, 3, H, W) batch returns pooled features (B, ``backbone.num_features``), and its state_dict keys
are timm's, so weights saved from an ``imagenet``-stem backbone load into plain timm.

Stems (all three papers modify torchvision ResNets this way for small images):

- ``imagenet``: the architecture exactly as timm builds it.
- ``cifar`` (32-96 px recipes): the first conv becomes 3x3, stride 1, padding 1, no bias (same
  channels) and the max-pool becomes ``nn.Identity``, so the stem no longer downsamples.
- ``small`` (W-MSE / CW-RGP on STL-10 and Tiny-ImageNet): the same 3x3 stride-1 first conv, the
  max-pool kept (the authors replace conv1 for every non-ImageNet dataset, the max-pool for CIFAR only).
- ``cifar_pad2`` (INTL on CIFAR, the network the authors trained): ``cifar`` with a first conv of
  padding 2. INTL's ResNet (winci-ai/INTL@0aa69af src/resnet.py:156 ``nn.ConstantPad2d(1, 0.0)``,
  applied first in ``forward``, src/resnet.py:276) keeps that extra zero padding when
  src/model.py:24 swaps in the 3x3/1 padding-1 CIFAR conv, so its stem convolves with 2 pixels of
  zeros: a 32-px image gives 34 x 34 maps (17 / 9 / 5 after layers 2-4) where ``cifar`` gives 32
  (16 / 8 / 4). A quirk that shaped INTL's CIFAR numbers: INTL's CIFAR recipes and entry use it by
  default; ``cifar`` is the corrected stem. (INTL's ImageNet stem, pad 1 + 7x7/2 padding 2, is
  torchvision's padding 3 exactly: ``imagenet``.)

The replacement conv keeps PyTorch's default ``nn.Conv2d`` initialisation, as in the authors' code
(they swap the conv after the torchvision model is built). Key names stay timm's: the cifar/small
stems change the shape of ``conv1.weight`` (7x7 -> 3x3) but not its name; for timm's "deep" stems
(``resnet50d``, ``resnest50d``, ...) ``conv1`` is a Sequential and only its first conv (``conv1.0``,
3x3 stride 2) is replaced, by the same-shaped stride-1 conv. The stem is recorded on the module as
``backbone.wssl_stem`` (and the architecture as ``backbone.wssl_arch``) for savers to write to config.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Sequence

import timm
import torch
from timm.models.resnet import ResNet
from torch import nn

from .methods import fact
from .registry import STEMS  # noqa: E402  (the one list of stems)

# create_model arguments that would break the (B, num_features) pooled-feature contract.
_RESERVED_TIMM_KWARGS = {
    "pretrained": "backbones are built with random weights; load zoo weights with wssl_zoo.load",
    "num_classes": "backbones are built without a classifier (num_classes=0)",
    "features_only": "backbones return pooled features, not feature maps",
}


def close_arch_names(arch: str, limit: int = 5) -> list[str]:
    """The timm architecture names closest to ``arch`` (difflib over ``timm.list_models()``)."""
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=limit, cutoff=0.6)
    if not close:  # a looser match still beats an empty hint
        close = difflib.get_close_matches(arch, names, n=limit, cutoff=0.3)
    return close


def create_backbone(arch: str, stem: str = "imagenet", **timm_kwargs) -> nn.Module:
    """A timm backbone without classifier, random init, with the given ``stem``.

    Args:
        arch: any timm architecture name (``resnet18``, ``resnet50``, ``vit_small_patch16_224``,
            ...), optionally with a pretrained tag (``resnet18.a1_in1k``; the weights are not loaded).
        stem: ``"imagenet"``, ``"cifar"``, ``"small"`` or ``"cifar_pad2"`` (see the module
            docstring); all but ``imagenet`` are defined for timm ResNet-family models only.
        **timm_kwargs: passed to ``timm.create_model`` (``in_chans``, ``drop_path_rate``, ...).

    Returns:
        the model; ``model(x)`` maps (B, C, H, W) to (B, model.num_features). It carries
        ``model.wssl_arch`` and ``model.wssl_stem``.

    Raises:
        ValueError: unknown stem (lists the valid ones), unknown architecture (lists the closest
            timm names), a stem not defined for the architecture, or a reserved timm keyword.
    """
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {list(STEMS)}")
    if not isinstance(arch, str) or not timm.is_model(arch):
        close = close_arch_names(arch) if isinstance(arch, str) else []
        hint = f"; closest timm names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ValueError(f"unknown timm architecture {arch!r}{hint}")
    for key, why in _RESERVED_TIMM_KWARGS.items():
        if key in timm_kwargs:
            raise ValueError(f"create_backbone({arch!r}): timm keyword {key!r} is not accepted: {why}")
    if timm_kwargs.get("global_pool", None) == "":
        raise ValueError(f"create_backbone({arch!r}): global_pool='' returns unpooled features; "
                         "backbones must return (B, num_features)")
    model = timm.create_model(arch, pretrained=False, num_classes=0, **timm_kwargs)
    if stem != "imagenet":
        _apply_small_image_stem(model, arch, stem)
    model.wssl_arch = arch
    model.wssl_stem = stem
    return model


# stem -> (padding of the 3x3 stride-1 first conv, whether the max-pool is removed)
_SMALL_STEMS = {"cifar": (1, True), "small": (1, False), "cifar_pad2": (2, True)}


def _stride1_conv_like(conv: nn.Conv2d, padding: int = 1) -> nn.Conv2d:
    """3x3, stride 1, ``padding``, no bias, same channels as ``conv`` (PyTorch default init)."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=padding, bias=False)
    return new.to(device=conv.weight.device, dtype=conv.weight.dtype)


def _apply_small_image_stem(model: nn.Module, arch: str, stem: str) -> None:
    """Turn ``model``'s stem into the papers' ``cifar``/``small``/``cifar_pad2`` stem, in place.

    Checks everything before changing anything, so a ValueError leaves ``model`` untouched.
    """
    def unsupported(reason: str) -> ValueError:
        return ValueError(
            f"the {stem!r} stem is not defined for timm architecture {arch!r}: {reason}; it is defined "
            f"for timm ResNet-family models (resnet18, resnet50, resnet50d, wide_resnet50_2, "
            f"resnext50_32x4d, ...); use stem='imagenet'"
        )

    if not isinstance(model, ResNet):
        raise unsupported(f"it is a {type(model).__name__}, not a timm ResNet with conv1 and maxpool")
    conv1 = model.conv1
    if isinstance(conv1, nn.Conv2d):
        first, deep = conv1, False
    elif isinstance(conv1, nn.Sequential) and len(conv1) > 0 and isinstance(conv1[0], nn.Conv2d):
        # timm's 'deep'/'deep_tiered' stems: 3x3/2 conv, then 3x3/1 convs. Replacing the first conv by
        # its stride-1 twin removes the stem's only downsampling, as the 7x7/2 -> 3x3/1 swap does.
        first, deep = conv1[0], True
        later = [m for m in list(conv1)[1:] if isinstance(m, nn.Conv2d)]
        if first.kernel_size != (3, 3) or any(m.stride != (1, 1) for m in later):
            raise unsupported("its deep stem is not a 3x3 stride-2 conv followed by stride-1 convs")
    else:
        raise unsupported(f"its conv1 is a {type(conv1).__name__}, not a Conv2d or a deep-stem Sequential")
    padding, no_pool = _SMALL_STEMS[stem]
    if no_pool and any(True for _ in model.maxpool.parameters()):
        # replace_stem_pool=True (resnetrs*): the "pool" is a learned stride-2 conv, not a max-pool
        raise unsupported("its stem pool is a learned conv (replace_stem_pool), not a max-pool to remove")

    if deep:
        model.conv1[0] = _stride1_conv_like(first, padding)
    else:
        model.conv1 = _stride1_conv_like(first, padding)
    if no_pool:
        model.maxpool = nn.Identity()
    # keep timm's feature metadata truthful: conv1 no longer halves; without the pool it no longer does
    after_pool = 4 if no_pool else 2
    for info in getattr(model, "feature_info", None) or []:
        if isinstance(info, dict) and "reduction" in info:
            factor = 2 if info.get("module") in ("act1", "bn1", "conv1") else after_pool
            info["reduction"] = max(1, info["reduction"] // factor)


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """INTL_M's cosine schedule of the EMA coefficient: ``base`` at step 0, 1.0 at ``total_steps``.

    ``1 - 0.5 * (1 + cos(pi * step / total_steps)) * (1 - base)`` (INTL ``adjust_momentum``).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * step / total_steps)) * (1.0 - base)


def _default_head_on_concat(loss: nn.Module) -> bool:
    """W-MSE / CW-RGP: ``head(torch.cat(h))``; INTL: ``projection(backbone(x))`` per crop.

    A loss may state its own choice as a bool attribute ``head_on_concat``; otherwise the method it
    names in its ``method`` attribute decides (``wssl_zoo.methods.fact(method, "head_on_concat")``).
    """
    own = getattr(loss, "head_on_concat", None)
    if isinstance(own, bool):
        return own
    method = getattr(loss, "method", None)
    if isinstance(method, str):
        try:
            return bool(fact(method, "head_on_concat"))
        except ValueError:
            pass
    raise ValueError(
        f"SSLModel: cannot tell whether the projector runs on concatenated views for a "
        f"{type(loss).__name__} loss (its method attribute is {method!r}, not one of wssl_zoo.methods'); pass "
        "head_on_concat=True (one projector call on all views, W-MSE/CW-RGP style) or False (per view, INTL style)"
    )


class SSLModel(nn.Module):
    """Backbone + projector + loss: ``forward(views) -> loss``, the papers' forward passes.

    The backbone runs on every view batch separately, so BatchNorm statistics are per view as in
    the authors' ``h = [model(x) for x in samples]``; views may therefore have different
    resolutions (multi-crop). The projector then runs

    - once on the concatenation of all views' features, split back into V chunks
      (``head_on_concat=True``; W-MSE and CW-RGP: ``head(torch.cat(h))``, BN in the head sees all
      views together), or
    - once per view (``head_on_concat=False``; INTL: ``projection(backbone(x))`` per crop).

    ``head_on_concat=None`` derives the choice from the loss's ``method`` (WMSELoss/CWRGPLoss -> True,
    INTLLoss -> False, from ``wssl_zoo.methods``; other losses must say it).

    With ``momentum`` (INTL_M) the backbone and projector are deep-copied into
    ``momentum_backbone`` / ``momentum_projector`` (``requires_grad=False``). ``views[0]`` is the key
    crop, embedded by the momentum encoder under ``torch.no_grad()``; ``views[1:]`` are the query
    crops, embedded by the online encoder; the loss gets ``[key] + queries`` and must be in its
    momentum mode (``INTLLoss(momentum=True)``). The authors update the momentum encoder at the
    start of every forward with the scheduled coefficient; here the trainer calls
    ``update_momentum(momentum_at(step, total, model.base_momentum))`` before each forward.
    Only parameters are averaged; the momentum encoder's BatchNorm running statistics are its own,
    accumulated from the key crops it sees (as in the authors' code).

    State-dict keys: ``backbone.*`` (timm's names), ``projector.*``, ``loss.*`` (loss buffers, if
    any) and, with momentum, ``momentum_backbone.*`` / ``momentum_projector.*``.

    Args:
        backbone: (B, C, H, W) -> (B, F) features, e.g. :func:`create_backbone`.
        projector: (B, F) -> (B, D), e.g. :func:`wssl_zoo.heads.build_projector`.
        loss: called as ``loss(list of V tensors (B, D)) -> scalar``.
        momentum: base EMA coefficient of INTL_M (e.g. 0.996), stored as ``base_momentum``; None
            for no momentum encoder.
        head_on_concat: see above; None derives it from the loss.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, loss: nn.Module,
                 momentum: float | None = None, head_on_concat: bool | None = None):
        super().__init__()
        self.backbone, self.projector, self.loss = backbone, projector, loss
        self.head_on_concat = _default_head_on_concat(loss) if head_on_concat is None else bool(head_on_concat)
        if momentum is not None:
            if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 < momentum < 1.0:
                raise ValueError(f"SSLModel: momentum must be a number in (0, 1), got {momentum!r}")
            momentum = float(momentum)
        loss_momentum = getattr(loss, "momentum", None)
        if isinstance(loss_momentum, bool) and loss_momentum != (momentum is not None):
            # a mismatch silently trains the wrong thing: the loss would detach (or not) views[0]
            raise ValueError(
                f"SSLModel: momentum={momentum!r} but {type(loss).__name__}(momentum={loss_momentum}); "
                "a momentum encoder needs the loss in momentum mode and vice versa"
            )
        self.base_momentum = momentum
        if momentum is not None:
            self.momentum_backbone = copy.deepcopy(backbone)
            self.momentum_projector = copy.deepcopy(projector)
            for p in self._momentum_parameters():
                p.requires_grad_(False)

    def _momentum_parameters(self) -> list[nn.Parameter]:
        return list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters())

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """``param_k = m * param_k + (1 - m) * param_q`` for every backbone and projector parameter.

        ``m`` is the scheduled coefficient (see :func:`momentum_at`); buffers are not touched.
        """
        if self.base_momentum is None:
            raise ValueError("SSLModel: update_momentum needs a model built with momentum=...")
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"SSLModel: update_momentum coefficient must be in [0, 1], got {m!r}")
        online = list(self.backbone.parameters()) + list(self.projector.parameters())
        target = self._momentum_parameters()
        if len(online) != len(target):
            raise ValueError(f"SSLModel: online encoder has {len(online)} parameter tensors, momentum "
                             f"encoder {len(target)}; they were changed after construction")
        for q, k in zip(online, target):
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)

    @staticmethod
    def _check_views(views) -> None:
        if not isinstance(views, (list, tuple)):
            raise ValueError(f"SSLModel: expected a list of at least 2 view batches (tensors), got a "
                             f"{type(views).__name__}")
        if len(views) < 2:
            raise ValueError(f"SSLModel: expected a list of at least 2 view batches, got {len(views)}")
        for i, v in enumerate(views):
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"SSLModel: view {i} is a {type(v).__name__}, not a tensor")
            if v.dim() == 0 or v.shape[0] == 0:
                raise ValueError(f"SSLModel: view {i} has shape {tuple(v.shape)}; expected a non-empty batch")
        sizes = [v.shape[0] for v in views]
        if len(set(sizes)) != 1:
            raise ValueError(f"SSLModel: every view needs the same batch size (the same images), got {sizes}")

    def embed(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Projector outputs of every view: list of V tensors (B, D).

        With momentum, element 0 is the momentum encoder's key embedding (no gradient).
        """
        self._check_views(views)
        key: list[torch.Tensor] = []
        queries = list(views)
        if self.base_momentum is not None:
            with torch.no_grad():
                key = [self.momentum_projector(self.momentum_backbone(views[0]))]
            queries = queries[1:]
        feats = [self.backbone(v) for v in queries]  # per view: BatchNorm statistics per view
        if self.head_on_concat:
            out = list(self.projector(torch.cat(feats)).split([len(f) for f in feats]))
        else:
            out = [self.projector(f) for f in feats]
        return key + out

    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """views: list of V >= 2 batches (B, C, H_v, W_v) of the same B images -> scalar loss."""
        return self.loss(self.embed(views))
