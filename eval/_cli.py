"""Shared command-line plumbing of the eval modules: common flags, one-line errors, records."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from wssl_zoo import catalogue, cliargs, distributed
from wssl_zoo.cliargs import command_line as line
from wssl_zoo.cliargs import run_cli
from wssl_zoo.distributed import rank_world
from wssl_zoo.download import resolve_data
from wssl_zoo.paths import results_dir

from .records import default_record_path, record_identity
from .training import Checkpoint, resume_with


def add_common(p: argparse.ArgumentParser) -> None:
    """The eval tools' flags: the shared vocabulary (:mod:`wssl_zoo.cliargs`) plus the cache."""
    cliargs.add_model(p)
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept hf-hub: --model files for which neither the Hub nor the repo's SHA256SUMS states a "
                   "hash (a mirror without the Hub's file metadata); they are loaded unchecked")
    p.add_argument("--data", metavar="ROOT",
                   help="ImageNet layout (ROOT/train/<class>/ and ROOT/val/<class>/ or ROOT/test/<class>/), "
                   "or torchvision's folder with --dataset (required, unless --download fetches the dataset)")
    cliargs.add_dataset(p)
    cliargs.add_download(p)
    cliargs.add_seed(p, seeds=True, help_seed="the first seed")
    p.add_argument("--out", metavar="DIR|FILE.json", help="where the records go: a folder, or one .json file when "
                   "exactly one record is written (default: --results-dir)")
    p.add_argument("--results-dir", metavar="DIR", help="folder of the records when --out is not given (default: "
                   "$WSSL_ZOO_RESULTS or ./results); only --results-dir zoo/results adds them to the zoo's published "
                   "results. Records are named <task>_<model>_<protocol>_<dataset>_seed<S>_<id>.json, <id> a short "
                   "hash of the record's identity")
    cliargs.add_device(p)
    cliargs.add_workers(p)
    p.add_argument("--batch-size", type=int, help="override the protocol's batch size (the global batch: under torchrun "
                   "each of W processes takes 1/W of it; recorded as an override; for knn and spectrum the extraction "
                   "batch per process)")
    p.add_argument("--cache-dir", help="feature cache (default: $WSSL_ZOO_CACHE or ~/.cache/wssl_zoo/features)")
    p.add_argument("--normalisation", choices=["authors", "train"], default="authors",
                   help="authors: normalise as the model's authors evaluate (INTL's CIFAR evaluation uses other "
                   "statistics than its training views, winci-ai/INTL cifar/eval/dataloader.py:63-67,77-81); train: "
                   "the training normalisation everywhere, the corrected behaviour, recorded as a protocol override "
                   "(default: %(default)s)")
    cliargs.add_amp(p, note="; every evaluation runs in float32 as the authors' do (INTL evaluate.py, CW-RGP "
                    "ImageNet/lincls.py, W-MSE eval/get_data.py: no autocast), and bf16 / fp16 is recorded as a protocol "
                    "override (+amp=...), never as the paper's protocol", shown="none = float32")
    cliargs.add_progress(p)


def check_out(args, records: int) -> None:
    """Refuse ``--out FILE.json`` when the run would write more than one record."""
    if args.out and str(args.out).endswith(".json") and records > 1:
        raise ValueError(f"--out {args.out}: this run writes {records} records (protocols x seeds); give a folder "
                         "(--out DIR) instead of one .json file")


def record_path(args, task: str, label: str, protocol: str, seed: int, record: dict | None = None) -> Path:
    """The record file of one (task, model, protocol, seed): ``--out`` when it is a .json file
    (see :func:`check_out`), else the default name of ``record`` inside ``--out``, or inside the
    results folder (``--results-dir``, see :func:`wssl_zoo.paths.results_dir`)."""
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix == ".json":
        return out
    folder = out if out is not None else results_dir(getattr(args, "results_dir", None))
    return default_record_path(task, label, protocol, args.dataset, seed, folder, record)


def checkpoint_for(args, record: Path, identity: dict):
    """The :class:`eval.training.Checkpoint` of the evaluation that writes ``record``: ``<record>.ckpt``
    beside it (the same command finds it again), resumed with ``--resume``."""
    return Checkpoint(record.with_name(record.stem + ".ckpt"), identity, bool(getattr(args, "resume", False)),
                      resume_with(args.module, args.argv), keep=bool(getattr(args, "keep_checkpoint", False)))


def add_checkpoint_flags(p: argparse.ArgumentParser, what: str) -> None:
    """``--resume`` and ``--keep-checkpoint`` of the evaluations that train (linear, semi)."""
    cliargs.add_resume(p, f"{what} (the checkpoint <record>.ckpt next to its record, written after every epoch)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the last checkpoint (the trained weights, optimiser state and per-epoch test metrics) as "
                   "<record>.final.ckpt once the record is written (default: delete it)")


def finished_record(args, record: Path, expected: dict) -> dict | None:
    """With ``--resume``: the record at ``record`` when it exists, measures what ``expected`` (a record or
    its identity fields) does, and no checkpoint is beside it (that seed finished before the interruption;
    it is not run again), else None. Rank 0 reads, every rank gets it."""
    rank, world = rank_world()
    found: list = [None]
    if rank == 0 and getattr(args, "resume", False) and record.is_file() and \
            not record.with_name(record.stem + ".ckpt").is_file():
        try:
            found[0] = json.loads(record.read_text())
        except (OSError, ValueError):
            found[0] = None
        if not isinstance(found[0], dict) or record_identity(found[0]) != record_identity(expected):
            found[0] = None  # another measurement (or none): write_record refuses to replace it, naming it
    if world > 1:
        dist.broadcast_object_list(found, src=0)
    if found[0] is not None and rank == 0:
        print(f"--resume: {record} is written and has no checkpoint: seed {found[0].get('seed')} finished "
              f"(identity {record_identity(found[0])[:8]}); not run again", flush=True)
    return found[0]


def command_line(module: str, argv: list[str] | None) -> str:
    return line(f"python -m {module}", argv)


def run_main(module: str, build: Callable[[], argparse.ArgumentParser], run: Callable, argv: list[str] | None) -> int:
    """Parse, run, and turn expected errors into one line on stderr and exit status 2
    (:func:`wssl_zoo.cliargs.run_cli`). Under torchrun the process group is set up here (feature
    extraction writes per-rank shards, the probes and fine-tuning use DDP); only rank 0 writes records
    and checkpoints."""
    args = build().parse_args(argv)
    args.module, args.argv = module, list(argv) if argv is not None else sys.argv[1:]  # the resume command's parts
    processes: list[distributed.Process] = []

    def go() -> int:
        processes.append(distributed.setup(getattr(args, "device", "auto")))
        if hasattr(args, "download") and hasattr(args, "data"):  # the tools that read one dataset
            args.data = resolve_data(args.dataset, args.data, args.download, progress=not args.no_progress)
            if args.data is None and catalogue.get(args.dataset).default_root is None:
                raise ValueError(f"--data is required (where {args.dataset} is), or --download to fetch "
                                 f"{args.dataset} where torchvision can")
        return run(args, command_line(module, argv))

    try:
        return run_cli(module, go)
    finally:
        for process in processes:
            distributed.teardown(process)
