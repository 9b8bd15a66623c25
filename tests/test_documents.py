"""The generated documents (wssl_zoo/documents.py): the leaderboard, README tables and model cards are
deterministic, spliced between their markers, and the checked-in copies are current."""

from __future__ import annotations

import pytest

import wssl_zoo
from eval import report
from eval.records import read_records, write_record
from wssl_zoo import cards, documents, plots
from wssl_zoo.cli import main, readme_with_table
from wssl_zoo.registry import get_entry

from conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("cache")  # a feature cache of its own for every test


def test_report_is_deterministic_and_updates_readme_markers(tmp_path):
    base = dict(schema_version=1, weights_sha256="a" * 64, seed=0, wall_seconds=1.0, hardware="cpu", torch="x",
                code_version="y", created="z", command="c", dataset={"name": "cifar10", "fingerprint": "f"})
    records = [dict(base, task="linear", model="m1", protocol={"name": "fast", "version": 1}, metrics={"top1": 60.0}),
               dict(base, task="linear", model="m1", seed=1, protocol={"name": "fast", "version": 1}, metrics={"top1": 62.0}),
               dict(base, task="knn", model="m2", protocol={"name": "knn5", "version": 1}, metrics={"top1": 40.0})]
    for i, r in enumerate(records):
        write_record(r, tmp_path / "res" / f"r{i}.json")
    loaded = read_records(tmp_path / "res")
    md = report.render_leaderboard(loaded)
    assert md == report.render_leaderboard(read_records(tmp_path / "res"))
    assert "| model | knn / knn5 / cifar10 | linear / fast / cifar10 |" in md
    assert "| m1 | — | 61.00 ± 1.41 (n=2) |" in md and "| m2 | 40.00 | — |" in md
    assert report.plot_data(loaded) == report.plot_data(read_records(tmp_path / "res"))
    if plots.have_matplotlib():
        png = report.render_plot(loaded, tmp_path / "a.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == report.render_plot(loaded, tmp_path / "b.png").read_bytes()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\nrest\n")
    assert report.update_readme(readme, loaded) is True and "| m2 | 40.00 | — |" in readme.read_text()
    assert report.update_readme(readme, loaded) is False
    args = ["--results-dir", str(tmp_path / "res"), "--markdown", str(tmp_path / "LB.md"), "--plot",
            str(tmp_path / "lb.png"), "--readme", str(readme), "--no-cards"]
    assert report.main([*args, "--check"]) == 1
    if not plots.have_matplotlib():
        args[args.index("--plot") + 1] = ""  # no PNG to draw: check the Markdown and the README only
    assert report.main(args) == 0 and report.main([*args, "--check"]) == 0


def test_checked_in_leaderboard_is_up_to_date():
    """LEADERBOARD.md and docs/leaderboard.png match zoo/results (the README section and
    MODEL_CARDS/ are refreshed by the same command: python -m eval.report)."""
    assert report.main(["--check", "--readme", ""]) == 0, "run python -m eval.report"


def test_update_readme_defaults_to_zoo_results(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{report.START}\n{report.END}\nb\n")
    res = tmp_path / "res"
    res.mkdir()
    monkeypatch.setattr(documents, "zoo_results_dir", lambda: res)  # the default: the zoo's records
    assert report.update_readme(readme) is True
    assert "No evaluation records yet" in readme.read_text() and readme.read_text().endswith(f"{report.END}\nb\n")


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
