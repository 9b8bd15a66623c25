"""Transport from the Hugging Face Hub: verified downloads (publishing is :mod:`wssl_zoo.publish`).

Downloads go through ``huggingface_hub.hf_hub_download``, so the standard cache
(``HF_HOME``/``HF_HUB_CACHE``), ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE=1`` behave as everywhere else.
A registry entry is fetched at its pinned commit and every file is checked against the sha256
in ``zoo/models/<name>.toml`` before anything is loaded; a file that does not match is deleted
from the cache (blob and snapshot link) so it cannot be reused, and :class:`HashMismatchError`
names it with both hashes. ``hf-hub:org/name[@rev]`` repos in our format carry a ``SHA256SUMS``
file that is checked the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .registry import ZooEntry, get_entry, not_published_error

__all__ = ["HubError", "HashMismatchError", "Snapshot", "download_entry", "download_repo", "parse_spec",
           "SUMS_FILE", "PINNED_FILES"]

SUMS_FILE = "SHA256SUMS"
# Files whose hashes a registry entry pins (the rest of a published repo is documentation).
PINNED_FILES = ("model.safetensors", "config.json", "projector.safetensors")


class HubError(RuntimeError):
    """A download or upload failed; the message names the repo, revision and file."""


class HashMismatchError(ValueError):
    """A downloaded file does not have the sha256 it should; it was deleted from the cache."""


@dataclass(frozen=True)
class Snapshot:
    """What a download gives: the snapshot ``folder`` in the HF cache, its ``commit``, and the
    sha256 of every file it checked (``{filename: hex}``), so that nobody hashes them again."""

    folder: Path
    commit: str
    sha256: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- download


def _sha256(path: Path) -> str:
    from .fileio import sha256_file

    return sha256_file(path)


def _discard(local: Path) -> None:
    """Remove a cached file: the snapshot link and the blob it points to."""
    targets = [local]
    try:
        targets.append(local.resolve(strict=True))
    except OSError:
        pass
    for path in targets:
        if path.exists() or path.is_symlink():
            path.unlink()


def _fetch(repo_id: str, filename: str, revision: str | None, *, force: bool = False) -> Path:
    """One file through the HF cache; every client error becomes a one-line :class:`HubError`."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision or 'main'} file {filename!r}"
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, force_download=force))
    except RepositoryNotFoundError:
        raise HubError(f"{where}: the repository {repo_id} does not exist on {constants.ENDPOINT} "
                       "(or it is private and no token was given)") from None
    except RevisionNotFoundError:
        raise HubError(f"{where}: the revision {revision!r} does not exist in {repo_id}") from None
    except LocalEntryNotFoundError:
        offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
        reason = "HF_HUB_OFFLINE is set" if offline else f"{constants.ENDPOINT} cannot be reached"
        raise HubError(f"{where}: {reason} and the file is not in the cache {constants.HF_HUB_CACHE}; "
                       f"download it once while online (wssl-zoo download ...)") from None
    except EntryNotFoundError:
        raise HubError(f"{where}: no such file at that revision") from None
    except OSError as exc:  # connection dropped, disk full, ...
        raise HubError(f"{where}: download failed ({type(exc).__name__}: {exc}); nothing was loaded, "
                       "run the command again to resume") from None
    except Exception as exc:  # noqa: BLE001 - the client raises httpx and HfHubHTTPError types
        raise HubError(f"{where}: download failed ({type(exc).__name__}: {exc}); nothing was loaded, "
                       "run the command again to resume") from None


def _verified(repo_id: str, revision: str, filename: str, expected: str) -> Path:
    local = _fetch(repo_id, filename, revision)
    actual = _sha256(local)
    if actual != expected:
        _discard(local)
        raise HashMismatchError(
            f"{repo_id}@{revision} file {filename!r}: sha256 {actual} does not match the expected {expected}; "
            "the download was deleted from the cache and nothing was loaded"
        )
    return local


def download_entry(entry: ZooEntry | str) -> Snapshot:
    """Download every file of a published registry entry at its pinned revision, sha256-checked.

    Returns the :class:`Snapshot` (folder in the HF cache, commit, checked hashes). Raises
    :class:`~wssl_zoo.registry.WeightsNotPublishedError` for an entry without a pinned revision,
    :class:`HashMismatchError` and :class:`HubError` as described in the module docstring.
    """
    if isinstance(entry, str):
        entry = get_entry(entry)
    if not entry.hub.published:
        raise not_published_error(entry)
    folder = None
    for filename, expected in entry.hub.files.items():
        folder = _verified(entry.hub.repo_id, entry.hub.revision, filename, expected).parent
    assert folder is not None
    return Snapshot(folder, entry.hub.revision, dict(entry.hub.files))


def _parse_sums(text: str, where: str) -> dict[str, str]:
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not name:
            raise ValueError(f"{where} line {number}: expected '<sha256>  <file>', got {line!r}")
        sums[name] = digest
    return sums


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``hf-hub:org/name[@rev]`` -> (``org/name``, rev or None)."""
    body = spec[len("hf-hub:"):] if spec.startswith("hf-hub:") else spec
    repo_id, _, revision = body.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{spec!r}: expected hf-hub:org/name or hf-hub:org/name@revision")
    return repo_id, revision or None


def download_repo(spec: str, verify: bool = True) -> Snapshot:
    """Download a model repo in our format (``hf-hub:org/name[@rev]``); returns its :class:`Snapshot`.

    The repo's ``SHA256SUMS`` (written by ``wssl-zoo publish``) is checked for every file it lists
    that is downloaded. A repo without it (a plain timm repo) is refused unless ``verify=False``
    (``--allow-unverified`` on the command line), which loads it unverified.
    """
    repo_id, revision = parse_spec(spec)
    config = _fetch(repo_id, "config.json", revision)
    commit = config.parent.name  # snapshot folders are named by commit: pin everything else to it
    try:
        sums_path = _fetch(repo_id, SUMS_FILE, commit)
    except HubError as exc:
        if "no such file" not in str(exc):
            raise
        if verify:
            raise HubError(f"{repo_id}@{commit}: no {SUMS_FILE} file, so its weights cannot be verified; "
                           "pass verify=False (--allow-unverified on the command line) to load them unverified") from None
        sums = {}
    else:
        sums = _parse_sums(sums_path.read_text(), f"{repo_id}@{commit} {SUMS_FILE}")
    wanted = ["config.json", "model.safetensors"] + [f for f in ("projector.safetensors",) if f in sums]
    checked = {}
    for filename in wanted:
        if filename in sums:
            _verified(repo_id, commit, filename, sums[filename])
            checked[filename] = sums[filename]
        else:
            _fetch(repo_id, filename, commit)
    return Snapshot(config.parent, commit, checked)
