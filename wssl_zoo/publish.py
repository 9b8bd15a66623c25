"""Publishing to the Hugging Face Hub: ``wssl-zoo publish``.

Publishing stages a folder (weights, timm ``config.json``, projector, training config and logs,
the model card as ``README.md``, ``SHA256SUMS``), commits it in one commit, downloads the
weights back at the new commit to check them (:mod:`wssl_zoo.hub`), then pins that commit and the
hashes in the registry entry and refreshes ``MODEL_CARDS/<name>.md``. What is published is found
by :func:`wssl_zoo.weights.resolve`, like every model spec (a model directory or a published
registry name or ``hf-hub:`` repo); this module sits above the resolver, which downloads through
:mod:`wssl_zoo.hub`, so there is no import cycle.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from .cards import CARDS_DIR, render_card, render_generic_card, write_card
from .fileio import atomic_write_bytes
from .hub import PINNED_FILES, SUMS_FILE, HubError, _sha256, _verified, parse_spec
from .modelio import config_arch
from .outdir import MARKER, claim
from .registry import HubInfo, RegistryError, UnknownModelError, ZooEntry, _parse_entry, clear_cache, get_entry
from .weights import resolve

__all__ = ["stage", "publish", "PublishResult", "update_registry_hub", "EXTRA_FILES"]

# What a model directory may contribute to a published repo, beyond the pinned files.
EXTRA_FILES = ("train_config.json", "summary.json", "log.jsonl", "convert.json")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class PublishResult:
    """What ``publish`` did: the staged folder, and after an upload the commit and the entry."""

    staging: Path
    repo_id: str
    files: dict[str, str]  # every staged file -> sha256
    sizes: dict[str, int]
    entry: str | None  # the registry entry it belongs to, if any
    revision: str | None = None  # the commit, None for a dry run
    registry_file: Path | None = None
    card_file: Path | None = None


def _find_entry(source_dir: Path | None, repo_id: str, entry_name: str | None) -> ZooEntry | None:
    """The registry entry a publication belongs to: ``--entry``, the directory's own record of it,
    or the entry whose name is the repo's name."""
    if entry_name:
        return get_entry(entry_name)
    if source_dir is not None:
        for meta in ("config.json", "convert.json"):
            path = source_dir / meta
            if path.is_file():
                data = json.loads(path.read_text())
                name = data.get("wssl_zoo", {}).get("registry_name") if meta == "config.json" else data.get("entry")
                if name:
                    return get_entry(name)
    try:
        return get_entry(repo_id.split("/")[1])
    except UnknownModelError:
        return None


def _check_matches_entry(config: dict, entry: ZooEntry, source: str) -> None:
    stem = config.get("wssl_zoo", {}).get("stem", "imagenet")

    if config_arch(config) != entry.arch or stem != entry.stem:
        raise ValueError(f"{source} holds a {config_arch(config)} ({stem} stem) but the registry entry "
                         f"{entry.name!r} is a {entry.arch} ({entry.stem} stem); pass the right --entry")


def _staged_files(folder: Path) -> list[Path]:
    """The files of a staging folder that are published (not a wssl_zoo.outdir marker)."""
    return [p for p in sorted(folder.iterdir()) if p.name != MARKER]


def _is_staging(folder: Path) -> bool:
    """Whether ``folder`` is an earlier staging of publish: its SHA256SUMS lists exactly its files."""
    try:
        listed = {line.split(None, 1)[1].strip() for line in (folder / SUMS_FILE).read_text().splitlines() if line.strip()}
    except (OSError, IndexError, UnicodeDecodeError):
        return False
    return listed == {p.name for p in folder.iterdir()} - {SUMS_FILE}


def stage(source: str, repo_id: str, folder: Path, entry_name: str | None = None,
          cards_results_dir: Path | None = None,
          overwrite: bool = False) -> tuple[dict[str, str], dict[str, int], ZooEntry | None]:
    """Write the files of a publication of ``source`` to ``folder``: new, empty or an earlier
    staging folder of publish (replaced); anything else is refused unless ``overwrite``.

    ``source`` is any spec :func:`wssl_zoo.weights.resolve` takes but ``random:`` (a model
    directory from pretraining or a conversion, a published registry name, an ``hf-hub:`` repo in
    our format). Returns ``(sha256 per file, size per file, registry entry or None)``.
    """
    parse_spec(repo_id)  # validates org/name
    src = Path(source).expanduser()
    if src.exists() and not src.is_dir():
        raise ValueError(f"{source}: publish takes a model directory (with model.safetensors and config.json)")
    if str(source).startswith("random:"):
        raise ValueError(f"{source}: publish takes trained weights, not a random init")
    try:
        weights = resolve(source)  # a registry name or hf-hub: repo is downloaded, sha256-checked
    except UnknownModelError as exc:
        raise FileNotFoundError(f"{source}: no such model directory, and {exc}") from None
    src_dir = weights.folder
    assert src_dir is not None
    if weights.entry is not None:
        entry = weights.entry
        if entry_name and get_entry(entry_name).name != entry.name:
            raise ValueError(f"--entry {entry_name} differs from the source entry {entry.name}")
    else:
        entry = _find_entry(src_dir, repo_id, entry_name)
    weights.build()  # strict: right keys and shapes, finite weights
    config = weights.config
    if entry is not None:
        _check_matches_entry(config, entry, str(source))

    claim(folder, "publish", dict(repo=repo_id), flag="--staging", overwrite=overwrite, replace_own=True,
          own=_is_staging(folder), mark=False)  # every staged file is uploaded: no marker; SHA256SUMS says it
    for name in PINNED_FILES + EXTRA_FILES:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, folder / name)
    hashes = {p.name: _sha256(p) for p in _staged_files(folder)}
    if entry is not None:
        pinned = {k: v for k, v in hashes.items() if k in PINNED_FILES}
        draft = dataclasses.replace(entry, hub=HubInfo(repo_id=repo_id, revision="", files=pinned))
        card = render_card(draft, for_hub=True, results_dir=cards_results_dir, folder=folder)
    else:
        card = render_generic_card(folder, repo_id)
    (folder / "README.md").write_text(card)
    hashes["README.md"] = _sha256(folder / "README.md")
    (folder / SUMS_FILE).write_text("".join(f"{d}  {n}\n" for n, d in sorted(hashes.items())))
    sizes = {p.name: p.stat().st_size for p in _staged_files(folder)}
    return hashes, sizes, entry


