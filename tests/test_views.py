"""The views and evaluation transforms equal the authors' pipelines: parameters, seeded views pixel for
pixel, evaluation transforms, STL-10's 64-px views, dataset statistics, and INTL's CIFAR normalisation
quirk with its correction."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from wssl_zoo.data.datasets import dataset_stats
from wssl_zoo.data.transforms import build_view_transform, eval_transform
from wssl_zoo.pretrain.recipes import RECIPES, resolve_recipe

from builders import TINY_PROJ, make_imagefolder

BICUBIC, BILINEAR = T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class AuthorsBlur:
    """W-MSE datasets/imagenet.py:9-15 RandomBlur, CW-RGP ImageNet/transform.py:6-15 and INTL
    src/transform.py:6-15 GaussianBlur: radius random.uniform(sigma), PIL GaussianBlur."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.sigma[0], self.sigma[1])))


class AuthorsSolarization:  # INTL src/transform.py:17-27, cifar/transform.py:16-26
    def __call__(self, img):
        return ImageOps.solarize(img)


class AuthorsEqualization:  # INTL src/transform.py:29-31, cifar/transform.py:28-30
    def __call__(self, img):
        return ImageOps.equalize(img)


# W-MSE cfg.py:32-42 defaults (= CW-RGP base/cfg.py:45-55): cj0-3, cj_p, gs_p, crop_s0/1, crop_r0/1, hf_p
WMSE_CFG = dict(cj=(0.4, 0.4, 0.4, 0.1), cj_p=0.8, gs_p=0.1, crop_s=(0.2, 1.0), crop_r=(0.75, 4 / 3), hf_p=0.5)


# W-MSE README.md:72-73 ImageNet-100: --crop_s0 0.08 --cj0 0.8 --cj1 0.8 --cj2 0.8 --cj3 0.2 --gs_p 0.2
WMSE_IN100_CFG = dict(WMSE_CFG, cj=(0.8, 0.8, 0.8, 0.2), gs_p=0.2, crop_s=(0.08, 1.0))


def wmse_aug(crop: int, stats, cfg=WMSE_CFG, extra=()) -> T.Compose:
    """W-MSE datasets/transforms.py:4-22 aug_transform (CW-RGP base/datasets/transforms.py:4-22)."""
    return T.Compose([
        T.RandomApply([T.ColorJitter(*cfg["cj"])], p=cfg["cj_p"]),
        T.RandomGrayscale(p=cfg["gs_p"]),
        T.RandomResizedCrop(crop, scale=cfg["crop_s"], ratio=cfg["crop_r"], interpolation=BICUBIC),  # interpolation=3
        T.RandomHorizontalFlip(p=cfg["hf_p"]),
        *extra,
        T.ToTensor(), T.Normalize(*stats),  # base_transform()
    ])


def base(stats) -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(*stats)])


def resized_eval(stats, resize=256, crop=224, interpolation=BILINEAR) -> T.Compose:
    return T.Compose([T.Resize(resize, interpolation=interpolation), T.CenterCrop(crop), T.ToTensor(), T.Normalize(*stats)])


