"""A pretraining run's log: ``OUT/log.jsonl`` (one JSON object per line), and the same numbers in
TensorBoard and Weights & Biases.

Every record has a ``kind``, an ``epoch`` (1-based: the epoch it belongs to) and a ``global_step``
(optimiser steps taken when it was written):

- ``start``: the run started or resumed: ``resumed_from`` (the checkpoint, or null with ``fresh`` saying
  why it starts from nothing), the processes, the hardware and the SLURM job and restart where there is one;
- ``step``: every ``--log-every`` global steps: ``loss`` (mean over the ``steps`` since the previous step
  record), ``lr``, ``views_per_s`` (all processes together) and ``data_wait_share``: the share of those
  steps' time the main process spent waiting for the data loader (near 0 when the loader keeps up; near
  1 when the accelerator starves and more ``--workers`` or ``--gpu-augment`` would help);
- ``epoch``: at each epoch end: mean loss, last lr, views_per_s, epoch_seconds, and at monitor epochs the
  kNN monitor and the effective rank (a record without a ``kind`` is one of these: logs written before
  kinds had only epoch records);
- ``stop``: the run stopped on a signal after writing its checkpoint (``signal``, ``checkpoint``).

A resumed run first drops the records past its checkpoint's global step (:func:`trim`), so the log of a
run that was killed and resumed holds each step and epoch once, as the uninterrupted run's does, with the
start and stop records in between. :func:`run_state` reads the log to say how a run ended (what a SLURM
script asks before requeueing the job).

No torch at import time: TensorBoard (the ``[tensorboard]`` extra) and W&B (the ``[wandb]`` extra) are
imported by :class:`RunLog` when asked for.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
import warnings
from pathlib import Path

from .cliargs import EXIT_PREEMPTED
from .fileio import atomic_write_text

LOG_NAME = "log.jsonl"
SUMMARY_NAME = "summary.json"  # written last by a finished run
WANDB_RUN_FILE = "wandb_run.json"  # the W&B run (id, project) that a resumed run continues
KINDS = ("start", "step", "epoch", "stop")
SLURM_KEYS = {"slurm_job_id": "SLURM_JOB_ID", "slurm_restart_count": "SLURM_RESTART_COUNT"}


def kind_of(record: dict) -> str:
    return record.get("kind", "epoch")


def slurm_job() -> dict[str, str]:
    """This process's SLURM job id and restart count (``SLURM_RESTART_COUNT`` counts requeues; absent on
    the first run, i.e. 0); empty outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    return {key: os.environ.get(var, "0") for key, var in SLURM_KEYS.items()}


# ---------------------------------------------------------------------------- log.jsonl


def log_path(run: str | Path) -> Path:
    """``RUN/log.jsonl`` for a run folder, ``run`` itself for a file (or any ``*.jsonl``)."""
    run = Path(run)
    return run if run.is_file() or run.suffix == ".jsonl" else run / LOG_NAME


def read_log(path: str | Path, kind: str | None = None) -> list[dict]:
    """The records of a run's ``log.jsonl`` in file order (only those of ``kind`` when given). A last
    line without its newline is a write a crash cut short and is left out; any other line that is not a
    JSON object with an ``epoch`` is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such log (a pretraining run writes RUN/{LOG_NAME} as it trains)")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"read_log: unknown kind {kind!r}; choose one of {KINDS}")
    text = path.read_text()
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is empty, or an unfinished write
    rows = []
    for i, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise ValueError(f"{path}:{i}: a log record needs an 'epoch' key")
        if kind is None or kind_of(row) == kind:
            rows.append(row)
    return rows


def append(path: str | Path, record: dict) -> None:
    """Add one record (one line, flushed: a crash loses at most the line being written, which
    :func:`read_log` and :func:`trim` then ignore)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record, allow_nan=True) + "\n")


