"""The package version and the code identity written into records and folder markers."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def code_version() -> str:
    """The git commit of the checkout this code runs from, else the package version (a wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return out or __version__
