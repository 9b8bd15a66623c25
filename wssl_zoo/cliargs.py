"""The command-line vocabulary every tool shares: one definition per flag, one error convention.

``wssl-zoo pretrain``, ``python -m eval.linear | eval.knn | eval.semi | eval.spectrum |
eval.benchmark``, ``python -m detection.train`` and the demo take these flags with one meaning:

- ``--model``: a model spec (:func:`wssl_zoo.weights.resolve`);
- ``--data ROOT`` / ``--dataset NAME``: where the images are and how to read them;
- ``--out``: where the tool's output goes (a run folder for pretraining, detection and the demo; for
  the eval tools the folder their records go to, or one ``.json`` record file when exactly one
  record is written);
- ``--workers N``: data-loading worker processes per training/eval process (default: the usable
  cores / processes on the node, less one, at most :data:`WORKERS_CAP`; :func:`default_workers`);
- ``--device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun a bare
  ``cuda`` is this process's ``LOCAL_RANK`` GPU; every tool turns it into a ``torch.device`` with
  :func:`device` (anything else, or CUDA where there is none, is a one-line error);
- ``--amp {none,bf16,fp16}``: mixed precision on CUDA;
- ``--seed S`` (and, for the eval tools, ``--seeds N``: seeds S..S+N-1);
- ``--set KEY=VALUE``: override one configuration key (repeatable).

Errors a user can fix are one line on stderr, naming the culprit, with exit status 2; a job
stopped by a preemption signal after writing its checkpoint (:class:`Preempted`, raised through
:mod:`wssl_zoo.preempt`) is one line saying how to resume, with exit status :data:`EXIT_PREEMPTED`
(75); an interrupt (a second Ctrl-C) is one line with status 130 (:func:`run_cli`).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import Callable, Iterable

from . import catalogue

AMP_CHOICES = ("none", "bf16", "fp16")
# sysexits.h EX_TEMPFAIL ("temporary failure; the user is invited to retry"): a job that stopped on
# SIGTERM / SIGUSR1 / Ctrl-C after writing its checkpoint; a requeue script tests for it.
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C


class Preempted(Exception):
    """A job stopped on a signal after writing its checkpoint; the message says how to resume
    (:func:`wssl_zoo.preempt.stopped_message`)."""

    exit_status = EXIT_PREEMPTED

# What a user can fix: bad flags, files, data, configs. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError, RuntimeError)


# The most data-loading workers one process gets by default: what a node with 16 cores per GPU gives
# each of its processes (16 - 1, one core left to the process itself: the device views' stage, the
# optimiser, NCCL). More workers per process feed nothing a GPU can use (with --device-views a
# worker ships a 224-px image's views in well under a millisecond; without it even 15 PIL workers
# fall short of an ImageNet step, so more cores per GPU are better spent on a faster pipeline) and
# each costs memory: a Python process with torch and a copy-on-write view of the file list.
WORKERS_CAP = 15


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (what a scheduler's cpuset
    grants), lowered to a cgroup v2 CPU quota when one is set (containers with ``--cpus``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 quota file
        pass
    return cores


def local_processes() -> int:
    """The processes sharing this node's cores: torchrun's ``LOCAL_WORLD_SIZE`` (1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_workers(cap: int = WORKERS_CAP) -> int:
    """Data-loading worker processes per process on this machine, the one rule of every tool:
    ``usable cores / processes on this node - 1``, at most ``cap``, at least 0 (on a 2-core machine
    one worker, so the main process keeps a core; 15 per GPU process on a 128-core 8-GPU node)."""
    return max(0, min(cap, usable_cores() // local_processes() - 1))


def workers_rule(cap: int = WORKERS_CAP) -> str:
    """:func:`default_workers` in words, with this machine's numbers."""
    return (f"{default_workers(cap)}: {usable_cores()} usable cores / {local_processes()} process(es) on this node "
            f"less one, at most {cap}")


def add_model(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="registry name or alias, model directory or .safetensors "
                   "file, hf-hub:ORG/NAME[@REV], or random:ARCH[:STEM[:SIZE]] (random init, the baseline)")


def dataset_arg(text: str) -> str:
    """``--dataset`` as argparse's ``type``: the catalogue name of a classification dataset or of one of
    its aliases (the authors' spellings ``in100``, ``tiny_in``), with the choices in the error."""
    try:
        name = catalogue.canonical(text)
    except catalogue.UnknownDatasetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if catalogue.get(name).task != "classification":
        raise argparse.ArgumentTypeError(f"{text!r} is a {catalogue.get(name).task} dataset; choose one of "
                                         f"{', '.join(catalogue.names())}")
    return name


def add_dataset(p, default: str | None = "imagefolder", help_extra: str = "", required: bool = False) -> None:
    """``--dataset``: how to read ``--data`` (the catalogue's classification datasets)."""
    shown = "required" if required else "default: %(default)s"
    p.add_argument("--dataset", type=dataset_arg, default=default, metavar="NAME", required=required,
                   help=f"how to read --data: {', '.join(catalogue.names())} (wssl_zoo/catalogue.py; the authors' "
                   f"spellings in100, tiny_in work too){help_extra} ({shown})")


def add_download(p) -> None:
    """``--download``: fetch CIFAR-10/100, STL-10 or Fashion-MNIST with torchvision when ``--data`` lacks it."""
    p.add_argument("--download", action="store_true",
                   help="when the dataset is not at --data (or no --data is given), download it with torchvision "
                   "(CIFAR-10, CIFAR-100, STL-10, Fashion-MNIST; md5-checked) into --data, else $WSSL_ZOO_DATA/NAME "
                   "or ~/.cache/wssl_zoo/data/NAME; $WSSL_ZOO_DATA_MIRROR replaces the host (default: never download)")


def add_workers(p, default: int | None = -1, what: str = "", cap: int = WORKERS_CAP,
                aliases: tuple[str, ...] = ()) -> None:
    """``default=-1`` means :func:`default_workers` (``cap``), its rule and this machine's numbers in
    the help; ``None`` lets the tool decide (said in ``what``). ``aliases`` are older spellings a tool
    keeps accepting (``detection.train --num-workers``). A tool says the number it runs with at its
    start (pretraining does; nothing is printed when the arguments are parsed, so an error stays one line)."""
    value = default_workers(cap) if default == -1 else default
    shown = workers_rule(cap) if default == -1 else (what or "%(default)s")
    also = f"; also spelled {', '.join(aliases)}" if aliases else ""
    p.add_argument("--workers", *aliases, dest="workers", type=int, default=value,
                   help=f"data-loading worker processes per process (default: {shown}){also}")


def add_device(p) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N; under torchrun "
                   "a bare cuda is this process's LOCAL_RANK GPU (default: %(default)s)")


def device(name: str = "auto"):
    """The ``torch.device`` of a ``--device`` value, the same in every tool: ``auto`` is CUDA when
    present, else the CPU; a bare ``cuda`` is this process's ``LOCAL_RANK`` GPU (0 outside
    torchrun); ``cuda:N`` is GPU N. ValueError naming the flag for anything else or for CUDA on a
    machine without it. (The one function of this module that imports torch, when called.)"""
    import torch  # only when a device is asked for: the vocabulary is read without torch

    text = str(name).strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    index = int(text.split(":")[1]) if ":" in text else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def add_amp(p, default: str | None = "none", note: str = "", shown: str = "%(default)s") -> None:
    p.add_argument("--amp", choices=AMP_CHOICES, default=default, help="mixed precision on CUDA "
                   f"(default: {shown}){note}")


def add_seed(p, seeds: bool = False, help_seed: str = "the seed of everything random", default: int | None = 0,
             shown: str = "%(default)s") -> None:
    """``default=None`` lets the tool fill it in (e.g. from a resumed run's config; say so in ``shown``)."""
    p.add_argument("--seed", type=int, default=default, help=f"{help_seed} (default: {shown})")
    if seeds:
        p.add_argument("--seeds", type=int, default=1, help="runs with seeds SEED..SEED+N-1; the summary gives mean "
                       "and std (default: %(default)s)")


def add_set(p, dest: str = "set", example: str = "KEY=VALUE") -> None:
    p.add_argument("--set", dest=dest, action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one configuration key, e.g. --set {example}; repeatable (default: none)")


def add_resume(p, what: str = "the job") -> None:
    """``--resume``: the one meaning every long job gives it (pretraining, evaluation, detection)."""
    p.add_argument("--resume", action="store_true",
                   help=f"continue {what} from the last checkpoint in its output folder; where that folder is "
                   "missing or empty there is nothing to resume and it starts fresh, saying so, so one command "
                   "serves the first start and every requeue (default: refuse a folder that holds a run)")


def add_overwrite(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="delete what the output folder holds first (default: a non-empty folder that is not this "
                   "job's is refused)")


def add_alias(p, old: str, dest: str, **kwargs) -> None:
    """Keep accepting ``old``, an earlier spelling of a flag now spelled once across the tools, without
    showing it in ``--help`` (so scripts written against it keep working)."""
    p.add_argument(old, dest=dest, help=argparse.SUPPRESS, **kwargs)


def add_progress(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")


def command_line(prog: str, argv: Iterable[str] | None) -> str:
    """The command as a user would retype it (recorded in records and configs)."""
    return " ".join([prog, *map(shlex.quote, list(argv) if argv is not None else sys.argv[1:])])


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` (a KeyError's quotes dropped): its first line names the culprit; a
    message written with lines of advice after it (how to make unpublished weights) keeps them."""
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return str(msg).strip() or type(exc).__name__


def run_cli(prog: str, run: Callable[[], int], errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """Run ``run()`` and turn an error the user can fix into ``PROG: error: MESSAGE`` on stderr
    and exit status 2 (argparse's own convention for usage errors); a :class:`Preempted` stop into
    ``PROG: MESSAGE`` and :data:`EXIT_PREEMPTED`; a KeyboardInterrupt into one line and 130."""
    try:
        return run()
    except Preempted as exc:
        if str(exc):  # under torchrun only rank 0 says it; the other ranks stop with the same status
            print(f"{prog}: {one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; the files written so far are complete (every write is atomic), "
              "and a job with checkpoints continues with --resume", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except errors as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