def trim(path: str | Path, global_step: int) -> int:
    """Drop the records written after ``global_step`` (what a run killed after its last checkpoint had
    logged beyond it; the resumed run logs those steps again); returns how many were dropped. The file
    is rewritten atomically, and only when something is dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    text = path.read_text()
    lines = text.split("\n")
    kept, dropped = [], int(bool(lines[-1].strip()))  # an unfinished last line
    for line in lines[:-1]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            kept.append(line)  # not ours to judge; read_log names it
            continue
        if isinstance(row, dict) and int(row.get("global_step", 0)) > global_step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped


def is_finished(out: str | Path) -> bool:
    """Whether the run in ``out`` finished: its model (``model.safetensors``) and, written after it,
    ``summary.json`` are there."""
    out = Path(out)
    return (out / SUMMARY_NAME).is_file() and (out / "model.safetensors").is_file()


def run_state(out: str | Path) -> tuple[int, str]:
    """How the run in ``out`` ended, as ``(status, one line)``: 0 finished (:func:`is_finished`); 75 stopped
    on a signal after writing its checkpoint, in this SLURM job and restart where one is running (the
    job stopped and should be requeued); 1 anything else (no run; still running; ended by an error or
    SIGKILL; or stopped in an earlier job, so this job failed before it logged anything)."""
    out = Path(out)
    if is_finished(out):
        return 0, f"{out}: finished ({SUMMARY_NAME} written)"
    log = out / LOG_NAME
    if not log.is_file():
        return 1, f"{out}: no run has logged there ({LOG_NAME} not found)"
    records = read_log(log)
    if not records:
        return 1, f"{out}: {LOG_NAME} is empty"
    last = records[-1]
    if kind_of(last) != "stop":
        return 1, (f"{out}: neither finished nor stopped by a signal: running, or ended by an error or a kill "
                   f"after global step {last.get('global_step')} (its last record is a {kind_of(last)} record)")
    job, here = {k: last.get(k) for k in SLURM_KEYS}, slurm_job()
    if here and job != here:
        return 1, (f"{out}: stopped by {last.get('signal')} in SLURM job {job['slurm_job_id']} (restart "
                   f"{job['slurm_restart_count']}), not in this one ({here['slurm_job_id']}, restart "
                   f"{here['slurm_restart_count']}): this job did not get as far as logging")
    return EXIT_PREEMPTED, (f"{out}: stopped by {last.get('signal')} at global step {last.get('global_step')} "
                            f"with its checkpoint written; resume it with --resume")


def format_duration(seconds: float) -> str:
    """``95`` -> ``1 min 35 s``; ``7300`` -> ``2 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# ---------------------------------------------------------------------------- per-step numbers


