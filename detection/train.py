"""Detection transfer: train and evaluate Faster / Mask R-CNN on a zoo backbone (the CLI over both backends).

    python -m detection.train --model M --protocol NAME --data ROOT --out DIR [--max-iter N] [KEY VALUE ...]
    python -m detection.train --model M --protocol voc_R_50_C4_24k --data ROOT --dataset voc --out DIR
    python -m detection.train ... --eval-only                  # evaluate DIR/model_final.pt(h)
    python -m detection.train --backend detectron2 --num-gpus 8 ...   # detectron2's trainer and launcher
    torchrun --nproc-per-node 8 -m detection.train --backend torchvision ...   # the torchvision backend, DDP

``--config`` / ``--coco-root`` / ``--voc-root`` are the older spellings of ``--protocol`` / ``--data``.
Config overrides: ``--set KEY=VALUE`` (repeatable) and, as detectron2's tools take them, trailing
``KEY VALUE`` pairs. The result is a record (task ``coco`` or ``voc``; in ``--results-dir``, default
./results) with COCOeval's AP, AP50, AP75, APs, APm, APl for boxes (and masks), the exact command,
and the weights' sha256. Errors are one line naming the offending file, key or value, with exit
status 2; a run stopped by SIGTERM / SIGUSR1 / Ctrl-C writes its checkpoint and exits 75 with the
command that resumes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from wssl_zoo import cliargs

from . import tv_backend
from .configs import PROTOCOLS
from .job import (  # noqa: F401  (re-exported: the shared part of both backends)
    DATASETS,
    PROTOCOL_VERSION,
    UsageError,
    _fingerprint,
    claim_out,
    prepare_config,
    schedule_label,
    warn_cpu_size,
    write_record,
)

D2_INSTALL = ("detectron2 is not installed. Install it from source for your torch/CUDA "
              "(python -m pip install 'git+https://github.com/facebookresearch/detectron2.git'; needs a C++ "
              "compiler and the CUDA toolkit; see https://detectron2.readthedocs.io/en/latest/tutorials/install.html), "
              "or run with --backend torchvision")


def detectron2_available() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m detection.train",
        description="Train and evaluate Faster/Mask R-CNN (C4 or FPN) on a wssl-zoo backbone with a detectron2 "
                    "protocol config, and write a zoo/results record.",
        epilog="Trailing KEY VALUE pairs override config keys as in detectron2's tools (after --set's), e.g. "
               "SOLVER.BASE_LR 0.01 INPUT.MIN_SIZE_TEST 640. Stopped by SIGTERM, SIGUSR1 or Ctrl-C, a run writes "
               "its checkpoint and exits with status 75, printing the command that resumes it. Earlier spellings "
               "still accepted: --config NAME (= --protocol NAME), --coco-root ROOT (= --data ROOT --dataset coco), "
               "--voc-root ROOT (= --data ROOT --dataset voc), --num-workers N (= --workers N).")
    p.add_argument("--model", required=True,
                   help="backbone (required): model directory, registry name/alias, hf-hub:ORG/NAME[@REV], or "
                        "random:ARCH[:STEM[:SIZE]] (random init, plumbing checks only)")
    p.add_argument("--protocol", dest="config", metavar="NAME|YAML",
                   help=f"protocol (required): a name in detection/configs ({', '.join(PROTOCOLS)}) or a detectron2 "
                        "YAML path")
    cliargs.add_alias(p, "--config", "config")  # the earlier spelling
    cliargs.add_alias(p, "--num-workers", "workers", type=int)
    p.add_argument("--data", default=None, metavar="ROOT",
                   help="the dataset's folder: COCO layout ROOT/annotations/instances_{train,val}2017.json and "
                        "ROOT/{train,val}2017/, or VOC ROOT/VOC2007 (+ROOT/VOC2012) or ROOT/VOCdevkit/VOC20xx "
                        "(trains on 07(+12) trainval, tests on 07 test) (required)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="how to read --data (default: coco)")
    # the earlier spellings of --data ROOT --dataset coco|voc (detection.job.data_root refuses two roots)
    cliargs.add_alias(p, "--coco-root", "coco_root")
    cliargs.add_alias(p, "--voc-root", "voc_root")
    p.add_argument("--out", required=True,
                   help="output folder (required): checkpoints/last.pt, metrics.jsonl, model_final.pt, eval.json")
    p.add_argument("--backend", choices=["torchvision", "detectron2"], default=None,
                   help="training backend (default: detectron2 when it is importable, else torchvision); "
                        "docs/detection.md lists what the torchvision backend computes differently")
    p.add_argument("--max-iter", type=int, default=None,
                   help="override SOLVER.MAX_ITER; STEPS and WARMUP_ITERS are scaled by the same factor unless "
                        "given with --set (default: the config's)")
    p.add_argument("--ims-per-batch", type=int, default=None,
                   help="override SOLVER.IMS_PER_BATCH, total over all processes; the lr is not rescaled "
                        "(default: the config's)")
    cliargs.add_set(p, dest="set_overrides", example="SOLVER.BASE_LR=0.01 --set 'INPUT.MIN_SIZE_TRAIN=(96,128)'")
    p.add_argument("--eval-only", action="store_true",
                   help="skip training and evaluate --weights (default: off)")
    p.add_argument("--weights", default=None,
                   help="weights for --eval-only (default: OUT/model_final.pt, detectron2: OUT/model_final.pth)")
    cliargs.add_resume(p, "the training (iteration, lr schedule, optimiser state, data stream)")
    cliargs.add_overwrite(p)
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="save the checkpoint every N iterations, 0 = only at the end and on a stop signal "
                        "(default: SOLVER.CHECKPOINT_PERIOD)")
    cliargs.add_seed(p, help_seed="random seed: data order, augmentation, head init")
    cliargs.add_device(p)
    cliargs.add_amp(p, default=None, shown="the config's SOLVER.AMP.ENABLED: float32 in every shipped protocol, as "
                    "the papers trained; fp16 when enabled, as detectron2. The record says which",
                    note="; bf16 is not detectron2's")
    cliargs.add_workers(p, default=None,
                        what=f"the config's DATALOADER.NUM_WORKERS, at most {cliargs.default_workers()}, the CPUs "
                             "this process may use")
    launch = p.add_argument_group("detectron2's launcher (--backend detectron2; the torchvision backend runs under "
                                  "torchrun)")
    launch.add_argument("--num-gpus", type=int, default=None,
                        help="processes (GPUs) per machine (default: every visible GPU, or the one --device names)")
    launch.add_argument("--num-machines", type=int, default=None, help="machines in the job (default: 1)")
    launch.add_argument("--machine-rank", type=int, default=None, help="this machine's rank, 0..N-1 (default: 0)")
    launch.add_argument("--dist-url", default=None, metavar="URL",
                        help="rendezvous of the machines, tcp://HOST:PORT of machine 0 (default: a free local port, "
                             "one machine only)")
    p.add_argument("--record", default=None,
                   help="record file to write (default: RESULTS_DIR/detection_<model-label>_<config>_<dataset>_"
                        "seed<seed>_<id>.json, <id> a short hash of the record's identity)")
    p.add_argument("--results-dir", default=None, metavar="DIR",
                   help="folder of the record (default: $WSSL_ZOO_RESULTS or ./results); only "
                        "--results-dir zoo/results adds it to the zoo's published results")
    p.add_argument("--no-record", action="store_true", help="do not write a record (default: write one)")
    cliargs.add_progress(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides as detectron2's tools take them, applied after --set's")
    return p


def overrides(args) -> list[str]:
    """``--set KEY=VALUE`` items, then the trailing ``KEY VALUE`` pairs, as ``KEY=VALUE`` strings."""
    opts = list(args.opts)
    if len(opts) % 2:
        raise UsageError(f"the trailing config overrides must be KEY VALUE pairs; got {len(opts)} word(s): "
                         f"{' '.join(opts)} (an option after the first KEY is read as part of the overrides)")
    for key in opts[0::2]:
        if key.startswith("-"):
            raise UsageError(f"{key}: options go before the trailing KEY VALUE overrides")
    return list(args.set_overrides) + [f"{k}={v}" for k, v in zip(opts[0::2], opts[1::2])]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 usage / data / config error, 75 stopped by a
    signal after writing its checkpoint)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2) return instead of exiting
        return int(exc.code or 0)
    backend = args.backend or ("detectron2" if detectron2_available() else "torchvision")

    def go() -> int:
        if not args.config:
            raise UsageError("--protocol is required: a name in detection/configs or a detectron2 YAML path")
        args.overrides = overrides(args)
        if backend == "detectron2":
            if not detectron2_available():
                raise UsageError(D2_INSTALL)
            from . import d2_backend  # imports detectron2, an optional package

            return d2_backend.run(args, argv)
        return tv_backend.run(args, argv)

    # model loading (wssl_zoo), config, annotation and export errors are ValueErrors; TrainError a RuntimeError
    return cliargs.run_cli("detection.train", go)


if __name__ == "__main__":
    sys.exit(main())
