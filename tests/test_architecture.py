"""The shape of the house: imports run downward only and in no circle, and what must stay light
stays light (README "How it is built"; the layers are declared in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def import_graph() -> dict[str, set[str]]:
    """dltrain's modules (and the sweeper plugin's) -> the ones of them each imports, at any depth
    of the file (imports inside functions count: they run too)."""
    import grimp

    graph = grimp.build_graph("dltrain", "hydra_plugins.dltrain_optuna_sweeper", cache_dir=None)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), plus self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_in_a_circle():
    """Package __init__ files count: `models/__init__` imports the model files, so their registry
    lives in models/base.py, not in the __init__ they would otherwise import back."""
    assert cycles(import_graph()) == []


def test_the_layer_contracts_hold():
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_import_runs_upward_by_our_own_reading_of_the_layers():
    """A second reading of the same contract, so that it cannot pass by being misread."""
    layers = next(c for c in pyproject()["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    order = [layer.replace(" ", "").split("|") for layer in layers]
    rank = {name: i for i, names in enumerate(order) for name in names}
    graph = import_graph()
    upward = [
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if a.startswith("dltrain.") and b.startswith("dltrain.") and rank.get(a.split(".")[1], -1) > rank.get(b.split(".")[1], 99)
    ]
    assert upward == []
    assert rank["engine"] > rank["config"] and rank["errors"] == len(order) - 1


def test_every_config_folder_ships_as_a_package():
    packages = set(pyproject()["tool"]["setuptools"]["packages"])
    folders = {"dltrain.configs." + ".".join(p.relative_to(REPO / "configs").parts) for p in (REPO / "configs").rglob("*") if p.is_dir()}
    assert folders <= packages, folders - packages


def test_help_and_the_writer_process_stay_light():
    """`dltrain --help` imports neither torch nor Hydra; the checkpoint writer process no torch."""
    code = (
        "import sys\nfrom dltrain.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, sorted(sys.modules)\n"
        "import dltrain.engine.writer_process\nassert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