def update_registry_hub(path: Path, repo_id: str, revision: str, files: dict[str, str],
                        sizes: dict[str, int]) -> None:
    """Set the ``[hub]`` table of a registry TOML file (``repo_id``, ``revision``, ``[hub.files]``,
    ``[hub.sizes]``) in place, atomically, with ``tomlkit``: every other table, comment and the
    layout of the file are kept.

    The new text is parsed and validated as a registry entry before it replaces the file.
    """
    if not _COMMIT.match(revision):
        raise ValueError(f"revision {revision!r} is not a 40-hex commit sha")
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except tomlkit.exceptions.ParseError as exc:
        raise RegistryError(f"{path}: not valid TOML ({exc})") from None
    hub = doc.get("hub")
    if not isinstance(hub, dict):
        raise RegistryError(f"{path}: no [hub] table to update")
    hub["repo_id"] = repo_id
    hub["revision"] = revision
    for key, values in (("files", dict(files)), ("sizes", {name: int(sizes[name]) for name in files})):
        table = tomlkit.table()
        for name, value in values.items():
            table[name] = value
        hub[key] = table
    new_text = tomlkit.dumps(doc)
    with tempfile.TemporaryDirectory() as tmp:  # validate before replacing
        probe = Path(tmp) / path.name
        probe.write_text(new_text, encoding="utf-8")
        _parse_entry(probe)
    atomic_write_bytes(path, new_text.encode("utf-8"))


def publish(source: str, repo_id: str, *, dry_run: bool = False, staging: Path | None = None,
            entry_name: str | None = None, message: str | None = None, cards_dir: Path | None = None,
            private: bool = False, progress=print, overwrite: bool = False) -> PublishResult:
    """Stage ``source`` and, unless ``dry_run``, upload it to ``repo_id`` in one commit.

    After an upload the pinned files are downloaded back at the new commit and compared with the
    staged hashes; only then is the registry entry (when there is one) updated with the commit,
    hashes and sizes, and its model card rewritten in ``cards_dir`` (default ``MODEL_CARDS/``).
    The token comes from huggingface_hub's usual sources (``HF_TOKEN``, ``hf auth login``).
    """
    parse_spec(repo_id)
    own_tmp = None
    if staging is None:
        if dry_run:
            staging = Path("runs") / "publish" / repo_id.replace("/", "--")
        else:
            own_tmp = tempfile.TemporaryDirectory(prefix="wssl-zoo-publish-")
            staging = Path(own_tmp.name) / "repo"
    try:
        if not dry_run:
            _require_token()
        hashes, sizes, entry = stage(source, repo_id, staging, entry_name, overwrite=overwrite)
        pinned = {k: v for k, v in hashes.items() if k in PINNED_FILES}
        progress(f"staged {len(hashes)} files for {repo_id} in {staging}:")
        for name in sorted(hashes):
            progress(f"  {name:24s} {sizes[name]:>14,d} bytes  sha256 {hashes[name]}")
        if dry_run:
            target = f"registry entry {entry.name} ({entry.path})" if entry else "no registry entry"
            progress(f"dry run: nothing uploaded; an upload would pin the commit and the hashes of "
                     f"{', '.join(sorted(pinned))} in {target}")
            return PublishResult(staging, repo_id, hashes, sizes, entry.name if entry else None)
        revision = _upload(staging, repo_id, message or f"wssl-zoo publish {source}", private)
        progress(f"committed {repo_id}@{revision}")
        for name, digest in pinned.items():  # read back what the Hub now serves
            _verified(repo_id, revision, name, digest)
        progress(f"verified {', '.join(sorted(pinned))} at {revision}")
        registry_file = card_file = None
        if entry is not None:
            update_registry_hub(entry.path, repo_id, revision, pinned, {k: sizes[k] for k in pinned})
            clear_cache()
            registry_file = entry.path
            card_file = write_card(get_entry(entry.name), cards_dir or CARDS_DIR)
            progress(f"pinned {entry.name} to {revision} in {registry_file}; rewrote {card_file}")
        else:
            progress("no registry entry matches (pass --entry NAME to pin one); load it with "
                     f"wssl_zoo.load('hf-hub:{repo_id}@{revision}')")
        return PublishResult(staging, repo_id, hashes, sizes, entry.name if entry else None, revision,
                             registry_file, card_file)
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()


def _require_token() -> str:
    from huggingface_hub import get_token  # heavy (0.16 s): only when publishing

    token = get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token), "
                       "or use --dry-run to only stage the files")
    return token


def _upload(folder: Path, repo_id: str, message: str, private: bool) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi  # heavy (0.16 s): only when publishing

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in _staged_files(folder)]
        info = api.create_commit(repo_id, operations=ops, commit_message=message)
    except Exception as exc:  # noqa: BLE001 - HfHubHTTPError, httpx errors
        raise HubError(f"upload to {repo_id} failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                       "nothing was pinned in the registry") from None
    return info.oid
