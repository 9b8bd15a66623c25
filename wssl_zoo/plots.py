"""Plots with matplotlib (the optional ``[plot]`` extra, imported only inside the drawing functions).

Every plot is split in two: a *data* function in plain Python (what the tests and
``python -m eval.report --check`` compare) and a drawing function that renders exactly that data
on matplotlib's Agg canvas (no display needed) and writes a PNG atomically. The data is also
stored in the PNG as a ``tEXt`` chunk under :data:`DATA_KEY` (JSON), so a checked-in picture can
be compared with fresh data without matplotlib and independently of its pixel bytes
(:func:`png_data`).

- :func:`training_curves`: loss, learning rate, kNN monitor and effective rank per epoch, and loss,
  learning rate, throughput and data-wait share per logged step, from a pretraining run's
  ``log.jsonl`` (:mod:`wssl_zoo.runlog`); drawn by :func:`plot_training_curves` (``wssl-zoo plot
  RUN`` and the pretraining loop at each monitor epoch).
- :func:`spectrum_series`: normalised covariance eigenvalues per feature kind, each model beside
  its random-init baseline; drawn by :func:`plot_spectrum` (``python -m eval.spectrum``).
- :func:`plot_panels`: small multiples of horizontal bars, one axis per metric kind (the
  leaderboard of ``wssl-zoo docs``, whose data is ``wssl_zoo.documents.plot_data``).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .fileio import atomic_write_bytes
from .runlog import kind_of, log_path, read_log  # noqa: F401  (log_path, read_log: also this module's API)

DATA_KEY = "wssl-zoo:data"
INSTALL_HINT = "pip install 'wssl-zoo[plot]' (or pip install matplotlib)"
CURVES = (("loss", "training loss", "linear"), ("lr", "learning rate", "linear"),
          ("monitor_knn_cos", "kNN monitor top-1 (%)", "linear"), ("effective_rank", "effective rank (backbone)", "linear"))
# the curves of the step records (--log-every): curve key -> the record's key
STEP_CURVES = (("loss_steps", "loss"), ("lr_steps", "lr"), ("views_per_s", "views_per_s"),
               ("data_wait_share", "data_wait_share"))


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (plots are optional)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (never a GUI backend, no global pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional: the [plot] extra
        from matplotlib.figure import Figure  # optional: the [plot] extra
    except ImportError as exc:
        raise RuntimeError(f"plots need matplotlib: {INSTALL_HINT}") from exc
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, data: Any) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) with ``data`` as JSON in a tEXt chunk."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None, DATA_KEY: _dumps(data)})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def png_data(path: str | Path) -> Any:
    """The plotted data stored in a PNG written here, or None (no such chunk, or not a PNG)."""
    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {}).get(DATA_KEY)
    except (OSError, UnidentifiedImageError):
        return None
    return None if text is None else json.loads(text)


def same_data(path: str | Path, data: Any) -> bool:
    """Whether the PNG at ``path`` was drawn from ``data`` (compared as JSON, as stored)."""
    return Path(path).is_file() and png_data(path) == json.loads(_dumps(data))


# ---------------------------------------------------------------------------- training curves


def training_curves(log: str | Path | list[dict]) -> dict[str, list[list[float]]]:
    """``{key: [[x, value], ...]}``: per epoch (x = the epoch) each of loss, lr, monitor_knn_cos and
    effective_rank that the epoch records have (the monitor's only at monitor epochs); and from the step
    records, where the run logged them (``--log-every``), ``loss_steps``, ``lr_steps``, ``views_per_s``
    and ``data_wait_share`` at x = the step's position in epochs (global step / steps per epoch, from
    the run's start record: 2.5 is half-way through the third epoch). ``log``: a run folder, its
    ``log.jsonl`` or the records already read (:func:`wssl_zoo.runlog.read_log`). A resumed run that
    logged an epoch or a step twice keeps the last record of it."""
    if not isinstance(log, list):
        log = read_log(log_path(log))
    by_epoch = {int(r["epoch"]): r for r in log if kind_of(r) == "epoch"}
    curves: dict[str, list[list[float]]] = {}
    for key, _, _ in CURVES:
        points = [[float(e), float(r[key])] for e, r in sorted(by_epoch.items()) if _finite(r.get(key))]
        if points:
            curves[key] = points
    per_epoch = [int(r["steps_per_epoch"]) for r in log if kind_of(r) == "start" and r.get("steps_per_epoch")]
    if per_epoch:
        by_step = {int(r["global_step"]): r for r in log if kind_of(r) == "step"}
        for key, name in STEP_CURVES:
            points = [[round(g / per_epoch[-1], 6), float(r[name])] for g, r in sorted(by_step.items())
                      if _finite(r.get(name))]
            if points:
                curves[key] = points
    return curves


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_training_curves(run: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Draw :func:`training_curves` of ``run`` (a run folder or its ``log.jsonl``) as a 3x2 grid against
    the epoch: loss and learning rate (per logged step as a line, per epoch as dots), the kNN monitor and
    the effective rank (monitor epochs), and the throughput and the data-wait share of the logged steps.
    Writes ``out`` (default: ``training_curves.png`` beside the log); returns the path."""
    log = log_path(run)
    curves = training_curves(log)
    if not curves:
        raise ValueError(f"{log}: no record with loss, lr, monitor_knn_cos or effective_rank")
    out = Path(out) if out is not None else log.parent / "training_curves.png"
    data = dict(title=title or log.parent.name, curves=curves)
    fig = _figure(10, 8)
    axes = fig.subplots(3, 2, sharex=True).ravel()
    last = max(p[0] for points in curves.values() for p in points)
    first = min(p[0] for points in curves.values() for p in points)
    panels = [(key, label, steps) for (key, label, _), steps in
              zip(CURVES, ("loss_steps", "lr_steps", None, None))] + \
             [(None, "views per second (logged steps)", "views_per_s"),
              (None, "data-wait share (time waiting for the loader)", "data_wait_share")]
    for ax, (key, label, steps) in zip(axes, panels):
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_xlim(min(0.5, first), last + 0.5)
        drawn = False
        if steps in curves:
            xs, ys = zip(*curves[steps])
            ax.plot(xs, ys, linewidth=1.0, color="C1" if key else "C2", alpha=0.8 if key else 1.0,
                    label="logged steps (--log-every)")
            drawn = True
        if key in curves:
            xs, ys = zip(*curves[key])
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5 if steps not in curves else 0, color="C0",
                    label="epoch" + (" mean" if key == "loss" else " end" if key == "lr" else ""))
            drawn = True
        if key and steps in curves and key in curves:
            ax.legend(fontsize=7)
        if not drawn:
            hint = ("(run with --eval-every N)" if key in ("monitor_knn_cos", "effective_rank") else
                    "(run with --log-every N)" if key is None else "")
            ax.text(0.5, 0.5, f"not logged\n{hint}".strip(), ha="center", va="center", transform=ax.transAxes,
                    color="0.4")
        if steps == "data_wait_share":
            ax.set_ylim(-0.02, 1.02)
        if key == "lr" or steps == "lr_steps":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes[4:]:
        ax.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator  # optional: the [plot] extra

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(data["title"], fontsize=11)
    return _save(fig, out, data)


