"""The torchvision backend's Faster / Mask R-CNN (C4 and FPN), computing what detectron2 0.6 computes.

torchvision's ``GeneralizedRCNN`` is the frame (transform -> backbone -> RPN -> RoI heads) and its
ops do the work (``roi_align``, ``batched_nms``, ``BoxCoder``, ``Matcher``, the balanced sampler,
``RPNHead``, ``FeaturePyramidNetwork``, ``FastRCNNConvFCHead``, ``MaskRCNNHeads``). Where
torchvision's own models compute something else than detectron2, this module has its own part,
each named after the detectron2 code it follows:

- :class:`Anchors` (``DefaultAnchorGenerator``): cell anchors not rounded to integers, ordered size by
  size, on the feature's own stride (torchvision rounds them, orders them ratio by ratio and infers
  the stride from the padded image, which is wrong for C4 without padding);
- :class:`RPN` (``RPN``): smooth-L1 with ``MODEL.RPN.SMOOTH_L1_BETA`` (torchvision hard-codes 1/9),
  both losses summed and divided by ``BATCH_SIZE_PER_IMAGE`` x images, proposals of side
  <= ``PROPOSAL_GENERATOR.MIN_SIZE`` dropped after clipping (``find_top_rpn_proposals``);
- :class:`Pooler` (``ROIPooler``): ``roi_align`` with ``aligned`` from ``POOLER_TYPE`` (ROIAlignV2 is
  half-pixel aligned; torchvision's ``MultiScaleRoIAlign`` has no such flag) and detectron2's level
  assignment;
- :class:`RoIHeads` (``Res5ROIHeads`` / ``StandardROIHeads`` with ``FastRCNNOutputLayers`` and
  ``MaskRCNNConvUpsampleHead``): smooth-L1 with ``ROI_BOX_HEAD.SMOOTH_L1_BETA``, detectron2's class
  layout (background last, K box regressors) and initialisation, the C4 mask head on the res5
  features of the positive RoIs that the box head already computed (torchvision would run res5 a
  second time, with other BN batch statistics), mask targets rasterised from the polygons inside
  each proposal (``PolygonMasks.crop_and_resize``; bitmaps: cropped with aligned RoIAlign, >= 0.5,
  ``BitMasks.crop_and_resize``; torchvision crops unaligned and keeps soft targets), inference without
  torchvision's 0.01-px box filter;
- :class:`Transform`: normalise and pad to the backbone's ``size_divisibility`` (32 for the FPN, none
  for C4; torchvision pads every model to 32); images arrive resized by the data pipeline
  (:mod:`detection.data`), as detectron2's mapper resizes them;
- :func:`detector_postprocess` / :func:`paste_masks` (``detector_postprocess``, ``paste_masks_in_image``):
  boxes scaled to the original image, clipped, empty ones dropped, mask probabilities pasted with
  ``grid_sample`` inside each box +-1 pixel and thresholded at 0.5.

:func:`detectron2_names` maps every tensor of this model to its name in detectron2's, so the same
weights load into both (``tests/test_detection_equivalence.py`` compares them stage by stage).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.roi_heads import RoIHeads as _TorchvisionRoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, batched_nms, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .configs import TrainSettings
from .export import detectron2_name, layout_name


class ModelError(ValueError):
    """The backbone or the settings cannot make this model; the message says which."""


# ------------------------------------------------------------------------------------------ norms

def freeze_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by FrozenBatchNorm2d with its statistics (in place;
    returns the replacement when ``module`` itself is one)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module


def norm_layer(kind: str, sync: bool = False):
    """detectron2's ``get_norm`` for the head norms: ``""`` none, BN, SyncBN (``nn.SyncBatchNorm`` when
    ``sync``: training distributed on CUDA, else per-process BN), FrozenBN, GN (32 groups)."""
    if kind == "":
        return None
    if kind == "GN":
        return lambda channels: nn.GroupNorm(32, channels)
    return {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d,
            "SyncBN": nn.SyncBatchNorm if sync else nn.BatchNorm2d}[kind]


def _sync(module: nn.Module, sync: bool) -> nn.Module:
    return nn.SyncBatchNorm.convert_sync_batchnorm(module) if sync else module


def c2_xavier_fill(layer: nn.Module) -> None:
    """fvcore's ``c2_xavier_fill`` (detectron2's FC and FPN init): kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(layer.weight, a=1)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def c2_msra_fill(layer: nn.Module) -> None:
    """fvcore's ``c2_msra_fill`` (detectron2's conv init in the heads): kaiming-normal fan-out, zero bias."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


# ---------------------------------------------------------------------------------------- anchors

class Anchors(nn.Module):
    """detectron2's ``DefaultAnchorGenerator``: per level, for each size and then each aspect ratio
    (h / w) an anchor of that area centred on 0, not rounded; tiled with the level's stride from
    ``offset`` x stride. One size list (or ratio list) is used for every level, as detectron2
    broadcasts it. Anchors of a level are ordered (y, x, anchor), as the RPN head's outputs."""

    def __init__(self, sizes, ratios, strides, offset: float = 0.0):
        super().__init__()
        levels = len(strides)
        sizes = list(sizes) * levels if len(sizes) == 1 else list(sizes)
        ratios = list(ratios) * levels if len(ratios) == 1 else list(ratios)
        if len(sizes) != levels or len(ratios) != levels:
            raise ModelError(f"MODEL.ANCHOR_GENERATOR: {len(sizes)} size lists and {len(ratios)} ratio lists for "
                             f"{levels} feature level(s); give one list or one per level")
        self.strides, self.offset = list(strides), float(offset)
        self.counts = [len(s) * len(r) for s, r in zip(sizes, ratios)]
        if len(set(self.counts)) != 1:
            raise ModelError(f"MODEL.ANCHOR_GENERATOR: every level needs the same number of anchors, got {self.counts}")
        for i, (size, ratio) in enumerate(zip(sizes, ratios)):
            cells = []
            for area_side in size:
                for aspect in ratio:
                    w = math.sqrt(area_side * area_side / aspect)
                    h = aspect * w
                    cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
            self.register_buffer(f"cell{i}", torch.tensor(cells, dtype=torch.float32), persistent=False)

    def num_anchors_per_location(self) -> list[int]:
        return self.counts

    def grid(self, shapes) -> list[torch.Tensor]:
        """The anchors of each level for feature maps of ``shapes`` [(H, W), ...]: (H*W*A, 4) each."""
        out = []
        for i, ((h, w), stride) in enumerate(zip(shapes, self.strides)):
            cell = getattr(self, f"cell{i}")
            xs = torch.arange(self.offset * stride, w * stride, step=stride, dtype=torch.float32, device=cell.device)
            ys = torch.arange(self.offset * stride, h * stride, step=stride, dtype=torch.float32, device=cell.device)
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)), dim=1)
            out.append((shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4))
        return out

    def forward(self, image_list, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        anchors = torch.cat(self.grid([f.shape[-2:] for f in feature_maps]))
        return [anchors for _ in range(len(image_list.image_sizes))]


# -------------------------------------------------------------------------------------------- RPN

class RPN(RegionProposalNetwork):
    """torchvision's RPN with detectron2's proposal selection and losses (see the module docstring)."""

    def __init__(self, anchors: Anchors, head: nn.Module, s: TrainSettings):
        low, high = s.rpn_iou_thresholds
        super().__init__(anchors, head, fg_iou_thresh=high, bg_iou_thresh=low,
                         batch_size_per_image=s.rpn_batch_per_image, positive_fraction=s.rpn_positive_fraction,
                         pre_nms_top_n=dict(training=s.rpn_pre_nms_train, testing=s.rpn_pre_nms_test),
                         post_nms_top_n=dict(training=s.rpn_post_nms_train, testing=s.rpn_post_nms_test),
                         nms_thresh=s.rpn_nms_thresh)
        self.box_coder = det_utils.BoxCoder(weights=s.rpn_box_weights)  # clamp log(1000/16), as detectron2
        self.min_size = s.rpn_min_size
        self.smooth_l1_beta = s.rpn_smooth_l1_beta
        self.loc_loss_weight = s.rpn_loc_loss_weight
        self.loss_weight = s.rpn_loss_weight

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        """detectron2's ``find_top_rpn_proposals``: per level the PRE_NMS_TOPK best, clipped, boxes with
        a side <= MIN_SIZE dropped, NMS per level, the POST_NMS_TOPK best per image."""
        n = proposals.shape[0]
        objectness = objectness.detach().reshape(n, -1)
        rows = torch.arange(n, device=proposals.device)[:, None]
        boxes_l, scores_l, levels_l, start = [], [], [], 0
        for level, count in enumerate(num_anchors_per_level):
            logits = objectness[:, start:start + count]
            k = min(count, self.pre_nms_top_n())
            top, idx = logits.sort(descending=True, dim=1)
            idx = idx[:, :k] + start
            boxes_l.append(proposals[rows, idx])
            scores_l.append(top[:, :k])
            levels_l.append(torch.full((k,), level, dtype=torch.int64, device=proposals.device))
            start += count
        all_boxes, all_scores, levels = torch.cat(boxes_l, 1), torch.cat(scores_l, 1), torch.cat(levels_l)
        final_boxes, final_scores = [], []
        for boxes, scores, (h, w) in zip(all_boxes, all_scores, image_shapes):
            lvl = levels
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(valid.all()):
                if self.training:
                    raise FloatingPointError("the RPN predicted non-finite proposals: training diverged "
                                             "(lower SOLVER.BASE_LR)")
                boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                 boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
            keep = ((boxes[:, 2] - boxes[:, 0]) > self.min_size) & ((boxes[:, 3] - boxes[:, 1]) > self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        """detectron2's ``RPN.losses``: BCE over the sampled anchors and smooth-L1 (beta
        ``SMOOTH_L1_BETA``; 0 is L1) over the sampled positives, each summed and divided by
        ``BATCH_SIZE_PER_IMAGE`` x images. Returns (loss_rpn_cls, loss_rpn_loc)."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.cat(sampled_pos).bool()
        valid = pos | torch.cat(sampled_neg).bool()
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        labels = torch.cat(labels)
        targets = torch.cat(regression_targets)
        cls = F.binary_cross_entropy_with_logits(objectness.flatten()[valid], labels[valid], reduction="sum")
        loc = F.smooth_l1_loss(pred_bbox_deltas[pos], targets[pos], beta=self.smooth_l1_beta, reduction="sum")
        return (cls / normalizer * self.loss_weight,
                loc / normalizer * self.loc_loss_weight * self.loss_weight)

    def forward(self, images, features, targets=None):
        boxes, losses = super().forward(images, features, targets)
        names = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_loc"}  # detectron2's names
        return boxes, {names[k]: v for k, v in losses.items()}


# ----------------------------------------------------------------------------------------- pooler

class Pooler(nn.Module):
    """detectron2's ``ROIPooler`` over the named feature maps: ``roi_align`` with ``aligned``
    (ROIAlignV2) or not (ROIAlign); with several levels a box of side sqrt(area) goes to level
    floor(4 + log2(side / 224 + 1e-8)), clamped to the levels there are."""

    def __init__(self, names: list[str], output_size: int, strides: list[int], sampling_ratio: int, aligned: bool):
        super().__init__()
        self.names, self.output_size = list(names), (output_size, output_size)
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio, self.aligned = sampling_ratio, aligned
        self.min_level, self.max_level = int(math.log2(strides[0])), int(math.log2(strides[-1]))

    def forward(self, features: dict, boxes: list[torch.Tensor], image_shapes=None) -> torch.Tensor:
        x = [features[n] for n in self.names]
        rois = torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device), b], dim=1)
                          for i, b in enumerate(boxes)])
        if len(x) == 1:
            return roi_align(x[0], rois, self.output_size, self.scales[0], self.sampling_ratio, self.aligned)
        side = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        level = torch.floor(4 + torch.log2(side / 224 + 1e-8)).clamp(self.min_level, self.max_level)
        level = level.to(torch.int64) - self.min_level
        out = rois.new_zeros((len(rois), x[0].shape[1], *self.output_size), dtype=x[0].dtype)
        for i, (feature, scale) in enumerate(zip(x, self.scales)):
            idx = torch.where(level == i)[0]
            out[idx] = roi_align(feature, rois[idx], self.output_size, scale, self.sampling_ratio,
                                 self.aligned).to(out.dtype)
        return out


# -------------------------------------------------------------------------------------- RoI heads

class BoxPredictor(nn.Module):
    """detectron2's ``FastRCNNOutputLayers``: K + 1 class scores (background last) and K class-specific
    box regressions, initialised N(0, 0.01) and N(0, 0.001) with zero biases."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor):
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskPredictor(nn.Module):
    """The end of detectron2's ``MaskRCNNConvUpsampleHead``: a 2x2 stride-2 deconvolution + ReLU (msra
    init) and a 1x1 convolution to K class-specific mask logits (init N(0, 0.001))."""

    def __init__(self, in_channels: int, dim: int, num_classes: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, dim, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(dim, num_classes, kernel_size=1)
        c2_msra_fill(self.deconv)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(F.relu(self.deconv(x)))


class Res5(nn.Module):
    """detectron2's res5 head on RoI features: ``layer4`` [+ a norm, MoCo's Res5ROIHeadsExtraNorm]."""

    def __init__(self, layer4: nn.Module, out_channels: int, extra_norm: nn.Module | None):
        super().__init__()
        self.layer4 = layer4
        self.norm = extra_norm if extra_norm is not None else nn.Identity()
        self.out_channels = out_channels

    def forward(self, x):
        return self.norm(self.layer4(x))


class RoIHeads(_TorchvisionRoIHeads):
    """detectron2's ``Res5ROIHeads`` (``res5`` given: C4) or ``StandardROIHeads`` (``box_head``: FPN),
    on torchvision's proposal matching and sampling (the same rules and, for the same random state,
    the same draws). Labels are torchvision's (1..K, 0 background) outside, detectron2's inside."""

    def __init__(self, s: TrainSettings, box_pool: Pooler, box_predictor: BoxPredictor, *,
                 res5: Res5 | None = None, box_head: nn.Module | None = None, mask_pool: Pooler | None = None,
                 mask_head: nn.Module | None = None, mask_predictor: MaskPredictor | None = None):
        super().__init__(box_pool, box_head, box_predictor, fg_iou_thresh=s.roi_iou_threshold,
                         bg_iou_thresh=s.roi_iou_threshold, batch_size_per_image=s.roi_batch_per_image,
                         positive_fraction=s.roi_positive_fraction, bbox_reg_weights=s.box_weights,
                         score_thresh=s.score_thresh_test, nms_thresh=s.nms_thresh_test,
                         detections_per_img=s.detections_per_image, mask_roi_pool=mask_pool, mask_head=mask_head,
                         mask_predictor=mask_predictor)
        self.res5 = res5
        self.mask_on = mask_predictor is not None
        self.num_classes = s.num_classes
        self.smooth_l1_beta = s.box_smooth_l1_beta
        self.box_loss_weight = s.box_loss_weight

    def check_targets(self, targets):
        if targets is None or not all("boxes" in t and "labels" in t for t in targets):
            raise ValueError("training needs targets with boxes and labels")
        if self.mask_on and not all("masks" in t or "polygons" in t for t in targets):
            raise ValueError("Mask R-CNN training needs targets with masks or polygons")

    def box_losses(self, class_logits, box_deltas, labels, regression_targets) -> dict[str, torch.Tensor]:
        """detectron2's ``FastRCNNOutputLayers.losses``: cross-entropy averaged over the sampled RoIs,
        smooth-L1 (beta ``ROI_BOX_HEAD.SMOOTH_L1_BETA``) of the positives' own-class regression summed
        and divided by the number of sampled RoIs."""
        labels = torch.cat(labels)
        targets = torch.cat(regression_targets)
        classes = torch.where(labels > 0, labels - 1, torch.full_like(labels, self.num_classes))
        fg = torch.where(labels > 0)[0]
        deltas = box_deltas.view(len(labels), self.num_classes, 4)[fg, classes[fg]]
        loc = F.smooth_l1_loss(deltas, targets[fg], beta=self.smooth_l1_beta, reduction="sum")
        return {"loss_cls": F.cross_entropy(class_logits, classes),
                "loss_box_reg": loc / max(labels.numel(), 1) * self.box_loss_weight}

    def mask_loss(self, logits, proposals, matched, classes, targets) -> torch.Tensor:
        """detectron2's ``mask_rcnn_loss``: each positive's ground-truth mask at the logits' M x M
        inside its proposal (:func:`polygon_targets` for polygons, else the bitmap cropped with
        aligned RoIAlign, sampling ratio 0, >= 0.5: ``BitMasks.crop_and_resize``); binary
        cross-entropy of its class's logits, averaged."""
        if logits.shape[0] == 0:
            return logits.sum() * 0
        m = logits.shape[-1]
        crops = []
        for boxes, idx, target in zip(proposals, matched, targets):
            if len(boxes) == 0:
                continue
            if "polygons" in target:
                crops.append(polygon_targets([target["polygons"][i] for i in idx.tolist()], boxes, m))
                continue
            masks = target["masks"][:, None].to(boxes.dtype)
            rois = torch.cat([idx[:, None].to(boxes.dtype), boxes], dim=1)
            crops.append(roi_align(masks, rois, (m, m), 1.0, 0, True)[:, 0] >= 0.5)
        gt = torch.cat(crops).to(logits.dtype)
        picked = logits[torch.arange(len(classes), device=logits.device), classes]
        return F.binary_cross_entropy_with_logits(picked, gt)

    def detections(self, class_logits, box_deltas, proposals, image_shapes):
        """detectron2's ``fast_rcnn_inference``: softmax, background dropped, per-class boxes decoded
        and clipped, scores > SCORE_THRESH_TEST, NMS per class, the DETECTIONS_PER_IMAGE best.
        Returns per image (boxes (D, 4), scores (D,), classes (D,) in 0..K-1)."""
        counts = [len(p) for p in proposals]
        if not sum(counts):
            empty = box_deltas.new_zeros((0, 4))
            return [(empty, empty[:, 0], empty[:, 0].long()) for _ in proposals]
        boxes_all = self.box_coder.decode(box_deltas, proposals).split(counts)
        scores_all = F.softmax(class_logits, -1).split(counts)
        out = []
        for boxes, scores, (h, w) in zip(boxes_all, scores_all, image_shapes):
            valid = torch.isfinite(boxes).all(dim=(1, 2)) & torch.isfinite(scores).all(dim=1)
            boxes, scores = boxes[valid], scores[valid][:, :-1]
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                                 boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1)
            mask = scores > self.score_thresh
            inds = mask.nonzero()
            boxes, scores = boxes[mask], scores[mask]
            keep = batched_nms(boxes, scores, inds[:, 1], self.nms_thresh)[: self.detections_per_img]
            out.append((boxes[keep], scores[keep], inds[keep, 1]))
        return out

    def _mask_features(self, features, boxes, image_shapes, shared=None):
        if self.res5 is not None:  # C4: the res5 features of the box branch (detectron2 has one pooler)
            return shared if shared is not None else self.res5(self.box_roi_pool(features, boxes, image_shapes))
        return self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        pooled = self.box_roi_pool(features, proposals, image_shapes)
        if self.res5 is not None:
            trunk = self.res5(pooled)
            class_logits, box_deltas = self.box_predictor(trunk.mean(dim=(2, 3)))
        else:
            trunk = None
            class_logits, box_deltas = self.box_predictor(self.box_head(pooled))
        if self.training:
            losses = self.box_losses(class_logits, box_deltas, labels, regression_targets)
            if self.mask_on:
                fg = [torch.where(lab > 0)[0] for lab in labels]
                fg_boxes = [p[i] for p, i in zip(proposals, fg)]
                shared = trunk[torch.cat(_offsets(fg, [len(p) for p in proposals]))] if trunk is not None else None
                logits = self.mask_predictor(self._mask_features(features, fg_boxes, image_shapes, shared))
                classes = torch.cat([lab[i] for lab, i in zip(labels, fg)]) - 1
                losses["loss_mask"] = self.mask_loss(logits, fg_boxes, [m[i] for m, i in zip(matched, fg)], classes,
                                                     targets)
            return [], losses
        result = [{"boxes": b, "scores": sc, "labels": c + 1}
                  for b, sc, c in self.detections(class_logits, box_deltas, proposals, image_shapes)]
        if self.mask_on:
            boxes = [r["boxes"] for r in result]
            if sum(len(b) for b in boxes):
                logits = self.mask_predictor(self._mask_features(features, boxes, image_shapes))
                classes = torch.cat([r["labels"] for r in result]) - 1
                probs = logits[torch.arange(len(classes), device=logits.device), classes][:, None].sigmoid()
                for r, p in zip(result, probs.split([len(b) for b in boxes])):
                    r["masks"] = p
            else:
                for r in result:
                    r["masks"] = class_logits.new_zeros((0, 1, 1, 1))
        return result, {}


def polygon_targets(polygons: list, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """detectron2's ``PolygonMasks.crop_and_resize``: each instance's polygons (a list of float64
    arrays [x0, y0, ...]) moved to its box (N, 4), stretched to ``size`` x ``size`` and rasterised
    there (pycocotools), on the CPU as detectron2 does. Returns (N, size, size) bool on the boxes' device."""
    from pycocotools import mask as mask_utils  # optional: the detection extra

    out = []
    for polys, box in zip(polygons, boxes.detach().cpu()):
        box = box.numpy()  # float32, and the arithmetic below in detectron2's dtypes, to the same pixels
        w, h = box[2] - box[0], box[3] - box[1]
        ratio_h, ratio_w = size / max(h, 0.1), size / max(w, 0.1)
        moved = []
        for p in polys:
            q = p.copy()
            q[0::2] = q[0::2] - box[0]
            q[1::2] = q[1::2] - box[1]
            if ratio_h == ratio_w:
                q *= ratio_h
            else:
                q[0::2] *= ratio_w
                q[1::2] *= ratio_h
            moved.append(q)
        if not moved:
            out.append(torch.zeros((size, size), dtype=torch.bool))
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(moved, size, size))
        out.append(torch.from_numpy(mask_utils.decode(rle).astype(bool)))
    if not out:
        return torch.zeros((0, size, size), dtype=torch.bool, device=boxes.device)
    return torch.stack(out).to(boxes.device)


def _offsets(indices: list[torch.Tensor], counts: list[int]) -> list[torch.Tensor]:
    """Per-image row indices made indices into the concatenation of all images' rows."""
    out, start = [], 0
    for idx, n in zip(indices, counts):
        out.append(idx + start)
        start += n
    return out


# -------------------------------------------------------------------------------------- transform

class Transform(GeneralizedRCNNTransform):
    """Normalise with the backbone's mean/std (0-1 scale) and pad the batch (zeros after normalising)
    to ``size_divisibility`` (0: to the largest image only). No resizing: the data pipeline resized
    the images (detectron2's mapper does it too), and :func:`detector_postprocess` maps the detections
    back to the original image."""

    def __init__(self, mean, std, size_divisibility: int):
        super().__init__(min_size=1, max_size=1, image_mean=list(mean), image_std=list(std),
                         size_divisible=max(1, size_divisibility))

    def resize(self, image, target=None):
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                threshold: float = 0.5) -> torch.Tensor:
    """detectron2's ``paste_masks_in_image``: each (M, M) mask probability map ``masks`` (N, M, M)
    stretched over its box (N, 4) of an ``height`` x ``width`` image by bilinear sampling at the pixel
    centres, computed inside the box +-1 pixel (zero elsewhere), ``>= threshold``. Returns (N, H, W) bool."""
    out = torch.zeros((len(masks), height, width), dtype=torch.bool, device=masks.device)
    for k, (mask, box) in enumerate(zip(masks, boxes)):
        x0, y0, x1, y1 = (float(v) for v in box)
        xa, ya = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
        xb, yb = min(int(math.ceil(x1)) + 1, width), min(int(math.ceil(y1)) + 1, height)
        if xb <= xa or yb <= ya:
            continue
        gx = (torch.arange(xa, xb, device=masks.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(ya, yb, device=masks.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([gx[None, :].expand(len(gy), -1), gy[:, None].expand(-1, len(gx))], dim=2)
        sampled = F.grid_sample(mask[None, None].float(), grid[None].to(torch.float32), align_corners=False)
        out[k, ya:yb, xa:xb] = sampled[0, 0] >= threshold
    return out


def detector_postprocess(result: dict, input_size: tuple[int, int], output_size: tuple[int, int]) -> dict:
    """detectron2's ``detector_postprocess``: boxes predicted on the ``input_size`` (h, w) image scaled
    to ``output_size`` (the original image), clipped, empty ones dropped; mask probabilities
    (D, 1, M, M) pasted (:func:`paste_masks`). Returns a new dict."""
    (ih, iw), (oh, ow) = input_size, output_size
    boxes = result["boxes"] * torch.tensor([ow / iw, oh / ih, ow / iw, oh / ih], device=result["boxes"].device)
    boxes = torch.stack([boxes[:, 0].clamp(0, ow), boxes[:, 1].clamp(0, oh),
                         boxes[:, 2].clamp(0, ow), boxes[:, 3].clamp(0, oh)], dim=1)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    out = {k: v[keep] for k, v in result.items() if torch.is_tensor(v)}
    out["boxes"] = boxes[keep]
    if "masks" in result:
        out["masks"] = paste_masks(result["masks"][keep][:, 0], boxes[keep], oh, ow)
    return out


# ------------------------------------------------------------------------------------------ build

def _check_resnet(backbone: nn.Module, stem: str) -> None:
    missing = [n for n in ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4") if not hasattr(backbone, n)]
    if missing:
        raise ModelError(f"the torchvision backend needs a timm ResNet backbone (conv1, bn1, layer1..layer4); "
                         f"this one has no {missing}")
    if stem != "imagenet":
        raise ModelError(f"backbone stem {stem!r}: only the imagenet stem (7x7 stride 2 + max-pool) gives "
                         "detectron2's strides (res4 at 16, res5 at 32); use an imagenet-stem model")


def _stage_channels(backbone: nn.Module) -> list[int]:
    chans = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        last = getattr(backbone, name)[-1]
        conv = getattr(last, "conv3", None) or last.conv2
        chans.append(conv.out_channels)
    return chans


def _apply_freeze(backbone: nn.Module, freeze_at: int, stages: int) -> None:
    """detectron2's FREEZE_AT: 0 nothing, 1 the stem, 2 stem + res2, ...; frozen stages get FrozenBN.
    Only the backbone's ``stages`` (C4: up to res4; detectron2 never freezes the res5 head) count."""
    names_of = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)][:stages + 1]
    for names in names_of[:freeze_at]:
        for name in names:
            mod = getattr(backbone, name)
            for p in mod.parameters():
                p.requires_grad_(False)
            setattr(backbone, name, freeze_bn(mod))


def build_model(backbone: nn.Module, s: TrainSettings, *, stem: str = "imagenet", sync_bn: bool = False) -> nn.Module:
    """detectron2's Faster / Mask R-CNN for ``s`` (C4 or FPN) on ``backbone`` (a timm ResNet), for
    ``s.num_classes`` classes; ``sync_bn``: the SyncBN norms become ``nn.SyncBatchNorm`` (training
    distributed on CUDA)."""
    _check_resnet(backbone, stem)
    if s.norm not in ("FrozenBN", "BN", "SyncBN"):
        raise ModelError(f"MODEL.RESNETS.NORM {s.norm!r} is not FrozenBN, BN or SyncBN")
    backbone.train()
    if s.norm == "FrozenBN":
        freeze_bn(backbone)
    _apply_freeze(backbone, s.freeze_at, 3 if s.arch == "C4" else 4)
    sync_backbone = sync_bn and s.norm == "SyncBN"
    chans = _stage_channels(backbone)
    k = s.num_classes
    if s.arch == "C4":
        if s.box_num_conv or s.box_num_fc or s.mask_num_conv:
            raise ModelError("C4 heads are res5 (ROI_BOX_HEAD.NUM_CONV/NUM_FC and ROI_MASK_HEAD.NUM_CONV must be 0)")
        layer4 = backbone.layer4
        body = _sync(IntermediateLayerGetter(backbone, return_layers={"layer3": "res4"}), sync_backbone)
        body.out_channels = chans[2]
        anchors = Anchors(s.anchor_sizes, s.anchor_ratios, s.strides, s.anchor_offset)
        rpn_head = RPNHead(chans[2], anchors.num_anchors_per_location()[0])
        extra = norm_layer(s.norm, sync_bn)(chans[3]) if s.extra_norm else None
        res5 = _sync(Res5(layer4, chans[3], extra), sync_backbone)
        box_pool = Pooler(["res4"], s.box_pooler_resolution, [16], s.box_pooler_sampling_ratio, s.box_pooler_aligned)
        heads = RoIHeads(s, box_pool, BoxPredictor(chans[3], k), res5=res5,
                         mask_predictor=MaskPredictor(chans[3], s.mask_conv_dim, k) if s.mask_on else None)
    elif s.arch == "FPN":
        c = s.fpn_out_channels
        body = BackboneWithFPN(backbone, return_layers={f"layer{i}": f"p{i + 1}" for i in range(1, 5)},
                               in_channels_list=chans, out_channels=c, extra_blocks=LastLevelMaxPool(),
                               norm_layer=norm_layer(s.fpn_norm, sync_bn))
        body.body = _sync(body.body, sync_backbone)
        anchors = Anchors(s.anchor_sizes, s.anchor_ratios, s.strides, s.anchor_offset)
        rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0])
        r = s.box_pooler_resolution
        if not s.box_num_conv and not s.box_num_fc:
            raise ModelError("the FPN box head needs ROI_BOX_HEAD.NUM_CONV or NUM_FC > 0")
        box_head = FastRCNNConvFCHead((c, r, r), [s.box_conv_dim] * s.box_num_conv, [s.box_fc_dim] * s.box_num_fc,
                                      norm_layer=norm_layer(s.box_head_norm, sync_bn))
        for layer in box_head.modules():
            if isinstance(layer, nn.Linear):
                c2_xavier_fill(layer)
        box_out = s.box_fc_dim if s.box_num_fc else s.box_conv_dim * r * r
        levels = ["p2", "p3", "p4", "p5"]
        box_pool = Pooler(levels, r, [4, 8, 16, 32], s.box_pooler_sampling_ratio, s.box_pooler_aligned)
        mask_kwargs = {}
        if s.mask_on:
            layers = [s.mask_conv_dim] * s.mask_num_conv
            mask_kwargs = dict(
                mask_pool=Pooler(levels, s.mask_pooler_resolution, [4, 8, 16, 32], s.mask_pooler_sampling_ratio,
                                 s.mask_pooler_aligned),
                mask_head=(MaskRCNNHeads(c, layers, 1, norm_layer=norm_layer(s.mask_head_norm, sync_bn))
                           if layers else nn.Identity()),
                mask_predictor=MaskPredictor(layers[-1] if layers else c, s.mask_conv_dim, k))
        heads = RoIHeads(s, box_pool, BoxPredictor(box_out, k), box_head=box_head, **mask_kwargs)
    else:
        raise ModelError(f"unknown meta-architecture {s.arch!r} (C4 or FPN)")
    rpn = RPN(anchors, rpn_head, s)
    transform = Transform([m / 255.0 for m in s.pixel_mean], [x / 255.0 for x in s.pixel_std], s.size_divisibility)
    model = GeneralizedRCNN(body, rpn, heads, transform)
    model.wssl_settings = s
    return model


# ------------------------------------------------------------------------ names in detectron2's model

def _timm_to_d2(key: str, layout: str) -> str | None:
    suffix = ".num_batches_tracked" if key.endswith(".num_batches_tracked") else ""
    base = key[: -len(suffix)] + ".weight" if suffix else key
    bare = detectron2_name(base)
    if bare is None:
        return None
    name = layout_name(bare, layout)
    return name[: -len(".weight")] + suffix if suffix else name


def _conv_norm(prefix_d2: str, rest: str) -> str:
    """``0.weight`` / ``0.bias`` of a Conv2dNormActivation -> detectron2's conv, ``1.*`` -> its ``.norm``."""
    part, _, field = rest.partition(".")
    return f"{prefix_d2}.{field}" if part == "0" else f"{prefix_d2}.norm.{field}"


def detectron2_names(model: nn.Module) -> dict[str, str]:
    """Every state-dict name of ``model`` (from :func:`build_model`) -> the name of the same tensor in
    detectron2's ``GeneralizedRCNN`` built from the same config. Raises :class:`ModelError` for a name
    it cannot place."""
    s: TrainSettings = model.wssl_settings
    heads: RoIHeads = model.roi_heads
    fc_index = {}
    if heads.box_head is not None:
        convs = [i for i, m in enumerate(heads.box_head) if not isinstance(m, (nn.Linear, nn.Flatten, nn.ReLU))]
        fcs = [i for i, m in enumerate(heads.box_head) if isinstance(m, nn.Linear)]
        fc_index = {str(i): f"conv{n + 1}" for n, i in enumerate(convs)}
        fc_index.update({str(i): f"fc{n + 1}" for n, i in enumerate(fcs)})
    out: dict[str, str] = {}
    for name in model.state_dict():
        parts = name.split(".")
        d2: str | None = None
        if name.startswith("backbone.body."):  # the FPN's bottom-up ResNet
            d2 = _timm_to_d2(name[len("backbone.body."):], "fpn")
        elif name.startswith("backbone.") and s.arch == "C4":  # the C4 trunk, stem to res4
            d2 = _timm_to_d2(name[len("backbone."):], "c4")
        elif name.startswith("backbone.fpn."):
            kind, i, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            d2 = _conv_norm(f"backbone.fpn_{'lateral' if kind == 'inner_blocks' else 'output'}{i + 2}", rest)
        elif name.startswith("rpn.head."):
            rest = ".".join(parts[2:])
            d2 = "proposal_generator.rpn_head." + (
                f"conv.{parts[-1]}" if rest.startswith("conv.") else
                f"objectness_logits.{parts[-1]}" if rest.startswith("cls_logits.") else f"anchor_deltas.{parts[-1]}")
        elif name.startswith("roi_heads.res5.layer4."):
            d2 = _timm_to_d2("layer4." + ".".join(parts[3:]), "c4")
        elif name.startswith("roi_heads.res5.norm."):
            d2 = name
        elif name.startswith("roi_heads.box_predictor."):
            d2 = name
        elif name.startswith("roi_heads.box_head."):
            layer = fc_index[parts[2]]
            d2 = (f"roi_heads.box_head.{layer}.{parts[-1]}" if layer.startswith("fc") else
                  _conv_norm(f"roi_heads.box_head.{layer}", ".".join(parts[3:])))
        elif name.startswith("roi_heads.mask_head."):
            d2 = _conv_norm(f"roi_heads.mask_head.mask_fcn{int(parts[2]) + 1}", ".".join(parts[3:]))
        elif name.startswith("roi_heads.mask_predictor."):
            d2 = "roi_heads.mask_head." + ".".join(parts[2:])
        if d2 is None:
            raise ModelError(f"{name}: no detectron2 name for this tensor")
        out[name] = d2
    return out


def load_detectron2_state(model: nn.Module, state: dict) -> None:
    """Load a detectron2 ``GeneralizedRCNN`` state dict (tensors by detectron2 name) into ``model``;
    every tensor of ``model`` must be there (``num_batches_tracked`` counters may be absent)."""
    names = detectron2_names(model)
    own = model.state_dict()
    missing = [d2 for tv, d2 in names.items() if d2 not in state and not tv.endswith("num_batches_tracked")]
    if missing:
        raise ModelError(f"the detectron2 state dict lacks {len(missing)} tensor(s): {missing[:5]}")
    new = {tv: torch.as_tensor(state[d2]).to(own[tv].dtype) for tv, d2 in names.items() if d2 in state}
    model.load_state_dict({**own, **new})


__all__ = ["build_model", "Anchors", "RPN", "Pooler", "RoIHeads", "BoxPredictor", "MaskPredictor", "Res5",
           "polygon_targets",
           "Transform", "paste_masks", "detector_postprocess", "detectron2_names", "load_detectron2_state",
           "freeze_bn", "norm_layer", "ModelError"]
