"""``python -m wssl_zoo.pretrain.evaluate``: kNN and linear-probe accuracy of a pretrained model
directory against the same architecture at random init, written as a ``zoo/results`` record.

    python -m wssl_zoo.pretrain.evaluate --model runs/wmse_c10 --dataset cifar10 --data DATA \\
        --out zoo/results/pretrain_wmse_cifar10_r18_cpu.json

The record holds the metrics, the pretraining command and configuration (``train_config.json``),
the weights' sha256, hardware and wall times, so the numbers can be reproduced.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from .._version import code_version  # noqa: F401  (re-exported)


def main(argv: list[str] | None = None) -> int:
    from .. import load
    from ..data.transforms import derive_seed
    from ..evaluation import heldout_metrics
    from ..encoders import create_backbone
    from ..modelio import config_arch, read_config, sha256_file
    from .checkpoint import atomic_write_text

    p = argparse.ArgumentParser(prog="python -m wssl_zoo.pretrain.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a pretraining output directory")
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, fashion_mnist or imagefolder")
    p.add_argument("--data", help="dataset root")
    p.add_argument("--bank", type=int, default=50000, help="labelled training images (default: all of CIFAR-10)")
    p.add_argument("--queries", type=int, default=10000, help="held-out test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--command", default="", help="the pretraining command, stored in the record")
    p.add_argument("--out", required=True, help="JSON record to write")
    args = p.parse_args(argv)
    start = time.perf_counter()
    model_dir = Path(args.model)
    train_cfg = json.loads((model_dir / "train_config.json").read_text())
    summary = json.loads((model_dir / "summary.json").read_text())
    cfg = read_config(model_dir)
    img = cfg["pretrained_cfg"]["input_size"][-1]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = load(model_dir).to(device)
    torch.manual_seed(derive_seed(train_cfg["options"]["seed"], 2))
    random_init = create_backbone(config_arch(cfg), cfg["wssl_zoo"]["stem"]).eval().to(device)
    metrics = {name: heldout_metrics(m, args.dataset, args.data, img, args.bank, args.queries, args.seed, device, args.workers,
                              method=train_cfg["recipe"]["method"])
               for name, m in (("pretrained", trained), ("random_init", random_init))}
    record = dict(
        kind="pretrain_eval", model=str(model_dir), recipe=train_cfg["recipe"]["name"],
        method=train_cfg["recipe"]["method"], arch=config_arch(cfg), stem=cfg["wssl_zoo"]["stem"],
        weights_sha256=sha256_file(model_dir / "model.safetensors"), dataset=args.dataset,
        protocol=dict(name="knn_and_linear_on_features", version=1,
                      knn="cosine majority vote, k=5 and k=20, on --bank / --queries subsets (monitor_knn*_cos: "
                          "not the papers' 5-NN, which is Euclidean on the full sets, eval.knn)",
                      paper_comparable=False,
                      linear="full-batch Adam on standardised features, 300 epochs, cosine lr 1e-2, final epoch"),
        metrics=metrics, pretrain=dict(command=args.command, epochs=train_cfg["recipe"]["epochs"],
                                       wall_seconds=summary.get("wall_seconds"), recipe=train_cfg["recipe"],
                                       options=train_cfg["options"]),
        eval_command=" ".join(["python -m wssl_zoo.pretrain.evaluate", *(argv if argv is not None else sys.argv[1:])]),
        eval_wall_seconds=time.perf_counter() - start, seed=args.seed,
        hardware=train_cfg.get("hardware", platform.machine()), torch=torch.__version__, code_version=code_version(),
    )
    atomic_write_text(args.out, json.dumps(record, indent=2, sort_keys=True) + "\n")
    for name, m in metrics.items():
        print(f"{name:12s} kNN5 {m['monitor_knn5_cos']:.2f}  kNN20 {m['monitor_knn20_cos']:.2f}  linear {m['linear_top1']:.2f}  "
              f"eff. rank {m['effective_rank']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
