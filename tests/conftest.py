"""Shared fixtures. ``../shared`` (reference numerics, real data) is optional: tests that need
it skip with a reason where it is absent. Set WSSL_SHARED_DIR to point elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    return Path(os.environ.get("WSSL_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = shared_dir() / "reference"
    if not (path / "manifest.json").is_file():
        pytest.skip(f"reference numerics not found at {path} (set WSSL_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = shared_dir() / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set WSSL_SHARED_DIR)")
    return path


@pytest.fixture(autouse=True)
def _adhoc_results(tmp_path, monkeypatch):
    """Ad-hoc records of a test go to its own folder, never to the checkout's ./results."""
    monkeypatch.setenv("WSSL_ZOO_RESULTS", str(tmp_path / "results"))
