"""The two backends compute the same thing, checked against detectron2's own code on real COCO images
(coco-tiny): the same weights (detectron2's random initialisation, loaded into the torchvision
backend's model by detection.tv_model.load_detectron2_state) give the same backbone features, RPN
proposals, boxes, scores, classes and masks in inference and the same training losses for one batch
(the same random sampling too, for the same random state), and the input pipeline gives detectron2's
images. Tolerances (float32, CPU; docs/detection.md states them):

- features: max |difference| <= 1e-5 x max |feature|; proposals and boxes: 0.01 px; scores and
  mask probabilities: 1e-4; losses: 1e-4 relative; images: equal (uint8), boxes 1e-3 px.

Mask targets are compared both ways detectron2 makes them: from polygons (INPUT.MASK_FORMAT polygon,
the protocols' default: the C4 case) and from bitmaps (bitmask: the FPN case)."""

from __future__ import annotations

import random
import tarfile

import numpy as np
import pytest
import torch

import wssl_zoo
from detection import configs, tv_model
from detection.data import CocoDetection, Resize, coco_paths

pytestmark = [pytest.mark.detectron2, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]

SMALL = ["INPUT.MIN_SIZE_TRAIN=(128,)", "INPUT.MAX_SIZE_TRAIN=192", "INPUT.MIN_SIZE_TEST=128",
         "INPUT.MAX_SIZE_TEST=192", "MODEL.RPN.PRE_NMS_TOPK_TEST=600", "MODEL.RPN.POST_NMS_TOPK_TEST=60",
         "MODEL.RPN.PRE_NMS_TOPK_TRAIN=600", "MODEL.RPN.POST_NMS_TOPK_TRAIN=120",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=48", "MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.01",
         "MODEL.ROI_HEADS.NMS_THRESH_TEST=0.5", "MODEL.RESNETS.NORM=BN"]  # BN: SyncBN of one process
# C4 needs a bottleneck res5 (ResNet-50); the FPN runs on ResNet-18 (detectron2's depth 18, 64 channels).
CASES = {"C4": ("coco_R_50_C4_1x", "resnet50", []),
         "FPN": ("coco_R_50_FPN_1x", "resnet18", ["INPUT.MASK_FORMAT=bitmask",
                                                   "MODEL.RESNETS.DEPTH=18", "MODEL.RESNETS.RES2_OUT_CHANNELS=64",
                                                   "MODEL.ROI_BOX_HEAD.NUM_CONV=2", "MODEL.ROI_BOX_HEAD.NUM_FC=1",
                                                   "MODEL.ROI_BOX_HEAD.FC_DIM=256", "MODEL.ROI_MASK_HEAD.NUM_CONV=2",
                                                   "MODEL.FPN.OUT_CHANNELS=128"])}


@pytest.fixture(scope="module")
def coco_tiny(shared_data_dir, tmp_path_factory):
    archive = shared_data_dir / "coco-tiny.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    root = tmp_path_factory.mktemp("coco")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root / "coco-tiny"


