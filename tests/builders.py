"""Builders of the small test inputs that several test files share: generated image folders, tiny
model directories, COCO-layout folders, checkpoints in the authors' key layouts, and the hash of a
folder tree (what a refused command must leave unchanged)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

import wssl_zoo
from wssl_zoo.evaluation import FeatureShards, write_feature_shard, write_shard_index
from wssl_zoo.fileio import sha256_file
from wssl_zoo.heads import Projector
from wssl_zoo.modelio import save_model_dir


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    return {str(p.relative_to(root)): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def colour_folder(root: Path, train: int = 8, test: int = 4, held: str = "val", seed: int = 0) -> Path:
    """ROOT/train/<class>/ and ROOT/<held>/<class>/, 32 px PNGs, one colour per class plus noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), (held, test)):
        for c, color in enumerate(COLORS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(0, 60, (32, 32, 3))
                Image.fromarray(np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)).save(d / f"im{i}.png")
    return root


def tiny_model(out: Path, **meta) -> Path:
    """timm's test_resnet (370k parameters) saved as a model directory, 32 px."""
    torch.manual_seed(0)
    save_model_dir(out, wssl_zoo.create("test_resnet"), arch="test_resnet", stem="imagenet", mean=(0.5,) * 3,
                   std=(0.25,) * 3, img_size=32, extra_meta={"method": "intl", **meta})
    return out


def resnet18_model(out: Path) -> Path:
    """resnet18 (32 px, method intl) with a 512-32-16 projector, saved as a model directory."""
    torch.manual_seed(0)
    save_model_dir(out, wssl_zoo.create("resnet18"), arch="resnet18", stem="imagenet", mean=(0.5, 0.5, 0.5),
                   std=(0.25, 0.25, 0.25), img_size=32, projector=Projector(512, 32, 16, 2),
                   extra_meta={"method": "intl"})
    return out


