"""``python -m eval.spectrum``: the eigenvalue spectrum of the feature covariance, and its effective
rank, for the backbone features and (when the model directory has ``projector.safetensors``) the
projector outputs: the property the three whitening papers are about.

    python -m eval.spectrum --model runs/intl_c10 --dataset cifar10 --data DATA --max-samples 10000

Writes a record (``task: spectrum``; metrics ``backbone_effective_rank``,
``projector_effective_rank``, and the fraction of variance in the top 1 % of directions) with the
eigenvalues, and a PNG of the normalised log-spectra (``--plot``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from ._cli import add_common, record_path, run_main


def spectrum(features: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending, float64) of the covariance of ``features`` (N, D)."""
    x = features.double()
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(1, len(x) - 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)


def effective_rank(eigenvalues: torch.Tensor) -> float:
    """exp(entropy of the normalised eigenvalues) (Roy & Vetterli 2007)."""
    p = eigenvalues / eigenvalues.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def load_projector(folder: Path):
    """The pretraining projector saved beside the backbone, or None."""
    from safetensors.torch import load_file

    from wssl_zoo.heads import projector_from_state

    path = folder / "projector.safetensors"
    return projector_from_state(load_file(str(path)), str(path)) if path.is_file() else None


def plot(spectra: dict[str, torch.Tensor], path: Path) -> None:
    from wssl_zoo.modelio import atomic_write_bytes

    from ._png import PALETTE, Canvas

    w, h, left, top, plot_w, plot_h = 560, 360, 60, 40, 460, 260
    canvas = Canvas(w, h)
    canvas.text(10, 10, "LOG10 EIGENVALUE / MAX  VS  RANK / DIM")
    canvas.line(left, top, left, top + plot_h, (0, 0, 0))
    canvas.line(left, top + plot_h, left + plot_w, top + plot_h, (0, 0, 0))
    floor = -8.0
    for tick in range(0, int(floor) - 1, -2):
        y = top + plot_h * tick / floor
        canvas.text(10, int(y) - 4, str(tick))
    for i, (name, ev) in enumerate(spectra.items()):
        ev = (ev / ev[0]).clamp_min(10 ** floor).log10()
        color = PALETTE[i % len(PALETTE)]
        prev = None
        for j, v in enumerate(ev.tolist()):
            x = left + plot_w * j / max(1, len(ev) - 1)
            y = top + plot_h * v / floor
            if prev:
                canvas.line(prev[0], prev[1], x, y, color, width=2)
            prev = (x, y)
        canvas.rect(left + 10, top + plot_h + 20 + 14 * i, left + 24, top + plot_h + 30 + 14 * i, color)
        canvas.text(left + 30, top + plot_h + 20 + 14 * i, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, canvas.png())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.spectrum", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--split", default="train", choices=["train", "test"], help="whose features (default: %(default)s)")
    p.add_argument("--max-samples", type=int, default=10000, help="use the first N features (default: %(default)s)")
    p.add_argument("--plot", metavar="PNG", help="plot file (default: the record's path with .png)")
    return p


def run(args, command: str) -> int:
    from .features import cached_features, pick_device, resolve_model
    from .records import make_record, write_record

    device = pick_device(args.device)
    info = resolve_model(args.model, args.seed, verify=not args.allow_unverified)
    start = time.perf_counter()
    x, _, meta = cached_features(info, args.dataset, args.data, args.split, device, args.cache_dir,
                                 workers=args.workers, progress=not args.no_progress)
    gen = torch.Generator().manual_seed(args.seed)
    if len(x) > args.max_samples:
        x = x[torch.randperm(len(x), generator=gen)[: args.max_samples]]
    spectra = {"backbone": spectrum(x)}
    projector = load_projector(info.folder) if info.folder is not None else None
    if projector is not None:
        with torch.no_grad():
            spectra["projector"] = spectrum(torch.cat([projector(chunk) for chunk in x.split(1024)]))
    metrics = {}
    for name, ev in spectra.items():
        metrics[f"{name}_effective_rank"] = effective_rank(ev)
        top = max(1, math.ceil(0.01 * len(ev)))
        metrics[f"{name}_top1pct_variance"] = 100.0 * float(ev[:top].sum() / ev.sum())
    record = make_record(task="spectrum", model=info.spec, weights_sha256=info.weights_sha256,
                         protocol=dict(name="spectrum", version=1, split=args.split, max_samples=args.max_samples),
                         dataset=dict(name=args.dataset, root=str(args.data), fingerprint=meta["fingerprint"]),
                         seed=args.seed, metrics=metrics, wall_seconds=time.perf_counter() - start, command=command,
                         extra=dict(model_label=info.label, samples=len(x),
                                    eigenvalues={k: [float(f"{v:.6g}") for v in ev.tolist()] for k, ev in spectra.items()}))
    path = write_record(record, record_path(args, "spectrum", info.label, "spectrum", args.seed))
    png = Path(args.plot) if args.plot else path.with_suffix(".png")
    plot(spectra, png)
    print(", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) + f" -> {path}, {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("eval.spectrum", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
