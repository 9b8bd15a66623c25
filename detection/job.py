"""What both detection backends share (:mod:`detection.tv_backend` and :mod:`detection.d2_backend`):
the job's merged config, its data, its output folder and its record."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

from wssl_zoo import catalogue
from wssl_zoo.cliargs import default_workers
from wssl_zoo.outdir import claim
from wssl_zoo.paths import results_dir as _results_dir
from wssl_zoo.records import make_record, record_file
from wssl_zoo.records import write_record as _write

from .configs import load_config

PROTOCOL_VERSION = 1


def schedule_label(config: str, max_iter: int, suffix: list[str]) -> str:
    """The schedule a detection record ran: the config's tag (``1x`` = 90k, ``2x`` = 180k,
    ``24k``), the iterations, and whether ``--max-iter`` shortened it.

    >>> schedule_label("coco_R_50_C4_2x", 180000, [])
    '2x, 180000 iterations'
    """
    tags = [t for t in config.split("_") if re.fullmatch(r"\d+(x|k)", t)]
    label = f"{tags[-1] if tags else config}, {max_iter} iterations"
    if any(s.startswith("max_iter=") for s in suffix):
        label += " (shortened with --max-iter: not the paper protocol)"
    return label


class UsageError(ValueError):
    pass


DATASETS = catalogue.names("detection")  # coco, voc: the catalogue's detection datasets


def resume_argv(argv: list[str], opts: list[str]) -> list[str]:
    """``argv`` with ``--resume``, placed before the trailing ``KEY VALUE`` overrides ``opts`` (which
    end the command line) so that the command still parses."""
    head = list(argv[: len(argv) - len(opts)])
    return list(argv) if "--resume" in head else head + ["--resume"] + list(opts)


def data_root(args) -> tuple[str, str]:
    """``(dataset, root)`` of the command line: ``--data ROOT --dataset coco|voc`` or the older
    spellings ``--coco-root ROOT`` / ``--voc-root ROOT``."""
    given = [(name, value) for name, value in (("coco", args.coco_root), ("voc", args.voc_root)) if value]
    if args.data:
        if given:
            raise UsageError(f"--data and --{given[0][0]}-root name the data twice; give one of them")
        return args.dataset or "coco", str(args.data)
    if not given:
        raise UsageError("give the data with --data ROOT [--dataset coco|voc] (or --coco-root ROOT / --voc-root ROOT)")
    if len(given) > 1:
        raise UsageError("--coco-root and --voc-root name the data twice; give one of them")
    if args.dataset and args.dataset != given[0][0]:
        raise UsageError(f"--dataset {args.dataset} contradicts --{given[0][0]}-root")
    return given[0][0], str(given[0][1])


def _scaled(value: int, factor: float) -> int:
    return max(1, int(round(value * factor)))


def prepare_config(args) -> tuple[dict, list[str]]:
    """The merged config with the command-line overrides; returns (cfg, protocol-name suffixes)."""
    cfg = load_config(args.config, args.overrides)
    suffix = [f"set:{o}" for o in args.overrides]
    set_keys = {o.split("=", 1)[0].strip() for o in args.overrides}
    solver = cfg["SOLVER"]
    if args.max_iter is not None:
        if args.max_iter <= 0:
            raise UsageError(f"--max-iter {args.max_iter}: must be positive")
        factor = args.max_iter / solver["MAX_ITER"]
        if "SOLVER.STEPS" not in set_keys:
            solver["STEPS"] = tuple(s for s in (_scaled(x, factor) for x in solver["STEPS"]) if s < args.max_iter)
        if "SOLVER.WARMUP_ITERS" not in set_keys:
            solver["WARMUP_ITERS"] = min(args.max_iter, int(round(solver["WARMUP_ITERS"] * factor)))
        solver["MAX_ITER"] = args.max_iter
        suffix.append(f"max_iter={args.max_iter}")
    if args.ims_per_batch is not None:
        if args.ims_per_batch <= 0:
            raise UsageError(f"--ims-per-batch {args.ims_per_batch}: must be positive")
        solver["IMS_PER_BATCH"] = args.ims_per_batch
        suffix.append(f"ims_per_batch={args.ims_per_batch}")
    if args.workers is not None:
        cfg["DATALOADER"]["NUM_WORKERS"] = args.workers
    else:  # the config's number of workers, but never more than this machine has CPUs

        cfg["DATALOADER"]["NUM_WORKERS"] = min(int(cfg["DATALOADER"]["NUM_WORKERS"]), default_workers())
    if args.amp is not None:
        solver["AMP"]["ENABLED"] = args.amp != "none"
    return cfg, suffix


def claim_out(args, out: Path) -> None:
    """Make ``--out`` this job's folder (see :mod:`wssl_zoo.outdir`): refused when it holds
    anything but this job's earlier output, unless ``--resume`` or ``--overwrite``."""
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    job = dict(model=args.model, config=args.config, overrides=list(args.overrides), max_iter=args.max_iter,
               ims_per_batch=args.ims_per_batch, seed=args.seed, data=data_root(args)[1])
    claim(out, "detection.train", job, overwrite=args.overwrite, resume=args.resume or args.eval_only, hint="resume")


def warn_cpu_size(ims_per_batch: int, max_iter: int, min_size: int) -> None:
    """One warning when a GPU-sized config is about to run on the CPU, with the flags that shrink it."""
    if ims_per_batch > 4 or max_iter > 2000 or min_size > 512:  # line 0: one line, no source line below
        warnings.warn_explicit(
            f"detection on the CPU with a GPU-sized config (SOLVER.IMS_PER_BATCH={ims_per_batch}, "
            f"SOLVER.MAX_ITER={max_iter}, INPUT.MIN_SIZE_TRAIN up to {min_size}): one iteration can take minutes "
            f"and tens of GB; make it small with --ims-per-batch 2 --max-iter 100 "
            f"--set 'INPUT.MIN_SIZE_TRAIN=(256,)' --set INPUT.MAX_SIZE_TRAIN=480 --set INPUT.MIN_SIZE_TEST=256 "
            f"--set INPUT.MAX_SIZE_TEST=480 --set TEST.PRECISE_BN.NUM_ITER=10 (see docs/detection.md)", UserWarning,
            "detection.train", 0)


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def write_record(*, path: Path | None, results_dir: str | None, label: str, task: str, model: str,
                 weights_sha256: str, protocol: dict, dataset: dict, seed: int, metrics: dict, wall_seconds: float,
                 command: str, extra: dict) -> Path:
    """Write the detection record with the one record writer (:mod:`wssl_zoo.records`) to ``path``
    (``--record``), else under ``results_dir`` (``--results-dir``, see :func:`wssl_zoo.paths.results_dir`)
    with the identity-hashed default name; NaN / None metrics become ``undefined_metrics``."""
    rec = make_record(task=task, model=model, weights_sha256=weights_sha256, protocol=protocol, dataset=dataset,
                      seed=seed, metrics=metrics, wall_seconds=wall_seconds, command=command, extra=extra)
    return _write(rec, path or record_file(rec, label, _results_dir(results_dir)))


