"""``python -m wssl_zoo.pretrain.evaluate``: kNN and linear-probe accuracy of a pretrained model
directory against the same architecture at random init, written as a ``zoo/results`` record.

    python -m wssl_zoo.pretrain.evaluate --model runs/wmse_c10 --dataset cifar10 --data DATA \\
        --out zoo/results/pretrain_wmse_cifar10_r18_cpu.json

The record is a :mod:`wssl_zoo.records` record of task ``pretrain_eval``
(:data:`wssl_zoo.records.PRETRAIN_EVAL_TASK`): the pretrained model's numbers in ``metrics``,
the random-init baseline's in ``random_init_metrics``, the bank / query sizes in ``protocol``,
the pretraining command and configuration (``train_config.json``) in ``pretrain``, the weights'
sha256, hardware and wall time. It is the quick held-out check of
:func:`wssl_zoo.evaluation.heldout_metrics` (cosine kNN, full-batch linear probe), not a paper
protocol: model cards and the leaderboard never list it as a paper-comparable result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .. import cliargs
from ..catalogue import eval_dataset
from ..cliargs import run_cli
from ..data.datasets import build_dataset
from ..data.transforms import derive_seed
from ..encoders import create_backbone
from ..evaluation import heldout_metrics
from ..records import PRETRAIN_EVAL_TASK, dataset_fingerprint, make_record, write_record
from ..weights import resolve

PROTOCOL = dict(name="knn_and_linear_on_features", version=1,
                knn="cosine majority vote, k=5 and k=20, on --bank / --queries subsets (monitor_knn*_cos: "
                    "not the papers' 5-NN, which is Euclidean on the full sets, eval.knn)",
                paper_comparable=False,
                linear="full-batch Adam on standardised features, 300 epochs, cosine lr 1e-2, final epoch")
SIZES = ("bank", "queries")  # how many images the check used: part of its protocol (and identity), not a metric


def pretrain_eval_record(*, model: str, model_label: str, arch: str, stem: str, weights_sha256: str, dataset: dict, seed: int,
                         pretrained: dict, random_init: dict, train_cfg: dict, summary: dict, command: str,
                         pretrain_command: str, wall_seconds: float, protocol: dict | None = None) -> dict:
    """The ``pretrain_eval`` record (:func:`wssl_zoo.records.make_record`) of one check: the
    ``pretrained`` and ``random_init`` results of :func:`wssl_zoo.evaluation.heldout_metrics`."""
    recipe, options = train_cfg["recipe"], train_cfg.get("options", {})
    sizes = {k: pretrained[k] for k in SIZES if k in pretrained}
    extra = dict(model_label=model_label, recipe=recipe["name"], method=recipe["method"], arch=arch, stem=stem,
                 random_init_metrics={k: v for k, v in random_init.items() if k not in SIZES},
                 pretrain=dict(command=pretrain_command, epochs=recipe["epochs"], wall_seconds=summary.get("wall_seconds"),
                               hardware=train_cfg.get("hardware"), recipe=recipe, options=options))
    return make_record(task=PRETRAIN_EVAL_TASK, model=model, weights_sha256=weights_sha256,
                       protocol=dict(protocol or PROTOCOL, **sizes), dataset=dict(dataset), seed=seed,
                       metrics={k: v for k, v in pretrained.items() if k not in SIZES}, wall_seconds=wall_seconds,
                       command=command, extra=extra)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wssl_zoo.pretrain.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a pretraining output directory")
    cliargs.add_dataset(p, default=None, required=True)
    p.add_argument("--data", help="dataset root")
    p.add_argument("--bank", type=int, default=50000, help="labelled training images (default: all of CIFAR-10)")
    p.add_argument("--queries", type=int, default=10000, help="held-out test images (default: %(default)s)")
    cliargs.add_seed(p, help_seed="seed of the subsets and the linear probe")
    cliargs.add_workers(p)
    cliargs.add_device(p)
    p.add_argument("--command", default="", help="the pretraining command, stored in the record")
    p.add_argument("--out", required=True, help="JSON record to write (an existing record of another measurement "
                   "is refused)")
    return p


def run(args, argv: list[str] | None) -> int:
    start = time.perf_counter()
    model_dir = Path(args.model)
    for name in ("train_config.json", "summary.json"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"--model {args.model}: no {name} (a pretraining output directory has one)")
    train_cfg = json.loads((model_dir / "train_config.json").read_text())
    summary = json.loads((model_dir / "summary.json").read_text())
    weights = resolve(model_dir)
    device = cliargs.device(args.device)
    trained = weights.build().to(device)
    torch.manual_seed(derive_seed(train_cfg["options"]["seed"], 2))
    random_init = create_backbone(weights.arch, weights.stem).eval().to(device)
    method = train_cfg["recipe"]["method"]
    metrics = {name: heldout_metrics(m, args.dataset, args.data, weights.img_size, args.bank, args.queries, args.seed,
                                     device, args.workers, method=method)
               for name, m in (("pretrained", trained), ("random_init", random_init))}
    train_set = build_dataset(eval_dataset(args.dataset), args.data, "train")
    record = pretrain_eval_record(
        model=str(model_dir), model_label=weights.label, arch=weights.arch, stem=weights.stem,
        weights_sha256=weights.weights_sha256,
        dataset=dict(name=args.dataset, root=str(args.data), fingerprint=dataset_fingerprint(train_set)),
        seed=args.seed, pretrained=metrics["pretrained"], random_init=metrics["random_init"],
        train_cfg=train_cfg, summary=summary, command=cliargs.command_line("python -m wssl_zoo.pretrain.evaluate", argv),
        pretrain_command=args.command, wall_seconds=time.perf_counter() - start)
    path = write_record(record, args.out)
    for name, m in metrics.items():
        print(f"{name:12s} kNN5 {m['monitor_knn5_cos']:.2f}  kNN20 {m['monitor_knn20_cos']:.2f}  linear {m['linear_top1']:.2f}  "
              f"eff. rank {m['effective_rank']:.1f}")
    print(f"record: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("wssl_zoo.pretrain.evaluate", lambda: run(args, argv))


if __name__ == "__main__":
    sys.exit(main())
