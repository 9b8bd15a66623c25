"""The provenance tables of wssl_zoo/methods/ hold every recipe and protocol value exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest

from eval.protocols import PROTOCOLS
from wssl_zoo.data.transforms import build_view_transform
from wssl_zoo.methods import PROTOCOL_META_FIELDS, flatten_recipe, protocol_provenance, recipe_provenance, show_recipe
from wssl_zoo.pretrain.recipes import RECIPES, resolve_recipe

from builders import TINY_PROJ


def _last_bn_weights(backbone):
    from timm.models.resnet import BasicBlock, Bottleneck

    return [m.bn3.weight if isinstance(m, Bottleneck) else m.bn2.weight
            for m in backbone.modules() if isinstance(m, (BasicBlock, Bottleneck))]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_resolves_to_its_provenance_table(name):
    table = recipe_provenance(name)
    resolved = flatten_recipe(resolve_recipe(name).to_dict())
    assert set(resolved) == set(table), f"{name}: fields without a source {set(resolved) ^ set(table)}"
    for key, value in resolved.items():
        assert value == table[key].value and type(value) is type(table[key].value), (name, key, value, table[key])
        assert table[key].source


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_protocol_resolves_to_its_provenance_table(name):
    table = protocol_provenance(name)
    values = {k: v for k, v in dataclasses.asdict(PROTOCOLS[name]).items() if k not in PROTOCOL_META_FIELDS}
    assert set(values) == set(table)
    for key, value in values.items():
        assert value == table[key].value, (name, key, value, table[key])


def test_every_authors_source_cites_repo_at_commit():
    for name in RECIPES:
        for key, fact in recipe_provenance(name).items():
            if fact.authors:
                assert "@" in fact.source and (".py" in fact.source or ".sh" in fact.source or ".md" in fact.source), (
                    name, key, fact.source)


def test_show_marks_overrides_with_the_authors_value():
    shown = show_recipe(resolve_recipe("cwrgp_cifar10", {"epochs": 2}))
    assert shown["provenance"]["epochs"]["override"] is True
    assert shown["provenance"]["epochs"]["authors_value"] == 1000
    assert "override" not in shown["provenance"]["lr"]
    assert "scripts/base.sh:3" in shown["provenance"]["lr"]["source"]


def test_show_prints_the_methods_facts_with_sources():

    shown = json.loads(json.dumps(show_recipe(resolve_recipe("intl_cifar10"))))
    facts = shown["method_facts"]
    assert facts["gather_distributed"]["value"] is True and "methods/whitening.py:14" in facts["gather_distributed"]["source"]
    assert facts["eval_stats"]["value"]["cifar100"] == [[0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]]
    assert show_recipe(resolve_recipe("wmse_cifar10"))["method_facts"]["head_on_concat"]["value"] is True


def test_every_per_method_table_covers_exactly_the_registry_methods():
    """registry.METHODS is the one list of methods; every table keyed by method (loss class, projector,
    views, GPU views, provenance module, checkpoint layout, demo recipe, recipes) has exactly those
    keys, so a fourth method added to METHODS fails here until each part exists, and a part
    removed or misnamed fails too."""
    from wssl_zoo import demo, methods
    from wssl_zoo.convert import LAYOUTS
    from wssl_zoo.data.device_views import ViewPlan
    from wssl_zoo.heads import PROJECTORS
    from wssl_zoo.losses import LOSSES
    from wssl_zoo.registry import METHODS

    assert [m.__name__.rsplit(".", 1)[-1] for m in methods._modules()] == list(METHODS)
    assert set(LOSSES) == set(PROJECTORS) == set(demo.BASE_RECIPE) == set(METHODS)
    assert {layout.method for layout in LAYOUTS.values()} == set(METHODS)
    assert {r.method for r in RECIPES.values()} == set(METHODS)
    facts = [set(m.FACTS) for m in methods._modules()]
    assert all(f == facts[0] for f in facts), "every method answers the same fact keys"
    for method in METHODS:
        assert LOSSES[method].method == method, "a loss declares the method whose facts it reads"
        assert RECIPES[demo.BASE_RECIPE[method]].method == method
        assert len(build_view_transform(method, "cifar10", 32, 2)) == 2
        assert len(ViewPlan(build_view_transform(method, "cifar10", 32, 2))) == 2
    with pytest.raises(ValueError, match="unknown method 'simclr'"):
        build_view_transform("simclr", "cifar10", 32, 2)
    with pytest.raises(ValueError, match="unknown method 'simclr'"):
        methods.fact("simclr", "head_on_concat")


def test_the_recipes_are_built_from_the_tables_alone(monkeypatch):
    """One home for a recipe's values: editing a table's value (and only the table) changes the recipe."""
    from wssl_zoo.methods import Fact, intl
    from wssl_zoo.pretrain import recipes

    table = dict(intl.RECIPES["intl_cifar10"], epochs=Fact(7, "test"), **{"loss.iterations": Fact(3, "test")})
    monkeypatch.setitem(intl.RECIPES, "intl_cifar10", table)
    rebuilt = recipes._build_recipes()["intl_cifar10"]
    assert (rebuilt.epochs, rebuilt.loss["iterations"]) == (7, 3)
    assert rebuilt.source == intl.RECIPE_DOCS["intl_cifar10"]["source"]
    assert recipes.RECIPES["intl_cifar10"].epochs == 1000  # the module's recipes are untouched


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
