"""The pretraining loop: :func:`pretrain`, for one process or torchrun/DDP, in a few named steps
(:func:`_setup`, :func:`_train_epoch`, :func:`_end_epoch`, :func:`_finish`) over a :class:`_Run`.

Determinism and resumption: nothing in a step depends on the history of a random generator.
The order of samples in epoch ``e`` is ``randperm`` from a generator seeded with
``derive_seed(seed, 0, e)``; the augmentation of sample ``i`` in epoch ``e`` is seeded with
``derive_seed(seed, e, i)`` (in whichever worker loads it); the global generator that the losses
draw their sub-batches and channel groups from is re-seeded with ``derive_seed(seed, 1, e, s)``
before step ``s``. A run resumed from a checkpoint written after any step therefore continues
exactly the trajectory of the uninterrupted run (bit for bit on the CPU).

Safety: checkpoints are written atomically after every epoch (and every ``checkpoint_every``
steps); a non-finite loss stops the run with a message naming the epoch and step, without
writing anything, so the last good checkpoint stays. Every input is checked, the data read and
its batches counted before ``--out`` is claimed, so a refused start leaves no folder behind.

Preemption (:mod:`wssl_zoo.preempt`): SIGTERM, SIGUSR1 or Ctrl-C lets the current step finish; all
ranks then stop after the same step, rank 0 writes the checkpoint and a ``stop`` record, every rank
waits for it (torchrun stops the other ranks as soon as one exits) and :class:`Preempted` ends the
job with exit status 75 and the command that resumes. With ``resume``, a missing or empty ``--out``
starts fresh (said in the output and in the ``start`` record), a finished run is left as it is, and
an interrupted one continues: one command line serves the first start and every requeue.

Logs (:mod:`wssl_zoo.runlog`): ``log.jsonl`` gets ``start``, ``step`` (every ``log_every`` steps),
``epoch`` and ``stop`` records, TensorBoard and W&B the same numbers; a resumed run first drops what
the killed one logged past its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm.auto import tqdm

from .. import catalogue, distributed, encoders, plots, runlog
from ..cliargs import workers_rule
from ..data.datasets import TransformedDataset, balanced_subset, build_dataset, heldout_split
from ..data.device_views import DeviceViews, HostViews, collate_views
from ..data.transforms import EpochKeyed, SeededViews, build_view_transform, derive_seed, eval_transform
from ..encoders import SSLModel
from ..evaluation import autocast, extract_features, feature_effective_rank, knn_accuracy
from ..fileio import atomic_write_text
from ..heads import Projector
from ..losses import build_loss
from ..methods import fact
from ..modelio import save_model_dir
from ..optim import build_optimizer
from ..outdir import check, claim, read_marker
from ..preempt import Preempted, StopOnSignal, ignore_stop_signals, stopped_message
from ..records import hardware
from . import checkpoint as ckpt_lib
from . import schedules
from .recipes import Recipe
from .schedules import apply_lr, cov_weight_at, momentum_at


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (non-finite loss, bad data); the message says why and what is kept."""


@dataclass
class RunOptions:
    """How to run a recipe (everything that is not the recipe itself)."""

    out: Path
    data: str | None = None  # dataset root (ImageFolder root, or torchvision's root for cifar/stl10)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 4
    seed: int = 0
    amp: str = "none"  # none | bf16 | fp16 (whitening always runs in float32)
    channels_last: bool = False
    compile: bool = False
    resume: bool = False
    overwrite: bool = False  # delete what --out holds first (a folder this job did not make)
    owner: str = "pretrain"  # the tool named in --out's marker (the demo runs pretrain as "demo")
    eval_every: int | None = None  # epochs between kNN / effective-rank monitors (None: recipe's)
    monitor_samples: int = 2000  # images per side (bank, queries) of the held-out kNN monitor
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: epoch ends only)
    steps_per_epoch: int | None = None  # cap the steps of every epoch (smoke runs, benchmarks)
    train_subset: int | None = None  # pretrain on a class-balanced subset of this many images
    gather: str = "auto"  # auto | yes | no: whitening statistics over all DDP ranks
    device_views: bool = False  # decode and augment on the training device (wssl_zoo.data.device_views)
    tensorboard: bool = False
    wandb: bool = False  # also log to Weights & Biases (the run id is kept in OUT/wandb_run.json)
    log_every: int = 50  # a step record every N global steps (0: epoch records only)
    keep_every: int = 0  # keep OUT/snapshots/epoch_NNNN/ (a model directory) every N epochs (0: none)
    progress: bool = True
    replace_own: bool = False  # replace an earlier run of the same tool in --out (the demo's rule)
    command: str = ""  # the command that resumes the run, for the message a stop ends with


