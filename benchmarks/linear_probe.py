"""Wall time and accuracy of the ``fast`` linear protocol against the papers' augmented one.

    python benchmarks/linear_probe.py --model runs/cifar10_intl_cifar10_imagenet_e2 \\
        --dataset cifar10 --data .data/cifar10 --aug-epochs 2

``fast`` is timed from a cold feature cache (extraction included). The augmented protocol
(``intl``: SGD, random-resized crop + flip, the frozen backbone run every epoch) is run for
``--aug-epochs`` epochs; its 100-epoch wall time is extrapolated from the measured seconds per
epoch and labelled as such. Both write their records to ``zoo/results`` through ``eval.linear``.
The table goes to stdout (Markdown).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model spec (see python -m eval.linear --help)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data", required=True)
    p.add_argument("--aug-epochs", type=int, default=2, help="epochs of the augmented protocol actually run")
    p.add_argument("--full-epochs", type=int, default=100, help="the augmented protocol's epochs (extrapolation)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--results-dir", default=str(REPO / "zoo" / "results"))
    args = p.parse_args()

    from eval.linear import main as linear
    from eval.records import default_record_path
    from eval.features import resolve_model, pick_device

    info = resolve_model(args.model)
    common = ["--model", args.model, "--dataset", args.dataset, "--data", args.data, "--workers", str(args.workers),
              "--device", args.device, "--no-progress"]
    rows = []
    with tempfile.TemporaryDirectory() as cold_cache:
        out = default_record_path("linear", info.label, "fast", args.dataset, 0, args.results_dir)
        start = time.perf_counter()
        if linear([*common, "--protocol", "fast", "--cache-dir", cold_cache, "--out", str(out)]):
            return 1
        t_fast = time.perf_counter() - start
        fast = json.loads(out.read_text())
    rows.append(("fast (cached features, cold cache)", t_fast, t_fast, fast["metrics"]["top1"], out.name))
    name = f"intl+epochs={args.aug_epochs}"
    out = default_record_path("linear", info.label, name, args.dataset, 0, args.results_dir)
    start = time.perf_counter()
    if linear([*common, "--protocol", "intl", "--epochs", str(args.aug_epochs), "--out", str(out)]):
        return 1
    t_aug = time.perf_counter() - start
    aug = json.loads(out.read_text())
    full = t_aug / args.aug_epochs * args.full_epochs
    rows.append((f"intl augmented, {args.aug_epochs} epochs (measured)", t_aug, full, aug["metrics"]["top1"], out.name))
    device = pick_device(args.device)
    print(f"\nlinear probe, {info.label} on {args.dataset}, {device.type}"
          f" ({aug['hardware']}), python benchmarks/linear_probe.py {' '.join(sys.argv[1:])}\n")
    print("| protocol | wall time measured (s) | wall time for the full protocol (s) | top-1 | record |")
    print("|---|---|---|---|---|")
    for label, measured, full_time, top1, record in rows:
        note = "" if label.startswith("fast") else f" (extrapolated to {args.full_epochs} epochs)"
        print(f"| {label} | {measured:.0f} | {full_time:.0f}{note} | {top1:.2f} | `zoo/results/{record}` |")
    print(f"\nspeed-up of fast over the full {args.full_epochs}-epoch augmented protocol: {full / t_fast:.1f}x "
          f"(the augmented time is extrapolated from {args.aug_epochs} measured epochs); "
          f"top-1 difference at {args.aug_epochs} augmented epochs: {fast['metrics']['top1'] - aug['metrics']['top1']:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
