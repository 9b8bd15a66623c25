"""Each fact once: a protocol value, a recipe value or a list of dataset names written in a second place
fails here (issue 24). The values live in wssl_zoo/methods/<method>.py (recipes and protocols, each
with its source) and wssl_zoo/catalogue.py (datasets); everything else reads them."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest

from eval import protocols
from wssl_zoo import catalogue
from wssl_zoo.pretrain.recipes import Recipe
from wssl_zoo.registry import _RECIPE_KEYS, default_registry_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_CLASSES = ("LinearProtocol", "KNNProtocol", "SemiProtocol")
IDENTITY_FIELDS = {"name", "version", "source", "kind"}


def _no_defaults(cls, keep=()) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in keep and f.init and
            (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]


def protocol_values_written_in(source: str) -> list[str]:
    """Where ``source`` (the text of eval/protocols.py) writes a protocol value itself: a float literal,
    or a call of a protocol class with a keyword other than name / version / source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            found.append(f"line {node.lineno}: the number {node.value}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in PROTOCOL_CLASSES:
            found += [f"line {node.lineno}: {kw.arg}=" for kw in node.keywords
                      if kw.arg is not None and kw.arg not in IDENTITY_FIELDS]
            if len(node.args) > 2:
                found.append(f"line {node.lineno}: positional values")
    return found


def test_protocol_values_are_written_only_in_the_methods_tables():
    for cls in (protocols.LinearProtocol, protocols.KNNProtocol, protocols.SemiProtocol):
        assert _no_defaults(cls) == [], f"{cls.__name__} gives defaults: values belong in wssl_zoo/methods/"
    assert protocol_values_written_in((REPO / "eval" / "protocols.py").read_text()) == []


def test_the_protocol_check_finds_a_second_copy():  # the test above can fail
    assert sorted(protocol_values_written_in('P = LinearProtocol(name="x", version=1, lr=0.1)')) == [
        "line 1: lr=", "line 1: the number 0.1"]


def test_recipe_values_are_written_only_in_the_methods_tables():
    assert _no_defaults(Recipe) == [], "Recipe gives defaults: values belong in wssl_zoo/methods/"
    for path in sorted(default_registry_dir().glob("*.toml")):
        copied = sorted(_RECIPE_KEYS & set(tomllib.loads(path.read_text())))
        assert copied == [], f"{path.name} copies its recipe's {copied}"


def dataset_lists_in(source: str, filename: str = "<text>") -> list[str]:
    """Tuple, list, set and dict literals in ``source`` that spell two or more of the catalogue's
    classification dataset names or aliases: a second list of datasets (``choices=[...]``, a size table,
    a display-name table). (Detection's ``coco`` and ``voc`` are task names too, so they are not counted.)"""
    known = {key for d in catalogue.CATALOGUE.values() if d.task == "classification" for key in (d.name, *d.aliases)}
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None) \
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else None
        if not items:
            continue
        names = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)} & known
        if len(names) >= 2:
            found.append(f"{filename}:{node.lineno} {sorted(names)}")
    return found


@pytest.mark.parametrize("package", ["wssl_zoo", "eval", "detection"])
def test_dataset_names_are_listed_only_in_the_catalogue(package):
    # wssl_zoo/methods/ holds the authors' facts per dataset (e.g. their CIFAR statistics): keyed by name, not a list
    skip = {REPO / "wssl_zoo" / "catalogue.py", *(REPO / "wssl_zoo" / "methods").glob("*.py")}
    found = [hit for path in sorted((REPO / package).rglob("*.py")) if path not in skip
             for hit in dataset_lists_in(path.read_text(), str(path.relative_to(REPO)))]
    assert found == [], "dataset names listed outside wssl_zoo/catalogue.py: " + "; ".join(found)


def test_the_dataset_check_finds_a_second_list():  # the test above can fail
    assert dataset_lists_in('p.add_argument("--dataset", choices=["imagefolder", "cifar10"])') == [
        "<text>:1 ['cifar10', 'imagefolder']"]
    assert dataset_lists_in('SIZE = {"stl10": 96, "tiny_in": 64}') == ["<text>:1 ['stl10', 'tiny_in']"]
