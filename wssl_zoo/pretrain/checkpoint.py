"""Crash-safe checkpoints of a pretraining run.

Every file is written atomically: the bytes go to a temporary file in the destination folder,
which is flushed, ``fsync``-ed and renamed over the destination with ``os.replace`` (atomic on
POSIX and Windows), and the folder is ``fsync``-ed so the rename itself survives a power cut.
A crash at any moment therefore leaves either the complete old file or the complete new one,
never a truncated mix, and no temporary file behind (except after a power cut, where a stray
``.NAME.*.tmp`` may remain; it is never read).

Layout of a run directory::

    RUN/checkpoints/last.pt          the newest state (what --resume reads)
    RUN/checkpoints/last.1.pt ...    the previous saves, with keep_last > 1
    RUN/checkpoints/epoch_0100.pt    numbered copies, with numbered_every > 0

Checkpoints hold only tensors and plain containers (dict / list / tuple / str / int / float /
bool / None), so :func:`load_checkpoint` reads them with ``torch.load(weights_only=True)``,
which cannot execute code from a tampered file. RNG states are stored as tensors for the same
reason (:func:`capture_rng_state`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fileio import atomic_open, fsync_dir
from ..modelio import non_finite_tensors

FORMAT = "wssl-zoo-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"

# ---------------------------------------------------------------------------- atomic writes
# The mechanism (temporary file, fsync, rename, folder fsync) is wssl_zoo.fileio's.


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically: serialised straight into the temporary file
    (no second copy in memory), which replaces ``path`` only once it is complete."""
    with atomic_open(path) as fh:
        torch.save(obj, fh)


