"""Where results and caches go: the checkout, else the environment, else the current directory; and only
wssl_zoo/paths.py locates the checkout."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO_ROOT


def test_paths_use_the_checkout_else_the_environment_else_the_current_directory(tmp_path, monkeypatch):
    from wssl_zoo import paths

    monkeypatch.delenv(paths.HOME_ENV, raising=False)
    assert paths.checkout() == REPO_ROOT and paths.zoo_results_dir() == REPO_ROOT / "zoo" / "results"
    monkeypatch.setenv(paths.HOME_ENV, str(tmp_path))
    assert paths.cards_dir() == tmp_path / "MODEL_CARDS" and paths.leaderboard_path() == tmp_path / "LEADERBOARD.md"
    monkeypatch.delenv(paths.HOME_ENV)
    monkeypatch.setattr(paths, "PACKAGE_DIR", tmp_path / "site-packages" / "wssl_zoo")  # an installed package
    monkeypatch.chdir(tmp_path)
    assert paths.checkout() is None and paths.workspace() == tmp_path
    monkeypatch.delenv(paths.RESULTS_ENV)
    assert paths.results_dir() == tmp_path / "results" and paths.results_dir("x") == Path("x")


def test_only_the_paths_module_locates_the_checkout():
    """No module finds the checkout from its own ``__file__`` (``.parent.parent``); reading package
    data next to a module (``detection/configs``) is fine."""
    import re

    offenders = [str(p.relative_to(REPO_ROOT)) for d in ("wssl_zoo", "eval", "detection") for p in sorted((REPO_ROOT / d).rglob("*.py"))
                 if re.search(r"__file__\)?(\.resolve\(\))?\.parent\.parent", p.read_text())]
    assert offenders == []