class StepWindow:
    """The steps since the last step record: their losses, views and times. A step's time runs from
    the moment the loop asks the loader for its batch (:meth:`fetched`) to the end of the optimiser
    step (:meth:`add`), so epoch-end work (monitor, checkpoint) is in no step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps, self.loss, self.views, self.wait, self.seconds = 0, 0.0, 0, 0.0, 0.0
        self._asked: float | None = None

    def fetched(self, asked: float, got: float) -> None:
        """The loop asked the loader for a batch at ``asked`` and got it at ``got`` (perf_counter)."""
        self._asked = asked
        self.wait += got - asked

    def add(self, loss: float, views: int) -> None:
        """One step ended now: its loss and the views it trained on (all processes)."""
        now = time.perf_counter()
        self.seconds += now - (self._asked if self._asked is not None else now)
        self._asked = None
        self.steps += 1
        self.loss += loss
        self.views += views

    def summary(self) -> dict[str, float]:
        """``loss`` (mean), ``views_per_s``, ``data_wait_share`` and ``steps`` of the window."""
        seconds = max(self.seconds, 1e-9)
        return dict(loss=self.loss / max(self.steps, 1), views_per_s=self.views / seconds,
                    data_wait_share=min(1.0, self.wait / seconds), steps=self.steps)


# ---------------------------------------------------------------------------- the writers


def check_wandb_installed() -> None:
    """``--wandb`` without the package is refused before a run starts (not found out hours later)."""
    if importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb needs the wandb package: pip install 'wssl-zoo[wandb]' (or pip install wandb)")


def _scalars(record: dict, skip: tuple[str, ...]) -> dict[str, float]:
    return {k: v for k, v in record.items() if k not in skip and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


class RunLog:
    """Rank 0's writer of every record: ``OUT/log.jsonl``, and where asked TensorBoard
    (``OUT/tensorboard``: step records as ``train/<key>`` against the global step, epoch records as
    ``pretrain/<key>`` against the epoch) and W&B (one run per pretraining run, kept across resumes by
    the id in ``OUT/wandb_run.json``; step records as ``train/<key>``, epoch records as ``epoch/<key>``,
    both against the global step). W&B honours its own environment (``WANDB_MODE=offline``,
    ``WANDB_PROJECT``, ``WANDB_ENTITY``); its files go to ``OUT/wandb``.

    ``resume_step``: the global step a resumed run continues from (None for a fresh start): TensorBoard
    hides the events it logged past that step (``purge_step``) and W&B skips the steps it already has.
    """

    def __init__(self, out: Path, *, tensorboard: bool = False, wandb: bool = False, config: dict | None = None,
                 name: str = "", resume_step: int | None = None):
        self.out = Path(out)
        self.path = self.out / LOG_NAME
        self.writer = self._tensorboard(resume_step) if tensorboard else None
        self.wandb = self._wandb(config or {}, name) if wandb else None

    def _tensorboard(self, resume_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: the [tensorboard] extra
        except ImportError:
            warnings.warn("--tensorboard needs the tensorboard package; logging to log.jsonl only")
            return None
        # a resumed run hides what the killed one logged past the checkpoint (TensorBoard hides the events
        # at purge_step and after), as log.jsonl drops it
        purge = {"purge_step": resume_step + 1} if resume_step is not None else {}
        return SummaryWriter(str(self.out / "tensorboard"), **purge)

    def _wandb(self, config: dict, name: str):
        import wandb  # optional: the [wandb] extra (check_wandb_installed ran before the run started)

        id_file = self.out / WANDB_RUN_FILE
        saved = json.loads(id_file.read_text()) if id_file.is_file() else {}
        project = saved.get("project") or os.environ.get("WANDB_PROJECT") or "wssl-zoo"
        run = wandb.init(project=project, id=saved.get("id"), resume="allow",  # no id: W&B makes one, kept below
                         name=name or self.out.name, dir=str(self.out), config=config, job_type="pretrain")
        if not saved:
            atomic_write_text(id_file, json.dumps(dict(id=run.id, project=project), indent=2) + "\n")
        return run

    def write(self, record: dict) -> None:
        """Append ``record`` to log.jsonl and pass its numbers on."""
        append(self.path, record)
        kind, step = kind_of(record), int(record.get("global_step", 0))
        if kind == "step":
            values = _scalars(record, ("kind", "epoch", "step", "global_step", "steps"))
            if self.writer is not None:
                for key, value in values.items():
                    self.writer.add_scalar(f"train/{key}", value, step)
            self._wandb_log({f"train/{k}": v for k, v in values.items()}, step)
        elif kind == "epoch":
            values = _scalars(record, ("kind", "epoch"))
            if self.writer is not None:
                for key, value in values.items():
                    self.writer.add_scalar(f"pretrain/{key}", value, record["epoch"])
            self._wandb_log({f"epoch/{k}": v for k, v in values.items() if k != "global_step"}
                            | {"epoch/epoch": record["epoch"]}, step)

    def _wandb_log(self, values: dict, step: int) -> None:
        # a resumed W&B run already holds the steps up to where the killed run got: they are the same
        # numbers (the run is deterministic), and W&B refuses steps below its counter anyway
        if self.wandb is not None and values and step >= self.wandb.step:
            self.wandb.log(values, step=step)

    def close(self, exit_code: int = 0) -> None:
        """Flush and close (``exit_code`` 75: W&B marks the run preempted, so it shows as resumable)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            if exit_code == EXIT_PREEMPTED:
                self.wandb.mark_preempting()
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None