# ---------------------------------------------------------------------------- data


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Deterministic per-epoch shuffling, sharded over ranks, resumable mid-epoch.

    Yields lists of ``(epoch, index)`` so that dataset copies inside persistent workers know
    the epoch without any state being sent to them.
    """

    def __init__(self, indices: list[int], batch_size: int, seed: int, rank: int, world: int,
                 steps_per_epoch: int | None = None):
        self._derive = derive_seed
        self.indices = list(indices)
        self.batch_size = batch_size  # per rank
        self.seed, self.rank, self.world = seed, rank, world
        full = len(self.indices) // (batch_size * world)
        if full == 0:
            raise ValueError(
                f"the dataset has {len(self.indices)} images, fewer than one global batch of "
                f"{batch_size * world}; lower --batch-size or add data"
            )
        self.steps = min(full, steps_per_epoch) if steps_per_epoch else full
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(self._derive(self.seed, 0, self.epoch))
        order = torch.randperm(len(self.indices), generator=gen).tolist()
        glob = self.batch_size * self.world
        for step in range(self.start_step, self.steps):
            chunk = order[step * glob + self.rank * self.batch_size : step * glob + (self.rank + 1) * self.batch_size]
            yield [(self.epoch, self.indices[i]) for i in chunk]


def _dataset_name(recipe: Recipe) -> str:
    """How the recipe's data is read: ``imagefolder`` for every image-folder dataset of the catalogue
    (ImageNet, ImageNet-100, Tiny-ImageNet, your own), else the dataset's name (CIFAR, STL-10, ...)."""
    return "imagefolder" if catalogue.get(recipe.dataset).reader == "imagefolder" else recipe.dataset


# ---------------------------------------------------------------------------- model


def resolve_gather(recipe: Recipe, option: str, world: int) -> bool:
    """``--gather auto|yes|no`` -> whether the whitening statistics span all ``world`` processes.
    ``auto`` is the authors' setting for the recipe's method (``wssl_zoo.methods.fact(method,
    "gather_distributed")``: INTL gathers, W-MSE and CW-RGP whiten per process)."""
    choices = {"auto": None, "yes": True, "no": False}
    if option not in choices:
        raise ValueError(f"--gather {option!r}: choose auto, yes or no")
    want = choices[option]
    return bool(fact(recipe.method, "gather_distributed") if want is None else want) and world > 1


def build_model(recipe: Recipe, gather: bool) -> nn.Module:
    """Backbone + the paper's projector + loss, wrapped in :class:`~wssl_zoo.encoders.SSLModel`."""
    try:
        backbone = encoders.create_backbone(recipe.arch, recipe.stem, zero_init_last=recipe.zero_init_residual)
    except TypeError as exc:  # timm models outside the ResNet family have no zero_init_last
        if "zero_init_last" not in str(exc):
            raise
        if recipe.zero_init_residual:
            raise ValueError(
                f"recipe {recipe.name!r}: zero_init_residual=True (the authors' ResNet init) but timm "
                f"architecture {recipe.arch!r} has no zero_init_last; add --set zero_init_residual=false"
            ) from None
        backbone = encoders.create_backbone(recipe.arch, recipe.stem)
    p = recipe.projector
    projector = Projector(
        backbone.num_features, p["hidden_dim"], p["out_dim"], p["num_layers"],
        hidden_bias=p.get("hidden_bias", True), last_bias=p.get("last_bias", True),
    )
    loss = build_loss(recipe.method, gather_distributed=gather, **recipe.loss)
    return SSLModel(backbone, projector, loss, momentum=recipe.ema_momentum)


def _schedule(recipe: Recipe, steps_per_epoch: int):
    total = recipe.epochs * steps_per_epoch
    lr = recipe.effective_lr
    warmup = recipe.warmup_steps or recipe.warmup_epochs * steps_per_epoch
    if recipe.schedule == "warmup_cosine":
        return schedules.WarmupCosine(base_lr=lr, total_steps=total, warmup_steps=warmup)
    if recipe.schedule == "warmup_cosine_epoch":
        return schedules.WarmupCosineEpoch(base_lr=lr, epochs=recipe.epochs,
                                           steps_per_epoch=steps_per_epoch, warmup_steps=warmup)
    return schedules.build_schedule(
        "wmse", base_lr=lr, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch,
        warmup_steps=warmup, drops=tuple(recipe.lr_drops), gamma=recipe.drop_gamma,
    )


# ---------------------------------------------------------------------------- the run


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _resume_point(out: Path, opts: RunOptions) -> Path | None:
    """The checkpoint ``--resume`` continues from, or None (a fresh start); refuses to start over a run
    by accident. Reads only: whether anything may be written is :func:`wssl_zoo.outdir.claim`'s to say."""
    ckpt = out / "checkpoints" / "last.pt"
    if opts.overwrite or (opts.replace_own and not opts.resume) or not ckpt.is_file():
        return None  # overwrite / replace_own: the claim empties the folder; else nothing to resume
    if not opts.resume:
        raise ValueError(
            f"{out} already holds a run ({ckpt}); pass --resume to continue it or choose another --out"
        )
    return ckpt


