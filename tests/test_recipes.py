"""Every paper recipe resolves and validates; overrides and their errors."""

from __future__ import annotations

import json

import pytest

from wssl_zoo.pretrain.recipes import RECIPES, get_recipe, list_recipes, recipe_from_dict, resolve_recipe

PAPER_DATASETS = {
    "wmse": {"cifar10", "cifar100", "stl10", "tiny_imagenet", "imagenet100"},
    "cwrgp": {"cifar10", "cifar100", "stl10", "tiny_imagenet", "imagenet"},
    "intl": {"cifar10", "cifar100", "imagenet100", "imagenet"},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_validates_and_round_trips(name):
    recipe = get_recipe(name).validate()
    assert recipe.name == name and name.startswith(f"{recipe.method}_")
    assert recipe.source.startswith("https://github.com/")
    again = recipe_from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe


def test_each_method_covers_every_dataset_its_paper_reports():
    for method, datasets in PAPER_DATASETS.items():
        have = {r.dataset for r in list_recipes() if r.method == method}
        assert datasets <= have, (method, datasets - have)


def test_view_count_and_variant_coverage():
    views = {(r.method, r.num_views) for r in list_recipes()}
    assert {("wmse", 2), ("wmse", 4), ("cwrgp", 2), ("cwrgp", 4)} <= views
    imagenet_cw = get_recipe("cwrgp_imagenet")
    assert imagenet_cw.loss["cov_weight"] == 0.01 and imagenet_cw.cov_stop_epoch == 100
    intl_m = get_recipe("intl_m_imagenet")
    assert intl_m.multi_crop and intl_m.num_views == 6 and intl_m.ema_momentum == 0.996
    assert intl_m.loss["momentum"] is True


def test_authors_values_for_some_recipes():
    r = get_recipe("wmse_cifar10")
    assert (r.num_views, r.batch_size, r.epochs, r.lr, r.loss["w_size"], r.projector["out_dim"]) == (4, 256, 1000, 3e-3, 128, 64)
    r = get_recipe("intl_cifar10")
    assert r.effective_lr == pytest.approx(0.3) and r.projector["hidden_dim"] == 2048
    r = get_recipe("intl_imagenet100")
    assert r.effective_lr == pytest.approx(0.5 * 128 / 256)
    r = get_recipe("cwrgp_imagenet")
    assert r.effective_lr == pytest.approx(0.05 * 512 / 256) and r.loss["groups"] == 2


def test_overrides_are_typed_and_validated():
    r = resolve_recipe("cwrgp_cifar10", {"epochs": "3", "loss.w_size": "32", "batch_size": 64,
                                         "projector.out_dim": "128", "arch": "resnet10t"})
    assert (r.epochs, r.loss["w_size"], r.batch_size, r.projector["out_dim"], r.arch) == (3, 32, 64, 128, "resnet10t")
    r = resolve_recipe("wmse_cifar10", {"loss.normalize": "false", "lr_drops": "5,2"})
    assert r.loss["normalize"] is False and r.lr_drops == (5, 2)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"epoch": 3}, r"unknown recipe field 'epoch' \(did you mean epochs"),
        ({"epochs": "ten"}, r"override epochs='ten': expected a int"),
        ({"epochs": 0}, r"epochs=0 must be a positive integer"),
        ({"batch_size": 100}, r"batch_size=100 is not a multiple of loss.w_size=128"),
        ({"optimizer": "rmsprop"}, r"optimizer='rmsprop' is not one of"),
        ({"loss.groups": 2}, r"loss keys \['groups'\] are not parameters of WMSELoss"),
        ({"head.size": 3}, r"only loss.\* and projector.\* are tables"),
        ({"num_views": 1}, r"num_views=1 must be at least 2"),
    ],
)
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_recipe("wmse_cifar10", overrides)


def test_unknown_recipe_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown recipe 'intl_cifar'; did you mean .*intl_cifar10"):
        get_recipe("intl_cifar")
