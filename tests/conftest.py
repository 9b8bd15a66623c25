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


def cifar10_subset(shared_data: Path, root: Path, train_per_class: int, test_per_class: int) -> Path:
    """``root/{train,test}/<class>/*.jpg``: the first ``train_per_class`` / ``test_per_class`` JPEGs
    of every CIFAR-10 class, streamed out of ``shared_data/cifar10-jpeg.tar.gz`` (skips the test
    when the tarball is absent)."""
    import tarfile

    tar_path = shared_data / "cifar10-jpeg.tar.gz"
    if not tar_path.is_file():
        pytest.skip(f"{tar_path} not found")
    limit = {"train": train_per_class, "test": test_per_class}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts  # cifar10/<split>/<class>/<file>
            if not member.isfile() or len(parts) != 4 or parts[1] not in limit:
                continue
            key = (parts[1], parts[2])
            if counts.get(key, 0) >= limit[parts[1]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            dest = root / parts[1] / parts[2] / parts[3]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(member).read())
            if len(counts) == 20 and all(v >= limit[s] for (s, _), v in counts.items()):
                break
    return root


@pytest.fixture(autouse=True)
def _adhoc_results(tmp_path, monkeypatch):
    """Ad-hoc records of a test go to its own folder, never to the checkout's ./results."""
    monkeypatch.setenv("WSSL_ZOO_RESULTS", str(tmp_path / "results"))


def _set_hub_state(folder: Path, published: bool) -> None:
    """Rewrite every entry's ``[hub]`` table in the registry copy ``folder``: unpublished (empty
    revision and hashes) or pinned to a made-up commit with made-up hashes and sizes."""
    import tomlkit

    for path in sorted(folder.glob("*.toml")):
        doc = tomlkit.parse(path.read_text())
        hub = doc["hub"]
        names = ("model.safetensors", "config.json")
        hub["revision"] = "c" * 40 if published else ""
        hub["files"] = {n: ("ab" * 32 if published else "") for n in names}
        if published:
            hub["sizes"] = {n: 1000 for n in names}
        elif "sizes" in hub:
            del hub["sizes"]
        path.write_text(tomlkit.dumps(doc))


def _registry_in_state(tmp_path: Path, monkeypatch, published: bool) -> Path:
    import shutil

    from wssl_zoo.registry import clear_cache, default_registry_dir

    folder = tmp_path / ("published-registry" if published else "unpublished-registry")
    shutil.copytree(default_registry_dir(), folder)
    _set_hub_state(folder, published)
    monkeypatch.setenv("WSSL_ZOO_REGISTRY", str(folder))
    clear_cache()
    return folder


@pytest.fixture
def unpublished_registry(tmp_path, monkeypatch):
    """A registry copy in which no entry is published, whatever the shipped registry pins, so that
    the behaviour of unpublished entries stays tested after the first publish."""
    from wssl_zoo.registry import clear_cache

    yield _registry_in_state(tmp_path, monkeypatch, published=False)
    clear_cache()


@pytest.fixture
def published_registry(tmp_path, monkeypatch):
    """A registry copy in which every entry is pinned (to made-up hashes: nothing can download)."""
    from wssl_zoo.registry import clear_cache

    yield _registry_in_state(tmp_path, monkeypatch, published=True)
    clear_cache()
