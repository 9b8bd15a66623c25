"""Views/s of real ``wssl-zoo pretrain --device-views`` runs: the loader, the device part and the
training step together, the number the issue's GPU goal is about.

    python benchmarks/device_views_run.py --data DIR --device cuda --amp bf16 --channels-last
    python benchmarks/device_views_run.py --data DIR --device cpu --tiny     # a smoke run

Each recipe (default: CW-RGP's and INTL_M's ImageNet recipes) pretrains for two epochs of ``--steps``
steps on ``--data`` (an ImageFolder root) with ``--device-views``; the row is the second epoch's
views/s from ``log.jsonl`` (the first includes starting the workers, the CUDA context and cuDNN's
autotuning) and the same for the PIL path when ``--pil`` is given. Prints Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wssl_zoo.pretrain.cli import main as pretrain  # noqa: E402

TINY = ["--arch", "test_resnet", "--img-size", "32", "--set", "projector.out_dim=16", "--set", "projector.hidden_dim=32"]


def run(recipe: str, args, out: Path, device_views: bool) -> float:
    """The second epoch's views/s of one short run."""
    argv = ["--recipe", recipe, "--data", args.data, "--dataset", "imagefolder", "--out", str(out), "--epochs", "2",
            "--steps-per-epoch", str(args.steps), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
            "--device", args.device, "--amp", args.amp, "--eval-every", "0", "--no-progress", "--checkpoint-every", "0"]
    argv += ["--channels-last"] if args.channels_last else []
    argv += ["--device-views"] if device_views else []
    argv += TINY if args.tiny else []
    if args.tiny and recipe.startswith(("cwrgp", "wmse")):
        argv += ["--set", "loss.w_size=8"] + (["--set", "loss.cov_block=8"] if recipe.startswith("cwrgp") else [])
    with contextlib.redirect_stdout(sys.stderr):  # the run's own lines; stdout is the table
        code = pretrain(argv)
    if code != 0:
        raise RuntimeError(f"the {recipe} run failed: {' '.join(argv)}")
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]["views_per_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder root (train/<class>/*.jpg)")
    p.add_argument("--recipes", nargs="+", default=["cwrgp_imagenet", "intl_m_imagenet"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (default: %(default)s)")
    p.add_argument("--steps", type=int, default=12, help="steps per epoch, two epochs (default: %(default)s)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--pil", action="store_true", help="also run the PIL path for comparison")
    p.add_argument("--tiny", action="store_true", help="test_resnet at 32 px: a smoke run of this script")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            device = run(recipe, args, Path(tmp) / f"{recipe}_device", True)
            pil = run(recipe, args, Path(tmp) / f"{recipe}_pil", False) if args.pil else None
            rows.append((recipe, device, pil))
    print(f"\n{args.device}, batch {args.batch_size}, {args.workers} workers, amp {args.amp}"
          f"{', channels_last' if args.channels_last else ''}{', TINY (test_resnet, 32 px)' if args.tiny else ''}; "
          "second epoch of two, views/s from log.jsonl\n")
    print("| recipe | --device-views views/s | PIL path views/s |")
    print("|---|---|---|")
    for recipe, device, pil in rows:
        print(f"| {recipe} | {device:.0f} | {'not run' if pil is None else f'{pil:.0f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
