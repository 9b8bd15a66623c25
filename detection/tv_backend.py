"""The torchvision backend: Faster / Mask R-CNN (C4 and FPN) on a zoo backbone, with detectron2's
schedule semantics, runnable on CPU, one GPU or several (torchrun, DDP).

C4 (detectron2's Res5ROIHeads): the backbone up to ``layer3`` (res4, stride 16) is the RPN and RoI
feature; RoIAlign 14x14 -> ``layer4`` (res5, stride 2 -> 7x7) [-> extra norm, MoCo's
Res5ROIHeadsExtraNorm] -> average pool -> box predictor; the mask head runs the same res5 on
14x14 RoIs of the positive boxes and predicts 14x14 masks with a 2x2 deconv (256) and a 1x1 conv,
as detectron2's C4 mask head (NUM_CONV 0).

FPN: ``layer1..layer4`` -> torchvision's FeaturePyramidNetwork (256 channels, LastLevelMaxPool for
p6), 4-conv + 1-fc box head and 4-conv mask head (normalised when NORM is BN/SyncBN).

Norms: ``FrozenBN`` (torchvision FrozenBatchNorm2d), ``BN`` (batch statistics in training),
``SyncBN`` (nn.SyncBatchNorm when training distributed on CUDA; otherwise plain BN with a warning).
``FREEZE_AT`` as detectron2: 0 nothing frozen, 1 the stem, 2 stem + res2, ... (frozen stages also
get FrozenBN).
"""

from __future__ import annotations

import io
import json
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .configs import TrainSettings


class TrainError(RuntimeError):
    """Training cannot go on (bad setting, non-finite loss, unreadable checkpoint); the message says why."""


# --------------------------------------------------------------------------------------------- model