def mocov2_view() -> T.Compose:
    """CW-RGP ImageNet/train.py:145-157 (RandomResizedCrop's default bilinear, flip p 0.5)."""
    return T.Compose([
        T.RandomResizedCrop(224, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([AuthorsBlur([0.1, 2.0])], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(), T.Normalize(*IMAGENET),  # ImageNet/train.py:145-146
    ])


def intl_view(crop_size, stats, min_scale=0.08, max_scale=1.0, gaussian_prob=0.0, solarization_prob=0.0,
              square=False) -> T.Compose:
    """INTL src/transform.py:46-108 ImageNetTransform / cifar/transform.py:44-90 CifarTransform with
    their defaults: jitter 0.4/0.4/0.2/0.1 p 0.8, grayscale 0.2, equalization p 0, flip 0.5, bicubic."""
    return T.Compose([
        T.RandomResizedCrop((crop_size, crop_size) if square else crop_size, scale=(min_scale, max_scale),
                            interpolation=BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([AuthorsBlur()], p=gaussian_prob),
        T.RandomApply([AuthorsSolarization()], p=solarization_prob),
        T.RandomApply([AuthorsEqualization()], p=0.0),
        T.RandomHorizontalFlip(p=0.5),
        T.ToTensor(), T.Normalize(*stats),
    ])


@dataclass
class Authors:
    views: Callable[[int], list[T.Compose]]  # num_views -> one transform per view
    crop: int
    eval: T.Compose
    eval_image: tuple[int, int]  # the (width, height) of the images their eval pipeline gets


WMSE_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "stl10": ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
    "tiny_imagenet": ((0.480, 0.448, 0.398), (0.277, 0.269, 0.282)),
}
INTL_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
              "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


# INTL cifar/eval/dataloader.py:63-67 (CIFAR10_clf) and :77-81 (CIFAR100_clf): both normalise with these.
INTL_CIFAR_EVAL = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))


# INTL src/transform.py:110-118 Multi_Crop: (count, size, min scale, max scale), blur 0.5, solarisation 0.1
INTL_MULTI_CROP = ((2, 224, 0.2, 1.0), (1, 192, 0.171, 0.857), (1, 160, 0.143, 0.714), (1, 128, 0.114, 0.571),
                   (1, 96, 0.086, 0.429))


def _same(view):
    return lambda n: [view] * n  # W-MSE datasets/transforms.py:25-33 MultiSample: n draws of one transform


def _intl_pair(n):  # INTL main.py:107-112 with cfg.py:80-96: crops 224/224, scale 0.08-1, blur 1.0/0.1, sol. 0.0/0.2
    assert n == 2
    return [intl_view(224, IMAGENET, 0.08, 1.0, g, s) for g, s in ((1.0, 0.0), (0.1, 0.2))]


def _intl_multi(n):  # main.py:103-112 after Multi_Crop
    views = [intl_view(size, IMAGENET, lo, hi, 0.5, 0.1) for count, size, lo, hi in INTL_MULTI_CROP for _ in range(count)]
    assert n == len(views)
    return views


def _intl_cifar(ds):  # cifar/main.py:102 with cifar/cfg.py:74-82 (2 crops, solarization_prob 0.0 / 0.2)
    return lambda n: [intl_view(32, INTL_STATS[ds], solarization_prob=p, square=True) for p in (0.0, 0.2)][:n]


def _small(stats_crop_eval):
    stats, crop, ev, image = stats_crop_eval
    return Authors(_same(wmse_aug(crop, stats)), crop, ev, image)


_STL_EVAL = resized_eval(WMSE_STATS["stl10"], 70, 64, BICUBIC)  # datasets/stl10.py:13-16 (base/datasets/stl10.py:13-16)
# W-MSE README.md:27: ImageNet-100 clf/test images resized to 256 and centre-cropped to 224, then base_transform
_IN100_EVAL = resized_eval(IMAGENET)
_WMSE_IN100 = Authors(_same(wmse_aug(224, IMAGENET, WMSE_IN100_CFG, [T.RandomApply([AuthorsBlur((0.1, 2.0))], p=0.5)])),
                      224, _IN100_EVAL, (300, 240))  # datasets/imagenet.py:24-33


