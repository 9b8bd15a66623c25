"""Getting the data: ``--download`` for the datasets torchvision can fetch (CIFAR-10, CIFAR-100, STL-10,
Fashion-MNIST), through torchvision's own downloaders, into a documented cache folder.

- Where: ``--data DIR`` when given, else ``$WSSL_ZOO_DATA/<dataset>``, else
  ``~/.cache/wssl_zoo/data/<dataset>`` (:func:`wssl_zoo.paths.data_dir`).
- How: ``torchvision.datasets.<Class>(root, download=True)``, so torchvision's URLs and md5 checks apply
  (a truncated or tampered archive is refused and fetched again on the next run). ``$WSSL_ZOO_DATA_MIRROR``
  (a base URL) replaces the download host, for a site mirror or a machine behind a proxy; the file names
  stay torchvision's.
- Who: one process per machine downloads (a lock file in the folder), the others wait and read the same
  files, so 8 ranks under torchrun never write one archive together.
- Where the data already is (Debian's ``dataset-fashion-mnist`` package for Fashion-MNIST, a folder you
  made), nothing is downloaded.

Which datasets can be downloaded is the catalogue's (``torchvision_class``; ImageNet and the image
folders cannot: their licences require you to fetch them yourself). No torch here (torchvision is
imported when a download runs), so the commands that only name the datasets start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from . import catalogue
from .paths import data_dir

MIRROR_ENV = "WSSL_ZOO_DATA_MIRROR"


def downloadable() -> tuple[str, ...]:
    """The catalogue's datasets torchvision can download."""
    return tuple(n for n in catalogue.names() if catalogue.get(n).torchvision_class)


def default_root(name: str) -> Path:
    """Where ``--download`` puts ``name`` when no ``--data`` is given: ``data_dir() / name``."""
    return data_dir() / catalogue.canonical(name)


def files_root(name: str, root: str | os.PathLike) -> Path:
    """The folder a reader of ``name`` takes as ``--data`` once torchvision has downloaded into ``root``
    (Fashion-MNIST's idx files land in ``root/FashionMNIST/raw``; the others' folders sit in ``root``)."""
    info = catalogue.get(name)
    root = Path(root).expanduser()
    return root / info.torchvision_class / "raw" if info.reader == "idx" else root


def present(name: str, root: str | os.PathLike | None) -> bool:
    """Whether ``name``'s files are at ``root`` (None: the catalogue's default folder, if any): an image
    folder with a ``train`` split, Fashion-MNIST's four idx.gz files, or torchvision's folder and files."""
    info = catalogue.get(name)
    if root is None and info.default_root is None:
        return False
    root = Path(root if root is not None else info.default_root).expanduser()
    if (root / "train").is_dir():
        return True
    if info.reader == "idx":
        return all((root / f"{part}-{kind}-ubyte.gz").is_file() for part in ("train", "t10k")
                   for kind in ("images-idx3", "labels-idx1"))
    if not info.torchvision_folder:
        return False
    folder = root.parent if root.name == info.torchvision_folder else root
    return all((folder / info.torchvision_folder / f).is_file() for f in info.torchvision_files)


@contextlib.contextmanager
def _machine_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".wssl_zoo_download.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # the other processes of this machine wait here
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _torchvision_class(info: catalogue.DatasetInfo):
    import torchvision  # heavy: only when a download is asked for

    cls = getattr(torchvision.datasets, info.torchvision_class)
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:  # the same file names on another host
        base = mirror.rstrip("/") + "/"
        if hasattr(cls, "mirrors"):
            cls = type(cls.__name__, (cls,), {"mirrors": [base]})
        else:
            cls = type(cls.__name__, (cls,), {"url": base + cls.filename})
    return cls


def download(name: str, root: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Download ``name`` with torchvision into ``root`` (default :func:`default_root`) unless it is there
    already; returns the folder to pass as ``--data``. ValueError for a dataset torchvision cannot fetch;
    RuntimeError naming the URL, the folder and the mirror variable when the download fails."""
    info = catalogue.get(name)
    if not info.torchvision_class:
        raise ValueError(f"--download: {info.name} cannot be downloaded (its licence asks you to fetch it yourself); "
                         f"the datasets wssl-zoo downloads are {', '.join(downloadable())}")
    root = Path(root).expanduser() if root is not None else default_root(info.name)
    if root.name == info.torchvision_folder:
        root = root.parent
    with _machine_lock(root):
        if present(info.name, root):
            return root
        if present(info.name, files_root(info.name, root)):
            return files_root(info.name, root)
        cls = _torchvision_class(info)
        print(f"downloading {info.display} into {root} (torchvision.datasets.{info.torchvision_class}; "
              f"md5-checked)", flush=True)
        try:
            cls(str(root), download=True)  # one archive (CIFAR, STL-10) or all four files (Fashion-MNIST)
        except Exception as exc:  # noqa: BLE001 - urllib, http and md5 errors all mean the same to the user
            where = os.environ.get(MIRROR_ENV) or getattr(cls, "url", None) or cls.mirrors[0]
            raise RuntimeError(f"--download {info.name}: could not fetch it from {where} into {root} "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); check the network, or "
                               f"set {MIRROR_ENV} to a mirror, or put the files there yourself") from None
    return files_root(info.name, root)


def resolve_data(name: str, root: str | os.PathLike | None, allow_download: bool, progress: bool = True) -> str | None:
    """The ``--data`` a command reads ``name`` from: ``root`` (or the catalogue's default folder, Debian's
    Fashion-MNIST) when the data is there; else, with ``allow_download`` (``--download``), the folder
    :func:`download` fills (``root`` or the cache), saying so; else ``root`` unchanged, so the reader's
    own error says what is missing and how to get it."""
    info = catalogue.get(name)
    if present(info.name, root):
        return None if root is None else str(root)
    if root is not None and info.reader == "idx" and present(info.name, files_root(info.name, root)):
        return str(files_root(info.name, root))  # an earlier --download into this folder
    if not allow_download or not info.torchvision_class:
        return None if root is None else str(root)
    if root is None and info.default_root:
        print(f"{info.display} is not in {info.default_root} (Debian's package); downloading it instead", flush=True)
    return str(download(info.name, root, progress=progress))
