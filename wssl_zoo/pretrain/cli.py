"""``python -m wssl_zoo.pretrain`` / ``wssl-zoo pretrain``: run a paper recipe.

Examples::

    wssl-zoo pretrain --list-recipes
    wssl-zoo pretrain --recipe intl_cifar10 --data ~/data/cifar --out runs/intl_c10
    wssl-zoo pretrain --recipe cwrgp_cifar10 --data ~/data/cifar --out runs/c --epochs 2 --set loss.w_size=32
    torchrun --nproc_per_node 8 -m wssl_zoo.pretrain --recipe intl_m_imagenet --data /imagenet --out runs/in1k
    wssl-zoo pretrain --out runs/intl_c10 --resume          # continue a killed run
    wssl-zoo pretrain --recipe intl_cifar10 --data ~/data/cifar --out runs/intl_c10 --resume   # one line for the
        # first start and every requeue: a missing or empty --out starts fresh (docs/slurm.md)
    wssl-zoo pretrain --out runs/intl_c10 --status          # finished (0), stopped by a signal (75), else 1

Stopping: SIGTERM, SIGUSR1 or Ctrl-C finishes the current step, writes the checkpoint and ends with one line
giving the command that resumes and exit status 75 (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .. import catalogue, cliargs
from ..cliargs import USER_ERRORS, dataset_arg, run_cli
from ..download import resolve_data
from ..methods import show_recipe
from ..preempt import resume_command
from ..runlog import run_state
from .loop import RunOptions, TrainingStopped, pretrain
from .recipes import get_recipe, list_recipes, recipe_from_dict, resolve_recipe

# flag -> recipe field, for the fields researchers override most
FIELD_FLAGS = {
    "--arch": ("arch", str, "timm architecture of the backbone (e.g. resnet18, resnet50, convnext_tiny)"),
    "--stem": ("stem", str, "backbone stem: imagenet, cifar (3x3 stride-1 conv, no max-pool) small (3x3 stride-1 conv, max-pool kept) or cifar_pad2 (INTL's CIFAR network: cifar with padding 2)"),
    "--dataset": ("dataset", dataset_arg, f"dataset kind: {', '.join(catalogue.names())} (wssl_zoo/catalogue.py)"),
    "--img-size": ("img_size", int, "crop size of the views"),
    "--epochs": ("epochs", int, "number of epochs"),
    "--batch-size": ("batch_size", int, "global batch size (all processes together)"),
    "--lr": ("lr", float, "learning rate as the authors state it (scaled by batch/256 where the recipe says so)"),
    "--weight-decay": ("weight_decay", float, "weight decay"),
    "--optimizer": ("optimizer", str, "adam, sgd or lars"),
    "--num-views": ("num_views", int, "number of views per image"),
    "--warmup-epochs": ("warmup_epochs", int, "epochs of linear warm-up"),
    "--warmup-steps": ("warmup_steps", int, "steps of linear warm-up"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="recipe name (see --list-recipes); not needed with --resume")
    parser.add_argument("--list-recipes", action="store_true", help="list the recipes with their source and exit")
    parser.add_argument("--show", action="store_true", help="print the resolved recipe and the source of every value "
                        "(the authors' repo@commit file:line; wssl_zoo/methods/) as JSON and exit")
    parser.add_argument("--config", help="JSON or TOML file of recipe overrides ({\"epochs\": 10, \"loss.w_size\": 64})")

    cliargs.add_set(parser, example="loss.w_iter=2 --set projector.out_dim=128 (any recipe field)")
    for flag, (_, typ, help_text) in FIELD_FLAGS.items():
        parser.add_argument(flag, type=typ, help=help_text)
    run = parser.add_argument_group("run options")
    run.add_argument("--data", help="dataset root: ImageFolder root with train/<class>/ (val/ for the kNN monitor), "
                                    "or torchvision's root for cifar10/cifar100/stl10")
    cliargs.add_download(run)
    run.add_argument("--out", help="output directory: checkpoints, logs, and finally the trained model")
    cliargs.add_resume(run, what="the run in --out (recipe, --data, --seed and the other run options not given "
                       "again come from OUT/train_config.json; a finished run is left as it is)")
    cliargs.add_overwrite(run)
    run.add_argument("--status", action="store_true", help="say how the run in --out ended and exit: 0 finished, 75 "
                     "stopped by a signal with its checkpoint written (in this SLURM job and restart, where one runs: "
                     "requeue it), 1 anything else")
    cliargs.add_device(run)
    cliargs.add_workers(run)
    cliargs.add_seed(run, help_seed="seed of everything: init, data order, augmentation, sub-batches", default=None,
                     shown="0, or the resumed run's")
    cliargs.add_amp(run, default=None, shown="none, or the resumed run's",
                    note="; for the backbone and projector, whitening stays float32")
    run.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster convs on GPUs)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--eval-every", type=int, help="epochs between kNN / effective-rank monitors (0: never; default: the recipe's)")
    run.add_argument("--monitor-samples", type=int, default=None, help="images per side of the held-out kNN monitor "
                     "(default: 2000)")
    run.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps inside an epoch "
                     "(default: 0, epoch ends only)")
    run.add_argument("--steps-per-epoch", type=int, help="cap the steps of every epoch (smoke tests, benchmarks)")
    run.add_argument("--train-subset", type=int, help="pretrain on a class-balanced subset of about this many images")
    run.add_argument("--gather", choices=["auto", "yes", "no"], default=None,
                     help="whitening statistics over all DDP ranks (auto: INTL yes, W-MSE/CW-RGP per process as the authors)")
    run.add_argument("--device-views", "--gpu-augment", dest="device_views", action="store_true", default=None,
                     help="decode the JPEGs and make the views on the training device, in batches, for every recipe "
                     "(multi-crop included): the workers only read the files and draw each view's random parameters "
                     "as the PIL pipeline does; on the CPU every view equals the PIL pipeline's (wssl_zoo/data/"
                     "device_views.py states the tolerance); --gpu-augment is the older name (default: off, or the "
                     "resumed run's)")
    logs = parser.add_argument_group("logs and snapshots")
    logs.add_argument("--log-every", type=int, default=None, metavar="N",
                      help="a step record (loss, lr, views/s, data-wait share) every N global steps in OUT/log.jsonl, "
                      "TensorBoard and W&B; 0: epoch records only (default: 50)")
    logs.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                      help="also log to OUT/tensorboard (default: no, or the resumed run's)")
    logs.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                      help="also log to Weights & Biases (the [wandb] extra; WANDB_MODE, WANDB_PROJECT and "
                      "WANDB_ENTITY apply); a resumed run continues the same W&B run (its id is in "
                      "OUT/wandb_run.json) (default: no, or the resumed run's)")
    logs.add_argument("--keep-every", type=int, default=None, metavar="N",
                      help="keep the backbone every N epochs as a model directory, OUT/snapshots/epoch_NNNN/ "
                      "(wssl_zoo.load(OUT/snapshots/epoch_0100) loads it; about the size of model.safetensors "
                      "each, no optimiser state) (default: 0, none)")
    cliargs.add_progress(logs)


def _read_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            import tomllib  # Python >= 3.11 (a --config TOML file on 3.10 needs tomli)

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes a clear message
        raise ValueError(f"--config {path}: cannot parse it: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a table of overrides")
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def print_recipes(out=None) -> None:
    out = sys.stdout if out is None else out  # read at call time, so redirection and capture see it
    print(f"{'recipe':<28} {'method':<6} {'dataset':<14} {'views':>5} {'batch':>5} {'epochs':>6} {'lr':>8}  source", file=out)
    for r in list_recipes():
        crops = f"{r.num_views}{'mc' if r.multi_crop else ''}"
        print(f"{r.name:<28} {r.method:<6} {r.dataset:<14} {crops:>5} {r.batch_size:>5} {r.epochs:>6} "
              f"{r.effective_lr:>8.4g}  {r.source.split(':', 2)[-1].strip()[:90]}", file=out)


def resolve_from_args(args: argparse.Namespace):
    overrides = {}
    if args.config:
        overrides.update(_read_config(args.config))
    for flag, (field, _, _) in FIELD_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides[field] = value
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    if args.resume and not args.recipe:
        saved = saved_config(args)
        if saved is None:
            raise FileNotFoundError(f"--resume: {Path(args.out) / 'train_config.json'} not found; pass --recipe too")
        return resolve_recipe(recipe_from_dict(saved["recipe"]), overrides)
    if not args.recipe:
        raise ValueError("--recipe is required (see --list-recipes)")
    return resolve_recipe(get_recipe(args.recipe), overrides)


def saved_config(args: argparse.Namespace) -> dict | None:
    """``OUT/train_config.json`` of the run ``--resume`` continues, or None when there is none."""
    if not args.out:
        raise ValueError("--resume needs --out")
    path = Path(args.out) / "train_config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved.get("recipe"), dict) or not isinstance(saved.get("options", {}), dict):
            raise ValueError("no 'recipe' table")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"--resume: {path} is not a train_config.json ({exc}); pass --overwrite to start over") from None
    return saved


# run options --resume takes from train_config.json when not given again, with their defaults
RESUMED_OPTIONS = dict(data=None, seed=0, amp="none", eval_every=None, monitor_samples=2000, checkpoint_every=0,
                       steps_per_epoch=None, train_subset=None, gather="auto", device_views=False, log_every=50,
                       keep_every=0, tensorboard=False, wandb=False)


def run_options(args: argparse.Namespace) -> dict:
    """The run options: each flag given, else (with ``--resume``) the saved run's, else the default."""
    saved = (saved_config(args) or {}).get("options", {}) if args.resume else {}
    values = {}
    for key, default in RESUMED_OPTIONS.items():
        given = getattr(args, key)
        values[key] = given if given is not None else saved.get(key, default)
    values["workers"] = args.workers  # this machine's, never the resumed run's
    return values


