"""Stopping cleanly when a cluster preempts a job: one behaviour for every long job.

SLURM sends SIGTERM (or the signal ``#SBATCH --signal=USR1@120`` names) some time before it kills
a job; torchrun forwards SIGTERM to every rank; a person presses Ctrl-C. Pretraining, the
evaluations and detection all do the same on any of the three:

1. the signal only sets a flag (:class:`StopOnSignal`); the work in progress (a training step)
   finishes;
2. at the next step boundary the job asks :meth:`StopOnSignal.requested`, which all ranks answer
   together (one all-reduce), so every rank stops after the same step;
3. the job writes its checkpoint atomically and raises :class:`Preempted` with a message naming
   the signal, where it stopped, the checkpoint and the command that resumes;
4. :func:`wssl_zoo.cliargs.run_cli` prints that message as one line (no traceback) and the process
   exits with :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL`` of ``sysexits.h``: "try again later"), the
   status a requeue script can test for.

A second Ctrl-C while the flag is set interrupts at once (``KeyboardInterrupt``), for a person
who does not want to wait for the step; the last checkpoint written stays.

The job's own process stops it, not its data-loading workers: SLURM signals every process of a job
step and a terminal sends Ctrl-C to the whole process group, workers included. A worker forked while
:class:`StopOnSignal` is active inherits its handler, which does nothing outside the process that
installed it; a worker started afresh (``spawn``/``forkserver``: macOS, Python >= 3.14) ignores the
signals through :func:`ignore_stop_signals` as its ``worker_init_fn``. Either way it keeps serving
batches until the job stops asking, instead of dying under the step in progress.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from typing import Iterable

import torch

from .cliargs import EXIT_PREEMPTED, Preempted  # noqa: F401  (the error convention; re-exported)
from .distributed import any_rank

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class StopOnSignal:
    """``with StopOnSignal() as stop: ... if stop.requested(): checkpoint; raise Preempted(...)``.

    Installs handlers for SIGTERM, SIGUSR1 and SIGINT (those the platform has) in the main thread
    and restores the previous ones on exit; elsewhere (a worker thread) it installs nothing and
    :meth:`requested` only follows the other ranks.
    """

    def __init__(self, signals: Iterable[str] = STOP_SIGNALS, announce: bool = True):
        self.names = [name for name in signals if hasattr(signal, name)]
        self.announce = announce
        self.received: str | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, frame) -> None:  # noqa: ARG002 - the signal module's signature
        if os.getpid() != self._pid:  # a forked data-loading worker: the job's process handles it
            return
        name = signal.Signals(signum).name
        if self.received is not None and name == "SIGINT":
            raise KeyboardInterrupt
        if self.received is None:
            self.received = name
            if self.announce:
                print(f"\n{name} received: finishing the current step, then writing a checkpoint and stopping "
                      "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopOnSignal":
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for name in self.names:
                signum = getattr(signal, name)
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def requested(self, device: torch.device | None = None) -> bool:
        """Whether any rank received a stop signal; the same answer on every rank (an all-reduce
        under torch.distributed, so call it at the same step boundary on every rank)."""
        return any_rank(self.received is not None, device)

    @property
    def signal_name(self) -> str:
        """The signal received here, or ``a stop signal`` when another rank received it."""
        return self.received or "a stop signal (on another rank)"


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGTERM, SIGUSR1 and SIGINT. SLURM signals every
    process of a job step and Ctrl-C the whole foreground process group, so the workers get the signal
    too; by default it would kill them (SIGINT: they exit on KeyboardInterrupt) and the main process
    would fail on its next batch instead of finishing the step and writing its checkpoint. The main
    process alone decides; its DataLoader ends the workers when it stops."""
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def resume_command(prog: str, argv: Iterable[str] | None) -> str:
    """The command line that resumes this job: ``prog`` with the same arguments and ``--resume``
    (added when absent), as a user would retype it."""
    args = list(argv) if argv is not None else sys.argv[1:]
    if "--resume" not in args:
        args.append("--resume")
    return " ".join([prog, *map(shlex.quote, args)])


def stopped_message(signal_name: str, where: str, checkpoint: str, command: str) -> str:
    """The one line a preempted job ends with."""
    return (f"stopped by {signal_name} {where}; checkpoint written to {checkpoint}. "
            f"Resume with: {command}  (exit status {EXIT_PREEMPTED})")
