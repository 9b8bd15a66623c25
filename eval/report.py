"""``python -m eval.report``: the leaderboard and every generated document, rendered from ``zoo/results``.

    python -m eval.report                      # LEADERBOARD.md + docs/leaderboard.png, README sections, MODEL_CARDS/
    python -m eval.report --check              # exit 1 if any of them is out of date (what CI can run)

The same generator as ``wssl-zoo docs`` (:mod:`wssl_zoo.documents`, where the leaderboard's rows,
columns, cells and plot are defined): this command only names the files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wssl_zoo.cliargs import run_cli
from wssl_zoo.documents import LEADERBOARD_END as END
from wssl_zoo.documents import LEADERBOARD_START as START
from wssl_zoo.documents import (
    Outputs,
    full_evaluations,
    generate,
    metric_kind,
    plot_data,
    plot_is_current,
    render_leaderboard,
    render_plot,
    update_readme,
)
from wssl_zoo.paths import cards_dir, docs_dir, leaderboard_path, readme_path, zoo_results_dir

# the leaderboard's API, re-exported for the scripts and tests that read it here (defined in wssl_zoo.documents)
__all__ = ["END", "START", "full_evaluations", "metric_kind", "plot_data", "plot_is_current", "render_leaderboard",
           "render_plot", "update_readme", "build_parser", "run", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default=str(zoo_results_dir()), help="records to render (default: zoo/results)")
    p.add_argument("--markdown", default=str(leaderboard_path()), help="leaderboard file (default: LEADERBOARD.md)")
    p.add_argument("--plot", default=str(docs_dir() / "leaderboard.png"),
                   help="PNG plot (default: docs/leaderboard.png; '' to skip)")
    p.add_argument("--readme", default=str(readme_path()), help="README whose generated sections are refreshed "
                   "(default: README.md; '' to skip)")
    p.add_argument("--no-cards", action="store_true", help="do not re-render MODEL_CARDS/ (default: re-render them)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming every output that is out of "
                   "date (default: write)")
    return p


def run(args: argparse.Namespace) -> int:
    outputs = Outputs(results=Path(args.results_dir), readme=Path(args.readme) if args.readme else None,
                      leaderboard=Path(args.markdown), plot=Path(args.plot) if args.plot else None,
                      cards=None if args.no_cards else cards_dir())
    lines, stale = generate(outputs, check=args.check)
    for line in lines:
        print(line, file=sys.stderr if line.startswith("skipped ") else sys.stdout)
    if args.check:
        for path in stale:
            print(f"out of date: {path} (run wssl-zoo docs, or python -m eval.report)")
        return 1 if stale else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("eval.report", lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
