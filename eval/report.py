"""``python -m eval.report``: the leaderboard, rendered from ``zoo/results`` only.

    python -m eval.report                      # LEADERBOARD.md + docs/leaderboard.png, README section, MODEL_CARDS/
    python -m eval.report --check              # exit 1 if any of them is out of date (what CI can run)

The PNG (matplotlib, the ``[plot]`` extra) shows the same cells as small multiples, one axis per
metric kind (accuracy %, AP, effective rank). ``--check`` compares the Markdown byte for byte and,
for the PNG, the plotted data stored inside it (``wssl_zoo.plots.png_data``), not its pixels.

Rows are models, columns are (task, protocol, dataset); a cell is the mean over seeds (± std
when there are several) of top-1 accuracy (linear, k-NN, semi-supervised) after the final epoch or
box AP (detection). A protocol of wssl-zoo's own (``fast``) is labelled so in its column. Records whose protocol carries overrides (``+epochs=2``...) are shown with the
override in the column name, never merged with the full protocol. The output depends only on
the records, so rendering twice gives the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wssl_zoo.paths import workspace

from .records import RESULTS_DIR, aggregate, is_full_evaluation, is_own_protocol, read_records

REPO = workspace()  # see wssl_zoo.paths: the checkout, else $WSSL_ZOO_HOME or the current directory
START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
OWN_LABEL = "wssl-zoo's own protocol"  # column label of a protocol that is no paper's (the quick fast probe)
HEADLINE = {"linear": "top1", "knn": "top1", "semi_1pct": "top1", "semi_10pct": "top1", "coco": "bbox_AP",
            "voc": "bbox_AP50", "spectrum": "backbone_effective_rank"}


def _headline(record: dict) -> str:
    task = record["task"].replace("bench-", "")
    key = HEADLINE.get(task, "top1")
    return key if key in record["metrics"] else sorted(record["metrics"])[0]


def _short(protocol_name: str, limit: int = 40) -> str:
    """A protocol name for a column header: long override lists become a count and a short hash
    (different override sets stay different columns)."""
    if len(protocol_name) <= limit:
        return protocol_name
    import hashlib

    base, *changes = protocol_name.split("+")
    return f"{base}+{len(changes)} overrides #{hashlib.sha1(protocol_name.encode()).hexdigest()[:6]}"


def table_cells(records: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """(models, columns, {(model, column): {mean, std, n, metric}})."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        model = r.get("model_label") or r["model"]
        own = f" ({OWN_LABEL})" if is_own_protocol(r) else ""
        column = f"{r['task']} / {_short(r['protocol']['name'])}{own} / {r['dataset']['name']}"
        groups.setdefault((model, column), []).append(r)
    cells = {}
    for key, recs in groups.items():
        metric = _headline(recs[0])
        cells[key] = dict(aggregate(recs)[metric], metric=metric)
    models = sorted({m for m, _ in cells})
    columns = sorted({c for _, c in cells})
    return models, columns, cells


