"""The ``wssl-zoo`` command, the face over the whole project: ``list``, ``info``, ``card``, ``docs``,
``download``, ``download-data``, ``publish``, ``convert``, ``pretrain``, ``demo``, ``plot``, and the
engines' own command lines, ``wssl-zoo eval linear|knn|semi|spectrum|benchmark|report`` (=
``python -m eval.<name>``) and ``wssl-zoo detect train|export`` (= ``python -m detection.<name>``).

Subcommands register as (name, help, add_arguments, run) in :data:`SUBCOMMANDS`; errors raised
by wssl-zoo (ValueError, KeyError, FileNotFoundError) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cliargs import dataset_arg, run_cli
from .documents import Outputs, generate, pretrain_results_table, readme_with_table, zoo_table  # noqa: F401
from .download import download, downloadable
from .paths import zoo_results_dir
from .registry import METHODS, STEMS, get_entry


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=list(METHODS), help="only this method")
    p.add_argument("--update-readme", metavar="README", help="rewrite the generated sections (zoo table, measured "
                   "pretraining results) between their markers in this file instead of printing")


def _list_run(args: argparse.Namespace) -> int:
    if args.update_readme:
        path = Path(args.update_readme)
        generate(Outputs(results=zoo_results_dir(), readme=path, leaderboard=None, plot=None, cards=None))
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
    from .cards import (  # loads torch: only for this subcommand (wssl-zoo list starts without)
        measured_results,
        metric_rows,
    )

    measured = measured_results(e)
    if measured:
        print("  measured results of these weights (zoo/results):")
        for record in measured:
            for row in metric_rows(record):
                proto = f", {row['protocol']}" if row["protocol"] else ""
                print(f"    {row['metric']} on {row['dataset']}{proto}: {row['value']:.2f}  [zoo/results/{record['file']}]")
    else:
        print("  measured results: none recorded for these weights")
    if e.notes:
        print(f"  notes: {e.notes}")
    print("  citation:")
    for line in e.citation.strip().splitlines():
        print(f"    {line}")
    return 0


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from .pretrain.cli import add_arguments  # loads torch: only for this subcommand (wssl-zoo list starts without)

    add_arguments(p)


def _pretrain_run(args: argparse.Namespace) -> int:
    from .pretrain.cli import run  # loads torch: only for this subcommand (wssl-zoo list starts without)

    return run(args, args._argv)  # the arguments after "pretrain": its resume command repeats them


def _demo_args(p: argparse.ArgumentParser) -> None:
    from .demo import add_arguments  # loads torch: only for this subcommand (wssl-zoo list starts without)

    add_arguments(p)


def _demo_run(args: argparse.Namespace) -> int:
    from .demo import run  # loads torch: only for this subcommand (wssl-zoo list starts without)

    return run(args, args._argv)


def _card_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="print the card of this entry (default: all, with --all)")
    p.add_argument("--all", action="store_true", help="rewrite MODEL_CARDS/<name>.md for every entry")


def _card_run(args: argparse.Namespace) -> int:
    from .cards import render_card, write_cards  # loads torch: only for this subcommand (wssl-zoo list starts without)

    if args.all:  # the cards part of the documents generator (wssl-zoo docs)
        for path in write_cards():
            print(f"wrote {path}")
        return 0
    if not args.name:
        raise ValueError("give a model name or --all")
    print(render_card(get_entry(args.name)), end="")
    return 0


def _download_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Download into the Hugging Face cache and verify: a registry name at its pinned commit against "
                     "the sha256 pinned in the registry; hf-hub:ORG/NAME[@REV] at the commit REV resolves to, against "
                     "the hashes the Hub states for that commit (and the repo's SHA256SUMS, which must agree). Prints "
                     "every hash it checked; afterwards HF_HUB_OFFLINE=1 loads verify against the same hashes.")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="registry names or aliases (pinned revision, sha256-checked) or hf-hub:org/name[@rev]")
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept hf-hub: files for which neither the Hub nor SHA256SUMS states a hash (a mirror without "
                   "the Hub's file metadata, an offline cache filled by another tool); they are loaded unchecked, the "
                   "stated hashes are still checked")


def _download_run(args: argparse.Namespace) -> int:
    from .hub import (  # loads torch: only for this subcommand (wssl-zoo list starts without)
        download_entry,
        download_repo,
        parse_spec,
    )

    for name in args.names:
        if name.startswith("hf-hub:"):
            snap = download_repo(name, verify=not args.allow_unverified)
            print(f"{name}: {parse_spec(name)[0]}@{snap.commit} -> {snap.folder}")
        else:
            e = get_entry(name)
            snap = download_entry(e)
            print(f"{e.name}: {e.hub.repo_id}@{e.hub.revision} -> {snap.folder}")
        for fname, digest in snap.sha256.items():
            print(f"  {fname}: sha256 {digest} verified against {snap.checked_against[fname]}")
        for fname in snap.unverified:
            print(f"  {fname}: NOT verified (no hash stated; loaded with --allow-unverified)")
    return 0


def _publish_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Upload a model to the Hugging Face Hub in one commit: model.safetensors (timm keys), a timm "
                     "config.json, the projector, the training config and logs, the model card as README.md and "
                     "SHA256SUMS. Then the weights are downloaded back and checked, and the registry entry is "
                     "pinned to the new commit with the file hashes, and its MODEL_CARDS/ card rewritten. The token "
                     "comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT selects the Hub.")
    p.add_argument("source", help="a pretraining output directory, a `wssl-zoo convert` directory, or a published "
                   "registry name or hf-hub:ORG/NAME[@REV] repo with SHA256SUMS (mirrored to --repo)")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub model repo (created if needed)")
    p.add_argument("--entry", metavar="NAME", help="the registry entry to pin (default: the one recorded in the "
                   "directory by `convert --entry`, else the entry named like the repo; none if nothing matches)")
    p.add_argument("--dry-run", action="store_true", help="only write the folder that would be uploaded")
    p.add_argument("--staging", metavar="DIR", help="where to write that folder (default with --dry-run: "
                   "runs/publish/ORG--NAME; otherwise a temporary folder); a folder that is not an earlier publish staging "
                   "is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="delete what --staging holds first")
    p.add_argument("--message", help="the commit message (default: 'wssl-zoo publish SOURCE')")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--cards-dir", metavar="DIR", help="where the refreshed card goes (default: MODEL_CARDS/)")


def _publish_run(args: argparse.Namespace) -> int:
    from .publish import publish  # loads torch: only for this subcommand (wssl-zoo list starts without)

    publish(args.source, args.repo, dry_run=args.dry_run, staging=Path(args.staging) if args.staging else None,
            entry_name=args.entry, message=args.message, private=args.private,
            cards_dir=Path(args.cards_dir) if args.cards_dir else None, overwrite=args.overwrite)
    return 0


def _convert_args(p: argparse.ArgumentParser) -> None:
    from .convert import LAYOUTS  # loads torch: only for this subcommand (wssl-zoo list starts without)

    p.description = ("Turn a checkpoint saved by the authors' code into a wssl-zoo model directory "
                     "(model.safetensors with timm keys, config.json, projector.safetensors, convert.json). Read "
                     "with torch.load(weights_only=True); every tensor must map (missing and unexpected keys are "
                     "named); the result must give the same features as the torchvision ResNet the authors "
                     "trained, or nothing is written.")
    p.add_argument("--from", dest="layout", required=True, choices=sorted(LAYOUTS),
                   help="whose code saved the checkpoint")
    p.add_argument("ckpt", metavar="CKPT", help="the checkpoint file (.pth / .pth.tar)")
    p.add_argument("--out", required=True, metavar="DIR", help="the model directory to write: new, empty, or this "
                   "same conversion's earlier output")
    p.add_argument("--overwrite", action="store_true", help="delete what --out holds first (any other folder is "
                   "refused, so no stale projector, logs or checkpoints stay next to the new weights)")
    p.add_argument("--entry", metavar="NAME", help="the registry entry these weights are (sets arch, stem, "
                   "normalisation and input size, checked against the tensors; `publish` then pins it)")
    p.add_argument("--arch", help="timm ResNet name (default: inferred from the tensors)")
    p.add_argument("--stem", choices=list(STEMS), help="default: imagenet for a 7x7 conv1; for a 3x3 conv1 "
                   "cifar_pad2 for INTL (its padded CIFAR network), else required (cifar: no max-pool; small: "
                   "STL-10/Tiny-ImageNet, max-pool kept)")
    p.add_argument("--dataset", type=dataset_arg, metavar="NAME", help="pretraining dataset, for the normalisation "
                   "and input size (default: the entry's, or imagenet for a 7x7 conv1)")
    p.add_argument("--img-size", type=int, help="input size recorded in config.json (default: the dataset's)")
    p.add_argument("--branch", choices=["online", "momentum"], default="online",
                   help="INTL_M: which encoder to take (default: %(default)s, as the authors' evaluate.py)")


def _convert_run(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint  # loads torch: only for this subcommand (wssl-zoo list starts without)

    prov = convert_checkpoint(args.layout, args.ckpt, args.out, entry=args.entry, arch=args.arch, stem=args.stem,
                              dataset=args.dataset, img_size=args.img_size, branch=args.branch,
                              overwrite=args.overwrite)
    print(f"converted {args.ckpt} ({prov['layout']}, {prov['arch']}, {prov['stem']} stem, "
          f"{prov['backbone_tensors']} backbone tensors from prefix {prov['prefixes']['backbone']!r}"
          + (f", projector {prov['projector']}" if prov["projector"] else ", no projector")
          + (f", dropped {len(prov['dropped_keys'])} tensors of the other branch" if prov["dropped_keys"] else "")
          + f") -> {args.out}")
    pad = " behind INTL's 1-pixel zero pad" if prov["method"] == "intl" else ""
    print(f"features equal the authors' torchvision {prov['arch']}{pad}: max |diff| "
          f"{prov['feature_check']['max_abs_diff']:.2g} ({prov['stem']} stem)")
    print(f"next: wssl-zoo publish {args.out} --repo ORG/NAME" + (f"  (registry entry {prov['entry']})" if prov["entry"] else ""))
    return 0


def _plot_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Draw the training curves of a pretraining run from RUN/log.jsonl: loss and learning rate per "
                     "epoch and per logged step (--log-every), kNN monitor and effective rank per monitor epoch, "
                     "views/s and data-wait share per logged step. Needs matplotlib: pip install 'wssl-zoo[plot]'.")
    p.add_argument("run", metavar="RUN", help="the run's output folder (--out of pretrain) or its log.jsonl")
    p.add_argument("--out", metavar="FILE", help="PNG to write (default: RUN/training_curves.png)")
    p.add_argument("--title", help="figure title (default: the run folder's name)")


def _plot_run(args: argparse.Namespace) -> int:
    from .plots import (  # loads torch: only for this subcommand (wssl-zoo list starts without)
        plot_training_curves,
        training_curves,
    )

    path = plot_training_curves(args.run, args.out, title=args.title)
    curves = training_curves(args.run)
    last = {k: v[-1] for k, v in curves.items()}
    print(f"wrote {path}: " + ", ".join(f"{k} {v[1]:.4g} (epoch {v[0]:.0f})" for k, v in last.items()))
    return 0


def _download_data_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Download a dataset with torchvision's downloader (md5-checked) into --root, else $WSSL_ZOO_DATA/NAME, "
                     "else ~/.cache/wssl_zoo/data/NAME, and print the folder to pass as --data. "
                     "$WSSL_ZOO_DATA_MIRROR (a base URL) replaces the download host.")
    p.add_argument("name", metavar="NAME", help=f"one of {', '.join(downloadable())}")
    p.add_argument("--root", metavar="DIR", help="where to put it (default: $WSSL_ZOO_DATA/NAME or "
                   "~/.cache/wssl_zoo/data/NAME)")


def _download_data_run(args: argparse.Namespace) -> int:
    folder = download(args.name, args.root)
    print(f"{args.name}: {folder}  (pass --data {folder} --dataset {args.name})")
    return 0


def _docs_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Render every generated document from the registry and zoo/results: the README's generated "
                     "sections (zoo table, measured pretraining results, leaderboard), LEADERBOARD.md, "
                     "docs/leaderboard.png and MODEL_CARDS/. The same generator as python -m eval.report.")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming every document that is out of "
                   "date (default: write them)")


def _docs_run(args: argparse.Namespace) -> int:
    lines, stale = generate(check=args.check)
    for line in lines:
        print(line)
    if args.check:
        for path in stale:
            print(f"out of date: {path} (run wssl-zoo docs)")
        return 1 if stale else 0
    print(f"{len(stale)} document(s) refreshed" if stale else "every document was up to date")
    return 0


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("list", "the registered models as a table", _list_args, _list_run),
    Subcommand("info", "one registry entry: recipe, files, paper results (no download)", _info_args, _info_run),
    Subcommand("card", "render model cards (MODEL_CARDS/) from the registry and zoo/results", _card_args, _card_run),
    Subcommand("docs", "render every generated document (README sections, LEADERBOARD.md, plot, MODEL_CARDS/)",
               _docs_args, _docs_run),
    Subcommand("download", "prefetch published weights into the Hugging Face cache (sha256-checked)",
               _download_args, _download_run),
    Subcommand("download-data", "download CIFAR-10/100, STL-10 or Fashion-MNIST with torchvision (md5-checked)",
               _download_data_args, _download_data_run),
    Subcommand("publish", "upload a model directory to the Hub and pin it in the registry", _publish_args,
               _publish_run),
    Subcommand("convert", "convert the authors' checkpoint into a model directory", _convert_args, _convert_run),
    Subcommand("pretrain", "pretrain with a paper recipe (python -m wssl_zoo.pretrain)", _pretrain_args, _pretrain_run),
    Subcommand("demo", "pretrain a small model offline and compare it with random init", _demo_args, _demo_run),
    Subcommand("plot", "draw a pretraining run's training curves from its log.jsonl (matplotlib)", _plot_args, _plot_run),
]


def register_subcommand(command: Subcommand) -> Subcommand:
    """Add ``command`` to :data:`SUBCOMMANDS` (for modules that bring their own subcommand)."""
    if any(c.name == command.name for c in SUBCOMMANDS):
        raise ValueError(f"a wssl-zoo subcommand named {command.name!r} is already registered")
    SUBCOMMANDS.append(command)
    return command


# The engines' own command lines, reached through this face: `wssl-zoo eval linear ARGS` runs
# `python -m eval.linear ARGS` (the same parser, --help, errors and exit status). Their lists are the
# packages' own (eval.COMMANDS, detection.COMMANDS).
FORWARDED = {"eval": ("eval", "evaluate a backbone: linear, knn, semi, spectrum, benchmark, report"),
             "detect": ("detection", "COCO / VOC detection transfer: train, export")}


def _forwarded(package: str) -> dict[str, str]:
    return importlib.import_module(package).COMMANDS


def _run_forwarded(package: str, name: str, argv: list[str]) -> int:
    # the engines import torch, torchvision and timm: loaded only for the command that runs
    return int(importlib.import_module(f"{package}.{name}").main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wssl-zoo", description="The whitening-SSL model zoo.",
                                     epilog="Every COMMAND has its --help; `wssl-zoo eval linear --help` is `python -m "
                                     "eval.linear --help`, `wssl-zoo detect train --help` is `python -m detection.train "
                                     "--help`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in SUBCOMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    for group, (package, what) in FORWARDED.items():
        g = sub.add_parser(group, help=what, description=what)
        inner = g.add_subparsers(dest="forwarded", metavar="TOOL")
        inner.required = True
        for name, help_text in _forwarded(package).items():
            # listed here for --help; main() hands everything after the tool's name to the tool itself
            inner.add_parser(name, help=help_text.replace("%", "%%"), add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``wssl-zoo`` command line; returns the exit status (2 for a usage or input error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] in FORWARDED and argv[1] in _forwarded(FORWARDED[argv[0]][0]):
        return _run_forwarded(FORWARDED[argv[0]][0], argv[1], argv[2:])  # the tool parses, helps and errs itself
    args = build_parser().parse_args(argv)
    args._argv = argv[1:]  # the subcommand's own arguments (argv[0] is its name: wssl-zoo has no global options)

    # errors from wssl-zoo carry a message that names the file / key / value: no traceback
    return run_cli(f"wssl-zoo {args.command}", lambda: args._run(args))
