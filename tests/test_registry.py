"""The zoo registry: every TOML entry validates, agrees with its recipe and with the paper numbers
of shared/PAPER_RESULTS.md, and malformed entries fail with errors naming the file and the key."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wssl_zoo
from wssl_zoo.cli import readme_with_table, zoo_table
from wssl_zoo.registry import (
    METHODS,
    STEMS,
    RegistryError,
    UnknownModelError,
    clear_cache,
    default_registry_dir,
    get_entry,
    list_models,
    load_registry,
)

SIX = {"wmse_resnet50", "cwrgp_resnet50", "intl_resnet50",
       "wmse_resnet18_cifar10", "cwrgp_resnet18_cifar10", "intl_resnet18_cifar10"}


ALIASES = {"wmse_r50": "wmse_resnet50", "cwrgp_r50": "cwrgp_resnet50", "intl_r50": "intl_resnet50",
           "wmse_r18_c10": "wmse_resnet18_cifar10", "cwrgp_r18_c10": "cwrgp_resnet18_cifar10",
           "intl_r18_c10": "intl_resnet18_cifar10"}


# Every [README] number of shared/PAPER_RESULTS.md that belongs to one of the six models:
# (entry, task, dataset, epochs) -> value. W-MSE has none (its Table 1 is only in third-party copies).
CWRGP = "https://github.com/winci-ai/CW-RGP @ 5bbf6ed4df355d151fe278e87ad51dd2bff89a14"


INTL = "https://github.com/winci-ai/INTL @ 0aa69af20a263d1d714e45bc835925a84dc11956"


PAPER = {
    ("cwrgp_resnet18_cifar10", "linear_top1", "cifar10", 1000): 92.47,
    ("cwrgp_resnet18_cifar10", "knn5_top1", "cifar10", 1000): 90.74,
    ("cwrgp_resnet50", "linear_top1", "imagenet", 200): 71.0,
    ("cwrgp_resnet50", "linear_top1", "imagenet", 100): 69.7,
    ("cwrgp_resnet50", "voc_det_ap50", "voc07+12", 200): 82.2,
    ("cwrgp_resnet50", "voc_det_ap", "voc07+12", 200): 57.2,
    ("cwrgp_resnet50", "coco_det_ap", "coco", 200): 40.7,
    ("cwrgp_resnet50", "coco_seg_ap", "coco", 200): 35.5,
    ("intl_resnet18_cifar10", "linear_top1", "cifar10", 1000): 92.60,
    ("intl_resnet18_cifar10", "knn5_top1", "cifar10", 1000): 90.03,
    ("intl_resnet18_cifar10", "linear_top5", "cifar10", 1000): 99.80,
    ("intl_resnet50", "linear_top1", "imagenet", 800): 76.6,
    ("intl_resnet50", "linear_top1", "imagenet", 400): 76.1,
    ("intl_resnet50", "linear_top1", "imagenet", 200): 75.2,
    ("intl_resnet50", "linear_top1", "imagenet", 100): 73.5,
    ("intl_resnet50", "coco_det_ap", "coco", 200): 41.2,
    ("intl_resnet50", "coco_seg_ap", "coco", 200): 35.7,
}


@pytest.fixture
def registry_copy(tmp_path) -> Path:
    """A copy of the registry with every entry unpublished (the edits below start from that state)."""
    from conftest import _set_hub_state

    folder = tmp_path / "models"
    shutil.copytree(default_registry_dir(), folder)
    _set_hub_state(folder, published=False)
    clear_cache()
    return folder


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


SHA = "ab" * 32


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_every_entry_parses_and_validates():
    entries = load_registry()
    assert set(entries) == SIX
    for name, e in entries.items():
        assert e.path == default_registry_dir() / f"{name}.toml"
        assert e.method in METHODS and e.stem in STEMS
        assert e.name.startswith(e.method + "_")
        assert e.embedding_dim == e.projector["out_dim"]
        assert (e.arch, e.feature_dim) in {("resnet50", 2048), ("resnet18", 512)}
        imagenet = e.training["dataset"] == "imagenet"
        # INTL's CIFAR network pads by 2 (winci-ai/INTL src/resnet.py:156,276 + src/model.py:24)
        assert e.stem == ("imagenet" if imagenet else "cifar_pad2" if e.method == "intl" else "cifar")
        assert e.img_size == (224 if imagenet else 32)
        assert e.mean == ((0.485, 0.456, 0.406) if imagenet else (0.4914, 0.4822, 0.4465))
        assert e.hub.repo_id.endswith(f"/{name}")
        if e.hub.published:  # pinned by `wssl-zoo publish`: a commit and a sha256 per file
            assert len(e.hub.revision) == 40 and all(c in "0123456789abcdef" for c in e.hub.revision)
            assert {"model.safetensors", "config.json"} <= set(e.hub.files)
            assert all(len(h) == 64 for h in e.hub.files.values())
        else:
            assert e.hub.revision == "" and set(e.hub.files) == {"model.safetensors", "config.json"}
        assert e.citation.startswith("@") and e.official.get("url") or e.official.get("note")
        assert e.training["source"].startswith("https://github.com/") and " @ " in e.training["source"]


@pytest.mark.parametrize("name", sorted(SIX))
def test_loss_section_builds_the_loss_and_matches_the_recipe(name):
    from wssl_zoo.losses import build_loss
    from wssl_zoo.pretrain.recipes import get_recipe

    e = get_entry(name)
    loss = build_loss(e.method, **e.loss)  # the [loss] table is exactly the class's keyword arguments
    assert type(loss).__name__ == {"wmse": "WMSELoss", "cwrgp": "CWRGPLoss", "intl": "INTLLoss"}[e.method]
    r = get_recipe(e.recipe)
    assert (r.method, r.arch, r.stem, r.img_size, r.dataset) == (e.method, e.arch, e.stem, e.img_size, e.training["dataset"])
    assert dict(r.loss) == dict(e.loss)
    assert {k: r.projector[k] for k in e.projector} == dict(e.projector)
    t = e.training
    assert (r.epochs, r.batch_size, r.num_views, r.optimizer) == (t["epochs"], t["batch_size"], t["views"], t["optimizer"])
    assert (r.lr, r.weight_decay, r.lr_scaling) == (t["lr"], t["weight_decay"], t.get("lr_scaling", "none"))
    assert r.ema_momentum == t.get("ema_momentum") and r.cov_stop_epoch == t.get("cov_stop_epoch")


def test_official_recipes_hold_the_authors_settings():
    cw = get_entry("cwrgp_r50")
    assert {"w_size": 128, "groups": 2, "cov_weight": 0.01}.items() <= dict(cw.loss).items()
    assert (cw.training["cov_stop_epoch"], cw.training["batch_size"], cw.training["views"]) == (100, 512, 4)
    assert dict(cw.projector) == {"num_layers": 3, "hidden_dim": 2048, "out_dim": 1024, "hidden_bias": True}
    intl = get_entry("intl_r50")
    assert intl.training["ema_momentum"] == 0.996 and intl.training["views"] == 6 and intl.loss["momentum"] is True
    assert dict(intl.projector) == {"num_layers": 3, "hidden_dim": 8192, "out_dim": 8192, "hidden_bias": False}
    assert get_entry("wmse_r18_c10").loss["w_size"] == 128 and get_entry("wmse_r18_c10").embedding_dim == 64
    assert get_entry("cwrgp_r18_c10").loss["groups"] == 4 and get_entry("cwrgp_r18_c10").loss["w_size"] == 64


def test_feature_dim_is_the_backbone_width():
    from wssl_zoo.encoders import create_backbone

    widths = {}
    for e in load_registry().values():
        if (e.arch, e.stem) not in widths:
            widths[(e.arch, e.stem)] = create_backbone(e.arch, e.stem).num_features
        assert e.feature_dim == widths[(e.arch, e.stem)], e.name


def test_paper_results_are_exactly_the_readme_numbers():
    registered = {}
    for e in load_registry().values():
        for r in e.paper_results:
            key = (e.name, r.task, r.dataset, r.epochs)
            assert key not in registered, f"{key} registered twice"
            registered[key] = r.value
            assert r.label == "reported by the authors"
            assert r.source.startswith(CWRGP if e.method == "cwrgp" else INTL) and "README.md" in r.source
    assert registered == PAPER  # nothing third-party, nothing missing
    for name in ("wmse_resnet50", "wmse_resnet18_cifar10"):
        e = get_entry(name)
        assert e.paper_results == () and "paper numbers" in e.notes
    assert "ImageNet-100" in get_entry("wmse_r50").notes
    assert get_entry("intl_r50").paper_result("linear_top1", "imagenet", epochs=800).value == 76.6
    assert get_entry("cwrgp_r50").paper_result("linear_top1").value == 71.0  # the entry's own epochs first


def test_official_checkpoints_are_the_readme_links():
    assert get_entry("intl_r50").official["url"].startswith("https://drive.google.com/file/d/1zHZPpHjMKnzwHyOD93cuRO0o8QMbWnxV")
    assert get_entry("cwrgp_r50").official["url"].startswith("https://drive.google.com/file/d/1xMWmEW-AykQ5hdlfir0Tjjn8-UOOMHyx")
    for name in ("wmse_resnet50", "wmse_resnet18_cifar10", "cwrgp_resnet18_cifar10", "intl_resnet18_cifar10"):
        official = get_entry(name).official
        assert official["url"] == "" and "no" in official["note"]


def test_names_and_aliases_are_unique_and_resolve():
    seen = []
    for e in load_registry().values():
        seen += [e.name, *e.aliases]
    assert len(seen) == len(set(seen))
    for alias, name in ALIASES.items():
        assert get_entry(alias).name == name
        assert wssl_zoo.get_entry(alias) is get_entry(name)


def test_list_models_filters_by_method():
    assert list_models() == sorted(SIX)
    assert list_models("intl") == ["intl_resnet18_cifar10", "intl_resnet50"]
    assert wssl_zoo.list_models() == sorted(SIX)
    with pytest.raises(ValueError, match="unknown method 'byol'"):
        list_models("byol")


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownModelError) as info:
        get_entry("cwrgp_resnet5")
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    assert str(err).startswith("unknown model 'cwrgp_resnet5'; closest: cwrgp_resnet50")
    assert "wssl_zoo.list_models()" in str(err)
    with pytest.raises(UnknownModelError, match=r"unknown model 'zzzz' \(wssl_zoo"):
        get_entry("zzzz")  # nothing close: no "closest" list


def test_entries_are_frozen():
    e = get_entry("intl_r50")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.name = "other"
    with pytest.raises(TypeError):
        e.loss["iterations"] = 8
    with pytest.raises(TypeError):
        e.training["epochs"] = 1
    with pytest.raises(TypeError):
        e.hub.files["model.safetensors"] = "0" * 64


def test_duplicate_alias_across_files_names_both_files(registry_copy):
    _edit(registry_copy / "intl_resnet18_cifar10.toml", 'aliases = ["intl_r18_c10"]', 'aliases = ["intl_r18_c10", "cwrgp_r50"]')
    with pytest.raises(RegistryError) as info:
        load_registry(registry_copy)
    msg = str(info.value)
    assert "'cwrgp_r50' is used by both" in msg
    assert str(registry_copy / "cwrgp_resnet50.toml") in msg and str(registry_copy / "intl_resnet18_cifar10.toml") in msg


def test_alias_equal_to_another_entrys_name_is_a_duplicate(registry_copy):
    _edit(registry_copy / "wmse_resnet50.toml", 'aliases = ["wmse_r50"]', 'aliases = ["intl_resnet50"]')
    with pytest.raises(RegistryError, match=r"'intl_resnet50' is used by both .*intl_resnet50.toml and .*wmse_resnet50.toml"):
        load_registry(registry_copy)


def test_alias_repeated_in_one_file(registry_copy):
    _edit(registry_copy / "wmse_resnet50.toml", 'aliases = ["wmse_r50"]', 'aliases = ["wmse_r50", "wmse_r50"]')
    with pytest.raises(RegistryError, match=r"wmse_resnet50.toml: name or alias 'wmse_r50' is listed twice"):
        load_registry(registry_copy)


@pytest.mark.parametrize(
    "old,new,match",
    [
        # the recipe's values are the recipe's: an entry that copies one is refused, naming the key
        ('recipe = "cwrgp_cifar10"', 'recipe = "cwrgp_cifar10"\narch = "resnet18"', r"key\(s\) \['arch'\] are the recipe's values"),
        ('recipe = "cwrgp_cifar10"', 'recipe = "cwrgp_cifar10"\nmethod = "simclr"', r"key\(s\) \['method'\] are the recipe's values"),
        ('recipe = "cwrgp_cifar10"', 'recipe = "cwrgp_cifar10"\nstem = "tiny"\nfeature_dim = 512', r"key\(s\) \['feature_dim', 'stem'\] are the recipe's values"),
        ('recipe = "cwrgp_cifar10"', 'recipe = "cwrgp_cifar10"\nmean = [0.4914, 0.4822]', r"key\(s\) \['mean'\] are the recipe's values"),
        ("[hub]\n", "[loss]\ngroups = 4\n\n[hub]\n", r"key\(s\) \['loss'\] are the recipe's values, held once in wssl_zoo/methods/"),
        ("[hub]\n", "[projector]\nnum_layers = 2\n\n[training]\nepochs = 1000\n\n[hub]\n", r"key\(s\) \['projector', 'training'\] are"),
        ('recipe = "cwrgp_cifar10"', 'recipe = "cwrgp_cifar10x"', r"key 'recipe' 'cwrgp_cifar10x' is not a recipe; closest: cwrgp_cifar10"),
        ('recipe = "cwrgp_cifar10"', 'recipe = "intl_cifar10"', r"key 'name' 'cwrgp_resnet18_cifar10' must start with its recipe's method, intl_"),
        ('recipe = "cwrgp_cifar10"\n', "", r"cwrgp_resnet18_cifar10.toml: missing key 'recipe'"),
        ('aliases = ["cwrgp_r18_c10"]', 'aliases = ["CWRGP-R18"]', r"key 'aliases': 'CWRGP-R18' must be lower-case"),
        ('repo_id = "wssl-zoo/cwrgp_resnet18_cifar10"', 'repo_id = "cwrgp"', r"\[hub\]: key 'repo_id' 'cwrgp' must look like 'org/name'"),
        ('revision = ""', 'revision = "main"', r"revision 'main' must be empty or a 40-hex commit sha"),
        ('revision = ""', f'revision = "{COMMIT}"', r"\[hub\]: a revision is pinned but \[hub.files\] \['config.json', 'model.safetensors'\] have no sha256"),
        ('"model.safetensors" = ""', '"model.safetensors" = "abc123"', r"\[hub.files\]: 'model.safetensors' sha256 'abc123' must be empty or 64"),
        ('"model.safetensors" = ""', f'"model.safetensors" = "{SHA.upper()}"', r"\[hub.files\]: 'model.safetensors' sha256"),
        ('"config.json" = ""', '"config.json" = ""\n\n[hub.sizes]\n"weights.bin" = 10', r"\[hub.sizes\]: 'weights.bin' is not listed in \[hub.files\]"),
        ('url = ""', 'url = "http://example.org/ckpt.pth"', r"\[official\]: key 'url' 'http://example.org/ckpt.pth' must be empty or an https://"),
        ('label = "reported by the authors"', 'label = "  "', r"\[\[paper_results\]\] #1: key 'label' must not be empty"),
        ('label = "reported by the authors"', 'label = "reported"\ncolour = "red"', r"\[\[paper_results\]\] #1: unknown key\(s\) \['colour'\]"),
        ("value = 92.47", 'value = "92.47"', r"\[\[paper_results\]\] #1: key 'value' must be float"),
        ("value = 92.47", "value = nan", r"#1: key 'value' must be finite"),
        ("epochs = 1000\nlabel", "epochs = 1000.5\nlabel", r"#1: key 'epochs' must be int"),
        ('name = "cwrgp_resnet18_cifar10"', 'name = "cwrgp_r18"', r"key 'name' is 'cwrgp_r18' but the file is named cwrgp_resnet18_cifar10.toml"),
        ('citation = """', 'colour = "blue"\ncitation = """', r"cwrgp_resnet18_cifar10.toml: unknown key\(s\) \['colour'\]"),
        ('variant = "', 'variant = = "', r"cwrgp_resnet18_cifar10.toml: invalid TOML"),
    ],
)
def test_malformed_entry_error_names_file_and_key(registry_copy, old, new, match):
    _edit(registry_copy / "cwrgp_resnet18_cifar10.toml", old, new)
    with pytest.raises(RegistryError, match=match) as info:
        load_registry(registry_copy)
    assert "cwrgp_resnet18_cifar10.toml" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_published_entry_parses(registry_copy):
    path = registry_copy / "cwrgp_resnet18_cifar10.toml"
    _edit(path, 'revision = ""', f'revision = "{COMMIT}"')
    _edit(path, '"model.safetensors" = ""', f'"model.safetensors" = "{SHA}"')
    _edit(path, '"config.json" = ""', f'"config.json" = "{"cd" * 32}"\n\n[hub.sizes]\n"model.safetensors" = 44791264')
    hub = get_entry("cwrgp_r18_c10", directory=registry_copy).hub
    assert hub.published and hub.revision == COMMIT and hub.files["model.safetensors"] == SHA
    assert dict(hub.sizes) == {"model.safetensors": 44791264}


def test_env_var_points_to_another_registry(registry_copy, monkeypatch):
    for path in registry_copy.glob("*.toml"):
        if path.stem != "intl_resnet50":
            path.unlink()
    monkeypatch.setenv("WSSL_ZOO_REGISTRY", str(registry_copy))
    assert default_registry_dir() == registry_copy
    assert list_models() == ["intl_resnet50"]
    with pytest.raises(UnknownModelError):
        get_entry("wmse_r50")
    monkeypatch.delenv("WSSL_ZOO_REGISTRY")
    assert "wmse_resnet50" in list_models()


def test_missing_or_empty_registry_folder(tmp_path):
    with pytest.raises(RegistryError, match=r"nothing.*does not exist \(set WSSL_ZOO_REGISTRY"):
        load_registry(tmp_path / "nothing")
    with pytest.raises(RegistryError, match="holds no \\*.toml entries"):
        load_registry(tmp_path)


def test_registry_is_cached_until_cleared(registry_copy):
    first = get_entry("intl_r50", directory=registry_copy)
    assert get_entry("intl_r50", directory=registry_copy) is first
    _edit(registry_copy / "intl_resnet50.toml", "for 800 epochs", "for 801 epochs")
    assert "for 800 epochs" in get_entry("intl_r50", directory=registry_copy).description  # cached
    clear_cache()
    assert "for 801 epochs" in get_entry("intl_r50", directory=registry_copy).description


def test_readme_zoo_table_is_up_to_date():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert readme_with_table(text) == text, "run `wssl-zoo list --update-readme README.md`"
    assert zoo_table().count("\n") == len(load_registry()) + 2


def test_model_cards_are_up_to_date_and_labelled():
    from wssl_zoo.cards import CARDS_DIR, render_card

    for name in wssl_zoo.list_models():
        path = CARDS_DIR / f"{name}.md"
        assert path.is_file(), f"missing {path}: run `wssl-zoo card --all`"
        text = render_card(get_entry(name))
        assert path.read_text() == text, f"{path} is stale: run `wssl-zoo card --all`"
        # library_name: timm only where timm builds the network (the imagenet stem)
        timm_line = "\nlibrary_name: timm\n" in text.split("\n---\n")[0]
        assert text.startswith("---\n") and timm_line == (get_entry(name).stem == "imagenet") and "## Citation" in text
    card = render_card(get_entry("intl_r50"))
    assert "| 76.6 | paper: reported by the authors" in card
    assert ("not published yet" in card) is (not get_entry("intl_r50").hub.published)


def test_one_command_checks_every_generated_document(tmp_path, monkeypatch, capsys):
    """`wssl-zoo docs --check` is clean on the checkout and names a stale document (the one generator)."""
    from wssl_zoo import documents
    from wssl_zoo.cli import main

    assert main(["docs", "--check"]) == 0, capsys.readouterr().out
    readme = tmp_path / "README.md"
    readme.write_text((Path(__file__).resolve().parent.parent / "README.md").read_text().replace(
        "| `intl_resnet50` |", "| `intl_resnet50_stale` |"))
    monkeypatch.setattr(documents, "readme_path", lambda: readme)
    capsys.readouterr()
    assert main(["docs", "--check"]) == 1 and f"out of date: {readme}" in capsys.readouterr().out
    assert main(["docs"]) == 0 and "| `intl_resnet50` |" in readme.read_text()
    assert main(["docs", "--check"]) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_registry_reader_gives_a_named_error_or_an_entry(tmp_path, data):
    from wssl_zoo.registry import RegistryError, ZooEntry, _parse_entry

    path = tmp_path / "some_model.toml"
    path.write_bytes(data)
    try:
        entry = _parse_entry(path)
    except RegistryError as exc:
        assert "some_model.toml" in str(exc)
    else:
        assert isinstance(entry, ZooEntry)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10_000), junk=st.binary(max_size=20))
def test_a_damaged_real_registry_entry_gives_a_named_error_or_an_entry(tmp_path, cut, junk):
    from wssl_zoo.registry import RegistryError, ZooEntry, _parse_entry, default_registry_dir

    original = sorted(default_registry_dir().glob("*.toml"))[0]
    text = original.read_bytes()
    cut = cut % (len(text) + 1)
    path = tmp_path / original.name
    path.write_bytes(text[:cut] + junk + text[cut + len(junk):])
    try:
        entry = _parse_entry(path)
    except RegistryError as exc:
        assert original.name in str(exc)
    else:
        assert isinstance(entry, ZooEntry)