def full_evaluations(records: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """(records on the full evaluation set of their protocol, [(file, why not) for the others]):
    the leaderboard shows only the first; runs with overrides or subsets are ad hoc. The
    pretraining checks (task ``pretrain_eval``) are no evaluation protocol and are left out
    (the README's pretraining table shows them)."""
    from .records import PRETRAIN_EVAL_TASK

    kept, skipped = [], []
    for r in records:
        if r["task"] == PRETRAIN_EVAL_TASK:
            continue
        why = is_full_evaluation(r)
        if why is None:
            kept.append(r)
        else:
            skipped.append((r.get("file", r["model"]), why))
    return kept, skipped


def render_leaderboard(records: list[dict], skipped: int = 0) -> str:
    """The Markdown leaderboard of ``records`` (deterministic); ``skipped`` records (overrides,
    subsets) are counted in the note."""
    if not records:
        return "_No evaluation records yet: run `python -m eval.linear` / `eval.knn` / `eval.benchmark`._\n"
    models, columns, cells = table_cells(records)
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model in models:
        row = []
        for column in columns:
            c = cells.get((model, column))
            row.append("—" if c is None else f"{c['mean']:.2f}" + (f" ± {c['std']:.2f} (n={c['n']})" if c["n"] > 1 else ""))
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    files = sorted(r["file"] for r in records)
    lines += ["", f"Cells: top-1 % (classification), box AP (detection) or the backbone's effective rank (spectrum); "
              "after the final epoch (the records also give the best test epoch, `best_epoch` / `best_metrics`, not "
              f"shown here), mean over seeds. Columns marked \"{OWN_LABEL}\" (`fast`: a quick probe on cached "
              "features) are not comparable with paper numbers. "
              f"{len(files)} records in `zoo/results/`; each holds the command that reproduces it."
              + (f" {skipped} records with protocol overrides or subsets are not shown (`python -m eval.report` "
                 "names them)." if skipped else "")]
    return "\n".join(lines) + "\n"


METRIC_KINDS = (("top-1 accuracy (%)", [0, 100]), ("box AP", [0, 100]), ("effective rank", None))
PLOT_TITLE = "wssl-zoo leaderboard (zoo/results; one axis per metric kind)"


def metric_kind(metric: str) -> tuple[str, list[float] | None]:
    """(axis label, x limits or None) of a headline metric: accuracies, APs and effective ranks
    never share an axis."""
    if metric.startswith("top"):
        return METRIC_KINDS[0]
    if metric.startswith(("bbox_AP", "segm_AP")):
        return ("box AP" if metric.startswith("bbox") else "mask AP") + (" (AP50)" if metric.endswith("AP50") else ""), [0, 100]
    if metric.endswith("effective_rank"):
        return METRIC_KINDS[2]
    return metric, None


def plot_data(records: list[dict]) -> list[dict]:
    """The leaderboard as plotted: one panel per metric kind (in :data:`METRIC_KINDS` order, then
    any other), each ``{"kind", "xlim", "rows": [{"column", "bars": [{"model", "mean", "std"}]}]}``
    with the columns and models of :func:`table_cells` (deterministic, JSON-ready)."""
    models, columns, cells = table_cells(records) if records else ([], [], {})
    panels: dict[str, dict] = {}
    for column in columns:
        bars = [dict(model=m, mean=round(float(cells[m, column]["mean"]), 6), std=round(float(cells[m, column]["std"]), 6))
                for m in models if (m, column) in cells]
        kind, xlim = metric_kind(cells[next(m for m in models if (m, column) in cells), column]["metric"])
        panels.setdefault(kind, dict(kind=kind, xlim=xlim, rows=[]))["rows"].append(dict(column=column, bars=bars))
    order = [k for k, _ in METRIC_KINDS]
    return sorted(panels.values(), key=lambda p: (order.index(p["kind"]) if p["kind"] in order else len(order), p["kind"]))


def render_plot(records: list[dict], path: str | Path) -> Path:
    """Draw :func:`plot_data` of ``records`` as small multiples (matplotlib) into the PNG ``path``."""
    from wssl_zoo.plots import plot_panels

    return plot_panels(plot_data(records), path, title=PLOT_TITLE)


def plot_is_current(records: list[dict], path: str | Path) -> bool:
    """Whether the PNG at ``path`` was drawn from :func:`plot_data` of ``records`` (the data stored
    in the PNG is compared, not its pixels: no matplotlib needed, any matplotlib version)."""
    from wssl_zoo.plots import same_data

    return same_data(path, dict(title=PLOT_TITLE, panels=plot_data(records)))


def update_readme(path: str | Path, records: list[dict] | None = None, skipped_count: int = 0) -> bool:
    """Replace the text between the leaderboard markers of ``path`` with the leaderboard of
    ``records`` (default: every record in ``zoo/results``); returns whether it changed."""
    path = Path(path)
    skipped: list = []
    if records is None:
        records, skipped = full_evaluations(read_records(RESULTS_DIR))
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render_leaderboard(records, len(skipped) or skipped_count)}{END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default=str(RESULTS_DIR), help="records to render (default: zoo/results)")
    p.add_argument("--markdown", default=str(REPO / "LEADERBOARD.md"), help="leaderboard file (default: LEADERBOARD.md)")
    p.add_argument("--plot", default=str(REPO / "docs" / "leaderboard.png"), help="PNG plot (default: docs/leaderboard.png; '' to skip)")
    p.add_argument("--readme", default=str(REPO / "README.md"), help="README whose leaderboard section is refreshed "
                   "('' to skip)")
    p.add_argument("--no-cards", action="store_true", help="do not re-render MODEL_CARDS/")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if an output is out of date")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        records, skipped = full_evaluations(read_records(args.results_dir))
    except ValueError as exc:
        print(f"eval.report: error: {exc}", file=sys.stderr)
        return 2
    for name, why in skipped:
        print(f"skipped {name}: {why} (not the protocol's full evaluation)", file=sys.stderr)
    markdown = Path(args.markdown)
    text = ("# Leaderboard\n\nGenerated by `python -m eval.report` from `zoo/results`; "
            "do not edit.\n\n" + render_leaderboard(records, len(skipped))).encode()
    plot = Path(args.plot) if args.plot else None
    if args.check:
        stale = [] if markdown.is_file() and markdown.read_bytes() == text else [markdown]
        if plot is not None and not plot_is_current(records, plot):
            stale.append(plot)
        if args.readme:
            readme = Path(args.readme).read_text()
            if START in readme and (readme.split(START, 1)[1].split(END, 1)[0]
                                    != "\n" + render_leaderboard(records, len(skipped))):
                stale.append(Path(args.readme))
        for p in stale:
            print(f"out of date: {p} (run python -m eval.report)")
        return 1 if stale else 0
    from wssl_zoo.fileio import atomic_write_bytes
    from wssl_zoo.plots import INSTALL_HINT, have_matplotlib

    atomic_write_bytes(markdown, text)
    print(f"wrote {markdown}")
    if plot is not None:
        if have_matplotlib():
            print(f"wrote {render_plot(records, plot)}")
        else:
            print(f"skipped {plot}: matplotlib is not installed ({INSTALL_HINT})")
    if args.readme:
        changed = update_readme(args.readme, records, len(skipped))
        print(f"{'updated' if changed else 'unchanged'}: leaderboard section of {args.readme}")
    if not args.no_cards:
        from wssl_zoo.cards import write_cards

        write_cards()
        print("re-rendered MODEL_CARDS/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