def _finished_summary(opts: RunOptions) -> dict[str, Any] | None:
    """With ``resume``: the summary of a run that already finished in ``--out`` (made by this tool), so
    that a requeue or a repeated command after the end changes nothing; else None."""
    out = Path(opts.out)
    path = out / runlog.SUMMARY_NAME
    if not opts.resume or not runlog.is_finished(out) or (read_marker(out) or {}).get("tool") != opts.owner:
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"--resume: {path} is not JSON; the run there has finished, nothing to resume") from None


@dataclass
class _Run:
    """What one pretraining run holds between its steps: made by :func:`_setup`, advanced by
    :func:`_train_epoch` and :func:`_end_epoch`, finished by :func:`_finish`."""

    recipe: Recipe
    opts: RunOptions
    out: Path
    rank: int
    world: int
    device: torch.device
    local_batch: int
    gather: bool
    dataset: str  # the dataset kind (:func:`_dataset_name`)
    train_set: Any = None
    mean: tuple = ()
    std: tuple = ()
    sampler: Any = None
    loader: Any = None
    device_views: Any = None  # the device part of --device-views (DeviceViews), or None
    steps_per_epoch: int = 0
    data_id: dict = field(default_factory=dict)  # what a resumed run must see again
    model: Any = None  # what trains (DDP-wrapped under torchrun)
    core: Any = None  # the SSLModel itself
    forward: Any = None  # model, or its torch.compile
    optimizer: Any = None
    scaler: Any = None
    schedule: Any = None
    total_steps: int = 0
    start_epoch: int = 0
    start_step: int = 0
    global_step: int = 0
    config: dict = field(default_factory=dict)  # OUT/train_config.json
    monitor: Any = None  # (bank, queries) of the held-out kNN monitor, or None
    eval_every: int = 0
    log: Any = None  # rank 0's runlog.RunLog (log.jsonl, tensorboard, W&B), else None
    bar: Any = None  # tqdm
    log_path: Path = Path()
    stop: Any = None  # the StopOnSignal of the run
    window: Any = None  # runlog.StepWindow: the steps since the last step record
    saved_step: int = -1  # the global step of the last checkpoint written
    on_estimate: Any = None  # called once, after the first steps, with (seconds per step, steps left)
    estimate_from: tuple = ()  # (global step, perf_counter) where the time estimate starts
    fresh: str = ""  # why a --resume started a new run (logged in the start record)
    epoch_losses: list = field(default_factory=list)  # rank 0's losses of the epoch in progress (checkpointed)
    resumed_from: Path | None = None  # the checkpoint this process continues

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pretrain(recipe: Recipe, opts: RunOptions,
             on_estimate: Callable[[float, int], None] | None = None) -> dict[str, Any]:
    """Run ``recipe`` with ``opts``; returns the summary also written to ``OUT/summary.json``.

    The output directory ends as a loadable model (``wssl_zoo.load(OUT)``): ``model.safetensors``
    and ``config.json`` (the Hub format), ``projector.safetensors``, ``train_config.json`` (the
    resolved recipe and options), ``log.jsonl``, ``summary.json`` and ``checkpoints/last.pt``, with
    ``keep_every``, ``snapshots/epoch_NNNN/`` (model directories of the backbone); with matplotlib,
    ``training_curves.png`` is redrawn from ``log.jsonl`` after each monitor epoch.

    The steps: :func:`_setup` (checks, distributed, data, output folder, model and optimiser,
    resume, monitor and loggers), then per epoch :func:`_train_epoch` and :func:`_end_epoch`
    (monitor, snapshot, log, checkpoint), and :func:`_finish` (export the model directory). A stop
    signal ends the run after the current step with its checkpoint written (:func:`_stop`, raises
    :class:`~wssl_zoo.preempt.Preempted`). ``on_estimate(seconds_per_step, steps_left)`` is called
    once on rank 0 after the first steps (default: print the time the pretraining has left).
    """
    finished = _finished_summary(opts)
    if finished is not None:
        if distributed.launcher_env()[0] == 0:
            print(f"--resume: {opts.out} holds a finished run ({runlog.SUMMARY_NAME}); nothing to do", flush=True)
        return finished
    with StopOnSignal(announce=distributed.launcher_env()[0] == 0) as stop:
        run = _setup(recipe, opts)
        run.stop, run.on_estimate = stop, on_estimate or _print_estimate
        try:
            summary: dict[str, Any] = {}
            run_start = time.perf_counter()
            for epoch in range(run.start_epoch, run.recipe.epochs):
                summary = _end_epoch(run, epoch, _train_epoch(run, epoch))
                if epoch + 1 < run.recipe.epochs and stop.requested():
                    _stop(run, epoch + 1, 0)
            summary = _finish(run, summary, run_start)
        except BaseException as exc:
            _close_logs(run, getattr(exc, "exit_status", 1))
            raise
    return summary