SMALL = {  # (stats, crop: datasets/*.py ds_train, eval: ds_test, eval image size)
    "cifar10": (WMSE_STATS["cifar10"], 32, base(WMSE_STATS["cifar10"]), (32, 32)),  # cifar10.py:16,24-26
    "cifar100": (WMSE_STATS["cifar100"], 32, base(WMSE_STATS["cifar100"]), (32, 32)),  # cifar100.py:16,24-26
    "stl10": (WMSE_STATS["stl10"], 64, _STL_EVAL, (96, 96)),  # stl10.py:22,30-32
    "tiny_imagenet": (WMSE_STATS["tiny_imagenet"], 64, base(WMSE_STATS["tiny_imagenet"]), (64, 64)),  # tiny_in.py:16,24-26
}
AUTHORS = {
    ("wmse", "imagenet100", False): _WMSE_IN100,
    # wmse_imagenet is wssl-zoo's (W-MSE has no ImageNet-1k recipe): ImageNet-100's pipeline, checked as such
    ("wmse", "imagenet", False): _WMSE_IN100,
    # CW-RGP ImageNet/train.py:145-160 (MultiSample of num_samples draws); ImageNet/lincls.py:193,215-219 eval
    ("cwrgp", "imagenet", False): Authors(_same(mocov2_view()), 224, resized_eval(IMAGENET), (300, 240)),
    ("intl", "cifar10", False): Authors(_intl_cifar("cifar10"), 32, base(INTL_CIFAR_EVAL), (32, 32)),
    ("intl", "cifar100", False): Authors(_intl_cifar("cifar100"), 32, base(INTL_CIFAR_EVAL), (32, 32)),
    # INTL evaluate.py:164-183: Resize(256) + CenterCrop(224), ImageNet statistics (ImageNet and IN-100 alike)
    ("intl", "imagenet", False): Authors(_intl_pair, 224, resized_eval(IMAGENET), (300, 240)),
    ("intl", "imagenet100", False): Authors(_intl_pair, 224, resized_eval(IMAGENET), (300, 240)),
    ("intl", "imagenet", True): Authors(_intl_multi, 224, resized_eval(IMAGENET), (300, 240)),
}
for _method in ("wmse", "cwrgp"):
    for _ds, _row in SMALL.items():
        AUTHORS[(_method, _ds, False)] = _small(_row)


def authors_for(recipe) -> Authors:
    return AUTHORS[(recipe.method, recipe.dataset, recipe.multi_crop)]


def _probe() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 20, 3), dtype=np.uint8))


def _op(t) -> tuple:
    if isinstance(t, T.ColorJitter):
        return ("jitter", tuple(t.brightness), tuple(t.contrast), tuple(t.saturation), tuple(t.hue))
    if isinstance(t, T.RandomGrayscale):
        return ("grayscale", t.p)
    if isinstance(t, T.RandomResizedCrop):
        size = tuple(t.size) if isinstance(t.size, (tuple, list)) else (t.size, t.size)
        return ("crop", size, tuple(t.scale), tuple(t.ratio), t.interpolation)
    if isinstance(t, T.RandomHorizontalFlip):
        return ("flip", t.p)
    if isinstance(t, T.ToTensor):
        return ("to_tensor",)
    if isinstance(t, T.Normalize):
        return ("normalize", tuple(map(float, t.mean)), tuple(map(float, t.std)))
    probe = _probe()  # PIL ops are recognised by what they do, not by their class
    if hasattr(t, "sigma"):
        lo, hi = t.sigma
        state = random.getstate()
        random.seed(5)
        out = t(probe)
        random.seed(5)
        expected = probe.filter(ImageFilter.GaussianBlur(radius=random.uniform(lo, hi)))
        random.setstate(state)
        assert np.array_equal(np.asarray(out), np.asarray(expected)), f"{t!r} is not a PIL Gaussian blur"
        return ("blur", (float(lo), float(hi)))
    if np.array_equal(np.asarray(t(probe)), np.asarray(ImageOps.solarize(probe))):
        return ("solarize",)
    raise AssertionError(f"unrecognised transform step {t!r}")


def describe(compose: T.Compose) -> list[tuple]:
    """The steps with their parameters; a RandomApply with p 0 is the identity and is left out."""
    steps = []
    for t in compose.transforms:
        if isinstance(t, T.RandomApply):
            if t.p == 0:
                continue
            (inner,) = list(t.transforms)
            steps.append(_op(inner) + (("p", t.p),))
        else:
            steps.append(_op(t))
    return steps