def _pair(case: str):
    """detectron2's model (random init, seed 0) and the torchvision backend's with its weights."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import detection.d2_register  # noqa: F401  (Res5ROIHeadsExtraNorm)

    name, arch, extra = CASES[case]
    overrides = SMALL + extra
    cfg = get_cfg()
    cfg.merge_from_file(str(configs.config_path(name)))
    cfg.merge_from_list([part for item in overrides for part in item.split("=", 1)])
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    d2 = build_model(cfg)
    s = configs.to_torchvision(configs.load_config(name, overrides))
    tv = tv_model.build_model(wssl_zoo.create(arch), s)
    tv_model.load_detectron2_state(tv, d2.state_dict())
    return d2, tv, s


def _u8(image: torch.Tensor) -> torch.Tensor:
    return (image * 255).round().to(torch.uint8)


def compare(case: str, coco_root) -> dict:
    """Both models of ``case`` on coco-tiny: the largest differences per stage (inference on two val
    images, the losses of one training batch with the same random state), and the checks that are
    not numbers (counts, classes) as booleans."""
    from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
    from detectron2.utils.events import EventStorage

    d2, tv, s = _pair(case)
    d2.eval()
    tv.eval()
    val = CocoDetection(*coco_paths(coco_root, "val"), train=False, resize=Resize((s.min_size_test,), s.max_size_test))
    m = {"features": 0.0, "proposals": 0.0, "boxes": 0.0, "scores": 0.0, "masks": 0.0, "counts": True,
         "classes": True, "padding": True, "detections": 0, "proposal_count": 0}
    for index in (0, 7):
        image = _u8(val[index][0])
        with torch.no_grad():
            inputs = d2.preprocess_image([{"image": image}])
            f2 = d2.backbone(inputs.tensor)
            p2, _ = d2.proposal_generator(inputs, f2, None)
            r2 = d2.roi_heads(inputs, f2, p2, None)[0][0]
            images, _ = tv.transform([image.float() / 255])
            f1 = tv.backbone(images.tensors)
            p1, _ = tv.rpn(images, f1)
            r1 = tv.roi_heads(f1, p1, images.image_sizes)[0][0]
        m["padding"] &= images.tensors.shape == inputs.tensor.shape  # none for C4, to 32 for the FPN
        for key in f2:
            mine = f1[{"p6": "pool"}.get(key, key)]
            m["features"] = max(m["features"], float((mine - f2[key]).abs().max() / f2[key].abs().max()))
        boxes2 = p2[0].proposal_boxes.tensor
        m["proposal_count"] += len(boxes2)
        same = p1[0].shape == boxes2.shape and len(r1["boxes"]) == len(r2)
        m["counts"] &= same
        if not same:
            continue
        m["detections"] += len(r2)
        m["proposals"] = max(m["proposals"], float((p1[0] - boxes2).abs().max()))
        m["classes"] &= torch.equal(r1["labels"] - 1, r2.pred_classes)
        m["boxes"] = max(m["boxes"], float((r1["boxes"] - r2.pred_boxes.tensor).abs().max()))
        m["scores"] = max(m["scores"], float((r1["scores"] - r2.scores).abs().max()))
        m["masks"] = max(m["masks"], float((r1["masks"] - r2.pred_masks).abs().max()))
    train = CocoDetection(*coco_paths(coco_root, "train"), train=True, masks=True,
                          resize=Resize(s.min_size_train, s.max_size_train), mask_format=s.mask_format)
    batch = [train[0], train[3]]
    inputs = []
    for image, target in batch:
        inst = Instances(tuple(image.shape[1:]))
        inst.gt_boxes = Boxes(target["boxes"].clone())
        inst.gt_classes = target["labels"] - 1
        inst.gt_masks = (PolygonMasks(target["polygons"]) if s.mask_format == "polygon" else
                         BitMasks(target["masks"].bool()))
        inputs.append({"image": _u8(image), "instances": inst})
    d2.train()
    tv.train()
    torch.manual_seed(1)
    with EventStorage():
        loss2 = d2(inputs)
    torch.manual_seed(1)
    loss1 = tv([x["image"].float() / 255 for x in inputs], [dict(t) for _, t in batch])
    m["loss_names"] = sorted(loss1) == sorted(loss2)
    m["losses"] = max(abs(float(loss1[k]) / float(loss2[k]) - 1) for k in loss2)
    m["loss_values"] = {k: (float(loss1[k]), float(loss2[k])) for k in sorted(loss2)}
    return m


@pytest.mark.slow
@pytest.mark.parametrize("case", ["C4", "FPN"])
def test_same_weights_same_proposals_boxes_scores_masks_and_losses(coco_tiny, case):
    m = compare(case, coco_tiny)
    assert m["padding"] and m["counts"] and m["classes"] and m["loss_names"], m
    assert m["proposal_count"] > 20 and m["detections"] > 0, m
    assert m["features"] <= 1e-5, m
    assert m["proposals"] <= 0.01 and m["boxes"] <= 0.01, m
    assert m["scores"] <= 1e-4 and m["masks"] <= 1e-4, m
    assert m["losses"] <= 1e-4, m["loss_values"]


@pytest.mark.slow
@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_the_input_pipeline_is_detectron2s_mapper(coco_tiny, mask_format):
    """Images equal detectron2's DatasetMapper output (ResizeShortestEdge, PIL bilinear on uint8, flip),
    boxes its transformed boxes, and mask targets its: polygons rasterised inside each box
    (PolygonMasks.crop_and_resize) or the bitmaps (BitMasks), for 12 coco-tiny images."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data import transforms as T
    from detectron2.data.datasets import register_coco_instances

    name = "wsslzoo_equivalence_train"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, *map(str, coco_paths(coco_tiny, "train")))
    cfg = get_cfg()
    cfg.merge_from_file(str(configs.config_path("coco_R_50_C4_1x")))
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "240", "INPUT.MIN_SIZE_TEST", "144",
                         "INPUT.MAX_SIZE_TEST", "200", "INPUT.MASK_FORMAT", mask_format])
    dicts = DatasetCatalog.get(name)
    ours = CocoDetection(*coco_paths(coco_tiny, "train"), train=True, masks=True, resize=Resize((160,), 240),
                         mask_format=mask_format, flip=True)
    by_id = {rec.image_id: k for k, rec in enumerate(ours.records)}
    test = CocoDetection(*coco_paths(coco_tiny, "train"), train=False, resize=Resize((144,), 200))
    test_by_id = {rec.image_id: k for k, rec in enumerate(test.records)}
    draws = {flip: next(k for k in range(100) if (random.Random(k).random() < 0.5) == flip) for flip in (False, True)}
    for n, d in enumerate(dicts[:12]):
        flip = n % 2 == 0  # every other image flipped, by both: detectron2's RandomFlip with probability 1 or 0
        mapper = DatasetMapper(cfg, is_train=True)
        mapper.augmentations = T.AugmentationList([T.ResizeShortestEdge((160,), 240, "choice"),
                                                   T.RandomFlip(prob=float(flip))])
        mapped = mapper(dict(d))
        inst = mapped["instances"]
        image, target = ours[(by_id[d["image_id"]], draws[flip])]  # the draw that flips, or not
        assert torch.equal(_u8(image), mapped["image"]), d["file_name"]
        torch.testing.assert_close(target["boxes"], inst.gt_boxes.tensor, atol=1e-3, rtol=0)
        assert torch.equal(target["labels"] - 1, inst.gt_classes)
        if mask_format == "polygon":
            m = 28  # the FPN's mask side: each instance's target inside its own (jittered) box
            boxes = inst.gt_boxes.tensor + torch.tensor([-2.5, 1.5, 3.25, -0.75])
            assert torch.equal(tv_model.polygon_targets(target["polygons"], boxes, m),
                               inst.gt_masks.crop_and_resize(boxes, m))
        else:
            assert torch.equal(target["masks"].bool(), inst.gt_masks.tensor)
        tested = DatasetMapper(cfg, is_train=False)(dict(d))
        assert torch.equal(_u8(test[test_by_id[d["image_id"]]][0]), tested["image"])


