"""Transport from the Hugging Face Hub: verified downloads (publishing is :mod:`wssl_zoo.publish`).

Downloads go through ``huggingface_hub.hf_hub_download``, so the standard cache
(``HF_HOME``/``HF_HUB_CACHE``), ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE=1`` behave as everywhere else.
That client checks only the size of what it downloads; every file is hashed here before anything
is loaded. A file that does not match is deleted from the cache (blob and snapshot link) so it
cannot be reused, and :class:`HashMismatchError` names it with both hashes.

- A registry entry is fetched at its pinned commit and every file is checked against the sha256 in
  ``zoo/models/<name>.toml`` (:func:`download_entry`); this works the same offline.
- ``hf-hub:org/name[@rev]`` (:func:`download_repo`): the revision is resolved to a commit once (the
  ``X-Repo-Commit`` of the ``config.json`` download; the cache's ``refs/`` offline) and every later
  call is pinned to it. The Hub states, for every file at a commit, its git blob id and, for a file
  stored in LFS, the sha256 of its bytes (``HfApi.get_paths_info``: ``oid``, ``lfs.oid``). LFS files
  (the weights) are checked by that sha256, files kept in git (``config.json``, ``SHA256SUMS``) by
  their git blob id, so any plain timm repo loads verified. (A git blob id is git's SHA-1: for these
  small JSON files it catches corruption and any change short of a crafted SHA-1 collision; weights
  are in LFS, so checked by sha256, as the Hub's default ``.gitattributes`` has ``*.safetensors`` and it
  keeps no file over 10 MiB in git.) A repo that carries a ``SHA256SUMS``
  (``wssl-zoo publish`` writes one) must agree with the Hub: a disagreement is refused, naming the
  file and both hashes. A file for which neither the Hub nor ``SHA256SUMS`` states a hash (a mirror
  that serves files but no metadata) is refused unless ``verify=False`` (``--allow-unverified``);
  the hashes that are stated are checked even then.
- Offline (``HF_HUB_OFFLINE=1``, or the Hub cannot be reached): a commit never changes, so the
  Hub's hashes of a commit, once fetched, are kept in the cache beside the snapshot
  (``models--org--name/wssl-zoo/hub-files-<commit>.json``, written whether or not the files then
  matched) and the cached bytes are checked against them as online. Without that file (a cache
  filled by another tool) only ``SHA256SUMS`` can vouch for the files; otherwise the load is
  refused unless ``verify=False``, with the command that caches the hashes: an offline load is
  verified as the online one was, or it stops. This guards against a corrupt or tampered download
  and cache, not against someone who can rewrite the cache folder itself. Online too the kept hashes
  are used, so a load pinned to a commit whose files are cached sends no request to the Hub (a
  thousand array jobs do not meet its rate limit).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import fileio
from .registry import ZooEntry, get_entry, not_published_error

__all__ = ["HubError", "HashMismatchError", "Snapshot", "HubFile", "download_entry", "download_repo", "parse_spec",
           "SUMS_FILE", "PINNED_FILES", "REPO_FILES", "OPTIONAL_REPO_FILES"]

log = logging.getLogger("wssl_zoo")
# huggingface_hub is imported in the functions that use it: its HfApi takes 0.16 s to import (python -X
# importtime, this project's 2-core machine), which importing this module (publish, the CLI) should not cost.
# Its errors come from huggingface_hub.utils, where every version from the declared minimum (0.24) has them.

SUMS_FILE = "SHA256SUMS"
# Files whose hashes a registry entry pins (the rest of a published repo is documentation).
PINNED_FILES = ("model.safetensors", "config.json", "projector.safetensors")
# What a load of an hf-hub: repo downloads: always these, and the optional ones the commit has.
REPO_FILES = ("config.json", "model.safetensors")
OPTIONAL_REPO_FILES = ("projector.safetensors", SUMS_FILE)
# The Hub's hashes of a commit, kept per cached repo: <HF_HUB_CACHE>/models--org--name/wssl-zoo/hub-files-<commit>.json
_RECORD_DIR, _RECORD_FORMAT = "wssl-zoo", 1


class HubError(RuntimeError):
    """A download or upload failed; the message names the repo, revision and file."""


class _MissingFile(HubError):
    """The Hub says the file does not exist at that revision."""


class _NotCached(HubError):
    """The Hub cannot be asked (offline) and the file is not in the cache."""


class HashMismatchError(ValueError):
    """A downloaded file does not have the hash it should (it was deleted from the cache), or two
    sources of hashes (the Hub, ``SHA256SUMS``) disagree about a file; nothing was loaded."""


@dataclass(frozen=True)
class Snapshot:
    """What a download gives: the snapshot ``folder`` in the HF cache, its ``commit``, the sha256 of
    every file it checked (``{filename: hex}``, so that nobody hashes them again), what each was
    checked against (``{filename: text}``), and the files loaded unchecked (``verify=False``)."""

    folder: Path
    commit: str
    sha256: dict[str, str] = field(default_factory=dict)
    checked_against: dict[str, str] = field(default_factory=dict)
    unverified: tuple[str, ...] = ()


@dataclass(frozen=True)
class HubFile:
    """What the Hub states about one file at one commit (its paths-info entry): ``size`` in bytes,
    ``blob_id`` (the git blob id: of the bytes for a file kept in git, of the LFS pointer for an LFS
    file) and ``lfs_sha256`` (the sha256 of the bytes of an LFS file, else None)."""

    size: int
    blob_id: str
    lfs_sha256: str | None = None


# ---------------------------------------------------------------------------- fetching


def _sha256(path: Path) -> str:
    return fileio.sha256_file(path)  # looked up at call time: tests count the hashes of a load


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _offline() -> bool:
    """HF_HUB_OFFLINE as the client reads it (``constants.is_offline_mode()`` where the version has it)."""
    from huggingface_hub import constants  # heavy: see the note above the module's constants

    return constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else bool(constants.HF_HUB_OFFLINE)


def _not_cached_reason() -> str:
    from huggingface_hub import constants  # heavy: see the note above the module's constants

    return "HF_HUB_OFFLINE is set" if _offline() else f"{constants.ENDPOINT} cannot be reached"


def _hub_error(exc: Exception, repo_id: str, revision: str | None, where: str) -> HubError:
    """The one-line :class:`HubError` of an exception of the client."""
    from huggingface_hub import constants  # heavy: see the note above the module's constants
    from huggingface_hub.utils import (  # heavy: see the note above the module's constants
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return HubError(f"{where}: {repo_id} is a gated repository: accept its conditions on the Hub and log in "
                        "(HF_TOKEN or `hf auth login`)")
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"{where}: the repository {repo_id} does not exist on {constants.ENDPOINT} "
                        "(or it is private and no token was given)")
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{where}: the revision {revision!r} does not exist in {repo_id}")
    if isinstance(exc, LocalEntryNotFoundError):
        return _NotCached(f"{where}: {_not_cached_reason()} and the file is not in the cache "
                          f"{constants.HF_HUB_CACHE}; download it once while online (wssl-zoo download ...)")
    if isinstance(exc, EntryNotFoundError):
        return _MissingFile(f"{where}: no such file at that revision")
    # connection dropped, disk full, a server error: httpx and HfHubHTTPError types
    return HubError(f"{where}: download failed ({type(exc).__name__}: {_first_line(exc)}); nothing was loaded, "
                    "run the command again to resume")


def _fetch(repo_id: str, filename: str, revision: str | None, *, force: bool = False) -> Path:
    """One file through the HF cache; every client error becomes a one-line :class:`HubError`."""
    from huggingface_hub import hf_hub_download  # heavy: see the note above the module's constants

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, force_download=force))
    except Exception as exc:  # noqa: BLE001 - translated into one line naming the file
        raise _hub_error(exc, repo_id, revision, f"{repo_id}@{revision or 'main'} file {filename!r}") from None


def _check(where: str, filename: str, local: Path, kind: str, expected: str, source: str) -> str:
    """Hash ``local`` (``kind``: ``"sha256"`` or ``"git blob id"``) and compare it with ``expected``;
    a mismatch deletes the file from the cache and raises :class:`HashMismatchError`. Returns the hash."""
    actual = _sha256(local) if kind == "sha256" else fileio.git_blob_id(local)
    if actual != expected:
        _discard(local)
        raise HashMismatchError(
            f"{where} file {filename!r}: {kind} {actual} does not match the expected {expected} ({source}); "
            "the download was deleted from the cache and nothing was loaded"
        )
    return actual


def _verified(repo_id: str, revision: str, filename: str, expected: str, source: str = "") -> Path:
    """``filename`` at ``revision``, checked against the sha256 ``expected``."""
    local = _fetch(repo_id, filename, revision)
    _check(f"{repo_id}@{revision}", filename, local, "sha256", expected, source or "the sha256 it was published with")
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
    source = f"the sha256 pinned in {entry.path}"
    folder = None
    for filename, expected in entry.hub.files.items():
        folder = _verified(entry.hub.repo_id, entry.hub.revision, filename, expected, source).parent
    assert folder is not None
    return Snapshot(folder, entry.hub.revision, dict(entry.hub.files), {f: source for f in entry.hub.files})


# ---------------------------------------------------------------------------- what the Hub states


def _record_path(storage: Path, commit: str) -> Path:
    return storage / _RECORD_DIR / f"hub-files-{commit}.json"


def _read_record(storage: Path, commit: str) -> dict[str, HubFile | None] | None:
    """The Hub's hashes of ``commit`` kept in the cache (None: not there, or not readable)."""
    path = _record_path(storage, commit)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != _RECORD_FORMAT or data.get("commit") != commit:
            return None
        return {name: None if info is None else HubFile(int(info["size"]), str(info["blob_id"]), info.get("lfs_sha256"))
                for name, info in data["files"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s, which cannot be read (%s: %s); the Hub is asked again", path, type(exc).__name__, exc)
        return None


def _write_record(storage: Path, repo_id: str, commit: str, files: dict[str, HubFile | None]) -> None:
    """Keep the Hub's hashes of ``commit`` beside its snapshot (best effort: a read-only cache works
    online, and its offline loads then ask for verify=False)."""
    from huggingface_hub import constants  # heavy: see the note above the module's constants

    data = {"format": _RECORD_FORMAT, "repo_id": repo_id, "commit": commit, "endpoint": constants.ENDPOINT,
            "files": {name: None if info is None else {"size": info.size, "blob_id": info.blob_id,
                                                         "lfs_sha256": info.lfs_sha256}
                      for name, info in sorted(files.items())}}
    path = _record_path(storage, commit)
    try:
        path.parent.mkdir(exist_ok=True)
        fileio.atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    except OSError as exc:
        log.warning("could not keep the Hub's file hashes of %s@%s in %s (%s); an offline load of this commit "
                    "will not be able to verify its files", repo_id, commit, path, exc)


def _stated_by_hub(repo_id: str, commit: str, storage: Path,
                   names: tuple[str, ...]) -> tuple[dict[str, HubFile | None] | None, str]:
    """What the Hub states about ``names`` at ``commit``: ``{name: HubFile, or None where the commit
    has no such file}``, from the cache's record or ``HfApi.get_paths_info`` (then recorded). Returns
    ``(None, why)`` where no statement can be had (offline and not recorded, a server without the
    metadata API); the Hub's answers that a repo or revision does not exist raise :class:`HubError`."""
    from huggingface_hub import HfApi, constants  # heavy: see the note above the module's constants
    from huggingface_hub.utils import (  # heavy: see the note above the module's constants
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    record = _read_record(storage, commit)
    if record is not None and set(names) <= set(record):
        return record, ""
    not_kept = (f"and the Hub's file hashes of this commit are not in the cache (a load while online keeps them: "
                f"wssl-zoo download hf-hub:{repo_id}@{commit})")
    if _offline():
        return None, f"HF_HUB_OFFLINE is set {not_kept}"
    try:
        answer = HfApi().get_paths_info(repo_id, list(names), revision=commit)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise _hub_error(exc, repo_id, commit, f"{repo_id}@{commit}") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status >= 500 or status == 429:
            return None, f"{constants.ENDPOINT} is unavailable (HTTP {status}) {not_kept}"
        return None, f"{constants.ENDPOINT} states no file hashes (its paths-info API answered HTTP {status})"
    except Exception as exc:  # noqa: BLE001 - offline mode, refused connection, timeout, a reply that is not JSON
        return None, f"{constants.ENDPOINT} cannot be reached ({type(exc).__name__}: {_first_line(exc)}) {not_kept}"
    stated: dict[str, HubFile | None] = dict.fromkeys(names)
    for item in answer:
        blob_id = getattr(item, "blob_id", None)  # RepoFolder entries have none
        if item.path in stated and blob_id:
            lfs = getattr(item, "lfs", None)
            stated[item.path] = HubFile(int(item.size), str(blob_id).lower(),
                                        str(lfs.sha256).lower() if lfs is not None else None)
    _write_record(storage, repo_id, commit, stated)
    return stated, ""


# ---------------------------------------------------------------------------- hf-hub: repos


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


_HUB_LFS = "the sha256 the Hub states for this LFS file at this commit"
_HUB_GIT = "the git blob id the Hub states for this file at this commit"


def _check_file(where: str, name: str, local: Path, hub: HubFile | None, listed: str | None) -> tuple[str, str]:
    """Check one downloaded file against what the Hub states (``hub``) and what ``SHA256SUMS`` lists
    (``listed``); returns (its sha256, what it was checked against)."""
    if hub is None:  # SHA256SUMS alone vouches for it
        assert listed is not None
        return _check(where, name, local, "sha256", listed, f"the repo's {SUMS_FILE}"), SUMS_FILE
    if hub.lfs_sha256 is not None:  # SHA256SUMS was compared with the Hub before the download
        digest = _check(where, name, local, "sha256", hub.lfs_sha256, _HUB_LFS)
        return digest, "the Hub's LFS sha256" + (f" and {SUMS_FILE}" if listed else "")
    blob_id = _check(where, name, local, "git blob id", hub.blob_id, _HUB_GIT)
    digest = _sha256(local)
    if listed is not None and listed != digest:
        raise HashMismatchError(f"{where} file {name!r}: {SUMS_FILE} lists sha256 {listed}, but the file that has "
                                f"the git blob id the Hub states ({blob_id}) has sha256 {digest}; the two must "
                                f"agree, so nothing was loaded (the repo's {SUMS_FILE} is stale or was changed)")
    return digest, f"the Hub's git blob id {blob_id}" + (f" and {SUMS_FILE}" if listed else "")


def download_repo(spec: str, verify: bool = True) -> Snapshot:
    """Download a model repo in timm's format (``hf-hub:org/name[@rev]``), every file verified as the
    module docstring describes; returns its :class:`Snapshot`.

    ``config.json`` and ``model.safetensors`` are downloaded, and ``projector.safetensors`` and
    ``SHA256SUMS`` where the commit has them. ``verify=False`` (``--allow-unverified``) accepts files
    for which no hash is stated (they are listed in ``Snapshot.unverified``). Raises
    :class:`HashMismatchError` (a file, or ``SHA256SUMS``, does not match the Hub) and
    :class:`HubError` (the repo, revision or file does not exist, no hash is stated, a download failed).
    """
    repo_id, revision = parse_spec(spec)
    config = _fetch(repo_id, "config.json", revision)
    commit = config.parent.name  # snapshot folders are named by commit: pin everything else to it
    where = f"{repo_id}@{commit}"
    stated, why_unstated = _stated_by_hub(repo_id, commit, config.parents[2], REPO_FILES + OPTIONAL_REPO_FILES)
    if stated is not None and stated["config.json"] is None:  # a server whose metadata omits what it serves
        from huggingface_hub import constants  # heavy: see the note above the module's constants

        stated, why_unstated = None, f"{constants.ENDPOINT} states no hash for the files it serves"
    if stated is not None and stated["model.safetensors"] is None:
        raise _MissingFile(f"{where} file 'model.safetensors': no such file at that revision")
    local = {"config.json": config}
    if stated is None or stated[SUMS_FILE] is not None:
        try:
            local[SUMS_FILE] = _fetch(repo_id, SUMS_FILE, commit)
        except (_MissingFile, _NotCached):
            if stated is not None:  # the Hub listed it: it must come
                raise
    hub = stated or {}
    sums: dict[str, str] = {}
    checked: dict[str, tuple[str, str]] = {}
    if SUMS_FILE in local:
        if hub.get(SUMS_FILE) is not None:
            checked[SUMS_FILE] = _check_file(where, SUMS_FILE, local[SUMS_FILE], hub[SUMS_FILE], None)
        sums = _parse_sums(local[SUMS_FILE].read_text(), f"{where} {SUMS_FILE}")
    # the optional files the Hub lists; without its listing (as before it was asked), those SHA256SUMS lists,
    # and with verify=False whichever the commit turns out to have
    names = list(REPO_FILES) + [n for n in OPTIONAL_REPO_FILES if n != SUMS_FILE and (
        stated[n] is not None if stated is not None else n in sums or not verify)]
    for name in names:  # a SHA256SUMS that disagrees with the Hub stops before the weights are downloaded
        info = hub.get(name)
        if info is not None and info.lfs_sha256 is not None and name in sums and sums[name] != info.lfs_sha256:
            raise HashMismatchError(f"{where} file {name!r}: {SUMS_FILE} lists sha256 {sums[name]}, but the Hub "
                                    f"states {info.lfs_sha256} for this LFS file; the two must agree, so nothing was "
                                    f"loaded (the repo's {SUMS_FILE} is stale or was changed)")
    unstated = [n for n in names if hub.get(n) is None and n not in sums]
    if unstated and verify:
        listing = f"no {SUMS_FILE} file" if SUMS_FILE not in local else f"its {SUMS_FILE} does not list them"
        hub_part = why_unstated or "the Hub states no hash for them"
        raise HubError(f"{where}: {listing} and {hub_part}, so {', '.join(map(repr, unstated))} cannot be "
                       "verified; pass verify=False (--allow-unverified on the command line) to load them unverified")
    for name in names:
        if name not in local:
            try:
                local[name] = _fetch(repo_id, name, commit)
            except (_MissingFile, _NotCached):
                if name in REPO_FILES or stated is not None:
                    raise
                continue  # an optional file, and nothing says it exists
        if name not in unstated:
            checked[name] = _check_file(where, name, local[name], hub.get(name), sums.get(name))
    return Snapshot(config.parent, commit, {n: c[0] for n, c in checked.items()},
                    {n: c[1] for n, c in checked.items()}, tuple(n for n in unstated if n in local))