def _command(argv: list[str] | None) -> str:
    """The command line that resumes this run (``--resume`` added); under torchrun, the same launcher."""
    launched = "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
    prog = "torchrun <the same options> -m wssl_zoo.pretrain" if launched else "wssl-zoo pretrain"
    return resume_command(prog, argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    if args.list_recipes:
        print_recipes()
        return 0
    if args.status:
        if not args.out:
            raise ValueError("--status needs --out")
        status, line = run_state(args.out)
        print(line)
        return status
    recipe = resolve_from_args(args)
    if args.show:
        print(json.dumps(show_recipe(recipe), indent=2))
        return 0
    if not args.out:
        raise ValueError("--out is required")
    options = run_options(args)
    # --download: the recipe's dataset into --data (or the cache) when it is not there; a dataset torchvision
    # cannot fetch (ImageNet, your folders) is left to the reader's own error
    options["data"] = resolve_data(recipe.dataset, options["data"], args.download, progress=not args.no_progress)
    opts = RunOptions(
        out=Path(args.out), device=args.device, channels_last=args.channels_last, compile=args.compile,
        resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress, command=_command(argv), **options,
    )
    summary = pretrain(recipe, opts)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wssl_zoo.pretrain", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)

    return run_cli("wssl-zoo pretrain", lambda: run(args, argv), USER_ERRORS + (TrainingStopped,))
