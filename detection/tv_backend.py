"""The torchvision backend: ``python -m detection.train --backend torchvision`` (:func:`run`).

The model is :mod:`detection.tv_model` (detectron2's Faster / Mask R-CNN on torchvision's parts),
the data :mod:`detection.data` (detectron2's mapper, sampler and aspect-ratio grouping), the
evaluation :mod:`detection.evaluation` (COCOeval). This module trains it as detectron2's
``DefaultTrainer`` does (SGD with its parameter groups, WarmupMultiStepLR, float32 unless AMP,
precise BN after the last iteration), on the CPU, one GPU or several under torchrun (one process
per GPU, any number of nodes: ``torchrun --nnodes N --nproc-per-node 8 --rdzv-backend c10d
--rdzv-endpoint HOST:PORT -m detection.train ...``), and

- checkpoints ``OUT/checkpoints/last.pt`` every ``SOLVER.CHECKPOINT_PERIOD`` iterations (model,
  optimiser, gradient scaler, iteration, every process's random state; written atomically);
- on SIGTERM, SIGUSR1 or Ctrl-C (:class:`wssl_zoo.preempt.StopOnSignal`) finishes the iteration,
  writes that checkpoint and exits with status 75 and one line giving the command that resumes;
- resumes from it with ``--resume`` to the same weights an uninterrupted run reaches (the data
  stream is replayed to where it stopped and the random states are restored;
  ``tests/test_detection_preempt.py``).
"""

from __future__ import annotations

import io
import itertools
import json
import random
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from wssl_zoo import distributed
from wssl_zoo.fileio import atomic_write_bytes, atomic_write_text
from wssl_zoo.preempt import Preempted, StopOnSignal, resume_command, stopped_message

from .configs import TrainSettings, to_torchvision
from .data import Resize, TrainingBatches, coco_datasets, collate, landscape, voc_datasets
from .evaluation import evaluate
from .export import load_backbone
from .fidelity import Run, remaining_differences
from .job import (
    PROTOCOL_VERSION,
    UsageError,
    _fingerprint,
    claim_out,
    data_root,
    prepare_config,
    resume_argv,
    schedule_label,
    warn_cpu_size,
    write_record,
)
from .tv_model import build_model

PROG = "python -m detection.train"
# detectron2 0.6 get_default_optimizer_params: the modules whose parameters get WEIGHT_DECAY_NORM
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
              nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)
# fvcore.nn.precise_bn.BN_MODULE_TYPES: the norms precise BN recomputes (those in training mode)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class TrainError(RuntimeError):
    """Training cannot go on (bad setting, non-finite loss, unreadable checkpoint); the message says why."""


# ----------------------------------------------------------------------------------------- pieces