def _setup(recipe: Recipe, opts: RunOptions) -> _Run:
    """Check everything and read the data, then claim ``--out``, build model and optimiser, resume,
    and open the monitor and the loggers."""
    recipe = recipe.validate()
    process = distributed.setup(opts.device)
    rank, world, device = process.rank, process.world, process.device
    out = Path(opts.out)
    if opts.resume and opts.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: one continues the run in --out, "
                         "the other deletes it")
    resume_from = _resume_point(out, opts)
    if opts.amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"--amp {opts.amp!r}: choose none, bf16 or fp16")
    for flag, value in (("--log-every", opts.log_every), ("--keep-every", opts.keep_every),
                        ("--checkpoint-every", opts.checkpoint_every)):
        if value < 0:
            raise ValueError(f"{flag} {value}: expected 0 (off) or a positive number")
    if opts.wandb and rank == 0:
        runlog.check_wandb_installed()
    if recipe.batch_size % world:
        raise ValueError(f"batch_size={recipe.batch_size} is not divisible by the {world} processes")
    local_batch = recipe.batch_size // world
    gather = resolve_gather(recipe, opts.gather, world)
    w_size = recipe.loss.get("w_size")
    if w_size and not gather and local_batch % w_size:
        raise ValueError(
            f"the per-process batch {local_batch} is not a multiple of loss.w_size={w_size}; "
            f"change --batch-size or --set loss.w_size=..."
        )
    name = _dataset_name(recipe)
    if catalogue.get(name).default_root is None and not opts.data:
        raise ValueError(f"recipe {recipe.name!r} trains on {recipe.dataset}: pass --data ROOT")
    if rank == 0:  # a folder that is not this run's is refused before the data is read; claimed after
        check(out, opts.owner, **_claim_args(recipe, opts))
    run = _Run(recipe=recipe, opts=opts, out=out, rank=rank, world=world, device=device, local_batch=local_batch,
               gather=gather, dataset=name, log_path=out / runlog.LOG_NAME)
    _setup_data(run)  # reads the data and counts its batches: an unusable --data stops here, before --out
    _setup_monitor(run)  # and the held-out split the monitor reads (a recipe/data mismatch shows here)
    _claim_out(run, fresh=resume_from is None)
    _setup_model(run)
    if resume_from is not None:
        _resume(run, resume_from)
    _wrap_distributed(run)
    _setup_logging(run)
    return run


def _claim_out(run: _Run, fresh: bool) -> None:
    """Claim ``--out`` (rank 0; :func:`wssl_zoo.outdir.claim`), only now that everything is checked, and
    make the loader's workers leave the stop signals to this process."""
    opts = run.opts
    if run.is_main:
        state = claim(run.out, opts.owner, **_claim_args(run.recipe, opts))
        if opts.resume and fresh:
            why = "a missing or empty folder" if state == "new" else "no checkpoint in it yet"
            print(f"--resume: nothing to resume in {run.out} ({why}); starting a new run", flush=True)
            run.fresh = f"--resume found {why}"
    if run.world > 1:
        dist.barrier()
    loader = run.loader
    if loader is not None and loader.num_workers > 0:
        previous = loader.worker_init_fn
        loader.worker_init_fn = ignore_stop_signals if previous is None else _WorkerInit(previous)


def _claim_args(recipe: Recipe, opts: RunOptions) -> dict[str, Any]:
    """What :func:`wssl_zoo.outdir.check` and :func:`~wssl_zoo.outdir.claim` are asked about ``--out``."""
    return dict(job=dict(recipe=recipe.to_dict(), data=str(opts.data), seed=opts.seed), overwrite=opts.overwrite,
                resume=opts.resume, hint="resume", replace_own=opts.replace_own and not opts.resume)


class _WorkerInit:
    """A data-loading worker's init: ignore the stop signals, then the loader's own init (picklable,
    for workers started with spawn)."""

    def __init__(self, then: Callable[[int], None]):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals()
        self.then(worker_id)