# ---------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random generator, as a ``weights_only``-loadable dict.

    ``torch``: the CPU generator (uint8 tensor); ``cuda``: one uint8 tensor per visible GPU (only
    when CUDA is initialised-able); ``python``: ``random``'s Mersenne Twister (version, 625-word
    int64 tensor, cached Gaussian); ``numpy``: the legacy global ``np.random`` state (624-word
    int64 tensor, position, cached Gaussian).
    """
    version, words, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
    }
    if torch.cuda.is_available():
        state["cuda"] = [t.cpu() for t in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured; parts absent from ``state`` are left
    alone. CUDA states are restored when the number of GPUs matches, else skipped with a warning."""
    unknown = set(state) - {"torch", "cuda", "python", "numpy"}
    if unknown:
        raise ValueError(f"restore_rng_state: unknown part(s) {sorted(unknown)}")
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "python" in state:
        py = state["python"]
        words = tuple(int(w) for w in py["state"].tolist())
        random.setstate((py["version"], words, py["gauss_next"]))
    if "numpy" in state:
        npy = state["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    if "cuda" in state:
        saved = state["cuda"]
        if torch.cuda.is_available() and torch.cuda.device_count() == len(saved):
            torch.cuda.set_rng_state_all([t.cpu().to(torch.uint8) for t in saved])
        else:
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            warnings.warn(f"checkpoint holds CUDA RNG states for {len(saved)} GPU(s), this process sees {have}; "
                          "CUDA generators not restored")


# ---------------------------------------------------------------------------- checkpoints


@dataclass
class TrainState:
    """Everything needed to continue a run.

    ``epoch``: completed epochs; ``step``: global optimiser steps taken; ``model`` /
    ``optimizer`` / ``scaler``: their ``state_dict()`` (``scaler`` empty without fp16 AMP);
    ``rng``: :func:`capture_rng_state` (empty when the loop re-seeds deterministically);
    ``extra``: anything else made of tensors and plain containers (the loop stores
    ``step_in_epoch`` for mid-epoch saves and the resolved recipe).
    """

    epoch: int
    step: int
    model: dict
    optimizer: dict
    scaler: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def _rotated(folder: Path, index: int) -> Path:
    return folder / (LAST if index == 0 else f"last.{index}.pt")


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a complete copy of ``src`` atomically (a hard link when the filesystem allows)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here (FAT, some network filesystems): copy the bytes
        with atomic_open(dst) as fh, open(src, "rb") as source:
            shutil.copyfileobj(source, fh)
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def save_checkpoint(run_dir: str | os.PathLike, state: TrainState, keep_last: int = 1,
                    numbered_every: int = 0) -> Path:
    """Write ``state`` to ``run_dir/checkpoints/last.pt`` atomically; returns that path.

    ``keep_last``: how many of the most recent saves to keep. With ``keep_last=k > 1`` the save
    that ``last.pt`` held becomes ``last.1.pt`` (that one ``last.2.pt``, ... up to
    ``last.{k-1}.pt``), so a damaged ``last.pt`` still leaves the previous state. ``last.pt``
    itself is never absent: the previous save is hard-linked (or copied) before the new one
    replaces it.

    ``numbered_every=K > 0``: at epoch ends (``extra["step_in_epoch"]`` absent or 0) with
    ``epoch % K == 0``, also keep ``epoch_{epoch:04d}.pt`` (never rotated away), as the
    authors keep every 100th (W-MSE) or 10th (CW-RGP ImageNet) epoch.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    if numbered_every < 0:
        raise ValueError(f"numbered_every must be >= 0, got {numbered_every}")
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    last = folder / LAST
    if keep_last > 1 and last.is_file():
        for index in range(keep_last - 1, 1, -1):  # last.{k-2} -> last.{k-1}, ..., last.1 -> last.2
            older = _rotated(folder, index - 1)
            if older.is_file():
                os.replace(older, _rotated(folder, index))
        _link_or_copy(last, _rotated(folder, 1))
        fsync_dir(folder)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "epoch": int(state.epoch), "step": int(state.step),
        "model": state.model, "optimizer": state.optimizer, "scaler": state.scaler,
        "rng": state.rng, "extra": state.extra,
    }
    atomic_save(payload, last)
    at_epoch_end = int(state.extra.get("step_in_epoch", 0) or 0) == 0
    if numbered_every and at_epoch_end and state.epoch > 0 and state.epoch % numbered_every == 0:
        _link_or_copy(last, folder / f"epoch_{state.epoch:04d}.pt")
        fsync_dir(folder)
    return last


def _epoch_number(path: Path) -> int:
    match = re.fullmatch(r"epoch_(\d+)\.pt", path.name)
    return int(match.group(1)) if match else -1


def earlier_checkpoints(path: str | os.PathLike) -> list[Path]:
    """The other checkpoints next to ``path``, newest first: ``last.1.pt``, ``last.2.pt``, ...,
    then ``epoch_NNNN.pt`` by decreasing epoch."""
    path = Path(path)
    folder = path.parent
    rotated = sorted((p for p in folder.glob("last.*.pt") if re.fullmatch(r"last\.\d+\.pt", p.name)),
                     key=lambda p: int(p.name.split(".")[1]))
    numbered = sorted(folder.glob("epoch_*.pt"), key=_epoch_number, reverse=True)
    return [p for p in rotated + numbered if p.resolve() != path.resolve()]


def _resolve(path: Path) -> Path:
    """The checkpoint file meant by a run directory, its checkpoints folder, or a file path."""
    if path.is_dir():
        inside = path / LAST
        return inside if inside.is_file() or path.name == CHECKPOINT_DIR else path / CHECKPOINT_DIR / LAST
    if not path.exists() and path.suffix not in (".pt", ".pth", ".tar"):
        return path / CHECKPOINT_DIR / LAST  # a run directory that does not exist (yet)
    return path


def load_checkpoint(run_dir_or_file: str | os.PathLike, map_location: Any = "cpu",
                    weights_only: bool = True) -> TrainState:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``run_dir_or_file``: a run directory (reads ``checkpoints/last.pt``), its ``checkpoints``
    folder, or a checkpoint file. Raises FileNotFoundError naming the missing path, and
    ValueError naming the file when it is damaged (truncated, overwritten, not a checkpoint),
    listing the earlier checkpoints to resume from instead. ``weights_only=False`` unpickles
    arbitrary objects (older checkpoints holding e.g. numpy scalars): only for trusted files.
    """
    path = _resolve(Path(run_dir_or_file))
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        refused = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        if weights_only and refused:
            raise ValueError(
                f"{path}: holds Python objects other than tensors and plain containers, which "
                f"torch.load(weights_only=True) refuses ({refused[0]}). If you trust the file, "
                "load it with load_checkpoint(..., weights_only=False)."
            ) from None
        raise _damaged(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError,
            IndexError, UnicodeDecodeError) as exc:
        raise _damaged(path, exc) from None
    if not isinstance(data, dict):
        raise _damaged(path, TypeError(f"holds a {type(data).__name__}, not a dict"))
    missing = [k for k in ("epoch", "step", "model", "optimizer") if k not in data]
    if missing:
        raise ValueError(f"{path}: not a wssl-zoo checkpoint (missing {missing}; found {sorted(data)})")
    if data.get("format_version", 1) > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {data['format_version']} is newer than this "
                         f"wssl-zoo understands ({FORMAT_VERSION}); upgrade wssl-zoo")
    return TrainState(epoch=int(data["epoch"]), step=int(data["step"]), model=data["model"],
                      optimizer=data["optimizer"], scaler=data.get("scaler") or {},
                      rng=data.get("rng") or {}, extra=data.get("extra") or {})


def _short_reason(exc: BaseException) -> str:
    """The informative part of a torch.load error (its messages run to several paragraphs)."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:  # garbage bytes: the unpickler met an unknown opcode
        after = text.split("WeightsUnpickler error:", 1)[1].strip()
        text = after.splitlines()[0] if after else text
    first = text.splitlines()[0] if text else "empty file" if isinstance(exc, EOFError) else ""
    first = first.split(". ", 1)[0]
    return first[:200]


def _damaged(path: Path, exc: BaseException) -> ValueError:
    detail = _short_reason(exc)
    earlier = earlier_checkpoints(path)
    if earlier:
        advice = (f"resume from the previous checkpoint instead: {earlier[0]} "
                  f"(copy it over {path}, or pass it as the file to load)")
    else:
        advice = (f"no earlier checkpoint exists in {path.parent}; start a new run "
                  f"(or restore {path.name} from a backup)")
    return ValueError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {detail}); "
                      f"the file is damaged or truncated — {advice}")


def is_finite_state(model_or_state: nn.Module | dict) -> bool:
    """True when every floating-point tensor of the model (or state dict) is finite; the loop
    refuses to save otherwise, so the last good checkpoint stays."""
    return not non_finite_tensors(model_or_state)