def param_groups(model: nn.Module, s: TrainSettings) -> list[dict]:
    """detectron2's ``get_default_optimizer_params``: one group per (lr factor, weight decay): norm
    parameters get ``WEIGHT_DECAY_NORM``, biases ``WEIGHT_DECAY_BIAS`` (default: ``WEIGHT_DECAY``) and
    ``BIAS_LR_FACTOR``; frozen parameters none. Each group's ``lr_factor`` multiplies the schedule's lr."""
    groups: dict[tuple[float, float], list] = {}
    seen: set[int] = set()
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            factor, decay = 1.0, s.weight_decay
            if isinstance(mod, NORM_TYPES):
                decay = s.weight_decay_norm
            if name == "bias":  # detectron2's overrides["bias"] win over the norm rule
                factor = s.bias_lr_factor
                if s.weight_decay_bias is not None:
                    decay = s.weight_decay_bias
            groups.setdefault((factor, decay), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_factor": f} for (f, wd), ps in groups.items()]


def _save(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_path(out: Path) -> Path:
    return Path(out) / "checkpoints" / "last.pt"


def _rng_state(device: torch.device) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather(obj: Any, world: int) -> list:
    if world == 1:
        return [obj]
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, obj)
    return parts


def _to_device(images, targets, device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


def _loader(dataset, s: TrainSettings, per_rank: int, seed: int, rank: int, world: int, start: int, device):
    batches = TrainingBatches(landscape(dataset), per_rank, seed, rank=rank, world=world,
                              group=s.aspect_ratio_grouping, start=start)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=s.num_workers,
                                       pin_memory=device.type == "cuda", persistent_workers=s.num_workers > 0)


@torch.no_grad()
def precise_bn(model: nn.Module, batches, num_iter: int, device, stop: StopOnSignal | None = None) -> int:
    """fvcore's ``update_bn_stats`` (detectron2's PreciseBN hook): the running mean and variance of
    every BN in training mode become their averages over ``num_iter`` forward passes (momentum 1
    per pass, then the mean over the passes). Returns the number of BN layers updated."""
    bns = [m for m in model.modules() if m.training and isinstance(m, BN_TYPES)]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    means = [torch.zeros_like(bn.running_mean) for bn in bns]
    variances = [torch.zeros_like(bn.running_var) for bn in bns]
    for bn in bns:
        bn.momentum = 1.0
    try:
        for k, (images, targets) in enumerate(itertools.islice(batches, num_iter)):
            model(*_to_device(images, targets, device))
            for i, bn in enumerate(bns):
                means[i] += (bn.running_mean - means[i]) / (k + 1)
                variances[i] += (bn.running_var - variances[i]) / (k + 1)
            if stop is not None and stop.requested(device):
                raise Preempted("")  # the caller words it; the last checkpoint predates precise BN
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    for bn, mean, var in zip(bns, means, variances):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return len(bns)


# ------------------------------------------------------------------------------------------ train

def train(model: nn.Module, dataset, s: TrainSettings, *, out: Path, device: torch.device, seed: int,
          resume: bool = False, checkpoint_every: int | None = None, amp: str = "none", progress: bool = True,
          rank: int = 0, world: int = 1, meta: dict | None = None, resume_cmd: str = PROG) -> dict:
    """Train for ``s.max_iter`` iterations, then precise BN (when the config asks); writes
    OUT/checkpoints/last.pt, OUT/metrics.jsonl and OUT/model_final.pt, returns a summary. ``amp``:
    none (float32), fp16 or bf16 (CUDA only). Raises :class:`Preempted` after checkpointing on a stop signal."""
    out = Path(out)
    if s.ims_per_batch % world:
        raise TrainError(f"SOLVER.IMS_PER_BATCH {s.ims_per_batch} is not divisible by the {world} processes")
    per_rank = s.ims_per_batch // world
    model.to(device)
    opt = torch.optim.SGD(param_groups(model, s), lr=s.lr_at(0), momentum=s.momentum, nesterov=s.nesterov)
    use_amp = amp != "none" and device.type == "cuda"
    if amp != "none" and not use_amp:
        warnings.warn("--amp is for CUDA; training in float32 on this device")
    amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    start, ckpt = 0, checkpoint_path(out)
    rng = None
    if resume and ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except Exception as exc:  # noqa: BLE001 - any unreadable or foreign file is the same user error
            why = " ".join(str(exc).split())[:200]
            raise TrainError(f"{ckpt}: cannot resume from this checkpoint ({why})") from None
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        states = state.get("rng") or []
        if len(states) == world:
            rng = states[rank]
        elif rank == 0:
            warnings.warn(f"{ckpt} was written by {len(states)} process(es), this run has {world}: the random state "
                          "is not restored (the run continues, not bit for bit)")
    elif resume and rank == 0:
        print(f"--resume: no checkpoint in {out} yet; starting from iteration 0", file=sys.stderr, flush=True)
    core = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=True)
    model.train()
    every = checkpoint_every if checkpoint_every is not None else s.checkpoint_period

    def save(it: int, last: dict) -> None:
        states = _gather(_rng_state(device), world)  # every rank takes part; rank 0 writes
        if rank == 0:
            _save(ckpt, {"model": core.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                         "iteration": it, "loss": last, "rng": states, "meta": meta or {}})

    log = (out / "metrics.jsonl").open("a") if rank == 0 else None
    bar = tqdm(total=s.max_iter, initial=start, disable=not progress or rank != 0, dynamic_ncols=True,
               desc="train", unit="it")
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    it = start
    try:
        with StopOnSignal() as stop:
            if start < s.max_iter:
                data_iter = iter(_loader(dataset, s, per_rank, seed, rank, world, start, device))
            if rng is not None:  # after the loader drew its workers' seeds, as the uninterrupted run did
                _set_rng_state(rng, device)
            while it < s.max_iter:
                images, targets = _to_device(*next(data_iter), device)
                lr = s.lr_at(it)
                for g in opt.param_groups:
                    g["lr"] = lr * g.get("lr_factor", 1.0)
                try:
                    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                        losses = model(images, targets)
                except FloatingPointError as exc:
                    raise TrainError(f"iteration {it}: {exc}") from None
                total = sum(losses.values())
                if not torch.isfinite(total):
                    raise TrainError(f"loss is {float(total)} at iteration {it} "
                                     f"({ {k: float(v) for k, v in losses.items()} }); lower SOLVER.BASE_LR")
                opt.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.step(opt)
                scaler.update()
                it += 1
                last = {k: float(v.detach()) for k, v in losses.items()}
                last["total_loss"] = float(total.detach())
                bar.update(1)
                bar.set_postfix(loss=f"{last['total_loss']:.3f}", lr=f"{lr:.2e}")
                if log is not None and (it % 20 == 0 or it == s.max_iter or it == start + 1):
                    log.write(json.dumps({"iteration": it, "lr": lr, **last,
                                          "seconds": time.perf_counter() - t0}) + "\n")
                    log.flush()
                stopping = stop.requested(device)
                if it == s.max_iter or stopping or (every and it % every == 0):
                    save(it, last)
                if stopping and it < s.max_iter:
                    raise Preempted(stopped_message(stop.signal_name, f"after iteration {it} of {s.max_iter}",
                                                    str(ckpt), resume_cmd))
            updated = 0
            if s.precise_bn:
                batches = iter(_loader(dataset, s, per_rank, seed + 1, rank, world, 0, device))
                try:
                    updated = precise_bn(model, batches, s.precise_bn_iters, device, stop)
                except Preempted:
                    raise Preempted(stopped_message(stop.signal_name, f"during precise BN after iteration {it}",
                                                    str(ckpt), resume_cmd)) from None
    finally:
        bar.close()
        if log is not None:
            log.close()
    seconds = time.perf_counter() - t0
    if rank == 0:
        _save(out / "model_final.pt", {"model": core.state_dict(), "iteration": it, "meta": meta or {}})
    return {"iterations": it, "resumed_from": start, "seconds": seconds, "last_loss": last,
            "seconds_per_iter": seconds / max(1, it - start), "precise_bn_layers": updated}