def _setup_data(run: _Run) -> None:
    """The training set, its views, the epoch sampler and the loader."""
    recipe, opts, name = run.recipe, run.opts, run.dataset
    train_set = build_dataset(name, opts.data, catalogue.get(name).train_split)
    view_tf = build_view_transform(recipe.method, recipe.dataset, recipe.img_size, recipe.num_views,
                                   multi_crop=recipe.multi_crop)
    # The statistics the views are normalised with (Tiny-ImageNet's own for tiny_imagenet, which is
    # stored as an image folder): config.json records these, so every probe normalises the same way.
    run.mean, run.std = view_tf.mean, view_tf.std
    indices = list(range(len(train_set)))
    if opts.train_subset:
        per_class = max(1, opts.train_subset // max(1, len(train_set.classes)))
        indices = balanced_subset(train_set.targets, per_class, opts.seed)
    sampler = EpochBatchSampler(indices, run.local_batch, opts.seed, run.rank, run.world, opts.steps_per_epoch)
    collate = None
    if opts.device_views:  # workers draw the parameters and ship the files; the device makes the pixels

        views_ds, collate = HostViews(train_set, view_tf, opts.seed), collate_views
        run.device_views = DeviceViews(views_ds.plan, run.device)
    else:
        views_ds = EpochKeyed(SeededViews(train_set, view_tf, opts.seed))
    if run.is_main:
        print(f"data: {opts.workers} loader workers per process (--workers; default {workers_rule()}), views made "
              f"{f'on {run.device} (--device-views)' if opts.device_views else 'by PIL in the workers'}", flush=True)
    run.loader = DataLoader(
        views_ds, batch_sampler=sampler, num_workers=opts.workers, pin_memory=run.device.type == "cuda",
        persistent_workers=opts.workers > 0, collate_fn=collate,
    )
    run.train_set, run.sampler, run.steps_per_epoch = train_set, sampler, sampler.steps
    # what a resumed run must see again for the rest of the run to be the one it continues
    run.data_id = dict(dataset=name, samples=len(train_set), classes=list(train_set.classes),
                       subset=len(indices), seed=opts.seed)


def _setup_model(run: _Run) -> None:
    """Model (initialised from the seed), optimiser, gradient scaler and lr schedule."""
    recipe, opts = run.recipe, run.opts
    torch.manual_seed(derive_seed(opts.seed, 2))
    model = build_model(recipe, run.gather).to(run.device)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run.model = run.core = model
    run.optimizer = build_optimizer(recipe.optimizer, model, lr=recipe.effective_lr,
                                    weight_decay=recipe.weight_decay, momentum=recipe.momentum,
                                    exclude_bias_and_norm=recipe.exclude_bias_norm_wd)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=opts.amp == "fp16")
    run.schedule = _schedule(recipe, run.steps_per_epoch)
    run.total_steps = recipe.epochs * run.steps_per_epoch


def _resume(run: _Run, resume_from: Path) -> None:
    """Load the checkpoint; refuse one of another recipe or other training data."""
    state = ckpt_lib.load_checkpoint(resume_from)
    run.model.load_state_dict(state.model)
    run.optimizer.load_state_dict(state.optimizer)
    if state.scaler:
        run.scaler.load_state_dict(state.scaler)
    run.start_epoch, run.start_step = state.epoch, state.extra.get("step_in_epoch", 0)
    run.epoch_losses = [float(x) for x in state.extra.get("epoch_losses", [])]
    if state.extra.get("recipe") and state.extra["recipe"] != json.loads(json.dumps(run.recipe.to_dict())):
        raise ValueError(
            f"--resume: the recipe differs from the one {resume_from} was trained with; "
            "resume with the same recipe and overrides (see train_config.json)"
        )
    saved_data, data_id = state.extra.get("data"), run.data_id
    if saved_data and saved_data != json.loads(json.dumps(data_id)):
        changed = sorted(k for k in data_id if saved_data.get(k) != data_id[k])
        raise ValueError(
            f"--resume: the training data differs from the data {resume_from} was trained on "
            f"({', '.join(changed)}); resume with the same --data, --train-subset and --seed"
        )
    run.resumed_from, run.saved_step = resume_from, state.step
    if run.is_main:
        dropped = runlog.trim(run.log_path, state.step)
        print(f"resuming from {resume_from} at epoch {run.start_epoch + 1}, step {run.start_step} "
              f"(global step {state.step})" + (f"; {dropped} record(s) logged after it dropped from "
                                               f"{run.log_path.name}" if dropped else ""), flush=True)


def _wrap_distributed(run: _Run) -> None:
    """SyncBatchNorm + DDP under torchrun, then torch.compile when asked."""
    model = run.model
    if run.world > 1:
        if run.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            run.core = model
        elif run.rank == 0 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            warnings.warn(f"distributed on {run.device.type}: SyncBatchNorm needs CUDA, so each of the {run.world} "
                          "processes normalises with its own part of the batch; the run is not one process on the "
                          "whole batch", stacklevel=2)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    run.model = model
    run.forward = torch.compile(model) if run.opts.compile else model


def _setup_monitor(run: _Run) -> None:
    """The held-out kNN monitor's data (rank 0), when the run monitors."""
    recipe, opts = run.recipe, run.opts
    run.eval_every = opts.eval_every if opts.eval_every is not None else recipe.eval_every
    if run.is_main and run.eval_every > 0:
        run.monitor = _monitor_sets(run.train_set, run.dataset, opts, recipe, balanced_subset)


