"""One command surface: `wssl-zoo --help` shows every command, `wssl-zoo eval|detect TOOL` is
`python -m eval|detection.TOOL` (same parser, --help, errors, exit status), and every tool with a
main() is reachable that way."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys

import pytest

from eval import benchmark, knn, linear, report, semi, spectrum
from wssl_zoo import cli

from conftest import REPO_ROOT

TOOLS = [(group, name) for group, (package, _) in cli.FORWARDED.items()
         for name in importlib.import_module(package).COMMANDS]


def _help(run, capsys) -> str:
    """The --help text of ``run()``, which exits 0 (argparse) or returns 0 (detection.train)."""
    try:
        status = run()
    except SystemExit as exc:
        status = exc.code
    assert status in (0, None)
    return capsys.readouterr().out


# earlier spellings, still accepted (hidden aliases) but never shown: each flag is spelled once
RETIRED = {"--models": "--model", "--data-root": "--data", "--coco-root": "--data ... --dataset coco",
           "--voc-root": "--data ... --dataset voc", "--protocols": "--protocol",
           "--linear-protocol": "--protocol linear=NAME", "--semi-protocol": "--protocol semi=NAME",
           "--coco-config": "--protocol coco=NAME", "--num-workers": "--workers"}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from detection import export as d_export
    from detection import train as d_train
    from wssl_zoo.pretrain import evaluate as p_evaluate

    parsers = {f"eval.{name}": importlib.import_module(f"eval.{name}").build_parser()
               for name in importlib.import_module("eval").COMMANDS}
    parsers.update({"detection.train": d_train.build_parser(), "detection.export": d_export._parser(),
                    "wssl_zoo.pretrain.evaluate": p_evaluate.build_parser()})
    top = cli.build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    parsers.update({f"wssl-zoo {name}": p for name, p in sub.choices.items() if name not in cli.FORWARDED})
    return parsers


def _visible(parser) -> dict[str, object]:
    return {opt: action for action in parser._actions if action.help != argparse.SUPPRESS
            for opt in action.option_strings}


@pytest.mark.parametrize("group,name", TOOLS)
def test_wssl_zoo_eval_and_detect_are_the_module_commands(group, name, capsys):
    package = cli.FORWARDED[group][0]
    module = importlib.import_module(f"{package}.{name}")
    assert _help(lambda: cli.main([group, name, "--help"]), capsys) == _help(lambda: module.main(["--help"]), capsys)


def test_wssl_zoo_help_shows_the_whole_surface(capsys):
    text = _help(lambda: cli.main(["--help"]), capsys)
    for command in [c.name for c in cli.SUBCOMMANDS] + list(cli.FORWARDED):
        assert re.search(rf"^\s+{re.escape(command)}\b", text, re.M), command
    for group in cli.FORWARDED:
        listed = _help(lambda: cli.main([group, "--help"]), capsys)
        for g, name in TOOLS:
            if g == group:
                assert re.search(rf"^\s+{name}\b", listed, re.M), (group, name)


def test_every_tool_with_a_main_is_on_the_surface():
    """A new `python -m eval.x` / `detection.x` tool must be listed in its package's COMMANDS."""
    for group, (package, _) in cli.FORWARDED.items():
        tools = {p.stem for p in (REPO_ROOT / package).glob("*.py")
                 if not p.stem.startswith("_") and re.search(r"^def main\(", p.read_text(), re.M)}
        assert tools == set(importlib.import_module(package).COMMANDS), package


def test_a_forwarded_tool_keeps_its_exit_status_and_one_line_errors(tmp_path, capsys):
    assert cli.main(["eval", "linear", "--model", "not_a_model", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval.linear: error:") and "not_a_model" in err and "Traceback" not in err


def test_each_flag_is_spelled_once_across_the_tools():
    for tool, parser in _parsers().items():
        shown = _visible(parser)
        assert not set(shown) & set(RETIRED), (tool, {f: RETIRED[f] for f in set(shown) & set(RETIRED)})
        # --split is a dataset split wherever it is shown (eval.semi's labelled fraction is --labelled)
        if "--split" in shown:
            assert set(shown["--split"].choices or ()) <= {"train", "test", "val"}, tool


def test_the_shared_flags_mean_the_same_in_every_tool():
    from wssl_zoo import cliargs

    parsers = _parsers()
    devices = {tool: _visible(p)["--device"].help for tool, p in parsers.items() if "--device" in _visible(p)}
    assert len(devices) >= 8 and len(set(devices.values())) == 1, devices
    for tool, parser in parsers.items():
        dataset = _visible(parser).get("--dataset")
        if dataset is not None and tool != "detection.train":  # detection reads coco|voc
            assert dataset.type is cliargs.dataset_arg, tool
    long_jobs = ("wssl-zoo pretrain", "eval.linear", "eval.semi", "detection.train")
    assert all("--resume" in _visible(parsers[t]) for t in long_jobs)


def test_retired_spellings_still_work(tmp_path):
    """The hidden aliases keep the commands researchers already typed working."""
    from detection import train as d_train
    from eval import benchmark, knn, semi

    args = benchmark.build_parser().parse_args(["--models", "a,b", "--data-root", "D", "--linear-protocol", "small",
                                                "--coco-config", "c"])
    assert (args.models, args.data_root, benchmark.task_protocols(args.protocol)["linear"]) == (["a,b"], "D", "small")
    assert benchmark.task_protocols(args.protocol)["coco"] == "c"
    assert knn.build_parser().parse_args(["--model", "m", "--data", "d", "--protocols", "knn5"]).protocols == "knn5"
    assert semi.build_parser().parse_args(["--model", "m", "--data", "d", "--split", "1pct"]).split == "1pct"
    d = d_train.build_parser().parse_args(["--model", "m", "--config", "c", "--coco-root", "r", "--out", "o",
                                           "--num-workers", "3"])
    assert (d.config, d.coco_root, d.workers) == ("c", "r", 3)


@pytest.mark.parametrize("module", [linear, knn, semi, spectrum, benchmark, report])
def test_help_explains_every_flag(module, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"]) if module is not report else report.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    options = [line.strip() for line in out.splitlines() if line.strip().startswith("--")]
    assert options  # every option line is followed by (or carries) a help text
    assert "default" in out


def test_the_face_loads_no_model_library():
    """`wssl-zoo list`, `info`, `docs` and `--help` start without timm (and so without building any
    network): the face and the documents import the model-directory code only inside the commands that
    read a model."""
    code = "import sys, wssl_zoo.cli; print(sorted(m for m in ('timm', 'wssl_zoo.modelio', 'wssl_zoo.encoders') " \
           "if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
