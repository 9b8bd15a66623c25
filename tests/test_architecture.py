"""The structure the README's ARCHITECTURE section promises: no import cycle in ``wssl_zoo``,
``eval`` and ``detection``, between modules nor between packages, counting every import (module
level or inside a function), and each shared concept defined in one place."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("wssl_zoo", "eval", "detection")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import sub` imports the module pkg.sub when there is one
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [mod, *subs]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` -> the deepest module we have
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _unit(module: str) -> str:
    """Package-level node: a subpackage (``wssl_zoo.pretrain``) or a top-level module of
    ``wssl_zoo`` (``wssl_zoo.demo``), or the whole ``eval`` / ``detection`` package."""
    parts = module.split(".")
    if parts[0] != "wssl_zoo":
        return parts[0]
    return ".".join(parts[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules():
    assert _cycles(import_graph()) == []


def test_no_import_cycle_between_packages():
    graph = import_graph()
    units: dict[str, set[str]] = {}
    for src, dsts in graph.items():
        # a package's __init__ re-exporting its children is not a dependency of the package on itself
        units.setdefault(_unit(src), set()).update(_unit(d) for d in dsts if _unit(d) != _unit(src))
    assert _cycles(units) == []
    top = {p: {u.split(".")[0] for u in deps} - {p} for p, deps in
           ((pkg, set().union(*(units[u] for u in units if u.split(".")[0] == pkg))) for pkg in PACKAGES)}
    assert _cycles(top) == []


def test_the_library_does_not_import_the_clis_or_the_demo():
    graph = import_graph()
    for module, deps in graph.items():
        if module.startswith("wssl_zoo"):
            assert not {d for d in deps if d.split(".")[0] in ("eval", "detection")}, module
        if module.startswith("wssl_zoo.pretrain"):
            assert "wssl_zoo.demo" not in deps, module


def test_the_checker_finds_a_cycle():  # the test above can fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", ["def _state_sha256", "def tensor_sha256", "def spec_label", "def parse_random_spec",
                                  "def knn_predict(xtr", "def effective_rank", "def spectrum(", "def extract_features",
                                  'STEMS = ("', 'METHODS = ("', "def non_finite_tensors", "def build_loaded",
                                  "def sha256_file", "def atomic_open", "def rank_world", "init_process_group(",
                                  "class LARS", "EXIT_PREEMPTED = ", "def default_workers", "def seeded(",
                                  "def derive_seed"])
def test_each_concept_is_defined_once(name):
    hits = [str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if name in p.read_text()]
    assert len(hits) <= 1, f"{name!r} is defined in {hits}"


def test_every_package_of_the_tree_is_in_the_wheel():
    """pyproject lists its packages by name: a new package folder (``wssl_zoo/methods`` once) that is
    not listed is missing from the wheel, and an installed ``import wssl_zoo`` then fails."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for top in ("wssl_zoo", "eval", "detection")
             for p in (REPO / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    assert found - listed == set(), f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_evaluation_and_detection_pass_the_resolved_weights_around_and_never_import_the_training_engine():
    """No consumer wraps ResolvedWeights again (eval's ModelInfo, detection's BackboneInfo were such
    wrappers), and evaluation and detection import nothing of wssl_zoo.pretrain (LARS is wssl_zoo.optim's)."""
    for pkg in ("eval", "detection", "wssl_zoo"):
        for path in (REPO / pkg).rglob("*.py"):
            text = path.read_text()
            assert "class ModelInfo" not in text and "class BackboneInfo" not in text, path
    graph = import_graph()
    for module, deps in graph.items():
        if module.split(".")[0] in ("eval", "detection"):
            assert not {d for d in deps if d.startswith("wssl_zoo.pretrain")}, module


def test_the_torch_free_layers_import_without_torch():
    """docs/ARCHITECTURE.md's layer 1 (and fileio, runlog, download) import no torch: the commands that only
    name models and datasets start without it, and the library's lowest layer stays light."""
    modules = ["wssl_zoo.registry", "wssl_zoo.catalogue", "wssl_zoo._version", "wssl_zoo.paths", "wssl_zoo.cliargs",
               "wssl_zoo.methods", "wssl_zoo.fileio", "wssl_zoo.runlog", "wssl_zoo.download"]
    code = f"import sys; [__import__(m) for m in {modules!r}]; print('torch' in sys.modules, 'timm' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"
