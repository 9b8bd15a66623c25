"""The provenance tables of wssl_zoo/methods/ hold every recipe and protocol value exactly."""

import dataclasses

import pytest

from eval.protocols import PROTOCOLS
from wssl_zoo.methods import PROTOCOL_META_FIELDS, flatten_recipe, protocol_provenance, recipe_provenance, show_recipe
from wssl_zoo.pretrain.recipes import RECIPES, resolve_recipe


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
    import json

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
    from wssl_zoo.data.transforms import build_view_transform
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
