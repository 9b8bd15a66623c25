"""Wall time and accuracy of the ``fast`` linear protocol against the papers' augmented one.

    python benchmarks/linear_probe.py --model runs/cifar10_intl_cifar10_imagenet_e2 \\
        --dataset cifar10 --data .data/cifar10 --aug-epochs 2
    python benchmarks/linear_probe.py --model runs/cifar10_intl_cifar10_imagenet_e2 \\
        --dataset cifar10 --data .data/cifar10 --aug-epochs 100 --train-subset 10000   # all 100 epochs, measured

``fast`` is timed from a cold feature cache (extraction of the whole train and test splits
included). The augmented protocol (``--aug-protocol``, default ``intl``: SGD, random-resized crop
+ flip, the frozen backbone run on every batch of every epoch) is run for ``--aug-epochs`` epochs;
when that is fewer than the protocol's ``--full-epochs``, its full wall time is extrapolated from
the measured seconds per epoch and labelled as extrapolated. ``--train-subset N`` trains both
protocols on the same class-balanced N training images (seeded), so that all 100 augmented epochs
can be run on a CPU; the test split is always complete. Both write their records to ``zoo/results``
through ``eval.linear``, with the exact command. The table goes to stdout (Markdown), with the
speed-up ratio and the top-1 difference.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _shown(path: Path) -> str:
    """A record path as the table shows it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model spec (see python -m eval.linear --help)")
    p.add_argument("--dataset", default="cifar10", help="dataset format (default: %(default)s)")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--aug-protocol", default="intl", help="the augmented protocol (default: %(default)s)")
    p.add_argument("--aug-epochs", type=int, default=2, help="epochs of the augmented protocol actually run "
                   "(default: %(default)s)")
    p.add_argument("--full-epochs", type=int, default=100, help="the augmented protocol's epochs, for the "
                   "extrapolation (default: %(default)s)")
    p.add_argument("--train-subset", type=int, help="train both protocols on this many class-balanced training "
                   "images (default: all)")
    p.add_argument("--workers", type=int, default=2, help="data-loading workers (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--results-dir", default=str(REPO / "zoo" / "results"), help="where the records go "
                   "(default: zoo/results)")
    args = p.parse_args()

    from eval.linear import main as linear
    from eval.records import default_record_path
    from wssl_zoo.cliargs import device as pick_device
    from wssl_zoo.weights import spec_label

    label = spec_label(args.model)
    common = ["--model", args.model, "--dataset", args.dataset, "--data", args.data, "--workers", str(args.workers),
              "--device", args.device, "--no-progress"]
    subset = ["--train-subset", str(args.train_subset)] if args.train_subset else []
    suffix = f"+train_subset={args.train_subset}" if args.train_subset else ""
    rows = []
    with tempfile.TemporaryDirectory() as cold_cache:
        out = default_record_path("linear", label, "fast" + suffix, args.dataset, 0, args.results_dir)
        start = time.perf_counter()
        if linear([*common, "--protocol", "fast", *subset, "--cache-dir", cold_cache, "--out", str(out)]):
            return 1
        t_fast = time.perf_counter() - start
        fast = json.loads(out.read_text())
    rows.append(("fast (cached features, cold cache: extraction included)", t_fast, t_fast, fast, _shown(out)))
    epochs = [] if args.aug_epochs == args.full_epochs else ["--epochs", str(args.aug_epochs)]
    name = args.aug_protocol + (f"+epochs={args.aug_epochs}" if epochs else "") + suffix
    out = default_record_path("linear", label, name, args.dataset, 0, args.results_dir)
    start = time.perf_counter()
    if linear([*common, "--protocol", args.aug_protocol, *epochs, *subset, "--out", str(out)]):
        return 1
    t_aug = time.perf_counter() - start
    aug = json.loads(out.read_text())
    full = t_aug / args.aug_epochs * args.full_epochs
    rows.append((f"{args.aug_protocol} augmented, {args.aug_epochs} epochs (measured)", t_aug, full, aug, _shown(out)))
    device = pick_device(args.device)
    train = f"{fast['train_samples']:,} training images" + (" (class-balanced subset)" if args.train_subset else "")
    print(f"\nlinear probe, {label} on {args.dataset} ({train}, {fast['test_samples']:,} test), {device.type} "
          f"({aug['hardware']}):\n`python benchmarks/linear_probe.py {' '.join(map(shlex.quote, sys.argv[1:]))}`\n")
    print("| protocol | wall time measured (s) | wall time of the full protocol (s) | top-1 | top-5 | record |")
    print("|---|---|---|---|---|---|")
    for label, measured, full_time, rec, record in rows:
        extrapolated = not label.startswith("fast") and args.aug_epochs != args.full_epochs
        note = f" (extrapolated to {args.full_epochs} epochs)" if extrapolated else ""
        print(f"| {label} | {measured:.0f} | {full_time:.0f}{note} | {rec['metrics']['top1']:.2f} | "
              f"{rec['metrics'].get('top5', float('nan')):.2f} | `{record}` |")
    images = fast["train_samples"] + fast["test_samples"]
    print(f"\nfast, cold cache: {images:,} images in {t_fast:.1f} s = {images / t_fast:.0f} img/s, feature extraction "
          "of both splits and the probe's training together (a lower bound on the extraction's img/s)")
    how = (f"extrapolated from {args.aug_epochs} measured epochs" if args.aug_epochs != args.full_epochs
           else "all epochs measured")
    print(f"\nspeed-up of fast over the {args.full_epochs}-epoch augmented protocol: {full / t_fast:.1f}x ({how}); "
          f"top-1 of fast minus augmented ({args.aug_epochs} epochs): "
          f"{fast['metrics']['top1'] - aug['metrics']['top1']:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