def load_weights(model: nn.Module, path: Path, device) -> int:
    """Load ``model_final.pt`` / a checkpoint into ``model``; returns its iteration."""
    if not Path(path).is_file():
        raise TrainError(f"{path}: no trained weights (train first, or pass --weights FILE)")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise TrainError(f"{path}: unreadable checkpoint ({exc})") from None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise TrainError(f"{path}: does not match the model built from this config ({str(exc).splitlines()[0]})") from None
    return int(state.get("iteration", 0))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# -------------------------------------------------------------------------------------------- run

def run(args, argv: list[str]) -> int:
    """``detection.train --backend torchvision``: data, model, training, COCOeval, record (rank 0)."""
    t0 = time.perf_counter()
    for flag, value in (("--num-gpus", args.num_gpus), ("--num-machines", args.num_machines),
                        ("--machine-rank", args.machine_rank), ("--dist-url", args.dist_url)):
        if value is not None:
            raise UsageError(f"{flag} is detectron2's launcher option (--backend detectron2); the torchvision backend "
                             "runs one process per GPU under torchrun: torchrun --nnodes N --nproc-per-node G "
                             "--rdzv-backend c10d --rdzv-endpoint HOST:PORT -m detection.train ...")
    cfg, suffix = prepare_config(args)
    dataset_kind, root = data_root(args)
    backbone, weights = load_backbone(args.model)
    # The input settings of the weights: RGB, the model's mean/std on the 0-255 scale.
    cfg["MODEL"]["PIXEL_MEAN"], cfg["MODEL"]["PIXEL_STD"] = weights.pixel_stats("imagenet")
    s = to_torchvision(cfg)
    resizes = dict(train_resize=Resize(s.min_size_train, s.max_size_train),
                   test_resize=Resize((s.min_size_test,), s.max_size_test))
    if dataset_kind == "coco":
        train_set, test_set = coco_datasets(root, masks=s.mask_on, filter_empty=s.filter_empty, flip=s.random_flip,
                                            mask_format=s.mask_format, **resizes)
        split, fp_files = "val2017", [test_set.ann_file]
    else:
        if s.mask_on:
            raise UsageError(f"--config {args.config}: MODEL.MASK_ON is True but VOC has no masks; "
                             "use voc_R_50_C4_24k or --set MODEL.MASK_ON=False")
        train_set, test_set = voc_datasets(root, filter_empty=s.filter_empty, flip=s.random_flip, **resizes)
        split = "2007_test"
        fp_files = [r for r in (Path(root) / d / "ImageSets/Main/test.txt" for d in ("VOC2007", "VOCdevkit/VOC2007"))
                    if r.is_file()]
    n_cls = len(train_set.cat_ids)
    if n_cls != s.num_classes:
        warnings.warn(f"MODEL.ROI_HEADS.NUM_CLASSES {s.num_classes} -> {n_cls} (the dataset's categories)")
        s.num_classes = n_cls
    process = distributed.setup(args.device)
    rank, world, device = process.rank, process.world, process.device
    if device.type == "cpu" and rank == 0:
        warn_cpu_size(s.ims_per_batch, s.max_iter, max(s.min_size_train))
    out = Path(args.out)
    claim_error = None
    if rank == 0:
        try:
            claim_out(args, out)
        except ValueError as exc:
            claim_error = exc
    if distributed.any_rank(claim_error is not None, device):  # every rank stops, not only the one that found it
        raise claim_error if claim_error is not None else UsageError(f"--out {out}: refused on rank 0")
    seed_everything(args.seed + rank)
    sync_bn = world > 1 and device.type == "cuda"
    model = build_model(backbone, s, stem=weights.stem, sync_bn=sync_bn)
    amp = args.amp if args.amp is not None else ("fp16" if s.amp else "none")
    used_amp = amp if device.type == "cuda" else "none"
    meta = {"config": cfg["_NAME"], "model": weights.spec, "settings": s.as_dict()}
    summary: dict[str, Any] = {}
    if args.eval_only:
        path = Path(args.weights) if args.weights else out / "model_final.pt"
        model.to(device)
        summary["iterations"] = load_weights(model, path, device)
        summary["weights"] = str(path)
    else:
        summary = train(model, train_set, s, out=out, device=device, seed=args.seed, resume=args.resume,
                        checkpoint_every=args.checkpoint_every, amp=amp, progress=not args.no_progress,
                        rank=rank, world=world, meta=meta,
                        resume_cmd=resume_command(PROG, resume_argv(argv, args.opts)))
    result = evaluate(model, test_set, device, masks=s.mask_on, progress=not args.no_progress, rank=rank, world=world)
    if rank != 0:
        return 0
    wall = time.perf_counter() - t0
    differences = remaining_differences(s, Run(task=dataset_kind, world=world, device=device.type, amp=used_amp))
    atomic_write_text(out / "eval.json", json.dumps({**result, "train": summary, "differences_from_detectron2":
                                                      differences}, indent=2, default=str) + "\n")
    print(result["summary"], file=sys.stderr)
    print(json.dumps({"metrics": result["metrics"], "iterations": summary.get("iterations"), "out": str(out)}))
    if not args.no_record:
        protocol = {"name": "+".join([cfg["_NAME"], *suffix]), "version": PROTOCOL_VERSION,
                    "config": cfg["_NAME"], "schedule": schedule_label(cfg["_NAME"], s.max_iter, suffix),
                    "backend": "torchvision", "arch": s.arch, "mask_on": s.mask_on,
                    "max_iter": s.max_iter, "steps": list(s.steps), "warmup_iters": s.warmup_iters,
                    "ims_per_batch": s.ims_per_batch, "base_lr": s.base_lr,
                    "min_size_train": list(s.min_size_train), "min_size_test": s.min_size_test,
                    "norm": s.norm, "freeze_at": s.freeze_at,
                    "precision": used_amp if used_amp != "none" else "float32"}
        dataset = {"name": dataset_kind, "split": split, "fingerprint": _fingerprint(fp_files) if fp_files else None}
        extra = {"train": {k: v for k, v in summary.items() if k != "meta"}, "detections": result["detections"],
                 "undefined_metrics": result["undefined_metrics"],
                 "eval_seconds": round(result["seconds"], 3), "model_label": weights.label, "arch": weights.arch,
                 "world_size": world, "device": str(device), "amp": used_amp != "none",
                 "num_classes": s.num_classes, "data_root": str(root),
                 "train_images": len(train_set), "test_images": len(test_set),
                 "differences_from_detectron2": differences}
        record = write_record(path=Path(args.record) if args.record else None, results_dir=args.results_dir,
                              label=weights.label, task=dataset_kind, model=weights.spec,
                              weights_sha256=weights.weights_sha256, protocol=protocol, dataset=dataset,
                              seed=args.seed, metrics=result["metrics"], wall_seconds=wall,
                              command=PROG + " " + shlex.join(argv), extra=extra)
        print(f"record: {record}", file=sys.stderr)
    return 0
