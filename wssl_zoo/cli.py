"""The ``wssl-zoo`` command: ``list``, ``info``, ``pretrain``.

Subcommands register as (name, help, add_arguments, run) in :data:`SUBCOMMANDS`; errors raised
by wssl-zoo (ValueError, KeyError, FileNotFoundError) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from .registry import get_entry, list_models


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["wmse", "cwrgp", "intl"], help="only this method")
    p.add_argument("--update-readme", metavar="README", help="rewrite the generated sections (zoo table, measured "
                   "pretraining results) between their markers in this file instead of printing")


README_START, README_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
RESULTS_START, RESULTS_END = "<!-- pretrain-results:start -->", "<!-- pretrain-results:end -->"


def results_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "zoo" / "results"


def pretrain_results_table() -> str:
    """The measured pretraining results of ``zoo/results/pretrain_*.json`` as a Markdown table."""
    import json

    rows = ["| recipe (settings) | backbone | epochs | pretrain time | hardware | kNN k=5 | kNN k=20 | linear | same net, random init: kNN k=5 / linear | record |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(results_dir().glob("pretrain_*.json")):
        r = json.loads(path.read_text())
        m, base = r["metrics"]["pretrained"], r["metrics"]["random_init"]
        minutes = (r["pretrain"].get("wall_seconds") or 0) / 60
        rows.append(f"| {r['recipe']} | {r['arch']} ({r['stem']} stem) | {r['pretrain']['epochs']} | {minutes:.1f} min | "
                    f"{r['hardware']} | {m['knn5_top1']:.2f} | {m['knn20_top1']:.2f} | {m['linear_top1']:.2f} | "
                    f"{base['knn5_top1']:.2f} / {base['linear_top1']:.2f} | `zoo/results/{path.name}` |")
    return "\n".join(rows) + "\n"


def _replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"the README has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


def readme_with_table(text: str) -> str:
    """``text`` with the generated README sections (zoo table, measured results) refreshed."""
    text = _replace_between(text, README_START, README_END, zoo_table())
    return _replace_between(text, RESULTS_START, RESULTS_END, pretrain_results_table())


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


def _list_run(args: argparse.Namespace) -> int:
    if args.update_readme:
        from pathlib import Path

        path = Path(args.update_readme)
        path.write_text(readme_with_table(path.read_text()))
        print(f"updated the generated tables in {path}")
        return 0
    print(zoo_table(args.method), end="")
    return 0


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registry name or alias")


def _info_run(args: argparse.Namespace) -> int:
    e = get_entry(args.name)
    print(f"{e.name}  (aliases: {', '.join(e.aliases) or 'none'})")
    print(f"  {e.description}")
    print(f"  registry file: {e.path}")
    print(f"  method: {e.method} — {e.variant}")
    print(f"  backbone: timm {e.arch}, {e.stem} stem, {e.img_size} px, {e.feature_dim}-d features")
    print(f"  preprocessing: mean {list(e.mean)}, std {list(e.std)}")
    print(f"  projector: {dict(e.projector)} -> {e.embedding_dim}-d embedding")
    print(f"  loss: {dict(e.loss)}")
    print(f"  recipe: {e.recipe}  (wssl-zoo pretrain --recipe {e.recipe} --show)")
    print("  training: " + ", ".join(f"{k}={v}" for k, v in e.training.items()))
    print(f"  weights published: {'yes' if e.hub.published else 'no'}")
    rev = e.hub.revision or "not published yet"
    print(f"  hub: {e.hub.repo_id} @ {rev}")
    for fname, digest in e.hub.files.items():
        size = e.hub.sizes.get(fname)
        size_txt = f", {size:,} bytes" if size is not None else ""
        print(f"    {fname}: sha256 {digest or '(empty until published)'}{size_txt}")
    if e.official.get("url") or e.official.get("note"):
        print(f"  authors' checkpoint: {e.official.get('url') or 'none'}  {e.official.get('note', '')}".rstrip())
    if e.paper_results:
        print("  paper results (labelled by provenance):")
        for r in e.paper_results:
            ep = f", {r.epochs} ep" if r.epochs else ""
            note = f" — {r.note}" if r.note else ""
            print(f"    {r.task} on {r.dataset}{ep}: {r.value}  [{r.label}; {r.source}]{note}")
    else:
        print("  paper results: none registered")
    if e.notes:
        print(f"  notes: {e.notes}")
    print("  citation:")
    for line in e.citation.strip().splitlines():
        print(f"    {line}")
    return 0


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from .pretrain.cli import add_arguments

    add_arguments(p)


def _pretrain_run(args: argparse.Namespace) -> int:
    from .pretrain.cli import run

    return run(args)


def _demo_args(p: argparse.ArgumentParser) -> None:
    from .demo import add_arguments

    add_arguments(p)


def _demo_run(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args)


def _card_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="print the card of this entry (default: all, with --all)")
    p.add_argument("--all", action="store_true", help="rewrite MODEL_CARDS/<name>.md for every entry")


def _card_run(args: argparse.Namespace) -> int:
    from .cards import render_card, write_cards

    if args.all:
        for path in write_cards():
            print(f"wrote {path}")
        return 0
    if not args.name:
        raise ValueError("give a model name or --all")
    print(render_card(get_entry(args.name)), end="")
    return 0


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("list", "the registered models as a table", _list_args, _list_run),
    Subcommand("info", "one registry entry: recipe, files, paper results (no download)", _info_args, _info_run),
    Subcommand("card", "render model cards (MODEL_CARDS/) from the registry and zoo/results", _card_args, _card_run),
    Subcommand("pretrain", "pretrain with a paper recipe (python -m wssl_zoo.pretrain)", _pretrain_args, _pretrain_run),
    Subcommand("demo", "pretrain a small model offline and compare it with random init", _demo_args, _demo_run),
]


def register_subcommand(command: Subcommand) -> Subcommand:
    """Add ``command`` to :data:`SUBCOMMANDS` (for modules that bring their own subcommand)."""
    if any(c.name == command.name for c in SUBCOMMANDS):
        raise ValueError(f"a wssl-zoo subcommand named {command.name!r} is already registered")
    SUBCOMMANDS.append(command)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wssl-zoo", description="The whitening-SSL model zoo.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in SUBCOMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``wssl-zoo`` command line; returns the exit status (2 for a usage or input error)."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        # Errors from wssl-zoo carry a message that names the file / key / value: no traceback.
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"wssl-zoo {args.command}: error: {msg}", file=sys.stderr)
        return 2
