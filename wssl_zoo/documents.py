"""The one generator of the project's documents: README's generated sections, ``LEADERBOARD.md``, the
leaderboard plot and ``MODEL_CARDS/``, all rendered from the registry and ``zoo/results`` only.

    wssl-zoo docs              # write them all
    wssl-zoo docs --check      # write nothing; exit 1 naming every document that is out of date (CI)

``python -m eval.report``, ``wssl-zoo card --all`` and ``wssl-zoo list --update-readme README.md``
are the same generator (all of it, the cards, the README tables). Every generated section of a
document sits between two markers and is replaced by :func:`splice`, the one function that edits a
document in place. The output depends only on the records and the registry, so rendering twice
gives the same bytes.

The leaderboard: rows are models, columns are (task, protocol, dataset); a cell is the mean over
seeds (± std when there are several) of the final epoch's top-1 accuracy (linear, k-NN,
semi-supervised), box AP (detection) or effective rank (spectrum); a protocol of wssl-zoo's own
(``fast``) is labelled so in its column. Records whose protocol carries
overrides (``+epochs=2``...) or that ran on a subset are left out and counted. The PNG (matplotlib,
the ``[plot]`` extra) shows the same cells as small multiples, one axis per metric kind; ``--check``
compares the data stored inside it (:func:`wssl_zoo.plots.png_data`), not its pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .cards import render_card
from .fileio import atomic_write_bytes
from .paths import cards_dir, docs_dir, leaderboard_path, readme_path, zoo_results_dir
from .plots import have_matplotlib, plot_panels, same_data
from .records import PRETRAIN_EVAL_TASK, aggregate, is_full_evaluation, is_own_protocol, read_records
from .registry import get_entry, list_models

LEADERBOARD_START, LEADERBOARD_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
OWN_LABEL = "wssl-zoo's own protocol"  # column label of a protocol that is no paper's (the quick fast probe)
HEADLINE = {"linear": "top1", "knn": "top1", "semi_1pct": "top1", "semi_10pct": "top1", "coco": "bbox_AP",
            "voc": "bbox_AP50", "spectrum": "backbone_effective_rank"}


def splice(text: str, start: str, end: str, body: str, where: str = "the document") -> str:
    """``text`` with what lies between the markers ``start`` and ``end`` replaced by ``body`` (the one
    way a generated section is written); ValueError naming ``where`` when a marker is missing."""
    if start not in text or end not in text:
        raise ValueError(f"{where} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


# ---------------------------------------------------------------------------- README tables


README_START, README_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
RESULTS_START, RESULTS_END = "<!-- pretrain-results:start -->", "<!-- pretrain-results:end -->"


def pretrain_results_table() -> str:
    """The measured pretraining results (the ``pretrain_eval`` records of ``zoo/results``, read with
    :func:`wssl_zoo.records.read_records`) as a Markdown table."""
    rows = ["| recipe (settings) | backbone | epochs | pretrain time | hardware | monitor cos kNN k=5 | monitor cos kNN k=20 | linear | same net, random init: monitor kNN k=5 / linear | record |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in read_records(zoo_results_dir(), task=PRETRAIN_EVAL_TASK):
        m, base = r["metrics"], r["random_init_metrics"]
        minutes = (r["pretrain"].get("wall_seconds") or 0) / 60
        hardware = r["pretrain"].get("hardware") or r["hardware"]  # where the pretraining ran
        rows.append(f"| {r['recipe']} | {r['arch']} ({r['stem']} stem) | {r['pretrain']['epochs']} | {minutes:.1f} min | "
                    f"{hardware} | {m['monitor_knn5_cos']:.2f} | {m['monitor_knn20_cos']:.2f} | {m['linear_top1']:.2f} | "
                    f"{base['monitor_knn5_cos']:.2f} / {base['linear_top1']:.2f} | `zoo/results/{r['file']}` |")
    return "\n".join(rows) + "\n"


def readme_with_table(text: str, where: str = "the README") -> str:
    """``text`` with the generated README sections (the zoo table, the measured pretraining results)
    refreshed (the leaderboard section is :func:`readme_with_generated_sections`'s)."""
    text = splice(text, README_START, README_END, zoo_table(), where)
    return splice(text, RESULTS_START, RESULTS_END, pretrain_results_table(), where)


def zoo_table(method: str | None = None) -> str:
    """The zoo as a Markdown table (the README's table is this text)."""
    rows = ["| model | aliases | method | arch (stem) | trained on | epochs | paper linear top-1 | weights |",
            "|---|---|---|---|---|---|---|---|"]
    for name in list_models(method):
        e = get_entry(name)
        ds = e.training.get("dataset", "")
        paper = None
        for r in e.paper_results:
            if r.task == "linear_top1" and r.epochs in (None, e.training.get("epochs")):
                paper = r
                break
        paper_txt = f"{paper.value:.2f} ({paper.label})" if paper else "not reported"
        weights = f"[{e.hub.repo_id}](https://huggingface.co/{e.hub.repo_id})" if e.hub.published else "not published yet"
        rows.append(f"| `{name}` | {', '.join(f'`{a}`' for a in e.aliases)} | {e.method} | {e.arch} ({e.stem}) | "
                    f"{ds} | {e.training.get('epochs', '')} | {paper_txt} | {weights} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------- leaderboard


def _headline(record: dict) -> str:
    task = record["task"].replace("bench-", "")
    key = HEADLINE.get(task, "top1")
    return key if key in record["metrics"] else sorted(record["metrics"])[0]


def _short(protocol_name: str, limit: int = 40) -> str:
    """A protocol name for a column header: long override lists become a count and a short hash
    (different override sets stay different columns)."""
    if len(protocol_name) <= limit:
        return protocol_name
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
    return plot_panels(plot_data(records), path, title=PLOT_TITLE)


def plot_is_current(records: list[dict], path: str | Path) -> bool:
    """Whether the PNG at ``path`` was drawn from :func:`plot_data` of ``records`` (the data stored
    in the PNG is compared, not its pixels: no matplotlib needed, any matplotlib version)."""
    return same_data(path, dict(title=PLOT_TITLE, panels=plot_data(records)))


def leaderboard_markdown(records: list[dict], skipped: int = 0) -> str:
    """The whole ``LEADERBOARD.md``."""
    return ("# Leaderboard\n\nGenerated by `wssl-zoo docs` (or `python -m eval.report`) from `zoo/results`; "
            "do not edit.\n\n" + render_leaderboard(records, skipped))


def readme_with_generated_sections(text: str, records: list[dict], skipped: int = 0, where: str = "the README") -> str:
    """``text`` with every generated README section it has refreshed: the zoo table, the measured
    pretraining results and the leaderboard (of ``records``); a document without a section's markers
    does not get that section (the project's README has all three: tests/test_registry.py holds it)."""
    sections = ((README_START, README_END, zoo_table), (RESULTS_START, RESULTS_END, pretrain_results_table),
                (LEADERBOARD_START, LEADERBOARD_END, lambda: render_leaderboard(records, skipped)))
    for start, end, body in sections:
        if start in text:
            text = splice(text, start, end, body(), where)
    return text


def update_readme(path: str | Path, records: list[dict] | None = None, skipped_count: int = 0) -> bool:
    """Refresh the leaderboard section of ``path`` with the leaderboard of ``records`` (default: every
    full evaluation in ``zoo/results``); returns whether it changed."""
    path = Path(path)
    skipped: list = []
    if records is None:
        records, skipped = full_evaluations(read_records(zoo_results_dir()))
    text = path.read_text()
    new = splice(text, LEADERBOARD_START, LEADERBOARD_END, render_leaderboard(records, len(skipped) or skipped_count),
                 str(path))
    if new != text:
        atomic_write_bytes(path, new.encode())
    return new != text


# ---------------------------------------------------------------------------- the generator


@dataclass(frozen=True)
class Outputs:
    """Where the documents go (each None to skip it): by default the workspace's (:mod:`wssl_zoo.paths`)."""

    results: Path
    readme: Path | None
    leaderboard: Path | None
    plot: Path | None
    cards: Path | None

    @classmethod
    def default(cls) -> "Outputs":
        return cls(zoo_results_dir(), readme_path(), leaderboard_path(), docs_dir() / "leaderboard.png", cards_dir())


def generate(outputs: Outputs | None = None, check: bool = False) -> tuple[list[str], list[str]]:
    """Render every document of ``outputs``; with ``check`` write nothing. Returns ``(lines, stale)``:
    what was written or skipped, and the paths that are (``check``) or were out of date."""
    out = outputs or Outputs.default()
    records, skipped = full_evaluations(read_records(out.results))
    lines = [f"skipped {name}: {why} (not the protocol's full evaluation)" for name, why in skipped]
    texts: dict[Path, bytes] = {}
    if out.leaderboard is not None:
        texts[out.leaderboard] = leaderboard_markdown(records, len(skipped)).encode()
    if out.readme is not None:
        texts[out.readme] = readme_with_generated_sections(out.readme.read_text(), records, len(skipped),
                                                           str(out.readme)).encode()
    if out.cards is not None:
        texts.update({out.cards / f"{name}.md": render_card(get_entry(name), results_dir=out.results).encode()
                      for name in list_models()})
    stale = [str(p) for p, data in texts.items() if not (p.is_file() and p.read_bytes() == data)]
    plot_stale = out.plot is not None and not plot_is_current(records, out.plot)
    if plot_stale:
        stale.append(str(out.plot))
    if check:
        return lines, stale
    for path, data in texts.items():
        if str(path) in stale:
            atomic_write_bytes(path, data)
            lines.append(f"wrote {path}")
    if plot_stale:
        lines.append(f"wrote {render_plot(records, out.plot)}" if have_matplotlib() else
                     f"skipped {out.plot}: matplotlib is not installed (pip install 'wssl-zoo[plot]')")
    return lines, stale
