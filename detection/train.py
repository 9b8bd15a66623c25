"""Detection transfer: train and evaluate Faster / Mask R-CNN on a zoo backbone.

    python -m detection.train --model M --config NAME --coco-root ROOT --out DIR [--max-iter N]
    python -m detection.train --model M --config voc_R_50_C4_24k --voc-root ROOT --out DIR
    python -m detection.train ... --eval-only            # evaluate DIR/model_final.pt
    torchrun --nproc_per_node 8 -m detection.train ...   # DDP (torchvision backend)
    python -m detection.train --backend detectron2 ...   # detectron2's trainer (its own launcher)

The result is a record (task ``coco`` or ``voc``; in ``--results-dir``, default ./results) with COCOeval's AP, AP50, AP75,
APs, APm, APl for boxes (and masks), the exact command, and the weights' sha256.
Errors are one line naming the offending file, key or value, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .job import (  # noqa: F401  (re-exported: the shared part of both backends)
    PROTOCOL_VERSION, UsageError, _fingerprint, claim_out, prepare_config, schedule_label, warn_cpu_size,
    write_record,
)

D2_INSTALL = ("detectron2 is not installed. Install it from source for your torch/CUDA "
              "(python -m pip install 'git+https://github.com/facebookresearch/detectron2.git'; needs a C++ "
              "compiler and the CUDA toolkit; see https://detectron2.readthedocs.io/en/latest/tutorials/install.html), "
              "or run with --backend torchvision")


def detectron2_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("detectron2") is not None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m detection.train",
        description="Train and evaluate Faster/Mask R-CNN (C4 or FPN) on a wssl-zoo backbone with a detectron2 "
                    "protocol config, and write a zoo/results record.")
    p.add_argument("--model", required=True,
                   help="backbone (required): model directory, registry name/alias, hf-hub:ORG/NAME[@REV], or "
                        "random:ARCH[:STEM[:SIZE]] (random init, plumbing checks only)")
    p.add_argument("--config", required=True,
                   help="protocol (required): a name in detection/configs (coco_R_50_C4_1x, coco_R_50_C4_2x, "
                        "voc_R_50_C4_24k, coco_R_50_FPN_1x) or a YAML path")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--coco-root", help="COCO layout: ROOT/annotations/instances_{train,val}2017.json and "
                                          "ROOT/{train,val}2017/ (one of --coco-root/--voc-root is required)")
    data.add_argument("--voc-root", help="VOC: ROOT/VOC2007 (+ROOT/VOC2012) or ROOT/VOCdevkit/VOC20xx; trains on "
                                         "07(+12) trainval, tests on 07 test")
    p.add_argument("--out", required=True,
                   help="output folder (required): checkpoints/last.pt, metrics.jsonl, model_final.pt, eval.json")
    p.add_argument("--backend", choices=["torchvision", "detectron2"], default=None,
                   help="training backend (default: detectron2 when it is importable, else torchvision)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="override SOLVER.MAX_ITER; STEPS and WARMUP_ITERS are scaled by the same factor unless "
                        "given with --set (default: the config's)")
    p.add_argument("--ims-per-batch", type=int, default=None,
                   help="override SOLVER.IMS_PER_BATCH, total over all processes; the lr is not rescaled "
                        "(default: the config's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set SOLVER.BASE_LR=0.01 --set 'INPUT.MIN_SIZE_TRAIN=(96,128)'; "
                        "repeatable (default: none)")
    p.add_argument("--eval-only", action="store_true",
                   help="skip training and evaluate --weights (default: off)")
    p.add_argument("--weights", default=None, help="weights for --eval-only (default: OUT/model_final.pt)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/last.pt: iteration, lr schedule, optimizer state (default: off)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete what --out holds first when it is not this job's earlier output (default: refuse)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="save OUT/checkpoints/last.pt every N iterations, 0 = only at the end "
                        "(default: SOLVER.CHECKPOINT_PERIOD)")
    from wssl_zoo import cliargs

    cliargs.add_seed(p, help_seed="random seed: data order, head init")
    cliargs.add_device(p)
    p.add_argument("--amp", choices=cliargs.AMP_CHOICES, default=None,
                   help="mixed precision on CUDA (default: the config's SOLVER.AMP.ENABLED, bf16 where supported "
                        "else fp16)")
    cliargs.add_workers(p, default=None, aliases=("--num-workers",),
                        what=f"the config's DATALOADER.NUM_WORKERS, at most {cliargs.default_workers()}, the CPUs "
                             "this process may use")
    p.add_argument("--record", default=None,
                   help="record file to write (default: RESULTS_DIR/detection_<model-label>_<config>_<dataset>_"
                        "seed<seed>_<id>.json, <id> a short hash of the record's identity)")
    p.add_argument("--results-dir", default=None, metavar="DIR",
                   help="folder of the record (default: $WSSL_ZOO_RESULTS or ./results); only "
                        "--results-dir zoo/results adds it to the zoo's published results")
    p.add_argument("--no-record", action="store_true", help="do not write a record (default: write one)")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar with ETA (default: shown)")
    return p


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def run_torchvision(args, argv: list[str]) -> int:
    from wssl_zoo import distributed

    from . import tv_backend as tv
    from .configs import to_torchvision
    from .data import coco_datasets, voc_datasets
    from .evaluation import evaluate
    from .export import load_backbone

    t0 = time.perf_counter()
    cfg, suffix = prepare_config(args)
    if not (args.coco_root or args.voc_root):
        raise UsageError("give the data with --coco-root ROOT or --voc-root ROOT")
    backbone, weights = load_backbone(args.model)
    # The input settings of the weights: RGB, the model's mean/std on the 0-255 scale.
    cfg["MODEL"]["PIXEL_MEAN"], cfg["MODEL"]["PIXEL_STD"] = weights.pixel_stats("imagenet")
    s = to_torchvision(cfg)
    if args.coco_root:
        train_set, test_set = coco_datasets(args.coco_root, masks=s.mask_on, filter_empty=s.filter_empty,
                                               flip=s.random_flip)
        task, ds_name, split = "coco", "coco", "val2017"
        fp_files = [test_set.ann_file]
    else:
        if s.mask_on:
            raise UsageError(f"--config {args.config}: MODEL.MASK_ON is True but VOC has no masks; "
                             "use voc_R_50_C4_24k or --set MODEL.MASK_ON=False")
        train_set, test_set = voc_datasets(args.voc_root, filter_empty=s.filter_empty, flip=s.random_flip)
        task, ds_name, split = "voc", "voc", "2007_test"
        fp_files = [r for r in (Path(args.voc_root) / d / "ImageSets/Main/test.txt"
                                for d in ("VOC2007", "VOCdevkit/VOC2007")) if r.is_file()]
    n_cls = len(train_set.cat_ids)
    if n_cls != s.num_classes:
        warnings.warn(f"MODEL.ROI_HEADS.NUM_CLASSES {s.num_classes} -> {n_cls} (the dataset's categories)")
        s.num_classes = n_cls
    process = distributed.setup(args.device)
    rank, world, device = process.rank, process.world, process.device
    if device.type == "cpu" and rank == 0:
        warn_cpu_size(s.ims_per_batch, s.max_iter, max(s.min_size_train))
    out = Path(args.out)
    if rank == 0:
        claim_out(args, out)
    tv.seed_everything(args.seed + rank)
    model = tv.build_model(backbone, s, stem=weights.stem)
    meta = {"config": cfg["_NAME"], "model": weights.spec, "settings": s.as_dict()}
    summary: dict[str, Any] = {}
    if args.eval_only:
        weights = Path(args.weights) if args.weights else out / "model_final.pt"
        model.to(device)
        summary["iterations"] = tv.load_weights(model, weights, device)
        summary["weights"] = str(weights)
    else:
        summary = tv.train(model, train_set, s, out=out, device=device, seed=args.seed, resume=args.resume,
                           checkpoint_every=args.checkpoint_every, amp=(args.amp or True) if s.amp else False, progress=not args.no_progress,
                           rank=rank, world=world, meta=meta)
    core = model
    tv.set_eval_sizes(core, s, train=False)
    result = evaluate(core, test_set, device, masks=s.mask_on, progress=not args.no_progress, rank=rank, world=world)
    if rank != 0:
        return 0
    wall = time.perf_counter() - t0
    (out / "eval.json").write_text(json.dumps({**result, "train": summary}, indent=2, default=str) + "\n")
    print(result["summary"], file=sys.stderr)
    print(json.dumps({"metrics": result["metrics"], "iterations": summary.get("iterations"),
                      "out": str(out)}))
    if not args.no_record:
        protocol = {"name": "+".join([cfg["_NAME"], *suffix]), "version": PROTOCOL_VERSION,
                    "config": cfg["_NAME"], "schedule": schedule_label(cfg["_NAME"], s.max_iter, suffix),
                    "backend": "torchvision", "arch": s.arch, "mask_on": s.mask_on,
                    "max_iter": s.max_iter, "steps": list(s.steps), "warmup_iters": s.warmup_iters,
                    "ims_per_batch": s.ims_per_batch, "base_lr": s.base_lr,
                    "min_size_train": list(s.min_size_train), "min_size_test": s.min_size_test,
                    "norm": s.norm, "freeze_at": s.freeze_at}
        dataset = {"name": ds_name, "split": split, "fingerprint": _fingerprint(fp_files) if fp_files else None}
        command = "python -m detection.train " + shlex.join(argv)
        extra = {"train": {k: v for k, v in summary.items() if k != "meta"}, "detections": result["detections"],
                 "undefined_metrics": result["undefined_metrics"],
                 "eval_seconds": round(result["seconds"], 3), "model_label": weights.label, "arch": weights.arch,
                 "world_size": world, "device": str(device), "amp": s.amp and device.type == "cuda",
                 "num_classes": s.num_classes, "data_root": str(args.coco_root or args.voc_root),
                 "train_images": len(train_set), "test_images": len(test_set)}
        record = write_record(path=Path(args.record) if args.record else None, results_dir=args.results_dir,
                              label=weights.label, task=task, model=weights.spec, weights_sha256=weights.weights_sha256,
                              protocol=protocol, dataset=dataset, seed=args.seed, metrics=result["metrics"],
                              wall_seconds=wall, command=command, extra=extra)
        print(f"record: {record}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 usage / data / config error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2) return instead of exiting
        return int(exc.code or 0)
    backend = args.backend or ("detectron2" if detectron2_available() else "torchvision")
    from .configs import ConfigError
    from .data import AnnotationError
    from .export import ExportError
    from .tv_backend import TrainError

    from wssl_zoo.cliargs import run_cli

    def go() -> int:
        if backend == "detectron2":
            if not detectron2_available():
                raise UsageError(D2_INSTALL)
            from . import d2_backend

            return d2_backend.run(args, argv)
        return run_torchvision(args, argv)

    # model loading (wssl_zoo) and other input errors are ValueErrors too
    return run_cli("detection.train", go, (UsageError, ConfigError, AnnotationError, ExportError, TrainError,
                                          FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