def test_postprocess_and_mask_pasting_are_detectron2s():
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(12, 2, generator=g) * torch.tensor([150.0, 90.0])
    boxes = torch.cat([xy, xy + 1 + torch.rand(12, 2, generator=g) * 60], 1)
    masks = torch.rand(12, 14, 14, generator=g)
    theirs = paste_masks_in_image(masks, Boxes(boxes), (120, 200), threshold=0.5)
    assert torch.equal(tv_model.paste_masks(masks, boxes, 120, 200), theirs)
    result = {"boxes": boxes, "scores": torch.rand(12, generator=g), "labels": torch.arange(12) + 1,
              "masks": masks[:, None]}
    inst = Instances((120, 200), pred_boxes=Boxes(boxes.clone()), scores=result["scores"],
                     pred_classes=result["labels"] - 1, pred_masks=masks[:, None])
    want = detector_postprocess(inst, 240, 333)
    got = tv_model.detector_postprocess(result, (120, 200), (240, 333))
    torch.testing.assert_close(got["boxes"], want.pred_boxes.tensor)
    assert torch.equal(got["masks"], want.pred_masks)


def test_anchors_and_resize_are_detectron2s():
    from detectron2.data.transforms import ResizeShortestEdge
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    for sizes, ratios, strides in (([[32, 64, 128, 256, 512]], [[0.5, 1.0, 2.0]], [16]),
                                   ([[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]], [4, 8, 16, 32, 64])):
        theirs = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=strides, offset=0.0)
        shapes = [(13, 9)] * len(strides)
        want = theirs([torch.zeros(1, 1, h, w) for h, w in shapes])
        got = tv_model.Anchors(sizes, ratios, strides).grid(shapes)
        for a, b in zip(got, want):
            assert torch.equal(a, b.tensor)
    rng = np.random.default_rng(0)
    for h, w in rng.integers(50, 2000, (200, 2)):
        for size, max_size in ((800, 1333), (128, 192), (480, 800)):
            assert Resize.output_shape(int(h), int(w), size, max_size) == ResizeShortestEdge.get_output_shape(
                int(h), int(w), size, max_size)


if __name__ == "__main__":  # the measured column of docs/detection.md's equivalence table
    import sys
    from pathlib import Path

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if root is None:
        sys.exit("usage: python tests/test_detection_equivalence.py COCO_TINY_ROOT (the extracted coco-tiny/)")
    print("| case | features (rel.) | proposals (px) | boxes (px) | scores | mask prob. | losses (rel.) | "
          "proposals / detections |\n|---|---|---|---|---|---|---|---|")
    for case in CASES:
        m = compare(case, root)
        print(f"| {case} ({CASES[case][0]}, {CASES[case][1]}) | {m['features']:.1e} | {m['proposals']:.1e} | "
              f"{m['boxes']:.1e} | {m['scores']:.1e} | {m['masks']:.1e} | {m['losses']:.1e} | "
              f"{m['proposal_count']} / {m['detections']} |", flush=True)
