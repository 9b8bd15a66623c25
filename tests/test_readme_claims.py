"""README claims that are commands, run through the CLI: ``wssl-zoo card --all``, ``wssl-zoo list
--update-readme``, ``wssl-zoo pretrain --show`` and ``--config``."""

from __future__ import annotations

import json

import pytest

import wssl_zoo
from wssl_zoo import cards
from wssl_zoo.cli import main, readme_with_table
from wssl_zoo.pretrain.cli import main as pretrain_main
from wssl_zoo.registry import get_entry

from conftest import REPO_ROOT


def test_card_all_writes_one_current_card_per_entry(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "MODEL_CARDS"
    folder.mkdir()
    (folder / "intl_resnet50.md").write_text("stale\n")
    monkeypatch.setattr(cards.write_cards, "__defaults__", (folder,))  # not the repository's MODEL_CARDS/
    assert main(["card", "--all"]) == 0
    assert capsys.readouterr().out.count("wrote ") == len(wssl_zoo.list_models())
    assert sorted(p.stem for p in folder.iterdir()) == sorted(wssl_zoo.list_models())
    for name in wssl_zoo.list_models():
        assert (folder / f"{name}.md").read_text() == cards.render_card(get_entry(name)), name


def test_list_update_readme_regenerates_the_table(tmp_path, capsys):
    original = (REPO_ROOT / "README.md").read_text()
    readme = tmp_path / "README.md"
    expected = readme_with_table(original)
    row = next(line for line in expected.splitlines() if line.startswith("| `intl_resnet50`"))
    readme.write_text(expected.replace(row, "| `intl_resnet50` | stale row |"))
    assert main(["list", "--update-readme", str(readme)]) == 0
    assert f"updated the generated tables in {readme}" in capsys.readouterr().out
    assert readme.read_text() == expected


def test_pretrain_show_prints_the_resolved_recipe_with_overrides_and_config(tmp_path, capsys):
    assert pretrain_main(["--recipe", "intl_cifar10", "--show", "--set", "epochs=3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "intl_cifar10" and shown["epochs"] == 3 and shown["method"] == "intl"
    config = tmp_path / "over.toml"
    config.write_text('epochs = 7\nbatch_size = 64\n[projector]\nout_dim = 128\n')
    assert pretrain_main(["--recipe", "intl_cifar10", "--show", "--config", str(config), "--set", "epochs=9"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["epochs"], shown["batch_size"], shown["projector"]["out_dim"]) == (9, 64, 128)  # --set wins
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert pretrain_main(["--recipe", "intl_cifar10", "--show", "--config", str(tmp_path / "bad.json")]) == 2
    assert "expected a table of overrides" in capsys.readouterr().err
    assert pretrain_main(["--recipe", "intl_cifar10", "--show", "--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: no such file" in capsys.readouterr().err