def _setup_logging(run: _Run) -> None:
    """``train_config.json``, the run log (log.jsonl, TensorBoard, W&B) with its start record, and the
    progress bar."""
    recipe, opts = run.recipe, run.opts
    options = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(opts).items()}
    run.config = dict(recipe=recipe.to_dict(), options=options, world_size=run.world, local_batch=run.local_batch,
                      gather_distributed=run.gather, steps_per_epoch=run.steps_per_epoch, torch=torch.__version__,
                      device=str(run.device), hardware=hardware(run.device))
    if run.is_main:
        _write_json(run.out / "train_config.json", run.config)
    run.global_step = run.start_epoch * run.steps_per_epoch + run.start_step
    run.window = runlog.StepWindow()
    if run.is_main:
        run.log = runlog.RunLog(run.out, tensorboard=opts.tensorboard, wandb=opts.wandb, config=run.config,
                                resume_step=run.global_step if run.resumed_from is not None else None)
        start = dict(kind="start", epoch=run.start_epoch + 1, step=run.start_step, global_step=run.global_step,
                     resumed_from=str(run.resumed_from) if run.resumed_from else None,
                     steps_per_epoch=run.steps_per_epoch, epochs=recipe.epochs, world_size=run.world,
                     device=run.config["device"], hardware=run.config["hardware"], **runlog.slurm_job())
        if run.resumed_from is None:
            start["fresh"] = run.fresh or "a new run"
        run.log.write(start)
    if run.is_main and opts.progress:
        run.bar = tqdm(total=run.total_steps, initial=run.global_step, unit="step", dynamic_ncols=True,
                       desc=recipe.name, mininterval=2.0)


def _close_logs(run: _Run, exit_code: int) -> None:
    """Close the progress bar and the run log (rank 0; again is a no-op)."""
    if run.bar is not None:
        run.bar.close()
        run.bar = None
    if run.log is not None:
        run.log.close(exit_code)
        run.log = None


def _save(run: _Run, epoch: int, step_in_epoch: int) -> None:
    """Checkpoint (rank 0): model, optimiser, scaler, and where in the run it is."""
    run.saved_step = run.global_step  # on every rank: whether _stop must save again
    if not run.is_main:
        return
    if not ckpt_lib.is_finite_state(run.core):
        raise TrainingStopped(f"non-finite weights after global step {run.global_step}; not saved")
    ckpt_lib.save_checkpoint(run.out, ckpt_lib.TrainState(
        epoch=epoch, step=run.global_step, model=run.core.state_dict(), optimizer=run.optimizer.state_dict(),
        scaler=run.scaler.state_dict() if run.scaler.is_enabled() else {},
        extra=dict(step_in_epoch=step_in_epoch, recipe=run.recipe.to_dict(), data=run.data_id,
                   epoch_losses=list(run.epoch_losses) if step_in_epoch else []),
    ))


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """The steps of one epoch (from the resumed step in the first); returns the epoch's log record."""
    recipe, opts, device, core, bar = run.recipe, run.opts, run.device, run.core, run.bar
    run.sampler.set_epoch(epoch, run.start_step if epoch == run.start_epoch else 0)
    run.model.train()
    # the epoch's losses so far: a run resumed mid-epoch starts from those its checkpoint kept, so the
    # epoch record's mean is over the whole epoch, as in the uninterrupted run
    losses = run.epoch_losses = run.epoch_losses if epoch == run.start_epoch else []
    views_seen, epoch_start = 0, time.perf_counter()
    step = run.sampler.start_step
    for views, _ in _timed(run.loader, run.window):
        torch.manual_seed(derive_seed(opts.seed, 1, epoch, step))
        if run.device_views is not None:
            views = _device_views(run, views, epoch, step)
        views = [v.to(device, non_blocking=True) for v in views]
        if opts.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        lr = run.schedule.lr_at(run.global_step)
        apply_lr(run.optimizer, lr)
        if recipe.cov_stop_epoch is not None:  # per step: the authors switch it off after a step
            core.loss.cov_weight = cov_weight_at(epoch, recipe.loss.get("cov_weight", 0.0),
                                                 recipe.cov_stop_epoch, step_in_epoch=step)
        if recipe.ema_momentum is not None:
            core.update_momentum(momentum_at(run.global_step, run.total_steps, recipe.ema_momentum))
        try:
            with autocast(device, opts.amp):
                loss = run.forward(views)
        except ValueError as exc:
            raise TrainingStopped(
                f"stopped at epoch {epoch + 1}, step {step + 1} (global step {run.global_step + 1}): {exc}. "
                f"The last good checkpoint is kept in {run.out / 'checkpoints'}"
            ) from exc
        if not torch.isfinite(loss.detach()):
            raise TrainingStopped(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1} "
                f"(global step {run.global_step + 1}); nothing was saved, the last good checkpoint is "
                f"kept in {run.out / 'checkpoints'}. Lower the learning rate or use --amp none."
            )
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.global_step += 1
        step += 1
        losses.append(loss.item())
        step_views = sum(len(v) for v in views) * run.world
        views_seen += step_views
        if bar is not None:
            elapsed = time.perf_counter() - epoch_start
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", loss=f"{losses[-1]:.4f}",
                            lr=f"{lr:.3g}", views_s=f"{views_seen / max(elapsed, 1e-9):.0f}")
        _log_step(run, epoch, step, losses[-1], lr, step_views)
        if opts.checkpoint_every and step % opts.checkpoint_every == 0 and step < run.steps_per_epoch:
            _save(run, epoch, step)
        if step < run.steps_per_epoch and run.stop is not None and run.stop.requested():
            _stop(run, epoch, step)  # (at the epoch's end pretrain() asks, after the epoch's checkpoint)
    epoch_time = time.perf_counter() - epoch_start
    return dict(epoch=epoch + 1, global_step=run.global_step, loss=sum(losses) / max(len(losses), 1),
                lr=run.schedule.lr_at(max(run.global_step - 1, 0)), views_per_s=views_seen / max(epoch_time, 1e-9),
                epoch_seconds=epoch_time)


