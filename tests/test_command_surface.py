"""One command surface: `wssl-zoo --help` shows every command, `wssl-zoo eval|detect TOOL` is
`python -m eval|detection.TOOL` (same parser, --help, errors, exit status), and every tool with a
main() is reachable that way."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from wssl_zoo import cli

REPO = Path(__file__).resolve().parent.parent
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
        tools = {p.stem for p in (REPO / package).glob("*.py")
                 if not p.stem.startswith("_") and re.search(r"^def main\(", p.read_text(), re.M)}
        assert tools == set(importlib.import_module(package).COMMANDS), package


def test_a_forwarded_tool_keeps_its_exit_status_and_one_line_errors(tmp_path, capsys):
    assert cli.main(["eval", "linear", "--model", "not_a_model", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval.linear: error:") and "not_a_model" in err and "Traceback" not in err
