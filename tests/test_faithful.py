"""Each deviation from the authors' pipelines found in issue 11 stays fixed (each test fails on
the old behaviour)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from wssl_zoo.data.datasets import dataset_stats
from wssl_zoo.data.transforms import build_view_transform, eval_transform
from wssl_zoo.pretrain.recipes import RECIPES, resolve_recipe

TINY_PROJ = {"projector.hidden_dim": 16, "projector.out_dim": 16}


def _last_bn_weights(backbone):
    from timm.models.resnet import BasicBlock, Bottleneck

    return [m.bn3.weight if isinstance(m, Bottleneck) else m.bn2.weight
            for m in backbone.modules() if isinstance(m, (BasicBlock, Bottleneck))]


@pytest.mark.parametrize("name, zero", [
    ("wmse_cifar10", False),          # htdt model.py:21: torchvision default (no zero init)
    ("cwrgp_cifar10", True),          # CW-RGP base/model.py:21 zero_init_residual=True
    ("cwrgp_imagenet", True),         # CW-RGP ImageNet/model.py:21
    ("intl_cifar10", False),          # INTL src/model.py:18-22: not for resnet18
    ("intl_imagenet100", False),
    ("intl_imagenet", True),          # resnet50
])
def test_zero_init_last_bn_per_method_and_arch(name, zero):
    from wssl_zoo.pretrain.loop import build_model

    overrides = dict(TINY_PROJ)
    if name.startswith("cwrgp"):
        overrides.update({"loss.groups": 1, "loss.w_size": 16})
    model = build_model(resolve_recipe(name, overrides), gather=False)
    weights = _last_bn_weights(model.backbone)
    assert weights and all(bool((w == 0).all()) == zero for w in weights)
    assert all(bool((w == 1).all()) for w in weights) != zero


def _fixed_image(size=96) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


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
    from test_pretrain import make_imagefolder

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


def test_cwrgp_covariance_term_does_not_depend_on_the_process_split():
    from wssl_zoo.losses import CWRGPLoss
    from wssl_zoo.losses.cwrgp import channel_covariance_loss

    assert RECIPES["cwrgp_imagenet"].loss["cov_block"] == 128
    assert RECIPES["cwrgp_imagenet_100ep"].loss["cov_block"] == 128
    torch.manual_seed(0)
    h = torch.randn(2, 512, 64, dtype=torch.float64)
    one_process = channel_covariance_loss(h, 128)
    four_processes = torch.stack([channel_covariance_loss(h[:, i * 128:(i + 1) * 128], 128) for i in range(4)]).mean()
    two_processes = torch.stack([channel_covariance_loss(h[:, i * 256:(i + 1) * 256], 128) for i in range(2)]).mean()
    assert torch.allclose(one_process, four_processes) and torch.allclose(one_process, two_processes)
    # the old whole-batch term grows with the local batch (about 4x at 512 vs 128)
    assert channel_covariance_loss(h) > 3 * one_process
    loss = CWRGPLoss(w_size=128, groups=1, cov_weight=1.0, cov_block=128)
    assert loss.cov_block == 128 and "cov_block=128" in repr(loss)
    with pytest.raises(ValueError, match="cov_block"):
        channel_covariance_loss(h[:, :200], 128)


def test_semi_intl_lr_is_constant_over_its_20_epochs():
    from eval.protocols import get_protocol
    from eval.semi import lr_factor

    for name in ("semi_intl", "semi_intl_plain"):
        p = get_protocol(name, "semi")
        assert {lr_factor(p, e, p.epochs) for e in range(p.epochs)} == {1.0}


@pytest.mark.parametrize("recipe, linear, semi, lr, lr_backbone", [
    ("intl_m_imagenet_800ep", "intl", "semi_intl", 0.4, 0.004),  # scripts/ep800_multi-crop_ema.sh:14,22
    ("intl_m_imagenet_100ep", "intl", "semi_intl", 0.4, 0.004),
    ("intl_imagenet", "intl_plain", "semi_intl_plain", 0.2, 0.006),  # scripts/ep800.sh:13,21
    ("intl_imagenet100", "intl_plain", "semi_intl", 0.2, 0.004),  # scripts/in100.sh:16 (no semi script)
])
def test_intl_protocols_take_the_models_learning_rates(recipe, linear, semi, lr, lr_backbone):
    from eval.protocols import get_protocol, protocol_for_model

    assert protocol_for_model("intl", recipe) == linear and get_protocol(linear, "linear").lr == lr
    assert protocol_for_model("semi_intl", recipe) == semi and get_protocol(semi, "semi").lr_backbone == lr_backbone
    assert protocol_for_model("cwrgp", recipe) == "cwrgp" and protocol_for_model("intl", None) == "intl"


def test_registry_model_resolves_its_recipe_for_protocol_choice():
    from wssl_zoo.registry import get_entry

    assert get_entry("intl_resnet50").recipe == "intl_m_imagenet_800ep"


def test_coco_default_is_mask_rcnn_c4_2x_and_records_say_their_schedule():
    from detection.train import schedule_label
    from eval.benchmark import build_parser, task_protocols

    args = build_parser().parse_args(["--models", "m", "--data-root", "d"])
    assert task_protocols(args.protocol)["coco"] == "coco_R_50_C4_2x"  # --protocol coco=NAME (was --coco-config)
    assert schedule_label("coco_R_50_C4_2x", 180000, []) == "2x, 180000 iterations"
    assert schedule_label("coco_R_50_C4_1x", 90000, []).startswith("1x")
    assert "shortened" in schedule_label("coco_R_50_C4_2x", 400, ["max_iter=400"])


def test_monitor_knn_is_not_called_5nn():
    import inspect

    from wssl_zoo import demo, evaluation
    from wssl_zoo.pretrain import evaluate, loop

    for module in (demo, evaluate, loop, evaluation):
        text = inspect.getsource(module)
        assert "knn5_top1" not in text and '"knn_top1"' not in text
    assert "monitor_knn5_cos" in inspect.getsource(evaluation)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_states_the_authors_precision(name):
    recipe = RECIPES[name]
    expected = "fp16" if name.startswith("intl_") and recipe.dataset in ("imagenet", "imagenet100") else "fp32"
    assert recipe.authors_precision == expected  # INTL main.py:129,174-178 autocast; cifar/main.py none


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_gather_auto_is_the_authors_distributed_whitening(name):
    """INTL whitens the global batch (winci-ai/INTL methods/whitening.py:14 FullGatherLayer); CW-RGP ImageNet each
    GPU's batch (ImageNet/methods/cwrgp.py:24-46, no all_gather); W-MSE / CW-RGP base one process (nn.DataParallel)."""
    from wssl_zoo.pretrain.loop import resolve_gather

    recipe = RECIPES[name]
    authors = recipe.method == "intl"
    assert resolve_gather(recipe, "auto", 2) is authors
    assert resolve_gather(recipe, "auto", 1) is False  # one process: nothing to gather
    assert resolve_gather(recipe, "yes", 2) is True and resolve_gather(recipe, "no", 2) is False
    with pytest.raises(ValueError, match="--gather 'maybe'"):
        resolve_gather(recipe, "maybe", 2)


