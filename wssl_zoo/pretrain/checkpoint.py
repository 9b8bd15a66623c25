"""Atomic checkpoints: a crash at any moment leaves either the old file or the new one."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modelio import atomic_write_bytes


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically (serialised in memory, then written and renamed)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


@dataclass
class TrainState:
    epoch: int  # completed epochs (or the current one when step_in_epoch > 0 in extra)
    step: int  # global step
    model: dict
    optimizer: dict
    scaler: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def save_checkpoint(run_dir: str | os.PathLike, state: TrainState) -> Path:
    path = Path(run_dir) / "checkpoints" / "last.pt"
    atomic_save(dict(epoch=state.epoch, step=state.step, model=state.model, optimizer=state.optimizer,
                     scaler=state.scaler, extra=state.extra), path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> TrainState:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error means a broken file
        raise ValueError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}); "
                         "it is damaged — restore an earlier copy or start a new run") from None
    missing = {"epoch", "step", "model", "optimizer"} - set(data)
    if missing:
        raise ValueError(f"{path}: not a wssl-zoo checkpoint (missing {sorted(missing)})")
    return TrainState(epoch=data["epoch"], step=data["step"], model=data["model"], optimizer=data["optimizer"],
                      scaler=data.get("scaler", {}), extra=data.get("extra", {}))


def is_finite_state(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