def _device_views(run: _Run, batch, epoch: int, step: int) -> list[torch.Tensor]:
    """The views of a loaded :class:`~wssl_zoo.data.device_views.EncodedBatch`, made on the
    training device; at the end of the first epoch this process runs, the files the workers had
    to decode (not baseline RGB JPEG) are reported once (rank 0: its share of the data)."""
    views = run.device_views(batch)
    if run.is_main and epoch == run.start_epoch and step == run.steps_per_epoch - 1 and run.device_views.report():
        print(run.device_views.report(), flush=True)
    return views


def _timed(loader: Iterable, window: runlog.StepWindow) -> Iterator:
    """The loader's batches, telling ``window`` how long the loop waited for each."""
    batches = iter(loader)
    while True:
        asked = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        window.fetched(asked, time.perf_counter())
        yield batch


def _log_step(run: _Run, epoch: int, step: int, loss: float, lr: float, views: int) -> None:
    """After each step: the step window, a step record every ``log_every`` global steps, and once, after
    the first steps, the estimate of the time left (rank 0)."""
    window = run.window
    window.add(loss, views)
    if not run.is_main:
        return
    every = run.opts.log_every
    if every and run.global_step % every == 0:
        run.log.write(dict(kind="step", epoch=epoch + 1, step=step, global_step=run.global_step, lr=lr,
                           **window.summary()))
        window.reset()
    # the estimate starts after the first step (worker start-up, allocations) and is given 10 steps later
    if not run.estimate_from:
        run.estimate_from = (run.global_step, time.perf_counter())
    elif run.on_estimate is not None and run.global_step - run.estimate_from[0] == ESTIMATE_AFTER_STEPS:
        per_step = (time.perf_counter() - run.estimate_from[1]) / ESTIMATE_AFTER_STEPS
        run.on_estimate(per_step, run.total_steps - run.global_step)
        run.on_estimate = None


ESTIMATE_AFTER_STEPS = 10


def _print_estimate(seconds_per_step: float, steps_left: int) -> None:
    """The default ``on_estimate``: one line with the pretraining time left."""
    tqdm.write(f"estimated time left: {runlog.format_duration(seconds_per_step * steps_left)} of pretraining "
               f"({seconds_per_step:.2f} s per step over {ESTIMATE_AFTER_STEPS} steps, {steps_left} steps to go)")


def _stop(run: _Run, epoch: int, step_in_epoch: int) -> None:
    """A stop signal arrived: write the checkpoint of the step just finished (unless that step's is
    written), the stop record, close the logs, wait until every rank is here (torchrun ends the other
    ranks as soon as one exits, so none may leave before the checkpoint is complete), and raise
    :class:`~wssl_zoo.preempt.Preempted` (exit status 75; the message only on rank 0)."""
    if run.saved_step != run.global_step:
        _save(run, epoch, step_in_epoch)
    ckpt = run.out / "checkpoints" / "last.pt"
    where = (f"after epoch {epoch}" if step_in_epoch == 0 else
             f"at epoch {epoch + 1}, step {step_in_epoch} of {run.steps_per_epoch}")
    where += f" (global step {run.global_step})"
    message = ""
    if run.is_main:
        run.log.write(dict(kind="stop", epoch=epoch + (0 if step_in_epoch == 0 else 1), step=step_in_epoch,
                           global_step=run.global_step, signal=run.stop.signal_name, checkpoint=str(ckpt),
                           **runlog.slurm_job()))
        _close_logs(run, Preempted.exit_status)
        command = run.opts.command or "the same command with --resume"
        message = stopped_message(run.stop.signal_name, where, str(ckpt), command)
    distributed.barrier()
    raise Preempted(message)


