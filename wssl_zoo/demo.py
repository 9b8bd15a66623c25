"""``python -m wssl_zoo.demo``: the zoo's main job on an embedded default, offline.

Pretrains a ResNet-18 with a whitening loss on real images already on the machine
(Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package by default), then measures kNN
and linear-probe accuracy of its features on held-out test images, next to the same network at
its random initialisation, and prints the table. About 3-4 minutes on 2 CPU cores.

With ``--data`` it runs on CIFAR-10 (torchvision's folder, ``--dataset cifar10``) or any
ImageFolder (``ROOT/train/<class>/``, ``ROOT/val/`` or ``ROOT/test/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import catalogue, cliargs
from .api import load
from .data.transforms import derive_seed
from .download import resolve_data
from .encoders import create_backbone
from .evaluation import heldout_metrics
from .fileio import atomic_write_bytes
from .preempt import resume_command
from .pretrain.loop import RunOptions, pretrain
from .pretrain.recipes import resolve_recipe
from .registry import STEMS
from .runlog import format_duration

DEFAULTS = dict(method="wmse", dataset="fashion_mnist", arch="resnet18", stem="imagenet", img_size=32,
                epochs=2, steps_per_epoch=120, batch_size=256, train_subset=30720, bank=5000, queries=2000)
BASE_RECIPE = {"wmse": "wmse_cifar10_2views", "cwrgp": "cwrgp_cifar10_2views", "intl": "intl_cifar10"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--method", choices=sorted(BASE_RECIPE), default=d["method"], help="whitening method (default: %(default)s)")
    cliargs.add_dataset(parser, default=d["dataset"])
    parser.add_argument("--data", help="dataset root (default for fashion_mnist: Debian's package folder, "
                        "/usr/share/datasets/fashion-mnist, else downloaded with torchvision into "
                        "~/.cache/wssl_zoo/data/fashion_mnist, saying so)")
    cliargs.add_download(parser)
    parser.add_argument("--arch", default=d["arch"], help="timm backbone (default: %(default)s)")

    parser.add_argument("--stem", default=d["stem"], choices=list(STEMS),
                        help="backbone stem (default: %(default)s; 'cifar' is the papers' (INTL's: 'cifar_pad2') but "
                             "~15x slower on a CPU)")
    parser.add_argument("--img-size", type=int, default=d["img_size"], help="view size in pixels (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=d["epochs"], help="epochs (default: %(default)s)")
    parser.add_argument("--steps-per-epoch", type=int, default=d["steps_per_epoch"], help="steps per epoch (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], help="batch size (default: %(default)s)")
    parser.add_argument("--train-subset", type=int, default=d["train_subset"], help="class-balanced training images (default: %(default)s)")
    parser.add_argument("--bank", type=int, default=d["bank"], help="labelled training images for kNN / probe (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=d["queries"], help="held-out test images (default: %(default)s)")
    parser.add_argument("--out", default="runs/demo", help="output directory (default: %(default)s); an earlier demo "
                        "run there is replaced, any other non-empty folder is refused")
    parser.add_argument("--overwrite", action="store_true", help="delete what --out holds first, even when it is "
                        "not a demo run")
    cliargs.add_resume(parser, what="the demo stopped by Ctrl-C (or SIGTERM) with the same options")
    cliargs.add_workers(parser, cap=2)
    cliargs.add_seed(parser)
    cliargs.add_device(parser)


def eval_steps_equivalent(args: argparse.Namespace, views: int) -> float:
    """The evaluation after pretraining in training steps of the same run: the features of 2 backbones x
    (bank + queries) images, one forward each, where a step is batch x views forwards and backwards
    (about 3 forwards each); the probes on the features cost little beside. The default demo on the
    project's Xeon at 1 thread, 2026-12-07: 1.37 s per step, so 12.5 s estimated; 12 s measured."""
    return 2 * (args.bank + args.queries) / (3 * args.batch_size * views)


def _print_estimate(args: argparse.Namespace, recipe, per_step: float, steps_left: int) -> None:
    """The demo's time estimate after its first steps: the pretraining left, then the evaluation."""
    pretraining, evaluation = per_step * steps_left, per_step * eval_steps_equivalent(args, recipe.num_views)
    tqdm.write(f"estimated time left: about {format_duration(pretraining + evaluation)} "
               f"({format_duration(pretraining)} of pretraining at {per_step:.2f} s per step, "
               f"then about {format_duration(evaluation)} of evaluation)")