def _freeze_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by FrozenBatchNorm2d with its statistics (in place)."""
    from torchvision.ops import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = _freeze_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _check_resnet(backbone: nn.Module, stem: str) -> None:
    missing = [n for n in ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4") if not hasattr(backbone, n)]
    if missing:
        raise TrainError(f"the torchvision backend needs a timm ResNet backbone (conv1, bn1, layer1..layer4); "
                         f"this one has no {missing}")
    if stem != "imagenet":
        raise TrainError(f"backbone stem {stem!r}: only the imagenet stem (7x7 stride 2 + max-pool) gives "
                         "detectron2's strides (res4 at 16, res5 at 32); use an imagenet-stem model")


def _stage_channels(backbone: nn.Module) -> list[int]:
    chans = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        last = getattr(backbone, name)[-1]
        conv = getattr(last, "conv3", None) or last.conv2
        chans.append(conv.out_channels)
    return chans


def _apply_freeze(backbone: nn.Module, freeze_at: int) -> None:
    stages = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
    for names in stages[:freeze_at]:
        for name in names:
            mod = getattr(backbone, name)
            for p in mod.parameters():
                p.requires_grad_(False)
            setattr(backbone, name, _freeze_bn(mod))


class Res5(nn.Module):
    """detectron2's res5 head on RoI features: layer4 [+ extra norm] (MoCo's Res5ROIHeadsExtraNorm)."""

    def __init__(self, layer4: nn.Module, out_channels: int, extra_norm: nn.Module | None):
        super().__init__()
        self.layer4 = layer4
        self.norm = extra_norm if extra_norm is not None else nn.Identity()
        self.out_channels = out_channels

    def forward(self, x):
        return self.norm(self.layer4(x))


class Res5BoxHead(nn.Module):
    def __init__(self, res5: Res5):
        super().__init__()
        self.res5 = res5

    def forward(self, x):
        return self.res5(x).mean(dim=(2, 3))


def _norm_layer(norm: str):
    from torchvision.ops import FrozenBatchNorm2d

    return {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d, "SyncBN": nn.BatchNorm2d}[norm]


def build_model(backbone: nn.Module, s: TrainSettings, *, stem: str = "imagenet") -> nn.Module:
    """A torchvision FasterRCNN / MaskRCNN on ``backbone`` (a timm ResNet) for ``s.num_classes`` classes."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    _check_resnet(backbone, stem)
    if s.norm not in ("FrozenBN", "BN", "SyncBN"):
        raise TrainError(f"MODEL.RESNETS.NORM {s.norm!r} is not FrozenBN, BN or SyncBN")
    backbone.train()
    if s.norm == "FrozenBN":
        _freeze_bn(backbone)
    _apply_freeze(backbone, s.freeze_at)
    chans = _stage_channels(backbone)
    num_classes = s.num_classes + 1  # + background
    common = dict(
        min_size=s.min_size_train, max_size=s.max_size_train,
        image_mean=[m / 255.0 for m in s.pixel_mean], image_std=[x / 255.0 for x in s.pixel_std],
        rpn_pre_nms_top_n_train=s.rpn_pre_nms_train, rpn_post_nms_top_n_train=s.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=s.rpn_pre_nms_test, rpn_post_nms_top_n_test=s.rpn_post_nms_test,
        rpn_batch_size_per_image=s.rpn_batch_per_image,
        box_score_thresh=s.score_thresh_test, box_nms_thresh=s.nms_thresh_test,
        box_detections_per_img=s.detections_per_image, box_batch_size_per_image=s.roi_batch_per_image,
        box_positive_fraction=s.roi_positive_fraction,
    )
    sizes = [list(x) for x in s.anchor_sizes]
    ratios = [list(x) for x in s.anchor_ratios]
    head_norm = None if s.norm == "FrozenBN" else nn.BatchNorm2d
    if s.arch == "C4":
        if s.box_num_conv or s.box_num_fc or s.mask_num_conv:
            raise TrainError("C4 heads are res5 (ROI_BOX_HEAD.NUM_CONV/NUM_FC and ROI_MASK_HEAD.NUM_CONV must be 0)")
        trunk = IntermediateLayerGetter(backbone, return_layers={"layer3": "0"})
        trunk.out_channels = chans[2]
        flat = tuple(int(x) for level in sizes for x in level)
        anchors = AnchorGenerator(sizes=(flat,), aspect_ratios=(tuple(ratios[0]),))
        rpn_head = RPNHead(chans[2], anchors.num_anchors_per_location()[0])
        extra = _norm_layer(s.norm)(chans[3]) if s.extra_norm else None
        res5 = Res5(backbone.layer4, chans[3], extra)
        pool = MultiScaleRoIAlign(["0"], output_size=s.box_pooler_resolution, sampling_ratio=0)
        kwargs: dict[str, Any] = dict(
            rpn_anchor_generator=anchors, rpn_head=rpn_head, box_roi_pool=pool, box_head=Res5BoxHead(res5),
            box_predictor=FastRCNNPredictor(chans[3], num_classes))
        if s.mask_on:
            kwargs.update(mask_roi_pool=MultiScaleRoIAlign(["0"], output_size=s.mask_pooler_resolution, sampling_ratio=0),
                          mask_head=res5, mask_predictor=MaskRCNNPredictor(chans[3], s.mask_conv_dim, num_classes))
        body = trunk
    elif s.arch == "FPN":
        c = s.fpn_out_channels
        body = BackboneWithFPN(backbone, return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
                               in_channels_list=chans, out_channels=c, extra_blocks=LastLevelMaxPool(),
                               norm_layer=head_norm)
        if len(sizes) == 1:
            sizes = [[x] for x in sizes[0]]
        if len(sizes) != 5:
            raise TrainError(f"FPN needs 5 anchor sizes (one per level p2-p6), got {sizes}")
        anchors = AnchorGenerator(sizes=tuple(tuple(x) for x in sizes),
                                  aspect_ratios=(tuple(ratios[0]),) * len(sizes))
        rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0])
        r = s.box_pooler_resolution
        if not s.box_num_conv and not s.box_num_fc:
            raise TrainError("FPN box head needs ROI_BOX_HEAD.NUM_CONV or NUM_FC > 0")
        box_head = FastRCNNConvFCHead((c, r, r), [s.box_conv_dim] * s.box_num_conv, [s.box_fc_dim] * s.box_num_fc,
                                      norm_layer=head_norm)
        box_out = s.box_fc_dim if s.box_num_fc else s.box_conv_dim * r * r
        kwargs = dict(rpn_anchor_generator=anchors, rpn_head=rpn_head,
                      box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=r, sampling_ratio=0),
                      box_head=box_head, box_predictor=FastRCNNPredictor(box_out, num_classes))
        if s.mask_on:
            mask_layers = [s.mask_conv_dim] * s.mask_num_conv
            kwargs.update(mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=s.mask_pooler_resolution,
                                                           sampling_ratio=0),
                          mask_head=MaskRCNNHeads(c, mask_layers, 1, norm_layer=head_norm) if mask_layers else nn.Identity(),
                          mask_predictor=MaskRCNNPredictor(mask_layers[-1] if mask_layers else c, s.mask_conv_dim,
                                                           num_classes))
    else:
        raise TrainError(f"unknown meta-architecture {s.arch!r} (C4 or FPN)")
    cls = MaskRCNN if s.mask_on else FasterRCNN
    model = cls(body, num_classes=None, **common, **kwargs)
    model.wssl_settings = s
    return model


def set_eval_sizes(model: nn.Module, s: TrainSettings, train: bool) -> None:
    """Training picks the shortest side per image from MIN_SIZE_TRAIN; testing uses MIN_SIZE_TEST."""
    core = model.module if hasattr(model, "module") else model
    if train:
        core.transform.min_size, core.transform.max_size = tuple(s.min_size_train), s.max_size_train
    else:
        core.transform.min_size, core.transform.max_size = (s.min_size_test,), s.max_size_test


# ----------------------------------------------------------------------------------------- training

