"""The detectron2 backend: detectron2's own trainer, launcher and evaluators on the shipped configs.

Used by ``python -m detection.train --backend detectron2`` (the default where detectron2 is
importable); the protocol of the papers' COCO numbers is this backend in float32. It

1. exports the backbone with :mod:`detection.export` in the layout the config needs (``c4`` for
   Res5ROIHeads configs, ``fpn`` for FPN ones; exact names, ``matching_heuristics: False``);
2. builds the config as detectron2's ``tools/train_net.py`` does: detectron2 defaults <- protocol
   YAML (with its ``_BASE_``) <- the export's input settings (RGB, the model's pixel mean/std on
   0-255, STRIDE_IN_1X1 False, depth) <- ``--max-iter``/``--ims-per-batch``/``--amp``/``--workers``
   <- ``--set`` and trailing ``KEY VALUE`` overrides (``merge_from_list``);
3. registers the data (``--data`` as COCO instances or Pascal VOC) and the project's detectron2
   components (:mod:`detection.d2_register`: MoCo's ``Res5ROIHeadsExtraNorm``);
4. runs ``DefaultTrainer`` under detectron2's ``launch`` with its launcher options (``--num-gpus``
   per machine, ``--num-machines``, ``--machine-rank``, ``--dist-url``), checkpointing every
   ``SOLVER.CHECKPOINT_PERIOD``; on SIGTERM / SIGUSR1 / Ctrl-C every process finishes its iteration,
   the main one writes ``model_NNNNNNN.pth`` (``DetectionCheckpointer``, with ``last_checkpoint``),
   and the job exits with status 75 and the command that resumes it (``--resume``: detectron2's
   ``resume_or_load``);
5. evaluates with COCOEvaluator / PascalVOCDetectionEvaluator, and the main process writes
   ``eval.json`` and the same ``zoo/results`` record as the torchvision backend.

Tested against detectron2's own code by tests/test_detectron2_real.py (CPU iterations on tiny
images) where detectron2 is installed; ``.ci/install_detectron2.sh`` installs its pure-Python part.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import detectron2
import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.pascal_voc import register_pascal_voc
from detectron2.engine import DefaultTrainer, HookBase, default_setup, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

from wssl_zoo.cliargs import EXIT_PREEMPTED, Preempted
from wssl_zoo.cliargs import device as parse_device
from wssl_zoo.fileio import atomic_write_text
from wssl_zoo.preempt import StopOnSignal, resume_command, stopped_message

from . import d2_register  # noqa: F401  (registers Res5ROIHeadsExtraNorm, in every spawned process too)
from .configs import config_path, load_config
from .data import coco_paths
from .export import export_detectron2, load_backbone
from .job import (
    PROTOCOL_VERSION,
    UsageError,
    _fingerprint,
    claim_out,
    data_root,
    prepare_config,
    resume_argv,
    schedule_label,
    write_record,
)

PROG = "python -m detection.train"


def register_data(args) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """Register ``--data`` in detectron2's DatasetCatalog (once per process); returns the train
    and test dataset names and the task (coco or voc)."""
    kind, root = data_root(args)
    if kind == "coco":
        names = []
        for split in ("train", "val"):
            name = f"wsslzoo_coco_{split}"
            if name not in DatasetCatalog.list():
                ann, images = coco_paths(root, split)
                register_coco_instances(name, {}, str(ann), str(images))
            names.append(name)
        return (names[0],), (names[1],), "coco"
    base_root = Path(root)
    train = []
    for year in ("2007", "2012"):
        for base in (base_root / f"VOC{year}", base_root / "VOCdevkit" / f"VOC{year}"):
            if base.is_dir():
                name = f"wsslzoo_voc_{year}_trainval"
                if name not in DatasetCatalog.list():
                    register_pascal_voc(name, str(base), "trainval", int(year))
                train.append(name)
                if year == "2007" and "wsslzoo_voc_2007_test" not in DatasetCatalog.list():
                    register_pascal_voc("wsslzoo_voc_2007_test", str(base), "test", 2007)
                break
    return tuple(train), ("wsslzoo_voc_2007_test",), "voc"


def build_cfg(args, weights: Path, fragment: Path):
    """detectron2's config of this job (see the module docstring, step 2); returns (cfg, our merged
    dict, protocol-name suffixes, task)."""
    if args.amp == "bf16":
        raise UsageError("--amp bf16: detectron2 0.6's mixed precision is float16 (--amp fp16)")
    ours, suffix = prepare_config(args)  # validates, applies --max-iter/--ims-per-batch/--amp/--set
    cfg = get_cfg()
    cfg.merge_from_file(str(config_path(args.config)))
    cfg.merge_from_file(str(fragment))  # input settings of the exported weights
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.SOLVER.MAX_ITER = ours["SOLVER"]["MAX_ITER"]
    cfg.SOLVER.STEPS = tuple(ours["SOLVER"]["STEPS"])
    cfg.SOLVER.WARMUP_ITERS = ours["SOLVER"]["WARMUP_ITERS"]
    cfg.SOLVER.IMS_PER_BATCH = ours["SOLVER"]["IMS_PER_BATCH"]
    cfg.SOLVER.AMP.ENABLED = bool(ours["SOLVER"]["AMP"]["ENABLED"])
    cfg.DATALOADER.NUM_WORKERS = ours["DATALOADER"]["NUM_WORKERS"]
    if args.checkpoint_every is not None:
        cfg.SOLVER.CHECKPOINT_PERIOD = args.checkpoint_every or 10 ** 9
    opts = []
    for item in args.overrides:
        key, value = item.split("=", 1)
        opts += [key.strip(), value]
    if opts:
        cfg.merge_from_list(opts)
    train, test, task = register_data(args)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = train, test
    cfg.OUTPUT_DIR = str(Path(args.out))
    cfg.SEED = args.seed
    return cfg, ours, suffix, task


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        folder = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference")
        if "voc" in dataset_name:
            return PascalVOCDetectionEvaluator(dataset_name)
        import detectron2._C as ext  # the fast C++ COCOeval only where detectron2 was compiled

        return COCOEvaluator(dataset_name, output_dir=folder, use_fast_impl=hasattr(ext, "InstanceAnnotation"))


class _Stopped(BaseException):
    """Raised by :class:`StopHook` out of detectron2's training loop. Not an ``Exception``: the loop
    logs those with a traceback, and this is no error."""


class StopHook(HookBase):
    """After each iteration, when any process received SIGTERM / SIGUSR1 / Ctrl-C
    (:class:`~wssl_zoo.preempt.StopOnSignal`, all-reduced): the main process saves
    ``model_NNNNNNN.pth`` with detectron2's checkpointer (optimizer, scheduler, iteration), every
    process raises :class:`_Stopped`."""

    def __init__(self, stop: StopOnSignal):
        self.stop = stop
        self.saved: str | None = None

    def after_step(self):
        it = self.trainer.iter
        if it + 1 >= self.trainer.max_iter or not self.stop.requested():
            return
        name = f"model_{it:07d}"
        if comm.is_main_process():
            self.trainer.checkpointer.save(name)
        comm.synchronize()
        self.saved = str(Path(self.trainer.cfg.OUTPUT_DIR) / f"{name}.pth")
        raise _Stopped(it + 1)


def _metrics(results: dict) -> dict:
    metrics = {}
    for iou, vals in (results or {}).items():
        for name, value in vals.items():
            metrics[f"{iou}_{name}"] = round(float(value), 4)  # NaN: the record lists it in undefined_metrics
    return metrics


def worker(cfg, args, argv: list[str], info: dict):
    """One process of the job (all of it on one process, or each of detectron2's spawned ones):
    train (or evaluate), then on the main process write eval.json and the record."""
    register_data(args)  # each spawned process needs the registrations
    default_setup(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        weights = args.weights or str(Path(cfg.OUTPUT_DIR) / "model_final.pth")
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(weights, resume=False)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        with StopOnSignal() as stop:
            hook = StopHook(stop)
            trainer.register_hooks([hook])
            try:
                trainer.train()  # its EvalHook evaluates the final model after the last iteration
            except _Stopped as exc:
                message = stopped_message(stop.signal_name, f"after iteration {exc.args[0]} of {cfg.SOLVER.MAX_ITER}",
                                          hook.saved or cfg.OUTPUT_DIR,
                                          resume_command(PROG, resume_argv(argv, args.opts)))
                if comm.get_world_size() > 1:  # a spawned process: the launcher says it once (exit status 75)
                    if comm.is_main_process():
                        print(message, file=sys.stderr, flush=True)
                    sys.exit(EXIT_PREEMPTED)
                raise Preempted(message) from None
        # DefaultTrainer.train() returns the evaluation only when TEST.EXPECTED_RESULTS is set; its hook keeps it
        results = getattr(trainer, "_last_eval_results", None)
        if results is None:
            results = Trainer.test(cfg, trainer.model)
    if comm.is_main_process():
        write_outputs(cfg, args, argv, info, _metrics(results))


def write_outputs(cfg, args, argv: list[str], info: dict, metrics: dict) -> None:
    out = Path(cfg.OUTPUT_DIR)
    atomic_write_text(out / "eval.json", json.dumps({"metrics": metrics}, indent=2) + "\n")
    print(json.dumps({"metrics": metrics, "out": str(out)}))
    if args.no_record:
        return
    task, root = data_root(args)
    ann = coco_paths(root, "val")[0] if task == "coco" else None
    write_record(path=Path(args.record) if args.record else None, results_dir=args.results_dir,
                 label=info["label"], task=task, model=info["spec"], weights_sha256=info["weights_sha256"],
                 protocol={"name": "+".join([info["config"], *info["suffix"]]), "version": PROTOCOL_VERSION,
                           "backend": "detectron2", "max_iter": cfg.SOLVER.MAX_ITER,
                           "schedule": schedule_label(info["config"], cfg.SOLVER.MAX_ITER, info["suffix"]),
                           "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
                           "precision": "fp16" if cfg.SOLVER.AMP.ENABLED else "float32"},
                 dataset={"name": task, "split": "val2017" if task == "coco" else "2007_test",
                          "fingerprint": _fingerprint([ann]) if ann else None},
                 seed=args.seed, metrics=metrics, wall_seconds=time.perf_counter() - info["t0"],
                 command=PROG + " " + shlex.join(argv),
                 extra={"gpus": info["processes"], "layout": info["layout"], "export": info["export"],
                        "detectron2_version": info["detectron2"]})


@contextmanager
def _forward_stop_signals():
    """While detectron2's launcher waits for its processes: SIGTERM and SIGUSR1 sent to it (a
    scheduler may signal the launcher only) are passed on to them; Ctrl-C reaches them from the
    terminal already, so the launcher ignores it and waits for them to checkpoint."""
    def forward(signum, _frame):
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:  # ended meanwhile
                pass

    names = ("SIGTERM", "SIGUSR1")
    previous = {getattr(signal, n): signal.signal(getattr(signal, n), forward) for n in names if hasattr(signal, n)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def launcher_settings(args) -> tuple[int, int, int, str, str]:
    """``(num_gpus, num_machines, machine_rank, dist_url, MODEL.DEVICE)`` from detectron2's launcher
    options and ``--device``."""
    dev = parse_device(args.device)
    machines = args.num_machines if args.num_machines is not None else 1
    rank = args.machine_rank if args.machine_rank is not None else 0
    if machines < 1 or not 0 <= rank < machines:
        raise UsageError(f"--machine-rank {rank} --num-machines {machines}: need 0 <= machine rank < machines")
    if dev.type == "cpu":
        if args.num_gpus or machines > 1:
            raise UsageError("--device cpu trains in one process; --num-gpus / --num-machines need CUDA")
        return 0, 1, 0, "auto", "cpu"
    gpus = args.num_gpus if args.num_gpus is not None else (1 if ":" in str(args.device) else torch.cuda.device_count())
    if gpus < 1 or gpus > torch.cuda.device_count():
        raise UsageError(f"--num-gpus {gpus}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    url = args.dist_url or "auto"
    if machines > 1 and url == "auto":
        raise UsageError("--num-machines > 1 needs --dist-url tcp://HOST:PORT (machine 0's address, the same on every "
                         "machine)")
    return gpus, machines, rank, url, (str(dev) if gpus == 1 and machines == 1 else "cuda")


def run(args, argv: list[str]) -> int:
    """``detection.train --backend detectron2``: export, config, launch (see the module docstring)."""
    t0 = time.perf_counter()
    gpus, machines, machine_rank, url, model_device = launcher_settings(args)
    out = Path(args.out)
    if machine_rank == 0:
        claim_out(args, out)
    backbone, resolved = load_backbone(args.model)
    layout = "fpn" if load_config(args.config)["MODEL"]["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone" else "c4"
    # machine 0 exports into --out (which it claimed); the others, which must not write there before it
    # claims the folder, export the same bytes to a folder of their own that their processes read
    where = out if machine_rank == 0 else Path(tempfile.mkdtemp(prefix="wssl-zoo-d2-export-"))
    weights, fragment = export_detectron2(backbone, resolved, where / "backbone_d2.pkl", layout=layout)
    cfg, ours, suffix, task = build_cfg(args, weights, fragment)
    cfg.MODEL.DEVICE = model_device
    cfg.freeze()
    info = {"label": resolved.label, "spec": resolved.spec, "weights_sha256": resolved.weights_sha256,
            "config": ours["_NAME"], "suffix": suffix, "layout": layout, "export": str(weights), "t0": t0,
            "detectron2": detectron2.__version__, "processes": gpus * machines}
    if gpus * machines <= 1:
        worker(cfg, args, argv, info)
        return 0
    try:
        with _forward_stop_signals():
            launch(worker, gpus, num_machines=machines, machine_rank=machine_rank, dist_url=url,
                   args=(cfg, args, argv, info))
    except torch.multiprocessing.ProcessExitedException as exc:
        if exc.exit_code != EXIT_PREEMPTED:
            raise
        last = out / "last_checkpoint"
        saved = str(out / last.read_text().strip()) if last.is_file() else str(out)
        raise Preempted(stopped_message("a stop signal", "(detectron2 backend)", saved,
                                        resume_command(PROG, resume_argv(argv, args.opts)))) from None
    return 0
