"""Shared fixtures. ``../shared`` (reference numerics, real data) is optional: tests that need
it skip with a reason where it is absent. Set WSSL_SHARED_DIR to point elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_WORKERS = 4  # each worker holds torch, timm and a few models: more would cost memory for little time


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown where pytest-xdist is not installed
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker more than there are CPUs, at most MAX_WORKERS;
    none (the tests run in this process) on one CPU. The extra worker computes while another waits
    on its subprocesses (CLIs, torchrun ranks, the Hub test server): on 2 cores, 3 workers ran the
    suite in 262 s against 290 s with 2 (2026-12-03, back to back). PYTEST_XDIST_AUTO_NUM_WORKERS
    overrides, as in pytest-xdist."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cpus = _cpus()
    return min(cpus + 1, MAX_WORKERS) if cpus > 1 else 0


def pytest_addoption(parser, pluginmanager):
    """Without pytest-xdist (a venv from before ``[dev]`` listed it, or ``-p no:xdist``), pyproject's
    ``--numprocesses auto --dist worksteal`` would end in "unrecognized arguments": accept them, and
    :func:`pytest_configure` says that the tests run in one process and how to get the workers."""
    if not pluginmanager.has_plugin("xdist"):
        parser.addoption("--numprocesses", dest="wssl_no_xdist_n", default=None, help="(pytest-xdist is not installed)")
        parser.addoption("--dist", dest="wssl_no_xdist_dist", default=None, help="(pytest-xdist is not installed)")


def pytest_configure(config):
    if config.getoption("wssl_no_xdist_n", None) not in (None, "0"):
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            "pytest-xdist is not installed: the tests run in one process (pip install -e '.[dev]' "
            "or pip install pytest-xdist for parallel workers)"), stacklevel=2)


# A worker's share of the CPUs (at least one thread), for torch (read when torch loads, after this
# conftest) and for every process a test starts (the warm zygote, torchrun ranks, CLIs): two workers
# with two OpenMP threads each on two cores ran the suite no faster than one process (391 s against
# 403 s, 2026-12-03), with one thread each in 271 s. An OMP_NUM_THREADS of the caller's own is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


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
def _one_gloo_job_at_a_time(request):
    """Tests marked ``gloo`` (they start a gloo process group: torchrun, mp.spawn) hold one lock
    file shared by every pytest process of this user on the machine. Two gloo jobs started at the
    same moment on one host can cross-connect: 1 of 60 two-rank rendezvous failed with "Gloo
    connectFullMesh failed ... Connection closed by peer" when four ran side by side (2026-12-03),
    and none of 60 run one after another."""
    if request.node.get_closest_marker("gloo") is None:
        yield
        return
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / f"wssl-zoo-tests-gloo-{os.getuid()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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


def pytest_collection_modifyitems(config, items):
    """The modules that hold slow tests run first (each module's tests stay together and in order,
    so its module-scoped fixtures are built once per worker). Under xdist's worksteal schedule this
    keeps a long test from starting last while the other workers have nothing left to do."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_modules)


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def detectron2_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("detectron2") is not None


def pytest_runtest_setup(item):
    """Tests marked ``detectron2`` run against detectron2's own code: where it is not importable
    they skip with the install command (``bash .ci/install_detectron2.sh``)."""
    if item.get_closest_marker("detectron2") is not None and not detectron2_importable():
        pytest.skip("detectron2 is not installed (bash .ci/install_detectron2.sh)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (``CI=true``) a test marked ``detectron2`` that skips, for any reason (detectron2 or
    the real data absent), fails instead: a green CI run proves that the detectron2 path ran."""
    outcome = yield
    report = outcome.get_result()
    if _ci() and report.skipped and item.get_closest_marker("detectron2") is not None:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: a detectron2 test skipped in CI (CI=true), which must run it: {reason}")


# ---------------------------------------------------------------------------- the evaluation tests' inputs
# (tests/builders.py imports torch: it is imported inside the fixtures, after OMP_NUM_THREADS is set above)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    """ROOT/train/<class>/ (8 images each) and ROOT/val/<class>/ (4 each), 32 px, colour-coded classes."""
    from builders import colour_folder

    return colour_folder(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def resnet18_dir(tmp_path_factory) -> Path:
    """A resnet18 model directory (32 px, method intl) with a small projector (the spectrum reads it)."""
    from builders import resnet18_model

    return resnet18_model(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def test_resnet_dir(tmp_path_factory) -> Path:
    """timm's test_resnet as a model directory (32 px, method intl): the tests that train or run it often."""
    from builders import tiny_model

    return tiny_model(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A feature cache of the test's own (WSSL_ZOO_CACHE); the evaluation test files use it for every test."""
    monkeypatch.setenv("WSSL_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def eval_args(model_dir, folder, out, *extra: str) -> list[str]:
    """The flags every eval tool takes in these tests: the model, the data, the output, no progress bar,
    no loader workers, then ``extra``."""
    return ["--model", str(model_dir), "--data", str(folder), "--out", str(out), "--no-progress", "--workers", "0",
            *extra]
