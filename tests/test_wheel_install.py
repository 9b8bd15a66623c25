"""A regular (non-editable) wheel install, used from another directory: the packages import from
site-packages, the registry ships inside, and nothing is ever written into site-packages: an
evaluation and ``wssl-zoo card`` write into the current directory instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv holding only the wssl-zoo wheel; torch & co. come from this interpreter's
    site-packages through a .pth line (a path line does not run that folder's .pth files, so the
    checkout's editable install stays invisible)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(REPO)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp / "dist").glob("wssl_zoo-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # without PYTHONPATH: a checkout on it (with its wssl_zoo.egg-info) reads as "already installed"
    # to pip, which would then skip the install
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600, env=env)
    return python, site


def _run(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSSL_ZOO", "PYTHONPATH"))}
    env["WSSL_ZOO_CACHE"] = str(cwd / "cache")
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_imports_from_site_packages_and_writes_only_into_the_cwd(wheel_venv, tmp_path):
    python, site = wheel_venv
    work = tmp_path / "elsewhere"
    for split in ("train", "val"):
        for c, color in enumerate(((200, 30, 30), (30, 200, 30))):
            folder = work / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), tuple(max(0, v - 9 * i) for v in color)).save(folder / f"{i}.png")
    before = _tree(site)
    where = _run(python, ["-c", "import wssl_zoo, eval, detection, wssl_zoo.registry as r; "
                                "print(wssl_zoo.__file__); print(eval.__file__); print(len(r.list_models()))"], work)
    assert where.returncode == 0, where.stderr
    lines = where.stdout.split()
    assert lines[0].startswith(str(site)) and lines[1].startswith(str(site)), lines
    assert int(lines[2]) >= 6  # the registry ships in the wheel

    knn = _run(python, ["-m", "eval.knn", "--model", "random:resnet18:imagenet:32", "--data", "data",
                        "--protocols", "knn5", "--workers", "0", "--no-progress"], work)
    assert knn.returncode == 0, knn.stderr
    records = [p for p in work.rglob("*.json") if "cache" not in p.parts]
    assert len(records) == 1, records
    assert json.loads(records[0].read_text())["task"] == "knn"

    card = _run(python, ["-m", "wssl_zoo", "card", "--all"], work)
    assert card.returncode == 0, card.stderr
    assert len(list(work.rglob("MODEL_CARDS/*.md"))) >= 6
    assert _tree(site) == before, "something was written into site-packages"
