"""``python -m eval.spectrum``: the eigenvalue spectrum of the feature covariance, and its effective
rank, for the backbone features and (when the model directory has ``projector.safetensors``) the
projector outputs: the property the three whitening papers are about.

    python -m eval.spectrum --model runs/intl_c10 --dataset cifar10 --data DATA --max-samples 10000

Writes a record (``task: spectrum``; metrics ``backbone_effective_rank``,
``projector_effective_rank``, and the fraction of variance in the top 1 % of directions) with the
eigenvalues, the same for a random-init baseline of the same architecture on the same images
(``--baseline``), and a PNG of both spectra (``--plot``; matplotlib, the ``[plot]`` extra).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from wssl_zoo import cliargs
from wssl_zoo.distributed import is_main, rank_world
from wssl_zoo.evaluation import effective_rank, spectrum
from wssl_zoo.plots import INSTALL_HINT, have_matplotlib, plot_spectrum
from wssl_zoo.weights import resolve

from ._cli import add_common, record_path, run_main
from .features import feature_store, mark_overrides
from .records import make_record, write_record


def baseline_spec(weights, choice: str) -> str | None:
    """The model spec of the random-init baseline: ``auto`` = ``random:ARCH:STEM:SIZE`` of the
    evaluated model (None when it is random init itself), ``none`` = no baseline, else ``choice``."""
    if choice == "none" or (choice == "auto" and weights.spec.startswith("random:")):
        return None
    return f"random:{weights.arch}:{weights.stem}:{weights.img_size}" if choice == "auto" else choice


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.spectrum", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--split", default="train", choices=["train", "test"], help="whose features (default: %(default)s)")
    p.add_argument("--max-samples", type=int, default=10000, help="use the first N features (default: %(default)s)")
    p.add_argument("--baseline", default="auto", metavar="SPEC",
                   help="model whose spectrum is drawn beside it, on the same images: auto (random init of the same "
                        "architecture, stem and input size), none, or any --model spec (default: %(default)s)")
    p.add_argument("--plot", metavar="PNG", help="plot file (default: the record's path with .png; needs matplotlib)")
    return p


def run(args, command: str) -> int:
    device = cliargs.device(args.device)
    weights = resolve(args.model, args.seed, verify=not args.allow_unverified)
    start = time.perf_counter()
    batch = args.batch_size or 256
    opts = dict(batch_size=batch, workers=args.workers, progress=not args.no_progress,
                normalisation=args.normalisation, amp=args.amp)
    store, meta = feature_store(weights, weights.build(), args.dataset, args.data, args.split, device, args.cache_dir,
                                **opts)
    gen = torch.Generator().manual_seed(args.seed)
    keep = torch.randperm(len(store), generator=gen)[: args.max_samples] if len(store) > args.max_samples else None
    x = store.tensor() if keep is None else store.take(keep)  # at most --max-samples rows in memory
    spectra = {"backbone": spectrum(x)}
    projector = weights.build_projector()
    if projector is not None:
        with torch.no_grad():
            spectra["projector"] = spectrum(torch.cat([projector(chunk) for chunk in x.split(1024)]))
    baseline = None
    spec = baseline_spec(weights, args.baseline)
    if spec is not None:  # the same images (same subsample) through the baseline's backbone
        base = resolve(spec, args.seed)
        bstore, _ = feature_store(base, base.build(), args.dataset, args.data, args.split, device, args.cache_dir,
                                  **opts)
        ev = spectrum(bstore.tensor() if keep is None else bstore.take(keep))
        baseline = dict(model=base.spec, model_label=base.label, weights_sha256=base.weights_sha256,
                        backbone_effective_rank=effective_rank(ev), eigenvalues=dict(backbone=_rounded(ev)))
    metrics = {}
    for name, ev in spectra.items():
        metrics[f"{name}_effective_rank"] = effective_rank(ev)
        top = max(1, math.ceil(0.01 * len(ev)))
        metrics[f"{name}_top1pct_variance"] = 100.0 * float(ev[:top].sum() / ev.sum())
    record = make_record(task="spectrum", model=weights.spec, weights_sha256=weights.weights_sha256,
                         protocol=mark_overrides(dict(name="spectrum", version=1, split=args.split,
                                                      max_samples=args.max_samples), args.normalisation, args.amp),
                         dataset=dict(name=args.dataset, root=str(args.data), fingerprint=meta["fingerprint"]),
                         seed=args.seed, metrics=metrics, wall_seconds=time.perf_counter() - start, command=command,
                         extra=dict(model_label=weights.label, samples=len(x), world_size=rank_world()[1],
                                    per_process_batch=batch,
                                    eigenvalues={k: _rounded(ev) for k, ev in spectra.items()},
                                    **({"baseline": baseline} if baseline else {})))
    path = write_record(record, record_path(args, "spectrum", weights.label, record["protocol"]["name"], args.seed, record))
    png = Path(args.plot) if args.plot else path.with_suffix(".png")

    if not is_main():
        return 0  # under torchrun rank 0 writes the record and the plot
    if have_matplotlib():
        plot_record(record, png)
    else:
        png = f"no plot (matplotlib is not installed: {INSTALL_HINT})"
    extra = f", baseline {baseline['model_label']} backbone {baseline['backbone_effective_rank']:.2f}" if baseline else ""
    print(", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) + extra + f" -> {path}, {png}")
    return 0


def _rounded(ev: torch.Tensor) -> list[float]:
    return [float(f"{v:.6g}") for v in ev.tolist()]


def record_spectra(record: dict) -> dict[str, dict[str, list[float]]]:
    """``{feature kind: {model label: eigenvalues}}`` of a spectrum record, its baseline included
    (what :func:`wssl_zoo.plots.plot_spectrum` draws)."""
    label = record.get("model_label") or record["model"]
    spectra = {kind: {label: ev} for kind, ev in record["eigenvalues"].items()}
    base = record.get("baseline")
    if base:
        base_label = base["model_label"] if base["model_label"].startswith("random") else f"random init: {base['model_label']}"
        for kind, ev in base["eigenvalues"].items():
            spectra.setdefault(kind, {})[base_label] = ev
    return spectra


def plot_record(record: dict, path: str | Path) -> Path:
    """Draw the spectra of a spectrum record (model and baseline) into the PNG ``path``."""
    title = (f"covariance spectrum, {record['dataset']['name']} {record['protocol']['split']} "
             f"({record.get('samples', '?')} images)")
    return plot_spectrum(record_spectra(record), path, title=title)


def main(argv: list[str] | None = None) -> int:
    return run_main("eval.spectrum", build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
