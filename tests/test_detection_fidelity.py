"""The torchvision backend computes what detectron2 computes, for every shipped protocol: the box losses
use the config's smooth-L1 beta (0: L1; torchvision hard-codes 1/9), RoIAlign is pixel-aligned where
the config says ROIAlignV2, anchors, data order and sizes follow detectron2; the table of
docs/detection.md and the records' list of remaining differences come from detection.fidelity.
(Against detectron2's own code: tests/test_detection_equivalence.py.)"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

import wssl_zoo
from detection import configs, fidelity, tv_model
from detection.data import Resize, TrainingBatches

REPO = configs.CONFIG_DIR.parent.parent


def _model(name: str, overrides=()):
    cfg = configs.load_config(name, list(overrides))
    s = configs.to_torchvision(cfg)
    torch.manual_seed(0)
    return tv_model.build_model(wssl_zoo.create("resnet18"), s), cfg


@pytest.mark.parametrize("name", configs.PROTOCOLS)
def test_box_losses_use_the_configs_smooth_l1_beta_not_torchvisions_one_ninth(name):
    """Residuals smaller than 1/9 tell L1 (beta 0: |x|) from torchvision's smooth-L1 beta 1/9
    (4.5 x^2): the loss the built model computes must be the one the config asks for."""
    model, cfg = _model(name)
    heads, rpn = model.roi_heads, model.rpn
    k = heads.num_classes
    g = torch.Generator().manual_seed(0)
    # box head: 6 sampled RoIs, 2 of them positive (classes 1 and k), residuals in (-1/9, 1/9)
    labels = [torch.tensor([1, 0, 0, k, 0, 0])]
    targets = [torch.rand(6, 4, generator=g) * 0.2 - 0.1]
    deltas = torch.zeros(6, 4 * k)
    losses = heads.box_losses(torch.zeros(6, k + 1), deltas, labels, targets)
    fg = targets[0][[0, 3]]
    beta = cfg["MODEL"]["ROI_BOX_HEAD"]["SMOOTH_L1_BETA"]
    expected = F.smooth_l1_loss(torch.zeros_like(fg), fg, beta=beta, reduction="sum") / 6
    assert losses["loss_box_reg"].item() == pytest.approx(expected.item(), rel=1e-6)
    one_ninth = F.smooth_l1_loss(torch.zeros_like(fg), fg, beta=1 / 9, reduction="sum") / 6
    assert beta != 1 / 9 and abs(losses["loss_box_reg"].item() - one_ninth.item()) > 1e-3
    # RPN: 8 anchors of one image, 2 positive; normalised by BATCH_SIZE_PER_IMAGE x images, as detectron2
    anchor_labels = [torch.tensor([1.0, 0, 0, 1, 0, -1, 0, 0])]
    reg = [torch.rand(8, 4, generator=g) * 0.2 - 0.1]
    cls, loc = rpn.compute_loss(torch.zeros(8, 1), torch.zeros(8, 4), anchor_labels, reg)
    rpn_beta = cfg["MODEL"]["RPN"]["SMOOTH_L1_BETA"]
    pos = reg[0][[0, 3]]
    normalizer = cfg["MODEL"]["RPN"]["BATCH_SIZE_PER_IMAGE"]
    assert loc.item() == pytest.approx(
        F.smooth_l1_loss(torch.zeros_like(pos), pos, beta=rpn_beta, reduction="sum").item() / normalizer, rel=1e-6)
    assert cls.item() == pytest.approx(7 * F.binary_cross_entropy_with_logits(torch.zeros(1), torch.ones(1)).item()
                                       / normalizer, rel=1e-6)


@pytest.mark.parametrize("name", configs.PROTOCOLS)
def test_roialign_is_pixel_aligned_where_the_config_says_roialignv2(name):
    """The model's poolers give torchvision's roi_align(aligned=True) on a ramp (which differs from the
    unaligned one by half a pixel) exactly when POOLER_TYPE is ROIAlignV2."""
    model, cfg = _model(name)
    heads = model.roi_heads
    box = [torch.tensor([[33.0, 17.0, 161.0, 119.0]])]
    pools = [(heads.box_roi_pool, "ROI_BOX_HEAD")]
    if heads.mask_roi_pool is not None:
        pools.append((heads.mask_roi_pool, "ROI_MASK_HEAD"))
    for pool, section in pools:
        aligned = cfg["MODEL"][section]["POOLER_TYPE"] == "ROIAlignV2"
        assert aligned  # every shipped protocol says ROIAlignV2
        x0, y0, x1, y1 = box[0][0].tolist()  # FPN: the level detectron2 assigns (p3 for this box)
        level = min(max(int(math.floor(4 + math.log2(math.sqrt((x1 - x0) * (y1 - y0)) / 224 + 1e-8))),
                        pool.min_level), pool.max_level)
        stride = 2 ** level if len(pool.names) > 1 else round(1 / pool.scales[0])
        ramp = torch.arange(64.0).repeat(64, 1)[None, None].repeat(1, 2, 1, 1)
        features = {n: ramp for n in pool.names}
        got = pool(features, box)
        rois = torch.cat([torch.zeros(1, 1), box[0]], 1)
        size = cfg["MODEL"][section]["POOLER_RESOLUTION"]
        want = roi_align(ramp, rois, size, 1 / stride, cfg["MODEL"][section]["POOLER_SAMPLING_RATIO"], aligned)
        torch.testing.assert_close(got, want)
        unaligned = roi_align(ramp, rois, size, 1 / stride, 0, not aligned)
        assert (got - unaligned).abs().max() > 0.1


def test_a_config_that_says_roialign_gets_the_unaligned_op_and_its_beta():
    model, _ = _model("coco_R_50_C4_1x", ["MODEL.ROI_BOX_HEAD.POOLER_TYPE=ROIAlign",
                                          "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA=0.5", "MODEL.RPN.SMOOTH_L1_BETA=0.25"])
    assert model.roi_heads.box_roi_pool.aligned is False
    assert model.roi_heads.smooth_l1_beta == 0.5 and model.rpn.smooth_l1_beta == 0.25


@pytest.mark.parametrize("key,value", [("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIPool"),
                                       ("MODEL.RPN.BBOX_REG_LOSS_TYPE", "giou"),
                                       ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"),
                                       ("SOLVER.CLIP_GRADIENTS.ENABLED", "True"),
                                       ("MODEL.RPN.BOUNDARY_THRESH", "0")])
def test_what_the_backend_does_not_implement_is_refused_naming_the_key(key, value):
    cfg = configs.load_config("coco_R_50_C4_1x", [f"{key}={value}"])
    with pytest.raises(configs.ConfigError, match=rf"{re.escape(key)} = .*use --backend detectron2"):
        configs.to_torchvision(cfg)


def test_anchors_are_detectron2s_cell_anchors_not_rounded_size_major():
    anchors = tv_model.Anchors([[32, 64]], [[0.5, 1.0, 2.0]], [16])
    cells = anchors.cell0
    assert cells.shape == (6, 4)
    w = (32 * 32 / 0.5) ** 0.5  # size 32, ratio 0.5 first: w = sqrt(area / ratio), h = ratio * w
    torch.testing.assert_close(cells[0], torch.tensor([-w / 2, -0.25 * w, w / 2, 0.25 * w]))
    torch.testing.assert_close(cells[4], torch.tensor([-32.0, -32.0, 32.0, 32.0]))  # size 64, ratio 1
    assert cells[0, 0] != cells[0, 0].round()  # torchvision would round it
    grid = anchors.grid([(2, 3)])[0]  # (y, x, anchor) order, shifts of the stride from 0
    assert grid.shape == (36, 4)
    torch.testing.assert_close(grid[6 * 4 + 4], torch.tensor([-32.0 + 16, -32.0 + 16, 32.0 + 16, 32.0 + 16]))


def test_resize_is_detectron2s_resize_shortest_edge():
    # ResizeShortestEdge.get_output_shape: shortest side to the size, longest capped, each int(x + 0.5)
    assert Resize.output_shape(480, 640, 800, 1333) == (800, 1067)
    assert Resize.output_shape(640, 480, 800, 1333) == (1067, 800)
    assert Resize.output_shape(300, 1000, 800, 1333) == (400, 1333)
    assert Resize.output_shape(427, 640, 128, 1333) == (128, 192)


def test_training_batches_split_the_stream_over_ranks_group_by_orientation_and_resume():
    landscape = [i % 3 != 0 for i in range(23)]
    ranks = [TrainingBatches(landscape, 2, seed=7, rank=r, world=2) for r in range(2)]
    batches = [[next(it) for _ in range(20)] for it in map(iter, ranks)]
    for per_rank in batches:
        for batch in per_rank:
            assert len(batch) == 2 and len({landscape[i] for i, _ in batch}) == 1
    draws = [d for per_rank in batches for batch in per_rank for _, d in batch]
    assert len(set(draws)) == len(draws)  # every stream position once, over both ranks
    seen = {i for per_rank in batches for batch in per_rank for i, _ in batch}
    assert seen == set(range(23))
    resumed = iter(TrainingBatches(landscape, 2, seed=7, rank=1, world=2, start=5))
    assert [next(resumed) for _ in range(15)] == batches[1][5:]


def test_the_docs_table_is_the_fidelity_table():
    text = (REPO / "docs" / "detection.md").read_text()
    assert fidelity.markdown_table() in text, "run: python -m detection.fidelity --update-docs docs/detection.md"


def test_records_list_the_differences_that_apply_to_their_run():
    c4 = configs.to_torchvision(configs.load_config("coco_R_50_C4_2x"))
    voc = configs.to_torchvision(configs.load_config("voc_R_50_C4_24k"))
    coco = fidelity.remaining_differences(c4, fidelity.Run(task="coco", world=8, device="cuda", amp="none"))
    assert [d.split(":")[0] for d in coco] == ["random draws"]
    bf16 = fidelity.remaining_differences(c4, fidelity.Run(task="coco", world=2, device="cpu", amp="bf16"))
    assert {"SyncBN on the CPU", "bfloat16"} <= {d.split(":")[0] for d in bf16}
    assert [d.split(":")[0] for d in fidelity.remaining_differences(voc, fidelity.Run(task="voc"))] == [
        "random draws", "VOC evaluation"]
    same = [row.name for row in fidelity.SETTINGS if row.same]
    assert {"RPN box regression loss", "box head regression loss", "RoIAlign", "precise BN", "anchors",
            "mask targets"} <= set(same)
