"""What the torchvision backend computes, setting by setting, against detectron2 0.6.

:data:`SETTINGS` is the one table: for each setting the detectron2 config keys it reads, what the
torchvision backend does, whether that is what detectron2 computes, and, where not, why not and
when the difference applies to a run. It renders the table of ``docs/detection.md``
(:func:`markdown_table`; ``python -m detection.fidelity --update-docs docs/detection.md``, checked
by ``tests/test_detection_fidelity.py``), and :func:`remaining_differences` lists, for one run, the
differences that apply to it: every torchvision-backend record carries that list
(``extra.differences_from_detectron2``), so no such record is mistaken for detectron2's protocol.

Keys whose other values the backend refuses (rather than computing something else) are
:data:`detection.configs.TORCHVISION_ONLY`; the equivalence of the two backends on real images is
``tests/test_detection_equivalence.py``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wssl_zoo.fileio import atomic_write_text

from .configs import PROTOCOLS, TORCHVISION_ONLY, TrainSettings, _chain, _get, config_path, load_config


@dataclass(frozen=True)
class Run:
    """What a difference may depend on besides the settings."""

    task: str = "coco"          # coco | voc
    world: int = 1              # processes
    device: str = "cpu"         # cpu | cuda
    amp: str = "none"           # none | bf16 | fp16 (what the run used)


@dataclass(frozen=True)
class Setting:
    name: str
    keys: tuple[str, ...]       # detectron2 config keys ("" rows: no key, code only)
    torchvision: str            # what the backend computes
    same: bool
    why: str = ""               # why not the same, where torchvision stops us
    applies: Callable[[TrainSettings, Run], bool] | None = None   # when a difference concerns a run

    def differs_for(self, s: TrainSettings, run: Run) -> bool:
        return self.applies(s, run) if self.applies is not None else not self.same


SETTINGS: tuple[Setting, ...] = (
    Setting("RPN box regression loss", ("MODEL.RPN.BBOX_REG_LOSS_TYPE", "MODEL.RPN.SMOOTH_L1_BETA",
            "MODEL.RPN.BBOX_REG_LOSS_WEIGHT", "MODEL.RPN.LOSS_WEIGHT"),
            "smooth-L1 with the config's beta (0 = L1), summed over the sampled positive anchors and divided by "
            "BATCH_SIZE_PER_IMAGE x images (torchvision: beta 1/9, divided by the sampled anchors)", True),
    Setting("RPN objectness loss", ("MODEL.RPN.LOSS_WEIGHT",),
            "binary cross-entropy summed over the sampled anchors, divided by BATCH_SIZE_PER_IMAGE x images", True),
    Setting("box head regression loss", ("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA",
            "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT"),
            "smooth-L1 with the config's beta (0 = L1) of each positive's own-class regression, summed and divided by "
            "the sampled RoIs (torchvision: beta 1/9)", True),
    Setting("box head classification loss", ("MODEL.ROI_HEADS.NUM_CLASSES",),
            "cross-entropy over K + 1 classes, background last, averaged over the sampled RoIs", True),
    Setting("box-coder weights and clamp", ("MODEL.RPN.BBOX_REG_WEIGHTS", "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS"),
            "the config's weights; width/height deltas clamped at log(1000/16)", True),
    Setting("RoIAlign", ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO",
            "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "MODEL.ROI_MASK_HEAD.POOLER_TYPE",
            "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION"),
            "torchvision.ops.roi_align with aligned = (POOLER_TYPE == ROIAlignV2) and the config's sampling ratio; "
            "FPN levels floor(4 + log2(sqrt(area) / 224 + 1e-8)) (torchvision's MultiScaleRoIAlign has no "
            "aligned flag: the backend has its own pooler); C4 masks use the box pooler, as Res5ROIHeads", True),
    Setting("anchors", ("MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
            "MODEL.ANCHOR_GENERATOR.OFFSET"),
            "the config's sizes and ratios (one list broadcast to every level), not rounded, size-major, on the "
            "feature's stride (torchvision rounds them to integers and infers the stride from the padded image)", True),
    Setting("RPN anchor matching", ("MODEL.RPN.IOU_THRESHOLDS", "MODEL.RPN.IOU_LABELS", "MODEL.RPN.BOUNDARY_THRESH"),
            "negative below the low threshold, positive from the high one, the best anchors of each box positive "
            "(ties included)", True),
    Setting("RPN sampling", ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", "MODEL.RPN.POSITIVE_FRACTION"),
            "the config's counts (the same random draws as detectron2 for the same random state)", True),
    Setting("proposals", ("MODEL.RPN.PRE_NMS_TOPK_TRAIN", "MODEL.RPN.PRE_NMS_TOPK_TEST",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.RPN.NMS_THRESH",
            "MODEL.PROPOSAL_GENERATOR.MIN_SIZE"),
            "per level the PRE_NMS_TOPK best, clipped, sides <= MIN_SIZE dropped, NMS per level, the POST_NMS_TOPK "
            "best per image (torchvision keeps boxes of side >= 0.001)", True),
    Setting("RoI sampling", ("MODEL.ROI_HEADS.IOU_THRESHOLDS", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
            "MODEL.ROI_HEADS.POSITIVE_FRACTION", "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT"),
            "ground-truth boxes appended to the proposals, the config's counts and threshold", True),
    Setting("test-time boxes", ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST",
            "TEST.DETECTIONS_PER_IMAGE"),
            "softmax, per-class boxes clipped, score > threshold, NMS per class, the best DETECTIONS_PER_IMAGE; "
            "boxes scaled to the original image, clipped, empty ones dropped (torchvision also drops boxes "
            "under 0.01 px)", True),
    Setting("head initialisation", ("",),
            "box predictor N(0, 0.01) / N(0, 0.001), mask predictor N(0, 0.001), FC layers c2_xavier, head convs "
            "c2_msra, RPN N(0, 0.01), zero biases (torchvision's FastRCNNPredictor, MaskRCNNPredictor and FC "
            "layers are initialised otherwise)", True),
    Setting("random draws", ("SEED",),
            "the same distributions, other draws: head initialisation and the data order come from the "
            "backend's own random streams (deterministic for --seed, restored on --resume)", False,
            "two programs cannot share one random stream; the equivalence test loads the same weights into both"),
    Setting("C4 box and mask head", ("MODEL.ROI_HEADS.NAME", "MODEL.RESNETS.NORM"),
            "res5 on the 14x14 RoIs [+ a norm: Res5ROIHeadsExtraNorm], average-pooled for the box predictor; in "
            "training the mask head reads the res5 features of the positive RoIs that the box branch computed "
            "(torchvision's RoIHeads would run res5 again on the positives, with other BN batch statistics)", True),
    Setting("mask head", ("MODEL.ROI_MASK_HEAD.NAME", "MODEL.ROI_MASK_HEAD.NUM_CONV", "MODEL.ROI_MASK_HEAD.CONV_DIM",
            "MODEL.ROI_MASK_HEAD.NORM", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK"),
            "NUM_CONV 3x3 convs, 2x2 deconvolution + ReLU, 1x1 conv to K class-specific masks", True),
    Setting("mask targets", ("INPUT.MASK_FORMAT",),
            "polygons (scaled and flipped as the image) rasterised inside each positive's proposal at M x M "
            "(PolygonMasks.crop_and_resize); bitmask: bitmaps cropped with aligned RoIAlign, >= 0.5 "
            "(torchvision crops full-size bitmaps unaligned and keeps soft targets)", True),
    Setting("mask pasting", ("",),
            "mask probabilities bilinearly sampled at the pixel centres inside each box +-1 pixel, >= 0.5 "
            "(torchvision resizes each mask with a 1-pixel border and pastes on integer coordinates)", True),
    Setting("FPN", ("MODEL.FPN.OUT_CHANNELS", "MODEL.FPN.NORM", "MODEL.FPN.FUSE_TYPE"),
            "torchvision's FeaturePyramidNetwork: 1x1 lateral and 3x3 output convs with the config's norm, "
            "nearest 2x top-down sum, p6 = max-pool(p5)", True),
    Setting("FPN box head", ("MODEL.ROI_BOX_HEAD.NUM_CONV", "MODEL.ROI_BOX_HEAD.CONV_DIM",
            "MODEL.ROI_BOX_HEAD.NUM_FC", "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_BOX_HEAD.NORM"),
            "NUM_CONV 3x3 convs with the config's norm, then NUM_FC fully connected layers, ReLU after each", True),
    Setting("norms", ("MODEL.RESNETS.NORM",),
            "FrozenBN, BN (batch statistics per process) or SyncBN (nn.SyncBatchNorm, as detectron2, when "
            "training with several CUDA processes)", True),
    Setting("SyncBN on the CPU", ("MODEL.RESNETS.NORM",),
            "per-process BN when several CPU processes train", False,
            "nn.SyncBatchNorm needs CUDA; detectron2 trains on GPUs only",
            lambda s, run: run.world > 1 and run.device != "cuda" and "SyncBN" in (
                s.norm, s.fpn_norm, s.box_head_norm, s.mask_head_norm)),
    Setting("frozen stages", ("MODEL.BACKBONE.FREEZE_AT",),
            "0 nothing, 1 the stem, 2 stem + res2, ...; frozen stages get FrozenBN (never the C4 res5 head)", True),
    Setting("precise BN", ("TEST.PRECISE_BN.ENABLED", "TEST.PRECISE_BN.NUM_ITER"),
            "after the last iteration, NUM_ITER training batches (a fresh stream) set every training-mode BN's "
            "statistics to their average over the batches (fvcore's update_bn_stats rule)", True),
    Setting("evaluation during training", ("TEST.EVAL_PERIOD",),
            "evaluates after the last iteration only", False,
            "the backend has no periodic evaluation (the final model and its numbers are the same)",
            lambda s, run: s.eval_period > 0),
    Setting("input sizes", ("INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "INPUT.MAX_SIZE_TRAIN",
            "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST"),
            "ResizeShortestEdge in the data loader: the shortest side drawn per image, the output size rounded as "
            "detectron2, PIL bilinear on the uint8 image; predictions mapped back to the original size "
            "(torchvision resizes float tensors inside the model and rounds the size down)", True),
    Setting("image reading and flip", ("INPUT.FORMAT", "INPUT.RANDOM_FLIP"),
            "RGB, EXIF orientation applied, horizontal flip with probability 0.5 in training", True),
    Setting("padding", ("",),
            "the batch padded with zeros to a multiple of 32 for the FPN, not beyond the largest image for C4 "
            "(torchvision pads every model to 32)", True),
    Setting("batching", ("DATALOADER.ASPECT_RATIO_GROUPING", "DATALOADER.SAMPLER_TRAIN",
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "SOLVER.IMS_PER_BATCH"),
            "an endless shuffled stream split over the processes, landscape and portrait images batched apart, "
            "IMS_PER_BATCH over all processes, images without annotations dropped", True),
    Setting("optimiser", ("SOLVER.BASE_LR", "SOLVER.MOMENTUM", "SOLVER.NESTEROV", "SOLVER.WEIGHT_DECAY",
            "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.WEIGHT_DECAY_BIAS", "SOLVER.BIAS_LR_FACTOR"),
            "SGD with detectron2's parameter groups (norm parameters: WEIGHT_DECAY_NORM; biases: "
            "WEIGHT_DECAY_BIAS, BIAS_LR_FACTOR)", True),
    Setting("schedule", ("SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.GAMMA", "SOLVER.WARMUP_FACTOR",
            "SOLVER.WARMUP_ITERS", "SOLVER.WARMUP_METHOD"),
            "WarmupMultiStepLR, the lr set before each iteration", True),
    Setting("precision", ("SOLVER.AMP.ENABLED",),
            "float32; AMP.ENABLED or --amp fp16: fp16 autocast with a gradient scaler (detectron2's AMPTrainer)", True),
    Setting("bfloat16", ("SOLVER.AMP.ENABLED",),
            "--amp bf16: bfloat16 autocast", False, "detectron2 0.6's AMP is float16 only",
            lambda s, run: run.amp == "bf16"),
    Setting("DDP", ("",),
            "DistributedDataParallel without broadcasting buffers (each process keeps its BN statistics)", True),
    Setting("COCO evaluation", ("",),
            "pycocotools' COCOeval on bbox and segm, 100 detections per image", True),
    Setting("VOC evaluation", ("",),
            "COCOeval on the VOC07 test annotations, difficult objects as crowd", False,
            "detectron2 reports PascalVOCDetectionEvaluator's VOC07 11-point AP50 (and its AP/AP75); COCOeval's "
            "AP50 is close to it but not the same", lambda s, run: run.task == "voc"),
)


def remaining_differences(s: TrainSettings, run: Run) -> list[str]:
    """The differences from detectron2 that apply to a run with settings ``s``: one line each,
    ``"<setting>: <why>"``."""
    return [f"{row.name}: {row.why}" for row in SETTINGS if row.differs_for(s, run)]


def _setters(keys: tuple[str, ...]) -> str:
    """Where the shipped protocols set ``keys``: the config files (the last of each _BASE_ chain that
    names the key), else detectron2's defaults."""
    files: set[str] = set()
    for protocol in PROTOCOLS:
        for key in keys:
            if not key or key == "SEED":
                continue
            found = "defaults"
            for path, data in _chain(config_path(protocol)):
                node = data
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                if node is not None:
                    found = path.name
            files.add(found)
    return ", ".join(sorted(files, key=lambda f: (f == "defaults", f)))