class InfiniteSampler(torch.utils.data.Sampler):
    """Endless shuffled indices (a fresh permutation per pass), sharded over ranks, as detectron2's."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            perm = torch.randperm(self.size, generator=g).tolist()
            yield from perm[self.rank::self.world]


def _param_groups(model: nn.Module, s: TrainSettings) -> list[dict]:
    norm_types = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
    decay, no_decay, seen = [], [], set()
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(mod, norm_types) else decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": s.weight_decay_norm})
    return groups


def _save(path: Path, payload: dict) -> None:
    from wssl_zoo.fileio import atomic_open

    with atomic_open(path) as fh:
        buf = io.BytesIO()
        torch.save(payload, buf)
        fh.write(buf.getvalue())


def checkpoint_path(out: Path) -> Path:
    return Path(out) / "checkpoints" / "last.pt"


def _to_device(images, targets, device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


def train(model: nn.Module, dataset, s: TrainSettings, *, out: Path, device: torch.device, seed: int,
          resume: bool = False, checkpoint_every: int | None = None, amp: bool | str = False, progress: bool = True,
          rank: int = 0, world: int = 1, meta: dict | None = None) -> dict:
    """Train for ``s.max_iter`` iterations; returns a summary. Checkpoints to OUT/checkpoints/last.pt."""
    from tqdm import tqdm

    out = Path(out)
    if s.ims_per_batch % world:
        raise TrainError(f"SOLVER.IMS_PER_BATCH {s.ims_per_batch} is not divisible by the {world} processes")
    per_rank = s.ims_per_batch // world
    model.to(device)
    if world > 1 and s.norm == "SyncBN":
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            warnings.warn("SyncBN needs CUDA; training with per-process BN on this device")
    opt = torch.optim.SGD(_param_groups(model, s), lr=s.lr_at(0), momentum=s.momentum)
    use_amp = bool(amp) and amp != "none" and device.type == "cuda"
    if amp and not use_amp:
        warnings.warn("--amp is for CUDA; training in float32 on this device")
    if amp in ("bf16", "fp16"):  # --amp bf16|fp16; True (the config's AMP.ENABLED): bf16 where supported
        amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    else:
        amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    start = 0
    ckpt = checkpoint_path(out)
    if resume:
        if not ckpt.is_file():
            raise TrainError(f"--resume: no checkpoint at {ckpt}")
        try:
            state = torch.load(ckpt, map_location=device, weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise TrainError(f"{ckpt}: unreadable checkpoint ({exc})") from None
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        if start >= s.max_iter:
            return {"iterations": start, "resumed_from": start, "seconds": 0.0, "last_loss": state.get("loss")}
    core = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    set_eval_sizes(model, s, train=True)
    model.train()
    sampler = InfiniteSampler(len(dataset), seed + start, rank, world)
    from .data import collate

    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler, collate_fn=collate,
                                         num_workers=s.num_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=s.num_workers > 0)
    random.seed(seed + start)  # the transform's multi-scale choice uses torch's RNG; seed both
    torch.manual_seed(seed + start + rank)
    every = checkpoint_every if checkpoint_every is not None else s.checkpoint_period
    log = (out / "metrics.jsonl").open("a") if rank == 0 else None
    bar = tqdm(total=s.max_iter, initial=start, disable=not progress or rank != 0, dynamic_ncols=True,
               desc="train", unit="it")
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    it = start
    data_iter = iter(loader)
    try:
        while it < s.max_iter:
            images, targets = next(data_iter)
            images, targets = _to_device(images, targets, device)
            lr = s.lr_at(it)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                losses = model(images, targets)
            total = sum(losses.values())
            if not torch.isfinite(total):
                raise TrainError(f"loss is {float(total)} at iteration {it} "
                                 f"({ {k: float(v) for k, v in losses.items()} }); lower SOLVER.BASE_LR")
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
            it += 1
            last = {k: float(v.detach()) for k, v in losses.items()}
            last["total_loss"] = float(total.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last['total_loss']:.3f}", lr=f"{lr:.2e}")
            if log is not None and (it % 20 == 0 or it == s.max_iter or it == start + 1):
                log.write(json.dumps({"iteration": it, "lr": lr, **last,
                                      "seconds": time.perf_counter() - t0}) + "\n")
                log.flush()
            if rank == 0 and every and it % every == 0 and it < s.max_iter:
                _save(ckpt, {"model": core.state_dict(), "optimizer": opt.state_dict(),
                             "scaler": scaler.state_dict(), "iteration": it, "loss": last, "meta": meta or {}})
    finally:
        bar.close()
        if log is not None:
            log.close()
    seconds = time.perf_counter() - t0
    if rank == 0:
        _save(ckpt, {"model": core.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                     "iteration": it, "loss": last, "meta": meta or {}})
        _save(out / "model_final.pt", {"model": core.state_dict(), "iteration": it, "meta": meta or {}})
    return {"iterations": it, "resumed_from": start, "seconds": seconds, "last_loss": last,
            "seconds_per_iter": seconds / max(1, it - start)}


def load_weights(model: nn.Module, path: Path, device) -> int:
    """Load ``model_final.pt`` / a checkpoint into ``model``; returns its iteration."""
    if not Path(path).is_file():
        raise TrainError(f"{path}: no trained weights (train first, or pass --weights FILE)")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise TrainError(f"{path}: unreadable checkpoint ({exc})") from None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise TrainError(f"{path}: does not match the model built from this config ({str(exc).splitlines()[0]})") from None
    return int(state.get("iteration", 0))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)

