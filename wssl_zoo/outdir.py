"""Write-once output folders: a command writes only into a folder it made for the same job.

Every command that writes a folder (``pretrain``, the demo, ``convert``, ``publish`` staging,
``detection.train``) calls :func:`claim` first. A folder that does not exist or is empty is
created and marked with ``.wssl_zoo_out.json``: the tool, the wssl-zoo version and the job's
identity (a small JSON object: recipe, source checkpoint, ...). A folder that holds anything
else is refused with a one-line message that names what is there, unless

- its marker names the same tool and the same job (re-running the job; ``pretrain`` still
  needs ``--resume`` to continue a run it finds there),
- ``replace_own`` is set and the marker names the same tool (the demo replaces only its own
  previous demo runs), or
- ``overwrite`` is set (``--overwrite``): the old contents are removed first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ._version import __version__
from .fileio import atomic_write_bytes

MARKER = ".wssl_zoo_out.json"


class OutputDirError(ValueError):
    """The output folder holds something this job did not make; the message says what and how to proceed."""


def read_marker(folder: str | Path) -> dict | None:
    """The marker of ``folder`` (``{"tool", "version", "job"}``), or None when absent or unreadable."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _normal(job: dict) -> Any:
    return json.loads(json.dumps(job, sort_keys=True, default=str))


def _listing(folder: Path, limit: int = 6) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name != MARKER)
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check(folder: str | Path, tool: str, job: dict, *, flag: str = "--out", overwrite: bool = False,
          resume: bool = False, replace_own: bool = False, hint: str = "", own: bool | None = None) -> str:
    """What :func:`claim` would do with ``folder``, without touching it: ``"new"``, ``"same"`` or
    ``"replaced"``, or :class:`OutputDirError` for a folder it would refuse. A job calls it before its
    slow checks (reading the data) and :func:`claim` after them, so a refusal comes first and a start
    refused for anything else leaves no folder behind."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"{flag} {folder}: exists and is not a folder")
    marker = read_marker(folder) if folder.is_dir() else None
    entries = [p for p in folder.iterdir() if p.name != MARKER] if folder.is_dir() else []
    if not entries:
        return "new"
    if own is None:
        own = marker is not None and marker.get("tool") == tool
    if overwrite or (replace_own and own):
        return "replaced"
    if own and marker is not None and (resume or marker.get("job") == _normal(job)):
        return "same"
    made = (f"made by {marker.get('tool')} for another job" if own and marker else
            f"made by {marker.get('tool')}" if marker else "not made by wssl-zoo")
    offer = "pass --resume to continue it, " if hint == "resume" and own else ""
    raise OutputDirError(
        f"{flag} {folder}: the folder is not empty ({_listing(folder)}; {made}); "
        f"{offer}pass --overwrite to delete its contents first, or choose another {flag}")


def claim(folder: str | Path, tool: str, job: dict, *, flag: str = "--out", overwrite: bool = False,
          resume: bool = False, replace_own: bool = False, hint: str = "", own: bool | None = None,
          mark: bool = True) -> str:
    """Make ``folder`` this job's output folder; returns ``"new"`` (created or empty),
    ``"same"`` (this tool's folder for the same job, or any with ``resume``) or ``"replaced"``
    (old contents removed: ``overwrite``, or ``replace_own`` on this tool's earlier output).

    ``resume`` accepts a folder made by the same tool whatever its job (the caller checks that its
    contents fit), and a missing or empty one (``"new"``: there is nothing to resume, so the job
    starts fresh and says so; one command serves the first start and every requeue). A non-empty
    folder no wssl-zoo tool marked is refused with ``resume`` as without it. Raises
    :class:`OutputDirError` naming the folder, a few of its entries and the flags that proceed
    (:func:`check` says the same without touching anything).

    ``own`` overrides the marker's verdict for a folder that describes itself (a publish staging
    folder is one whose ``SHA256SUMS`` lists its files); ``mark=False`` writes no marker (a
    folder whose every file is uploaded).
    """
    folder = Path(folder)
    state = check(folder, tool, job, flag=flag, overwrite=overwrite, resume=resume, replace_own=replace_own,
                  hint=hint, own=own)
    if state == "same":
        return state
    if state == "replaced":
        for p in folder.iterdir():
            if p.name == MARKER:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    if not mark:
        return state

    data = dict(tool=tool, version=__version__, job=_normal(job))
    atomic_write_bytes(folder / MARKER, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return state
