"""How the demo's numbers depend on the CPU code paths: the same computation under each setting.

    python benchmarks/cpu_numerics.py                  # the demo's random-init row per setting
    python benchmarks/cpu_numerics.py --steps 20       # + the loss of its first 20 pretraining steps

Each setting runs in a fresh process (the variables are read when torch loads): this machine as it
is; torch's own kernels (ATen: elementwise ops, reductions, batch norm) held to AVX2
(``ATEN_CPU_CAPABILITY=avx2``); oneDNN (convolutions) held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``);
MKL (matrix products: linear layers, the kNN similarities) held to AVX2
(``MKL_ENABLE_INSTRUCTIONS=AVX2``); all three; one thread. Wider vectors and more threads add the
same numbers in another order, so results differ in their last bits; a kNN vote between near-equal
similarities, and training, which feeds every step's rounding into the next, turn that into
visible differences.

Columns: the demo's random-init row (``wssl_zoo.demo.random_init`` evaluated by
``wssl_zoo.demo.evaluate``, exactly as ``python -m wssl_zoo.demo`` computes it; no training), and
with ``--steps N`` the mean training loss of step 1 and of step N of the demo's pretraining
recipe (``wssl_zoo.demo.demo_recipe``, its schedule shortened to 1 x N steps, so only comparable
between the rows), and the seconds the setting took. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = (
    ("this machine", {}),
    ("torch kernels at AVX2", {"ATEN_CPU_CAPABILITY": "avx2"}),
    ("oneDNN at AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("MKL at AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    ("all three at AVX2", {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                           "MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    ("1 thread", {"OMP_NUM_THREADS": "1"}),
)


def child(steps: int, workers: int) -> dict:
    """This process's numbers (torch loads here, after the parent set the environment)."""
    sys.path.insert(0, str(REPO))
    import torch

    from wssl_zoo.demo import DEFAULTS, demo_recipe, evaluate, random_init
    from wssl_zoo.pretrain.loop import RunOptions, pretrain
    from wssl_zoo.records import cpu_description
    from wssl_zoo.runlog import read_log

    start = time.perf_counter()
    args = argparse.Namespace(**DEFAULTS, data=None, seed=0, workers=workers)
    device = torch.device("cpu")
    result = dict(row=evaluate(args, random_init(args, device), device), cpu=cpu_description())
    if steps:
        args.epochs, args.steps_per_epoch = 1, steps
        with tempfile.TemporaryDirectory() as tmp:
            pretrain(demo_recipe(args), RunOptions(out=Path(tmp) / "run", workers=workers, eval_every=0,
                                                   steps_per_epoch=steps, train_subset=args.train_subset,
                                                   log_every=1, progress=False, device="cpu"),
                     on_estimate=lambda *_: None)
            losses = [r["loss"] for r in read_log(Path(tmp) / "run" / "log.jsonl", kind="step")]
        result["losses"] = [losses[0], losses[-1]]
    result["seconds"] = time.perf_counter() - start
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=0, help="also train the demo's recipe for N steps (default: 0)")
    parser.add_argument("--workers", type=int, default=1, help="data-loading workers (default: %(default)s)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.workers)))
        return 0
    rows = []
    for name, variables in SETTINGS:
        env = dict(os.environ, **variables)
        if "OMP_NUM_THREADS" not in variables:
            env.pop("OMP_NUM_THREADS", None)  # torch's default: one thread per core
        proc = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--workers",
                               str(args.workers)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append((name, variables, json.loads(proc.stdout.strip().splitlines()[-1])))
    print(f"CPU: {rows[0][2]['cpu']}\n")
    steps = f" | loss step 1 / step {args.steps}" if args.steps else ""
    print(f"| setting | torch kernels | random init: monitor kNN k=5 | kNN k=20 | linear | effective rank{steps} | s |")
    print("|---|---|---|---|---|---|" + ("---|" if args.steps else "") + "---|")
    for name, variables, r in rows:
        row = r["row"]
        loss = f" | {r['losses'][0]:.6f} / {r['losses'][1]:.6f}" if args.steps else ""
        isa = r["cpu"].rsplit(", ", 1)[-1]
        print(f"| {name} | {isa} | {row['monitor_knn5_cos']:.2f} | {row['monitor_knn20_cos']:.2f} | "
              f"{row['linear_top1']:.2f} | {row['effective_rank']:.3f}{loss} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