def test_method_facts_live_in_wssl_zoo_methods_with_the_authors_sources():
    import inspect

    from wssl_zoo import encoders, methods
    from wssl_zoo.pretrain import loop
    from wssl_zoo.registry import METHODS

    repos = {"wmse": "htdt/self-supervised@", "cwrgp": "winci-ai/CW-RGP@", "intl": "winci-ai/INTL@"}
    for method in METHODS:
        for key in ("head_on_concat", "gather_distributed", "train_stats", "eval_stats", "converter_small_stems",
                    "checkpoint_layout"):
            methods.fact(method, key)
            assert methods.fact_source(method, key).startswith(repos[method]), (method, key)
    assert [methods.fact(m, "head_on_concat") for m in METHODS] == [True, True, False]
    assert [methods.fact(m, "gather_distributed") for m in METHODS] == [False, False, True]
    # the old per-class-name table and the method test in the loop are gone
    assert '"WMSELoss"' not in inspect.getsource(encoders) and 'method == "intl"' not in inspect.getsource(loop)
    from wssl_zoo.convert import LAYOUTS

    assert {name: layout.method for name, layout in LAYOUTS.items()} == {f"official-{m}": m for m in METHODS}
    assert LAYOUTS["official-intl"].hidden_bias is False and LAYOUTS["official-wmse"].hidden_bias is True
    with pytest.raises(ValueError, match="unknown method 'byol'"):
        methods.fact("byol", "head_on_concat")
