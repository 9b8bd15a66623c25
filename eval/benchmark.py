"""``python -m eval.benchmark``: the shared benchmark, every model under the same protocols on the
same hardware, printed as one table. Resumable: a task whose record already exists is skipped.

    python -m eval.benchmark --model intl_r50,cwrgp_r50,random:resnet50 --tasks linear,knn,semi1,semi10,coco \\
        --data /data --results-dir zoo/results

Where the data is found under ``--data``: ``imagenet/`` (linear, knn, semi), with SimCLR's
``imagenet/1percent.txt`` and ``imagenet/10percent.txt`` for semi1/semi10 (or ``--split-files``),
and ``coco/`` in COCO layout for ``coco`` (``detection.train``; detectron2 or the torchvision
backend). ``--dataset cifar10`` and friends read ``--data/<dataset>/`` instead of ImageNet
and generate the semi-supervised subsets with a fixed seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wssl_zoo import cliargs
from wssl_zoo.weights import resolve, spec_label

from . import knn, linear, semi
from ._cli import run_main
from .protocols import paper_linear_protocol
from .records import RESULTS_DIR, aggregate, default_record_path, read_records

TASKS = ("linear", "knn", "semi1", "semi10", "coco")
# --protocol TASK=NAME: the tasks that take one, and their defaults (linear: each model's paper protocol)
DEFAULT_PROTOCOLS = {"linear": None, "semi": "semi_intl", "coco": "coco_R_50_C4_2x"}


class _TaskProtocol(argparse.Action):
    """``--linear-protocol X`` (an earlier spelling) is ``--protocol linear=X``."""

    def __init__(self, *args, task: str, **kwargs):
        self.task = task
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, self.dest).append(f"{self.task}={values}")


def task_protocols(items: list[str]) -> dict[str, str | None]:
    """``--protocol TASK=NAME`` items -> {task: protocol} over :data:`DEFAULT_PROTOCOLS`; ValueError naming a
    bad item."""
    chosen = dict(DEFAULT_PROTOCOLS)
    for item in items:
        task, sep, name = item.partition("=")
        if not sep or task not in DEFAULT_PROTOCOLS or not name:
            raise ValueError(f"--protocol {item!r}: expected TASK=NAME with TASK one of {', '.join(DEFAULT_PROTOCOLS)}")
        chosen[task] = name
    return chosen


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", dest="models", action="append", metavar="SPEC[,SPEC...]",
                   help="the models (required): repeat --model or give several comma-separated; each a registry name or "
                   "alias, model directory, hf-hub:ORG/NAME[@REV] or random:ARCH[:STEM[:SIZE]]")
    cliargs.add_alias(p, "--models", "models", action="append")
    p.add_argument("--tasks", default="linear,knn", help=f"comma-separated, from {','.join(TASKS)} (default: %(default)s)")
    p.add_argument("--data", dest="data_root", metavar="DIR", help="the folder that holds imagenet/ (or <dataset>/) "
                   "and coco/ (required)")
    cliargs.add_alias(p, "--data-root", "data_root")
    cliargs.add_dataset(p, help_extra="; the data is read from DIR/imagenet for an image folder, else DIR/<dataset>")
    cliargs.add_download(p)
    p.add_argument("--protocol", action="append", default=[], metavar="TASK=NAME",
                   help="the protocol of one task, repeatable: linear=NAME (default: each model's paper protocol, "
                   "printed, as eval.linear picks it; fast, wssl-zoo's quick probe, where none applies), semi=NAME "
                   f"(semi1 and semi10; default: {DEFAULT_PROTOCOLS['semi']}), coco=NAME (a detection/configs name; "
                   f"default: {DEFAULT_PROTOCOLS['coco']}, Mask R-CNN R50-C4 2x: the config of the INTL / CW-RGP COCO "
                   "numbers, whose protocol is detectron2 in float32: --coco-backend detectron2)")
    # the earlier spellings of --protocol linear=... / semi=... / coco=...
    for task, old in (("linear", "--linear-protocol"), ("semi", "--semi-protocol"), ("coco", "--coco-config")):
        cliargs.add_alias(p, old, "protocol", action=_TaskProtocol, task=task)
    p.add_argument("--coco-backend", choices=["torchvision", "detectron2"], default=None,
                   help="detection backend (default: detection.train's, detectron2 when importable)")
    p.add_argument("--coco-ims-per-batch", type=int, metavar="N",
                   help="override the detection images per batch (detection.train --ims-per-batch; recorded)")
    p.add_argument("--coco-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one detection config key (detection.train --set, recorded), e.g. --coco-set "
                        "INPUT.MIN_SIZE_TEST=128; repeatable (default: none)")
    p.add_argument("--runs-dir", default=str(Path("runs") / "benchmark"), metavar="DIR",
                   help="where the detection runs' folders go (default: %(default)s)")
    p.add_argument("--split-files", metavar="DIR", help="folder with 1percent.txt and 10percent.txt")
    p.add_argument("--epochs", type=int, help="override every task's epochs (recorded as an override)")
    p.add_argument("--max-iter", type=int, help="override the detection iterations (recorded)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per task: 0..N-1 (default: %(default)s)")
    p.add_argument("--results-dir", default=None, help="where records go (default: zoo/results)")
    cliargs.add_device(p)
    cliargs.add_amp(p, default=None, shown="none = float32, the authors' precision",
                    note="; passed to every task (detection.train --amp too), recorded as a protocol override")
    cliargs.add_workers(p)
    cliargs.add_progress(p)
    return p


def run(args, command: str) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    if not args.models:
        raise ValueError("--model is required: the models to benchmark")
    if not args.data_root:
        raise ValueError("--data is required: the folder that holds imagenet/ (or <dataset>/) and coco/")
    protocols = task_protocols(args.protocol)
    models = [m.strip() for item in args.models for m in item.split(",") if m.strip()]
    results = Path(args.results_dir or RESULTS_DIR)
    root = Path(args.data_root)
    data = root / ("imagenet" if args.dataset == "imagefolder" else args.dataset)
    common = ["--dataset", args.dataset, "--data", str(data), "--device", args.device, "--workers", str(args.workers),
              "--seeds", "1"] + (["--no-progress"] if args.no_progress else [])
    if args.amp:
        common += ["--amp", args.amp]
    if args.download:  # each tool downloads into DIR/<dataset> when it is not there
        common += ["--download"]
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    done = skipped = 0
    for model in models:
        label = spec_label(model)
        protocol_of = {"linear": protocols["linear"], "knn": "knn5", "semi1": protocols["semi"],
                       "semi10": protocols["semi"], "coco": protocols["coco"]}
        if "linear" in tasks and not protocols["linear"]:
            protocol_of["linear"], why = paper_linear_protocol(resolve(model), args.dataset)
            print(f"[{label}] linear protocol {protocol_of['linear']}: {why}", flush=True)
        for task in tasks:
            for seed in range(args.seeds):
                path = default_record_path(f"bench-{task}", label, protocol_of[task], args.dataset, seed, results)
                if path.is_file():
                    skipped += 1
                    continue
                if task == "linear":
                    entry = linear.main
                    argv = ["--model", model, "--protocol", protocol_of["linear"], *epochs, *common]
                elif task == "knn":
                    entry = knn.main
                    argv = ["--model", model, "--protocol", "knn5", *common]
                elif task in ("semi1", "semi10"):
                    entry = semi.main
                    split = "1pct" if task == "semi1" else "10pct"
                    if args.dataset == "imagefolder":
                        folder = Path(args.split_files) if args.split_files else data
                        split_args = ["--split-file", str(folder / f"{split[:-3]}percent.txt")]
                    else:
                        split_args = ["--make-split-file", str(results / "splits" / f"{args.dataset}_{split}.txt")]
                    argv = ["--model", model, "--labelled", split, "--protocol", protocols["semi"], *split_args,
                            *epochs, *common]
                else:
                    try:
                        from detection.train import main as entry  # the detection package: only for the coco task
                    except ImportError as exc:
                        raise RuntimeError(f"the coco task needs the detection package ({exc})") from None
                    argv = ["--model", model, "--protocol", protocols["coco"], "--data", str(root / "coco"),
                            "--dataset", "coco",
                            "--out", str(Path(args.runs_dir) / f"{label}_{protocols['coco']}_seed{seed}"),
                            "--seed", str(seed), "--device", args.device, "--workers", str(args.workers),
                            *(["--max-iter", str(args.max_iter)] if args.max_iter else []),
                            *(["--ims-per-batch", str(args.coco_ims_per_batch)] if args.coco_ims_per_batch else []),
                            *(["--backend", args.coco_backend] if args.coco_backend else []),
                            *[a for item in args.coco_set for a in ("--set", item)],
                            *(["--amp", args.amp] if args.amp else []),
                            *(["--no-progress"] if args.no_progress else [])]
                if task != "coco":
                    argv = [*argv, "--seed", str(seed), "--out", str(path)]
                else:
                    argv = [*argv, "--record", str(path)]
                print(f"[{label}] {task} seed {seed}: python -m {entry.__module__} {' '.join(argv)}", flush=True)
                status = entry(argv)
                if status:
                    raise RuntimeError(f"{task} on {model} failed (exit {status}); the finished records are kept, "
                                       "rerun to resume")
                if not path.is_file():
                    raise RuntimeError(f"{task} on {model} ended without writing {path}")
                done += 1
    print(f"\n{done} task(s) run, {skipped} already recorded (skipped).\n")
    rows = [r for r in read_records(results) if r["file"].startswith("bench-")]
    print(benchmark_table(rows), end="")
    return 0


def benchmark_table(records: list[dict]) -> str:
    """One Markdown table: a row per model, a column per task (top-1 or AP), mean over seeds."""
    cells: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        task = r["task"]
        cells.setdefault(r.get("model_label", r["model"]), {}).setdefault(task, []).append(r)
    tasks = sorted({t for row in cells.values() for t in row})
    lines = ["| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for model in sorted(cells):
        row = []
        for task in tasks:
            recs = cells[model].get(task, [])
            if not recs:
                row.append("—")
                continue
            stats = aggregate(recs)
            key = "top1" if "top1" in stats else ("bbox_AP" if "bbox_AP" in stats else sorted(stats)[0])
            s = stats[key]
            row.append(f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["n"] > 1 else ""))
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_main("eval.benchmark", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

