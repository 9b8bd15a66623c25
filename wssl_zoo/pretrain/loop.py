"""The pretraining loop: one function, :func:`pretrain`, for one process or torchrun/DDP.

Determinism and resumption: nothing in a step depends on the history of a random generator.
The order of samples in epoch ``e`` is ``randperm`` from a generator seeded with
``derive_seed(seed, 0, e)``; the augmentation of sample ``i`` in epoch ``e`` is seeded with
``derive_seed(seed, e, i)`` (in whichever worker loads it); the global generator that the losses
draw their sub-batches and channel groups from is re-seeded with ``derive_seed(seed, 1, e, s)``
before step ``s``. A run resumed from a checkpoint written after any step therefore continues
exactly the trajectory of the uninterrupted run (bit for bit on the CPU).

Safety: checkpoints are written atomically after every epoch (and every ``checkpoint_every``
steps); a non-finite loss stops the run with a message naming the epoch and step, without
writing anything, so the last good checkpoint stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .recipes import Recipe

IMAGEFOLDER_DATASETS = ("imagefolder", "tiny_imagenet", "imagenet100", "imagenet")


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
    gpu_augment: bool = False  # make the views on the training device (small-image recipes)
    tensorboard: bool = False
    progress: bool = True


# ---------------------------------------------------------------------------- distributed


def _init_distributed(device_arg: str) -> tuple[int, int, int, torch.device]:
    """(rank, local_rank, world, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available())
    if device_arg.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device_arg}: CUDA is not available on this machine")
    if want_cuda:
        device = torch.device(device_arg if ":" in device_arg else f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, local_rank, world, device


# ---------------------------------------------------------------------------- data


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Deterministic per-epoch shuffling, sharded over ranks, resumable mid-epoch.

    Yields lists of ``(epoch, index)`` so that dataset copies inside persistent workers know
    the epoch without any state being sent to them.
    """

    def __init__(self, indices: list[int], batch_size: int, seed: int, rank: int, world: int,
                 steps_per_epoch: int | None = None):
        from ..data.transforms import derive_seed

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


class EpochIndexed(Dataset):
    """``dataset[(epoch, i)]`` -> views of sample i with epoch e's augmentation."""

    def __init__(self, seeded_views):
        self.seeded = seeded_views

    def __len__(self) -> int:
        return len(self.seeded)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        self.seeded.set_epoch(epoch)
        return self.seeded[index]


def _dataset_name(recipe: Recipe) -> str:
    return "imagefolder" if recipe.dataset in IMAGEFOLDER_DATASETS else recipe.dataset


# ---------------------------------------------------------------------------- model


def resolve_gather(recipe: Recipe, option: str, world: int) -> bool:
    """``--gather auto|yes|no`` -> whether the whitening statistics span all ``world`` processes.
    ``auto`` is the authors' setting for the recipe's method (``wssl_zoo.methods.fact(method,
    "gather_distributed")``: INTL gathers, W-MSE and CW-RGP whiten per process)."""
    from ..methods import fact

    choices = {"auto": None, "yes": True, "no": False}
    if option not in choices:
        raise ValueError(f"--gather {option!r}: choose auto, yes or no")
    want = choices[option]
    return bool(fact(recipe.method, "gather_distributed") if want is None else want) and world > 1


def build_model(recipe: Recipe, gather: bool) -> nn.Module:
    """Backbone + the paper's projector + loss, wrapped in :class:`~wssl_zoo.encoders.SSLModel`."""
    from ..encoders import SSLModel, create_backbone
    from ..heads import Projector
    from ..losses import build_loss

    backbone = create_backbone(recipe.arch, recipe.stem, zero_init_last=recipe.zero_init_residual)
    p = recipe.projector
    projector = Projector(
        backbone.num_features, p["hidden_dim"], p["out_dim"], p["num_layers"],
        hidden_bias=p.get("hidden_bias", True), last_bias=p.get("last_bias", True),
    )
    loss = build_loss(recipe.method, gather_distributed=gather, **recipe.loss)
    return SSLModel(backbone, projector, loss, momentum=recipe.ema_momentum)


def _schedule(recipe: Recipe, steps_per_epoch: int):
    from . import schedules

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


def _amp_context(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------- the run


def _write_json(path: Path, data: Any) -> None:
    from .checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _check_out_dir(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, or None; refuses to overwrite a run by accident."""
    ckpt = out / "checkpoints" / "last.pt"
    if ckpt.is_file():
        if not resume:
            raise ValueError(
                f"{out} already holds a run ({ckpt}); pass --resume to continue it or choose another --out"
            )
        return ckpt
    if resume and (out / "model.safetensors").is_file() and (out / "train_config.json").is_file():
        return None  # finished run without checkpoints: nothing to resume
    if resume and out.exists() and any(out.iterdir()):
        warnings.warn(f"--resume: no checkpoint in {out}/checkpoints; starting from scratch")
    return None


def pretrain(recipe: Recipe, opts: RunOptions) -> dict[str, Any]:
    """Run ``recipe`` with ``opts``; returns the summary also written to ``OUT/summary.json``.

    The output directory ends as a loadable model (``wssl_zoo.load(OUT)``): ``model.safetensors``
    and ``config.json`` (the Hub format), ``projector.safetensors``, ``train_config.json`` (the
    resolved recipe and options), ``log.jsonl``, ``summary.json`` and ``checkpoints/last.pt``; with
    matplotlib, ``training_curves.png`` is redrawn from ``log.jsonl`` after each monitor epoch.
    """
    from ..data.datasets import balanced_subset, build_dataset
    from ..data.transforms import SeededViews, build_view_transform, derive_seed
    from . import checkpoint as ckpt_lib
    from ..evaluation import extract_features, feature_effective_rank, knn_accuracy
    from .optim import build_optimizer
    from .schedules import apply_lr, cov_weight_at, momentum_at

    recipe = recipe.validate()
    rank, _, world, device = _init_distributed(opts.device)
    is_main = rank == 0
    out = Path(opts.out)
    if opts.resume and opts.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: one continues the run in --out, "
                         "the other deletes it")
    resume_from = None if opts.overwrite else _check_out_dir(out, opts.resume)
    if opts.amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"--amp {opts.amp!r}: choose none, bf16 or fp16")
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
    if name != "fashion_mnist" and not opts.data:
        raise ValueError(f"recipe {recipe.name!r} trains on {recipe.dataset}: pass --data ROOT")
    if is_main:  # everything is checked: only now may --overwrite delete anything
        from ..outdir import claim

        job = dict(recipe=recipe.to_dict(), data=str(opts.data), seed=opts.seed)
        claim(out, opts.owner, job, overwrite=opts.overwrite, resume=opts.resume, hint="resume")
    if world > 1:
        dist.barrier()

    # ------------------------------------------------------------ data
    train_set = build_dataset(name, opts.data, "train+unlabeled" if name == "stl10" else "train")
    view_tf = build_view_transform(recipe.method, recipe.dataset, recipe.img_size, recipe.num_views,
                                   multi_crop=recipe.multi_crop)
    # The statistics the views are normalised with (Tiny-ImageNet's own for tiny_imagenet, which is
    # stored as an image folder): config.json records these, so every probe normalises the same way.
    mean, std = view_tf.mean, view_tf.std
    indices = list(range(len(train_set)))
    if opts.train_subset:
        per_class = max(1, opts.train_subset // max(1, len(train_set.classes)))
        indices = balanced_subset(train_set.targets, per_class, opts.seed)
    sampler = EpochBatchSampler(indices, local_batch, opts.seed, rank, world, opts.steps_per_epoch)
    gpu_aug = None
    if opts.gpu_augment:
        from ..data.gpu_augment import RawImages, batch_view_augments

        if recipe.multi_crop:
            raise ValueError("--gpu-augment makes same-size views; it does not implement multi-crop")
        gpu_aug = batch_view_augments(recipe.method, recipe.dataset, recipe.img_size, recipe.num_views)
        views_ds = RawImages(train_set, recipe.img_size)
    else:
        views_ds = EpochIndexed(SeededViews(train_set, view_tf, opts.seed))
    loader = DataLoader(
        views_ds, batch_sampler=sampler, num_workers=opts.workers, pin_memory=device.type == "cuda",
        persistent_workers=opts.workers > 0,
    )
    steps_per_epoch = sampler.steps
    # what a resumed run must see again for the rest of the run to be the one it continues
    data_id = dict(dataset=name, samples=len(train_set), classes=list(train_set.classes),
                   subset=len(indices), seed=opts.seed)

    # ------------------------------------------------------------ model and optimiser
    torch.manual_seed(derive_seed(opts.seed, 2))
    model = build_model(recipe, gather).to(device)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(recipe.optimizer, model, lr=recipe.effective_lr,
                                weight_decay=recipe.weight_decay, momentum=recipe.momentum,
                                exclude_bias_and_norm=recipe.exclude_bias_norm_wd)
    scaler = torch.amp.GradScaler(device.type, enabled=opts.amp == "fp16")
    schedule = _schedule(recipe, steps_per_epoch)
    total_steps = recipe.epochs * steps_per_epoch
    start_epoch, start_step = 0, 0
    if resume_from is not None:
        state = ckpt_lib.load_checkpoint(resume_from)
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        if state.scaler:
            scaler.load_state_dict(state.scaler)
        start_epoch, start_step = state.epoch, state.extra.get("step_in_epoch", 0)
        if state.extra.get("recipe") and state.extra["recipe"] != json.loads(json.dumps(recipe.to_dict())):
            raise ValueError(
                f"--resume: the recipe differs from the one {resume_from} was trained with; "
                "resume with the same recipe and overrides (see train_config.json)"
            )
        saved_data = state.extra.get("data")
        if saved_data and saved_data != json.loads(json.dumps(data_id)):
            changed = sorted(k for k in data_id if saved_data.get(k) != data_id[k])
            raise ValueError(
                f"--resume: the training data differs from the data {resume_from} was trained on "
                f"({', '.join(changed)}); resume with the same --data, --train-subset and --seed"
            )
        if is_main:
            print(f"resuming from {resume_from} at epoch {start_epoch + 1}, step {start_step} "
                  f"(global step {state.step})", flush=True)
    core = model
    if world > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            core = model
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(model) if opts.compile else model

    config = dict(recipe=recipe.to_dict(), options={k: str(v) if isinstance(v, Path) else v
                                                      for k, v in dataclasses.asdict(opts).items()},
                  world_size=world, local_batch=local_batch, gather_distributed=gather,
                  steps_per_epoch=steps_per_epoch, torch=torch.__version__,
                  device=str(device), hardware=_hardware(device))
    if is_main:
        _write_json(out / "train_config.json", config)

    # ------------------------------------------------------------ monitor data
    monitor = None
    eval_every = opts.eval_every if opts.eval_every is not None else recipe.eval_every
    if is_main and eval_every > 0:
        monitor = _monitor_sets(train_set, name, opts, recipe, balanced_subset)

    writer = None
    if is_main and opts.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            warnings.warn("--tensorboard needs the tensorboard package; logging to log.jsonl only")

    def save(epoch: int, step_in_epoch: int, global_step: int) -> None:
        if not is_main:
            return
        if not ckpt_lib.is_finite_state(core):
            raise TrainingStopped(f"non-finite weights after global step {global_step}; not saved")
        ckpt_lib.save_checkpoint(out, ckpt_lib.TrainState(
            epoch=epoch, step=global_step, model=core.state_dict(), optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict() if scaler.is_enabled() else {},
            extra=dict(step_in_epoch=step_in_epoch, recipe=recipe.to_dict(), data=data_id),
        ))

    # ------------------------------------------------------------ train
    log_path = out / "log.jsonl"
    global_step = start_epoch * steps_per_epoch + start_step
    summary: dict[str, Any] = {}
    bar = None
    if is_main and opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=global_step, unit="step", dynamic_ncols=True,
                   desc=recipe.name, mininterval=2.0)
    run_start = time.perf_counter()
    for epoch in range(start_epoch, recipe.epochs):
        sampler.set_epoch(epoch, start_step if epoch == start_epoch else 0)
        model.train()
        losses, views_seen, epoch_start = [], 0, time.perf_counter()
        step = sampler.start_step
        for views, _ in loader:
            torch.manual_seed(derive_seed(opts.seed, 1, epoch, step))
            if gpu_aug is not None:
                raw = views.to(device, non_blocking=True)
                gen = torch.Generator(device=device).manual_seed(derive_seed(opts.seed, 3, epoch, step))
                views = [aug(raw, gen) for aug in gpu_aug]
            views = [v.to(device, non_blocking=True) for v in views]
            if opts.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            lr = schedule.lr_at(global_step)
            apply_lr(optimizer, lr)
            if recipe.cov_stop_epoch is not None:  # per step: the authors switch it off after a step
                core.loss.cov_weight = cov_weight_at(epoch, recipe.loss.get("cov_weight", 0.0),
                                                     recipe.cov_stop_epoch, step_in_epoch=step)
            if recipe.ema_momentum is not None:
                core.update_momentum(momentum_at(global_step, total_steps, recipe.ema_momentum))
            try:
                with _amp_context(device, opts.amp):
                    loss = forward(views)
            except ValueError as exc:
                raise TrainingStopped(
                    f"stopped at epoch {epoch + 1}, step {step + 1} (global step {global_step + 1}): {exc}. "
                    f"The last good checkpoint is kept in {out / 'checkpoints'}"
                ) from exc
            if not torch.isfinite(loss.detach()):
                raise TrainingStopped(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1} "
                    f"(global step {global_step + 1}); nothing was saved, the last good checkpoint is "
                    f"kept in {out / 'checkpoints'}. Lower the learning rate or use --amp none."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            step += 1
            losses.append(loss.item())
            views_seen += sum(len(v) for v in views) * world
            if bar is not None:
                elapsed = time.perf_counter() - epoch_start
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", loss=f"{losses[-1]:.4f}",
                                lr=f"{lr:.3g}", views_s=f"{views_seen / max(elapsed, 1e-9):.0f}")
            if opts.checkpoint_every and step % opts.checkpoint_every == 0 and step < steps_per_epoch:
                save(epoch, step, global_step)
        epoch_time = time.perf_counter() - epoch_start
        record = dict(epoch=epoch + 1, global_step=global_step, loss=sum(losses) / max(len(losses), 1),
                      lr=schedule.lr_at(max(global_step - 1, 0)), views_per_s=views_seen / max(epoch_time, 1e-9),
                      epoch_seconds=epoch_time)
        if monitor is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == recipe.epochs):
            bank_x, bank_y = extract_features(core.backbone, monitor[0], device, workers=opts.workers)
            query_x, query_y = extract_features(core.backbone, monitor[1], device, workers=opts.workers)
            # a monitor (cosine, subsets), not the papers' 5-NN (Euclidean, full sets)
            record["monitor_knn_cos"] = knn_accuracy(bank_x, bank_y, query_x, query_y, k=recipe.knn_k, rule="majority-cosine")
            record["effective_rank"] = feature_effective_rank(bank_x)
            record["feature_dim"] = bank_x.shape[1]
        save(epoch + 1, 0, global_step)
        if is_main:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if "monitor_knn_cos" in record:
                _plot_curves(log_path)
            if writer is not None:
                for key, value in record.items():
                    if key != "epoch":
                        writer.add_scalar(f"pretrain/{key}", value, epoch + 1)
            if bar is not None:
                extra = (f", kNN {record['monitor_knn_cos']:.2f}%, eff. rank {record['effective_rank']:.1f}"
                         if "monitor_knn_cos" in record else "")
                bar.write(f"epoch {epoch + 1}/{recipe.epochs}: loss {record['loss']:.4f}{extra}")
        summary = record
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    summary = dict(summary, wall_seconds=time.perf_counter() - run_start, recipe=recipe.name)
    if is_main:
        _export_model(out, core, recipe, mean, std, opts, config)
        _write_json(out / "summary.json", summary)
    if world > 1:
        dist.barrier()
    return summary


def _plot_curves(log_path: Path) -> None:
    """Redraw OUT/training_curves.png from the log (only if matplotlib is importable; a plot never
    stops a run: a failure is a warning)."""
    from ..plots import have_matplotlib, plot_training_curves

    if not have_matplotlib():
        return
    try:
        plot_training_curves(log_path)
    except Exception as exc:  # noqa: BLE001 - any plotting failure is only worth a warning
        warnings.warn(f"{log_path.parent / 'training_curves.png'} not drawn: {type(exc).__name__}: {exc}")


def _monitor_sets(train_set, name, opts: RunOptions, recipe: Recipe, balanced_subset):
    """(bank, queries): labelled eval-transform datasets for the held-out kNN monitor."""
    from ..data.datasets import TransformedDataset, build_dataset, heldout_split
    from ..data.transforms import eval_transform

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


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _export_model(out: Path, core: nn.Module, recipe: Recipe, mean, std, opts: RunOptions, config) -> None:
    from ..modelio import save_model_dir

    small = recipe.img_size <= 96
    crop_pct, interpolation = (1.0, "bilinear") if small else (0.875, "bicubic")
    if recipe.dataset == "stl10" and recipe.img_size < 96:
        # W-MSE datasets/stl10.py:13-16 (CW-RGP's copy): Resize(70, bicubic) + CenterCrop(64)
        crop_pct, interpolation = recipe.img_size / round(recipe.img_size * 70 / 64), "bicubic"
    save_model_dir(
        out, core.backbone, arch=recipe.arch, stem=recipe.stem, mean=tuple(mean), std=tuple(std),
        img_size=recipe.img_size, crop_pct=crop_pct, interpolation=interpolation, projector=core.projector,
        extra_meta=dict(method=recipe.method, recipe=recipe.name, dataset=recipe.dataset,
                        epochs=recipe.epochs, seed=opts.seed, source="wssl-zoo pretrain"),
    )