def without_identities(compose: T.Compose) -> T.Compose:
    """The authors' pipeline minus its p-0 RandomApply steps: those never change an image but draw a torch
    number each, so a seeded comparison needs them gone (``describe`` shows nothing else differs)."""
    return T.Compose([t for t in compose.transforms if not (isinstance(t, T.RandomApply) and t.p == 0)])


def _image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _ours(recipe):
    return build_view_transform(recipe.method, recipe.dataset, recipe.img_size, recipe.num_views,
                                multi_crop=recipe.multi_crop)


def _fixed_image(size=96) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_views_have_the_authors_parameters(name):
    recipe = RECIPES[name]
    authors = authors_for(recipe)
    assert recipe.img_size == authors.crop
    ours = _ours(recipe)
    theirs = authors.views(recipe.num_views)
    assert len(ours) == len(theirs) == recipe.num_views
    for i, (a, b) in enumerate(zip(ours.transforms, theirs)):
        assert describe(a) == describe(b), f"{name} view {i}"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_seeded_views_equal_the_authors_views(name):
    recipe = RECIPES[name]
    authors = authors_for(recipe)
    img = _image(authors.eval_image, seed=1)
    ours = _ours(recipe)
    for i, (a, b) in enumerate(zip(ours.transforms, authors.views(recipe.num_views))):
        for seed in (0, 1):
            torch.manual_seed(seed), random.seed(seed)
            mine = a(img)
            torch.manual_seed(seed), random.seed(seed)
            theirs = without_identities(b)(img)
            assert torch.equal(mine, theirs), f"{name} view {i} seed {seed}"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_eval_transform_equals_the_authors_eval_pipeline(name):
    recipe = RECIPES[name]
    authors = authors_for(recipe)
    img = _image(authors.eval_image, seed=2)
    ours = eval_transform(recipe.dataset, recipe.img_size, recipe.method)
    assert torch.equal(ours(img), authors.eval(img))


def test_intl_cifar_eval_normalisation_quirk_and_its_correction():
    """INTL evaluates CIFAR with cifar/eval/dataloader.py's statistics, not its views' (cifar/transform.py:64-69):
    the default reproduces it, ``normalisation="train"`` uses the views' statistics."""
    from wssl_zoo.data.datasets import dataset_stats
    from wssl_zoo.weights import ResolvedWeights

    img = _image((32, 32), seed=4)
    for ds in ("cifar10", "cifar100"):
        corrected = eval_transform(ds, 32, "intl", normalisation="train")
        assert torch.equal(corrected(img), base(INTL_STATS[ds])(img))
        assert not torch.equal(corrected(img), eval_transform(ds, 32, "intl")(img))
        mean, std = dataset_stats(ds, "intl")
        model = ResolvedWeights(spec="x", kind="local", label="x", arch="resnet18", stem="cifar_pad2", method="intl",
                                img_size=32, weights_sha256="0" * 64, mean=mean, std=std)
        assert torch.equal(model.eval_transform(ds)(img), base(INTL_CIFAR_EVAL)(img))
        assert torch.equal(model.eval_transform(ds, normalisation="train")(img), base(INTL_STATS[ds])(img))
    # a model trained with other statistics keeps its own (the quirk belongs to INTL's CIFAR models)
    other = ResolvedWeights(spec="x", kind="local", label="x", arch="resnet18", stem="imagenet", method="intl",
                            img_size=32, weights_sha256="0" * 64, mean=IMAGENET[0], std=IMAGENET[1])
    assert torch.equal(other.eval_transform("cifar10")(img), base(IMAGENET)(img))
    with pytest.raises(ValueError, match="normalisation 'paper'"):
        eval_transform("cifar10", 32, "intl", normalisation="paper")


