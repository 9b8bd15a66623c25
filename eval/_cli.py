"""Shared command-line plumbing of the eval modules: common flags, one-line errors, records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable


def add_common(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    p.add_argument("--model", required=True, help="registry name or alias, model directory, hf-hub:org/name[@rev], "
                   "or random:ARCH[:STEM[:SIZE]] for a random-init baseline")
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept an hf-hub: --model without SHA256SUMS (its weights are not checked)")
    p.add_argument("--data", required=data_required, metavar="ROOT",
                   help="ImageNet layout (ROOT/train/<class>/ and ROOT/val/<class>/ or ROOT/test/<class>/), "
                   "or torchvision's folder with --dataset")
    p.add_argument("--dataset", default="imagefolder", choices=["imagefolder", "cifar10", "cifar100", "stl10",
                                                                "fashion_mnist"],
                   help="how to read ROOT (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the first seed (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="runs with seeds SEED..SEED+N-1; the summary has mean and "
                   "std (default: %(default)s)")
    p.add_argument("--out", metavar="FILE", help="record file (default: zoo/results/<task>_<model>_<protocol>_"
                   "<dataset>_seed<S>.json); with several seeds, _seed<S> is added before .json")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda; under torchrun, cuda means this process's "
                   "LOCAL_RANK GPU (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="data-loading workers (default: %(default)s)")
    p.add_argument("--batch-size", type=int, help="override the protocol's batch size")
    p.add_argument("--cache-dir", help="feature cache (default: $WSSL_ZOO_CACHE or ~/.cache/wssl_zoo/features)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def record_path(args, task: str, label: str, protocol: str, seed: int) -> Path:
    from .records import default_record_path

    if args.out:
        out = Path(args.out)
        return out if args.seeds == 1 else out.with_name(f"{out.stem}_seed{seed}{out.suffix}")
    return default_record_path(task, label, protocol, args.dataset, seed)


def command_line(module: str, argv: list[str] | None) -> str:
    import shlex

    return " ".join(["python -m", module, *map(shlex.quote, argv if argv is not None else sys.argv[1:])])


def init_distributed() -> bool:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group (NCCL on CUDA, else gloo) and
    pin this process to its ``LOCAL_RANK`` GPU; returns whether this call created the group."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def run_main(module: str, build: Callable[[], argparse.ArgumentParser], run: Callable, argv: list[str] | None) -> int:
    """Parse, run, and turn expected errors into one line on stderr and exit status 2. Under
    torchrun the process group is set up here (feature extraction is sharded and gathered,
    fine-tuning uses DDP); only rank 0 writes records."""
    args = build().parse_args(argv)
    created = init_distributed()
    try:
        return run(args, command_line(module, argv))
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{module}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