def _values(keys: tuple[str, ...]) -> str:
    """The values of ``keys`` in the shipped protocols (one when they agree, else per protocol)."""
    cfgs = {p: load_config(p) for p in PROTOCOLS}
    parts = []
    for key in keys:
        if not key or key == "SEED":
            continue
        seen = {p: _get(c, key) for p, c in cfgs.items()}
        distinct = {repr(v) for v in seen.values()}
        short = key
        if len(distinct) == 1:
            parts.append(f"`{short}` {_show(next(iter(seen.values())))}")
            continue
        groups: dict[str, list[str]] = {}
        for p, v in seen.items():
            groups.setdefault(_show(v), []).append(p)
        parts.append(f"`{short}` " + "; ".join(f"{v} ({_which(ps)})" for v, ps in groups.items()))
    return "<br>".join(parts)


def _which(protocols: list[str]) -> str:
    for tag in ("C4", "FPN"):
        if set(protocols) == {p for p in PROTOCOLS if f"_{tag}_" in p}:
            return f"{tag} configs"
    return ", ".join(protocols)


def _show(value) -> str:
    text = repr(tuple(value) if isinstance(value, list) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def markdown_table() -> str:
    """The table of ``docs/detection.md``: setting, detectron2 (keys, values in the shipped protocols,
    the files that set them), the torchvision backend, same, why not."""
    lines = ["| setting | detectron2 0.6 (key: value; set in) | torchvision backend | same | why not |",
             "|---|---|---|---|---|"]
    for row in SETTINGS:
        values = _values(row.keys)
        d2 = f"{values}; {_setters(row.keys)}" if values else "no key: detectron2's code"
        lines.append(f"| {row.name} | {d2} | {row.torchvision} | {'yes' if row.same else '**no**'} | {row.why} |")
    only = ", ".join(f"`{k}` {_show(v)}" for k, v in TORCHVISION_ONLY.items())
    return ("\n".join(lines) + "\n\nRefused by the torchvision backend unless at detectron2's default (which every "
            f"shipped config keeps), naming the key and pointing to `--backend detectron2`: {only}; box losses other "
            "than smooth_l1; pooler types other than ROIAlignV2 / ROIAlign; norms it does not have.\n")


_MARKERS = ("<!-- fidelity-table:start -->", "<!-- fidelity-table:end -->")


def update_docs(path: str | Path) -> bool:
    """Rewrite the table between the markers of ``path``; returns whether the file changed."""
    path = Path(path)
    text = path.read_text()
    start, end = _MARKERS
    if start not in text or end not in text:
        raise ValueError(f"{path}: no {start} ... {end} markers")
    new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda m: f"{start}\n{markdown_table()}{end}", text,
                 flags=re.S)
    if new != text:
        atomic_write_text(path, new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:2] == ["--update-docs"] and len(sys.argv) == 3:
        print(f"{sys.argv[2]}: {'updated' if update_docs(sys.argv[2]) else 'already up to date'}")
    elif sys.argv[1:] == []:
        sys.stdout.write(markdown_table())
    else:
        sys.exit("usage: python -m detection.fidelity [--update-docs docs/detection.md]")