def demo_recipe(args: argparse.Namespace):
    """The recipe the demo pretrains with: the method's CIFAR recipe at the demo's size and length."""
    overrides = dict(dataset=args.dataset, arch=args.arch, stem=args.stem, img_size=args.img_size,
                     epochs=args.epochs, batch_size=args.batch_size, eval_every=max(args.epochs, 1))
    if args.method != "intl":
        overrides["warmup_steps"] = min(500, args.epochs * args.steps_per_epoch // 4)
        overrides["lr_drops"] = ""
    else:
        overrides["projector.hidden_dim"] = 1024
        overrides["projector.out_dim"] = 1024
    return resolve_recipe(BASE_RECIPE[args.method], overrides)


def random_init(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The network the demo's pretraining starts from: the seed's initialisation (as the loop draws it)."""
    torch.manual_seed(derive_seed(args.seed, 2))
    return create_backbone(args.arch, args.stem).eval().to(device)


def evaluate(args: argparse.Namespace, model: torch.nn.Module, device: torch.device) -> dict:
    """The demo's numbers of ``model`` (monitor cosine kNN k=5 and k=20, linear probe, effective rank) on
    ``args.bank`` training and ``args.queries`` held-out images."""
    return heldout_metrics(model, args.dataset, args.data, args.img_size, args.bank, args.queries, args.seed, device,
                           args.workers, method=args.method)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    out = Path(args.out)
    recipe = demo_recipe(args)
    print(f"wssl-zoo demo: {args.method} ({recipe.name} settings) on {args.dataset}, {args.arch} "
          f"({args.stem} stem) at {args.img_size} px, {args.epochs} x {args.steps_per_epoch} steps (at most) of "
          f"{args.batch_size} images x {recipe.num_views} views", flush=True)
    start = time.perf_counter()
    # Fashion-MNIST: Debian's package when it is there, else downloaded (saying so); others with --download
    default = catalogue.get(args.dataset).default_root
    args.data = resolve_data(args.dataset, args.data, allow_download=args.download or (args.data is None and
                                                                                       default is not None))
    if args.data is None and default is None:
        raise ValueError(f"--dataset {args.dataset} needs --data ROOT (or --download)")
    # only a previous demo run (its marker says so) is replaced; anything else needs --overwrite. The loop
    # claims --out once the recipe and the data are checked, so a refused start leaves nothing behind.
    opts = RunOptions(out=out, data=args.data, device=args.device, workers=args.workers, seed=args.seed,
                      eval_every=0, steps_per_epoch=args.steps_per_epoch, train_subset=args.train_subset,
                      owner="demo", replace_own=True, resume=args.resume, overwrite=args.overwrite,
                      command=resume_command("python -m wssl_zoo.demo", argv))
    pretrain(recipe, opts, on_estimate=lambda per_step, left: _print_estimate(args, recipe, per_step, left))
    train_time = time.perf_counter() - start
    # the steps the run made: --steps-per-epoch is a cap, fewer when --train-subset / --batch-size allow fewer
    steps = json.loads((out / "train_config.json").read_text())["steps_per_epoch"]

    device = cliargs.device(args.device)
    trained = load(out).to(device)
    rows = {}
    for label, model in (("random init", random_init(args, device)), (f"{args.method} pretrained", trained)):
        rows[label] = evaluate(args, model, device)
    total = time.perf_counter() - start
    print()
    # monitor numbers (cosine kNN on subsets): not the papers' 5-NN (Euclidean, full sets; eval.knn)
    print(f"| backbone ({args.arch}) | monitor cosine kNN k=5 | monitor cosine kNN k=20 | linear probe top-1 | effective rank |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['monitor_knn5_cos']:.2f} | {r['monitor_knn20_cos']:.2f} | {r['linear_top1']:.2f} | {r['effective_rank']:.1f} |")
    any_row = next(iter(rows.values()))
    print(f"\n{any_row['bank']} labelled training images, {any_row['queries']} held-out test images; "
          f"pretraining {args.epochs} x {steps} steps in {train_time:.0f} s, total {total:.0f} s. Model: {out} (wssl_zoo.load('{out}')).")
    command = " ".join(["python -m wssl_zoo.demo", *(sys.argv[1:] if argv is None else argv)])
    result = dict(command=command, args=vars(args) | {"out": str(out)},
                  results=rows, steps_per_epoch=steps, pretrain_seconds=train_time, total_seconds=total)

    atomic_write_bytes(out / "demo_results.json", (json.dumps(result, indent=2, default=str) + "\n").encode())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wssl_zoo.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return cliargs.run_cli("wssl-zoo demo", lambda: run(args, argv))


if __name__ == "__main__":
    sys.exit(main())
