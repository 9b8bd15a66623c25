"""Registry validation, the public API (create / save / load), model directories and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import wssl_zoo
from wssl_zoo.api import WeightsNotPublishedError
from wssl_zoo.cli import main, readme_with_table, zoo_table
from wssl_zoo.modelio import load_model_dir, save_model_dir, sha256_file
from wssl_zoo.registry import RegistryError, UnknownModelError, _load, default_registry_dir, get_entry, load_registry

REPO = Path(__file__).resolve().parent.parent
REQUIRED = {"wmse_resnet50", "cwrgp_resnet50", "intl_resnet50",
            "wmse_resnet18_cifar10", "cwrgp_resnet18_cifar10", "intl_resnet18_cifar10"}


def test_every_entry_parses_validates_and_names_are_unique():
    entries = load_registry()
    assert REQUIRED <= set(entries)
    seen = set()
    for e in entries.values():
        for key in (e.name, *e.aliases):
            assert key not in seen
            seen.add(key)
        assert e.hub.repo_id.startswith("wssl-zoo/") and not e.hub.published
        for r in e.paper_results:
            assert r.label == "reported by the authors" and r.source.startswith("https://github.com/")
        from wssl_zoo.pretrain.recipes import get_recipe

        recipe = get_recipe(e.recipe)
        assert recipe.method == e.method and recipe.arch == e.arch and dict(recipe.loss).items() >= dict(e.loss).items()
    for alias, name in (("intl_r50", "intl_resnet50"), ("cwrgp_r50", "cwrgp_resnet50"), ("wmse_r50", "wmse_resnet50")):
        assert wssl_zoo.get_entry(alias).name == name


def test_paper_numbers_come_from_paper_results_md():
    assert get_entry("intl_r50").paper_result("linear_top1").value == 76.6
    assert get_entry("cwrgp_r50").paper_result("linear_top1").value == 71.0
    assert get_entry("wmse_r50").paper_results == ()  # NOT FOUND in the authors' material


def _copy_registry(tmp_path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(default_registry_dir(), folder)
    _load.cache_clear()
    return folder


def test_duplicate_alias_names_both_files(tmp_path):
    folder = _copy_registry(tmp_path)
    text = (folder / "wmse_resnet50.toml").read_text().replace('aliases = ["wmse_r50"]', 'aliases = ["intl_r50"]')
    (folder / "wmse_resnet50.toml").write_text(text)
    with pytest.raises(RegistryError, match=r"'intl_r50' is used by both .*intl_resnet50.toml and .*wmse_resnet50.toml"):
        load_registry(folder)


@pytest.mark.parametrize(
    "old,new,match",
    [
        ('method = "wmse"', 'method = "byol"', r"wmse_resnet50.toml: key 'method' is 'byol'"),
        ('img_size = 224', 'img_size = "224"', r"key 'img_size' must be int"),
        ('w_size = 256', 'w_size = 256\ngroups = 2', r"\[loss\] keys \['groups'\] are not parameters of WMSELoss"),
        ('revision = ""', 'revision = "main"', r"revision 'main' must be empty or a 40-hex commit sha"),
        ('name = "wmse_resnet50"', 'name = "wmse_r50x"', r"key 'name' is 'wmse_r50x' but the file is named wmse_resnet50.toml"),
        ('variant =', 'colour = "blue"\nvariant =', r"unknown key\(s\) \['colour'\]"),
    ],
)
def test_bad_entries_name_file_and_key(tmp_path, old, new, match):
    folder = _copy_registry(tmp_path)
    path = folder / "wmse_resnet50.toml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(RegistryError, match=match):
        load_registry(folder)


def test_unknown_name_lists_close_names():
    with pytest.raises(UnknownModelError, match=r"unknown model 'intl_r5'; closest: intl_r50"):
        wssl_zoo.get_entry("intl_r5")
    with pytest.raises(KeyError):
        wssl_zoo.load("intl_resnet5")


def test_unpublished_weights_say_how_to_make_them():
    with pytest.raises(WeightsNotPublishedError, match=r"(?s)not published yet.*wssl-zoo pretrain --recipe intl_m_imagenet_800ep"):
        wssl_zoo.load("intl_r50")


@pytest.mark.parametrize("name", ["cwrgp_resnet18_cifar10", "intl_resnet18_cifar10"])
def test_create_save_load_round_trip(tmp_path, name):
    torch.manual_seed(0)
    model = wssl_zoo.create(name)
    assert not model.training
    entry = wssl_zoo.get_entry(name)
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_model_dir(tmp_path / "m", model, arch=entry.arch, stem=entry.stem, mean=entry.mean, std=entry.std,
                   img_size=entry.img_size)
    loaded = wssl_zoo.load(tmp_path / "m")
    assert not loaded.training
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert torch.equal(wssl_zoo.load(tmp_path / "m" / "model.safetensors")(x), loaded(x))
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_plain_timm_loads_our_directory(tmp_path):
    import timm

    torch.manual_seed(1)
    model = wssl_zoo.create("resnet18")
    save_model_dir(tmp_path, model, arch="resnet18", stem="imagenet", mean=(0.5,) * 3, std=(0.5,) * 3, img_size=64)
    plain = timm.create_model("resnet18", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architecture"] == "resnet18" and cfg["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert len(sha256_file(tmp_path / "model.safetensors")) == 64


def test_strict_loading_names_missing_unexpected_and_nan(tmp_path):
    from safetensors.torch import load_file, save_file

    model = wssl_zoo.create("resnet18")
    save_model_dir(tmp_path, model, arch="resnet18", stem="imagenet", mean=(0.5,) * 3, std=(0.5,) * 3, img_size=32)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["extra.weight"] = state.pop("fc.weight") if "fc.weight" in state else torch.zeros(1)
    state.pop("conv1.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['conv1.weight'\]; unexpected keys \['extra.weight'\]"):
        load_model_dir(tmp_path)
    state = dict(model.state_dict())
    state["conv1.weight"] = state["conv1.weight"].clone()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'conv1.weight' holds NaN"):
        load_model_dir(tmp_path)
    with pytest.raises(ValueError, match="refusing to save"):
        bad = wssl_zoo.create("resnet18")
        with torch.no_grad():
            bad.conv1.weight[0, 0, 0, 0] = float("inf")
        save_model_dir(tmp_path / "bad", bad, arch="resnet18", stem="imagenet", mean=(0.5,) * 3, std=(0.5,) * 3, img_size=32)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        wssl_zoo.load(str(tmp_path / "nothing" / "here"))


def test_cli_list_info_and_errors(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "intl_resnet50" in out and "76.60 (reported by the authors)" in out
    assert main(["info", "cwrgp_r50"]) == 0
    out = capsys.readouterr().out
    assert "cwrgp_resnet50" in out and "model.safetensors: sha256 (empty until published)" in out
    assert main(["info", "nope_model"]) == 2
    assert "unknown model 'nope_model'" in capsys.readouterr().err


def test_readme_zoo_table_is_up_to_date():
    text = (REPO / "README.md").read_text()
    assert readme_with_table(text) == text, "run `wssl-zoo list --update-readme README.md`"
    assert zoo_table().count("\n") == len(load_registry()) + 2


def test_model_cards_are_up_to_date_and_labelled():
    from wssl_zoo.cards import CARDS_DIR, render_card

    for name in wssl_zoo.list_models():
        path = CARDS_DIR / f"{name}.md"
        assert path.is_file(), f"missing {path}: run `wssl-zoo card --all`"
        text = render_card(get_entry(name))
        assert path.read_text() == text, f"{path} is stale: run `wssl-zoo card --all`"
        assert text.startswith("---\nlibrary_name: timm") and "## Citation" in text
    card = render_card(get_entry("intl_r50"))
    assert "| 76.6 | paper: reported by the authors" in card and "not published yet" in card