# ---------------------------------------------------------------------------- spectrum


SPECTRUM_FLOOR = 1e-7  # the spectrum axis ends 7 decades below the largest share


def spectrum_series(spectra: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
    """``{feature kind: {model label: eigenvalues / their sum}}`` (descending, as given).
    ``spectra`` is ``{feature kind: {model label: eigenvalues}}``, e.g. ``{"backbone": {"INTL":
    [...], "random init": [...]}, "projector": {"INTL": [...]}}``; values are rounded to 6
    significant digits (as records store them) so the series compare exactly."""
    out = {}
    for kind, models in spectra.items():
        out[kind] = {}
        for label, ev in models.items():
            total = float(sum(ev))
            if not total > 0:
                raise ValueError(f"spectrum of {label} ({kind}): the eigenvalues sum to {total}")
            out[kind][label] = [float(f"{float(v) / total:.6g}") for v in ev]
    return out


def plot_spectrum(spectra: dict[str, dict[str, list[float]]], out: str | Path, title: str = "") -> Path:
    """Draw :func:`spectrum_series` of ``spectra``: one axis per feature kind, eigenvalue index
    (1 = largest) against its share of the total variance on a log scale; the random-init
    baseline (any label starting with ``random``) dashed grey; the axis stops :data:`SPECTRUM_FLOOR`
    below the largest share (smaller values are round-off). Writes ``out``; returns it."""
    series = spectrum_series(spectra)
    fig = _figure(5 * len(series) + 1, 4.2)
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for ax, (kind, models) in zip(axes, series.items()):
        colors = iter(f"C{i}" for i in range(10))
        for label, share in models.items():
            baseline = label.startswith("random")
            xs = list(range(1, len(share) + 1))
            p = [v for v in share if v > 0]
            rank = math.exp(-sum(v * math.log(v) for v in p))  # effective rank: exp(entropy of the shares)
            ax.plot(xs, share, linewidth=1.6, linestyle="--" if baseline else "-",
                    color="0.45" if baseline else next(colors),
                    label=f"{label} ({len(share)}-d, effective rank {rank:.1f})")
        ax.set_yscale("log", nonpositive="mask")
        top = max(max(share) for share in models.values())
        ax.set_ylim(top * SPECTRUM_FLOOR, top * 2)  # below: round-off of a rank-deficient covariance
        ax.set_xscale("log")
        ax.set_xlabel("eigenvalue index (1 = largest)")
        ax.set_ylabel("eigenvalue / sum of eigenvalues")
        ax.set_title(f"{kind} features", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, out, dict(title=title, series=series))


# ---------------------------------------------------------------------------- small multiples


def plot_panels(panels: list[dict], out: str | Path, title: str = "") -> Path:
    """Small multiples of horizontal bar groups, one axis per metric kind. ``panels``: ``[{"kind":
    axis label, "xlim": [lo, hi] or None, "rows": [{"column": str, "bars": [{"model": str, "mean":
    float, "std": float}]}]}]``; bars keep one colour per model across axes. Writes ``out``."""
    models = sorted({b["model"] for p in panels for r in p["rows"] for b in r["bars"]})
    color = {m: f"C{i % 10}" for i, m in enumerate(models)}
    slots = [max(1, sum(len(r["bars"]) for r in p["rows"])) + len(p["rows"]) for p in panels] or [1]
    fig = _figure(10, 1.2 + 0.22 * sum(slots) + 0.5 * len(panels))
    if not panels:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no records", ha="center", va="center")
        return _save(fig, out, dict(title=title, panels=panels))
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=slots)[:, 0]
    for ax, panel in zip(axes, panels):
        y, ticks, labels = 0.0, [], []
        for row in panel["rows"]:
            n = len(row["bars"])
            start = y
            for bar in row["bars"]:
                ax.barh(y, bar["mean"], height=0.8, color=color[bar["model"]],
                        xerr=bar["std"] or None, capsize=2)
                ax.text(bar["mean"], y, f" {bar['mean']:.2f}" if abs(bar["mean"]) >= 0.01 or bar["mean"] == 0 else f" {bar['mean']:.2g}", va="center", fontsize=7)
                y += 1
            ticks.append(start + (n - 1) / 2)
            labels.append(row["column"])
            y += 0.6
        ax.set_yticks(ticks, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(panel["kind"])
        if panel.get("xlim"):
            ax.set_xlim(*panel["xlim"])
        else:
            hi = max(b["mean"] + b["std"] for r in panel["rows"] for b in r["bars"])
            ax.set_xlim(0, hi * 1.15 if hi > 0 else 1)
        ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch  # optional: the [plot] extra

    fig.legend(handles=[Patch(color=color[m], label=m) for m in models], loc="outside lower center",
               ncols=min(3, len(models)), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, out, dict(title=title, panels=panels))