def test_eval_clis_take_normalisation_and_record_the_corrected_one_as_an_override(tmp_path):
    """``--normalisation train`` reaches the feature transform of a saved INTL CIFAR model and marks the record."""
    from eval import knn
    from eval.features import mark_normalisation
    from wssl_zoo.data.datasets import dataset_stats
    from wssl_zoo.encoders import create_backbone
    from wssl_zoo.modelio import save_model_dir
    from wssl_zoo.weights import resolve

    mean, std = dataset_stats("cifar100", "intl")
    save_model_dir(tmp_path / "m", create_backbone("resnet18", "cifar_pad2"), arch="resnet18", stem="cifar_pad2",
                   mean=mean, std=std, img_size=32, extra_meta=dict(method="intl", dataset="cifar100"))
    img = _image((32, 32), seed=6)
    weights = resolve(str(tmp_path / "m"))
    assert torch.equal(weights.eval_transform("cifar100")(img), base(INTL_CIFAR_EVAL)(img))
    assert torch.equal(weights.eval_transform("cifar100", "train")(img), base(INTL_STATS["cifar100"])(img))
    with pytest.raises(ValueError, match="--normalisation 'paper'"):
        weights.eval_transform("cifar100", "paper")
    args = knn.build_parser().parse_args(["--model", "m", "--data", "d", "--normalisation", "train"])
    assert args.normalisation == "train"
    assert knn.build_parser().parse_args(["--model", "m", "--data", "d"]).normalisation == "authors"
    record = mark_normalisation({"name": "knn5", "version": 1}, "train")
    assert record["name"] == "knn5+normalisation=train" and record["overrides"] == {"normalisation": "train"}
    assert mark_normalisation({"name": "knn5"}, "authors") == {"name": "knn5"}


@pytest.mark.parametrize("name", ["wmse_stl10", "wmse_stl10_2views", "cwrgp_stl10", "cwrgp_stl10_2views"])
def test_stl10_views_are_64px_and_eval_is_resize70_centercrop64(name):
    recipe = RECIPES[name]
    assert recipe.img_size == 64  # W-MSE datasets/stl10.py:22 aug_transform(64); CW-RGP base/datasets/stl10.py:22
    views = build_view_transform(recipe.method, recipe.dataset, recipe.img_size, recipe.num_views)
    assert all(v.shape == (3, 64, 64) for v in views(_fixed_image()))
    # the authors' test_transform (datasets/stl10.py:13-16), rebuilt with torchvision
    authors = T.Compose([T.Resize(70, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64), T.ToTensor(),
                         T.Normalize((0.43, 0.42, 0.39), (0.27, 0.26, 0.27))])
    ours = eval_transform(recipe.dataset, recipe.img_size, recipe.method)
    img = _fixed_image()
    assert torch.equal(ours(img), authors(img))


def test_tiny_imagenet_statistics_reach_config_json(tmp_path):
    from wssl_zoo.pretrain.loop import RunOptions, pretrain

    data = make_imagefolder(tmp_path / "data", classes=2, per_class=8, val=2, size=36)
    recipe = resolve_recipe("wmse_tiny_imagenet_2views", {
        **TINY_PROJ, "stem": "imagenet", "img_size": 32, "batch_size": 8, "loss.w_size": 8, "loss.w_iter": 1,
        "projector.out_dim": 4, "epochs": 1})
    out = tmp_path / "run"
    pretrain(recipe, RunOptions(out=out, data=str(data), workers=0, eval_every=0, steps_per_epoch=1, progress=False))
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    mean, std = dataset_stats("tiny_imagenet", "wmse")  # W-MSE datasets/tiny_in.py:9
    assert tuple(cfg["mean"]) == mean and tuple(cfg["std"]) == std
    assert mean != dataset_stats("imagenet")[0]


@pytest.mark.parametrize("entry, method", [("wmse_resnet18_cifar10", "wmse"), ("cwrgp_resnet18_cifar10", "cwrgp"),
                                           ("intl_resnet18_cifar10", "intl")])
def test_registry_cifar_normalisation_is_the_authors(entry, method):
    from wssl_zoo.registry import get_entry

    e = get_entry(entry)
    assert (tuple(e.mean), tuple(e.std)) == dataset_stats("cifar10", method)
    if method != "intl":
        assert tuple(e.std) == (0.2023, 0.1994, 0.2010)  # W-MSE datasets/cifar10.py:9
