"""Where wssl-zoo reads and writes on disk: the one place that decides it.

- **The workspace** holds the zoo's published results (``zoo/results``), the model cards
  (``MODEL_CARDS``), ``LEADERBOARD.md``, ``README.md`` and ``docs/``: ``$WSSL_ZOO_HOME`` when
  set, else the source checkout the package was imported from (a folder with ``pyproject.toml``
  and ``.git`` or ``zoo/`` next to the package), else the current directory. Nothing is ever
  written next to an installed package (site-packages).
- **Ad-hoc results** (an evaluation run by hand) go to the user's folder, never to the zoo's
  published results: ``--results-dir``, else ``$WSSL_ZOO_RESULTS``, else ``./results`` of the
  current directory. Only an explicit ``--results-dir zoo/results`` or the benchmark runner
  adds to the zoo.
- **Caches** (features): ``--cache-dir``, else ``$WSSL_ZOO_CACHE``, else
  ``~/.cache/wssl_zoo/features``.
- **Downloaded datasets** (``--download``): ``--data``, else ``$WSSL_ZOO_DATA/<dataset>``, else
  ``~/.cache/wssl_zoo/data/<dataset>``.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
HOME_ENV, RESULTS_ENV, CACHE_ENV, DATA_ENV = "WSSL_ZOO_HOME", "WSSL_ZOO_RESULTS", "WSSL_ZOO_CACHE", "WSSL_ZOO_DATA"


def checkout() -> Path | None:
    """The source checkout this package was imported from, or None for an installed package."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and ((root / ".git").exists() or (root / "zoo").is_dir()):
        return root
    return None


def workspace() -> Path:
    """``$WSSL_ZOO_HOME``, else the checkout, else the current directory."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return checkout() or Path.cwd()


def zoo_results_dir() -> Path:
    """The zoo's published records (``zoo/results`` of the workspace), read by cards and tables."""
    return workspace() / "zoo" / "results"


def cards_dir() -> Path:
    return workspace() / "MODEL_CARDS"


def leaderboard_path() -> Path:
    return workspace() / "LEADERBOARD.md"


def readme_path() -> Path:
    return workspace() / "README.md"


def docs_dir() -> Path:
    return workspace() / "docs"


def results_dir(override: str | os.PathLike | None = None) -> Path:
    """Where an ad-hoc evaluation writes its records: ``override`` (``--results-dir``), else
    ``$WSSL_ZOO_RESULTS``, else ``./results``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else Path.cwd() / "results"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The feature cache: ``override`` (``--cache-dir``), else ``$WSSL_ZOO_CACHE``, else
    ``~/.cache/wssl_zoo/features``."""
    return Path(override or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "wssl_zoo" / "features")


def data_dir() -> Path:
    """Where ``--download`` puts datasets when no ``--data`` is given: ``$WSSL_ZOO_DATA``, else
    ``~/.cache/wssl_zoo/data`` (one sub-folder per dataset)."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "wssl_zoo" / "data").expanduser()