def _end_epoch(run: _Run, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
    """The held-out monitor when due, the snapshot when due, the log (jsonl, curves, tensorboard, W&B,
    progress bar) and the epoch's checkpoint; returns ``record`` with the monitor's numbers. The
    checkpoint comes last: a run killed before it redoes this epoch, and its resume drops the records
    logged here (:func:`wssl_zoo.runlog.trim`)."""
    recipe, opts = run.recipe, run.opts
    if run.monitor is not None and ((epoch + 1) % run.eval_every == 0 or epoch + 1 == recipe.epochs):
        bank_x, bank_y = extract_features(run.core.backbone, run.monitor[0], run.device, workers=opts.workers)
        query_x, query_y = extract_features(run.core.backbone, run.monitor[1], run.device, workers=opts.workers)
        # a monitor (cosine, subsets), not the papers' 5-NN (Euclidean, full sets)
        record["monitor_knn_cos"] = knn_accuracy(bank_x, bank_y, query_x, query_y, k=recipe.knn_k, rule="majority-cosine")
        record["effective_rank"] = feature_effective_rank(bank_x)
        record["feature_dim"] = bank_x.shape[1]
    if run.is_main:
        if opts.keep_every and (epoch + 1) % opts.keep_every == 0:
            _export_model(snapshot_dir(run.out, epoch + 1), run.core, recipe, run.mean, run.std, opts, epochs=epoch + 1,
                          projector=False)
        run.log.write(dict(kind="epoch", **record))
        if "monitor_knn_cos" in record:
            _plot_curves(run.log_path)
        if run.bar is not None:
            extra = (f", kNN {record['monitor_knn_cos']:.2f}%, eff. rank {record['effective_rank']:.1f}"
                     if "monitor_knn_cos" in record else "")
            run.bar.write(f"epoch {epoch + 1}/{recipe.epochs}: loss {record['loss']:.4f}{extra}")
    _save(run, epoch + 1, 0)
    return record


def snapshot_dir(out: str | Path, epoch: int) -> Path:
    """``OUT/snapshots/epoch_NNNN``: the model directory ``--keep-every`` keeps after epoch ``epoch``."""
    return Path(out) / "snapshots" / f"epoch_{epoch:04d}"


def _finish(run: _Run, summary: dict[str, Any], run_start: float) -> dict[str, Any]:
    """Close the loggers, export the model directory and ``summary.json`` (rank 0; the summary last:
    it marks the run finished)."""
    _close_logs(run, 0)
    summary = dict(summary, wall_seconds=time.perf_counter() - run_start, recipe=run.recipe.name)
    if run.is_main:
        _export_model(run.out, run.core, run.recipe, run.mean, run.std, run.opts)
        _write_json(run.out / runlog.SUMMARY_NAME, summary)
    if run.world > 1:
        dist.barrier()
    return summary


def _plot_curves(log_path: Path) -> None:
    """Redraw OUT/training_curves.png from the log (only if matplotlib is importable; a plot never
    stops a run: a failure is a warning)."""
    if not plots.have_matplotlib():
        return
    try:
        plots.plot_training_curves(log_path)
    except Exception as exc:  # noqa: BLE001 - any plotting failure is only worth a warning
        warnings.warn(f"{log_path.parent / 'training_curves.png'} not drawn: {type(exc).__name__}: {exc}")


def _monitor_sets(train_set, name, opts: RunOptions, recipe: Recipe, balanced_subset):
    """(bank, queries): labelled eval-transform datasets for the held-out kNN monitor."""
    tf = eval_transform(recipe.dataset, recipe.img_size, recipe.method)
    bank_base = build_dataset(name, opts.data, "train")
    heldout = heldout_split(name, opts.data)
    if heldout is None:
        warnings.warn("no val/ or test/ split: the kNN monitor is skipped (add ROOT/val/<class>/...)")
        return None
    ncls = max(1, len(bank_base.classes))
    per_class = max(1, opts.monitor_samples // ncls)
    bank_idx = balanced_subset(bank_base.targets, per_class, opts.seed)
    query_idx = balanced_subset(heldout.targets, per_class, opts.seed)
    return (TransformedDataset(Subset(bank_base, bank_idx), tf),
            TransformedDataset(Subset(heldout, query_idx), tf))


def _export_model(out: Path, core: nn.Module, recipe: Recipe, mean, std, opts: RunOptions, epochs: int | None = None,
                  projector: bool = True) -> None:
    """The model directory of the backbone (and the projector) trained for ``epochs`` (default: the
    recipe's) of a ``recipe.epochs``-epoch schedule."""
    small = recipe.img_size <= 96
    crop_pct, interpolation = (1.0, "bilinear") if small else (0.875, "bicubic")
    if recipe.dataset == "stl10" and recipe.img_size < catalogue.get("stl10").native_size:
        # W-MSE datasets/stl10.py:13-16 (CW-RGP's copy): Resize(70, bicubic) + CenterCrop(64)
        crop_pct, interpolation = recipe.img_size / round(recipe.img_size * 70 / 64), "bicubic"
    # a snapshot says that its schedule ran on (its lr had not decayed as a run of its length would)
    schedule = {} if epochs is None else dict(schedule_epochs=recipe.epochs)
    save_model_dir(
        out, core.backbone, arch=recipe.arch, stem=recipe.stem, mean=tuple(mean), std=tuple(std),
        img_size=recipe.img_size, crop_pct=crop_pct, interpolation=interpolation,
        projector=core.projector if projector else None,
        extra_meta=dict(method=recipe.method, recipe=recipe.name, dataset=recipe.dataset,
                        epochs=recipe.epochs if epochs is None else epochs, **schedule, seed=opts.seed,
                        source="wssl-zoo pretrain"),
    )