def make_imagefolder(root: Path, classes=3, per_class=20, val=6, size=40, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3))
                base[..., c % 3] = 120 + 100 * rng.random()
                img = (base + rng.normal(0, 30, base.shape)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
    return root


def image_folder(root: Path, classes: int = 2, per_class: int = 8, val: int = 2, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


# Small heads and images so CPU runs take seconds (the protocol configs are for GPUs).
FAST = [
    "INPUT.MIN_SIZE_TRAIN=(96,)", "INPUT.MIN_SIZE_TEST=96", "SOLVER.BASE_LR=0.02", "SOLVER.WARMUP_ITERS=2",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=32", "MODEL.RPN.POST_NMS_TOPK_TRAIN=100",
    "MODEL.RPN.PRE_NMS_TOPK_TEST=200", "MODEL.RPN.POST_NMS_TOPK_TEST=50", "TEST.DETECTIONS_PER_IMAGE=20",
    "TEST.PRECISE_BN.NUM_ITER=2",  # the protocols' precise BN runs, over 2 batches instead of 200
]


FPN_FAST = FAST + [
    "MODEL.ANCHOR_GENERATOR.SIZES=[[16],[32],[64],[128],[256]]", "MODEL.FPN.OUT_CHANNELS=64",
    "MODEL.ROI_BOX_HEAD.NUM_CONV=0", "MODEL.ROI_BOX_HEAD.NUM_FC=2", "MODEL.ROI_BOX_HEAD.FC_DIM=128",
    "MODEL.ROI_MASK_HEAD.NUM_CONV=1", "MODEL.ROI_MASK_HEAD.CONV_DIM=32",
]


C4_FAST = FAST + [
    "MODEL.ANCHOR_GENERATOR.SIZES=[[16,32,64,128]]", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=16",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION=8", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION=8",
    "MODEL.ROI_MASK_HEAD.CONV_DIM=32",
]


def make_coco(root: Path, n: int = 4, size: int = 96, seed: int = 0, same_val: bool = False) -> Path:
    """A COCO-layout folder: n images with one or two coloured rectangles (red = category 1, blue =
    category 3, so the ids are not contiguous) and their polygons; val is new images or a copy."""
    rng = np.random.default_rng(seed)
    cats = [{"id": 1, "name": "red"}, {"id": 3, "name": "blue"}]
    colours = {1: (220, 30, 30), 3: (30, 30, 220)}


    def split_data(split):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            arr = (np.full((size, size, 3), 128) + rng.integers(0, 20, (size, size, 3))).astype(np.uint8)
            placed = []
            for j in range(1 + i % 2):
                w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
                x = int(rng.integers(0, size // 2 - w // 2)) if j == 0 else size - w - 1
                y = int(rng.integers(0, size - h))
                cid = (1, 3)[(i + j) % 2]
                arr[y:y + h, x:x + w] = colours[cid]
                placed.append((x, y, w, h, cid))
            name = f"{i:06d}.jpg"
            Image.fromarray(arr).save(root / f"{split}2017" / name, quality=95)
            images.append({"id": 100 + i, "file_name": name, "width": size, "height": size})
            for x, y, w, h, cid in placed:
                anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cid, "bbox": [x, y, w, h],
                             "area": w * h, "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        return {"images": images, "annotations": anns, "categories": cats}


    (root / "annotations").mkdir(parents=True, exist_ok=True)
    tr = split_data("train")
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(tr))
    if same_val:
        import shutil


        shutil.copytree(root / "train2017", root / "val2017", dirs_exist_ok=True)
        va = tr
    else:
        va = split_data("val")
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(va))
    return root


def authors_resnet(arch: str, stem: str, seed: int) -> nn.Module:
    """The torchvision ResNet as the authors' code builds it, with random weights and BN statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    if stem != "imagenet":
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    if stem == "cifar":
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
        for name, p in model.named_parameters():
            if "bn" in name or "downsample.1" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model.eval()


def head(in_dim: int, hidden: int, out: int, hidden_bias: bool, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    h = nn.Sequential(nn.Linear(in_dim, hidden, bias=hidden_bias), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                      nn.Linear(hidden, out))
    with torch.no_grad():
        h[1].running_mean.normal_(0, 0.1)
    return h.eval()


def prefixed(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in module.state_dict().items()}


# The key layouts of the official code (see wssl_zoo/convert.py's docstring for the files).
def intl_ckpt(backbone, projection, momentum=None):
    state = {**prefixed(backbone, "module.backbone."), **prefixed(projection, "module.projection.")}
    if momentum is not None:
        state.update(prefixed(momentum[0], "module.momentum_backbone."))
        state.update(prefixed(momentum[1], "module.momentum_projection."))
    return {"epoch": 100, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.3, "params": [0]}]}}


def dataparallel_state(backbone, projection):  # W-MSE train.py and CW-RGP base/train.py
    return {**prefixed(backbone, "model.module."), **prefixed(projection, "head.")}


TINY = ["--recipe", "cwrgp_cifar10", "--dataset", "imagefolder", "--arch", "test_resnet", "--stem", "imagenet",
        "--img-size", "32", "--batch-size", "16", "--epochs", "1", "--steps-per-epoch", "2",
        "--set", "loss.w_size=8", "--set", "loss.groups=2", "--set", "projector.out_dim=16",
        "--set", "projector.hidden_dim=32", "--workers", "0", "--eval-every", "0", "--no-progress", "--device", "cpu"]


class RowsDataset(torch.utils.data.Dataset):
    """(row i of x, y[i]) pairs: a dataset whose 'images' are already features (the model is nn.Identity)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def feature_shards(folder: Path, x, y, world: int) -> FeatureShards:
    """What ``world`` ranks write (each its block, then rank 0 the index), written here one after the other."""
    folder.mkdir(parents=True)
    for rank in range(world):
        write_feature_shard(folder, torch.nn.Identity(), RowsDataset(x, y), rank, world, batch_size=7, workers=0)
    write_shard_index(folder, len(x), world)
    return FeatureShards(folder)


def final_checkpoint(out: Path) -> dict:
    """The kept last checkpoint of the run that wrote ``out``, less its wall time."""
    final = torch.load(out.with_name(out.stem + ".final.ckpt"), weights_only=True)
    return {k: v for k, v in final.items() if k != "seconds"}


EVAL_MAIN_SCRIPT = """
import sys, torch
from eval import linear, semi
module = {"linear": linear, "semi": semi}[sys.argv[1]]
sys.exit(module.main(sys.argv[2:]))
"""


TINY_PROJ = {"projector.hidden_dim": 16, "projector.out_dim": 16}


def sigterm_when(proc, ready, timeout: float = 600) -> tuple[str, str]:
    """Waits until ``ready()`` (the process must still run), sends SIGTERM, and returns ``(stderr, its last
    line)`` after checking that the process exited 75 (stopped with its checkpoint)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 75, err[-3000:]
    return err, err.strip().splitlines()[-1]

