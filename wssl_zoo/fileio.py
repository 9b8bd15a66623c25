"""Files written so that a crash never leaves half of one, and the one file hash.

- :func:`atomic_open` / :func:`atomic_write_bytes` / :func:`atomic_write_text`: the bytes go to a
  temporary file in the destination folder (same filesystem), which is flushed, ``fsync``-ed and
  renamed over the destination with ``os.replace`` (atomic on POSIX and Windows); the folder is
  ``fsync``-ed so the rename survives a power cut. A crash leaves either the complete old file or
  the complete new one, never a mix, and no temporary file (except after a power cut, where a stray
  ``.NAME.*.tmp`` may remain; it is never read). Files get the mode a plain ``open`` gives (0666
  less the umask).
- :func:`sha256_file`: the hex sha256 of a file, the hash records, the registry, the Hub
  verification and the cards match on.
- :func:`git_blob_id`: a file's git object id, the hash the Hugging Face Hub states for a file it
  keeps in git rather than in LFS (``config.json``, ``SHA256SUMS``).

No torch here: every layer of the project writes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is durable without this
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (e.g. some network mounts) refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (read without changing it where /proc allows, else set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a binary file that appears at ``path`` only when the ``with`` block completes.

    Writes go to ``.NAME.XXXX.tmp`` in the same folder (created if missing; same filesystem, so
    the rename is atomic). On success: flush, fsync, ``os.replace`` onto ``path``, fsync of the
    folder. On any exception (including KeyboardInterrupt): the temporary file is removed, the
    old ``path`` is untouched, and the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give what open() would
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (JSON configs, summaries, records)."""
    atomic_write_bytes(path, text.encode(encoding))


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks (checkpoints can be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_id(path, chunk: int = 1 << 20) -> str:
    """The git blob id of a file, as ``git hash-object`` prints it: the hex sha1 of ``b"blob <size>\\0"``
    followed by the bytes. The Hub gives it as the ``oid`` of every file it keeps in git."""
    with open(path, "rb") as fh:
        # git's object name, not a free choice of hash; usedforsecurity=False keeps it working under FIPS
        digest = hashlib.sha1(b"blob %d\0" % os.fstat(fh.fileno()).st_size, usedforsecurity=False)
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
