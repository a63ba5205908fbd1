"""The package's shape: imports that only point down (no circle, counting imports made inside functions),
rooms small enough to read in one sitting. Drawn from the source with ast (tools/import_graph.py)."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
G = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = G
_spec.loader.exec_module(G)

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 120
#: Functions kept over the limit, with the reason (none: claims.evaluate was split into its claims' parts).
LONG_FUNCTIONS: dict[str, str] = {}

#: The floors of the house, lowest first: a module may import its own floor or any floor below, never above.
LAYERS: list[tuple[str, set[str]]] = [
    ("ground", {"errors", "strict", "config", "provenance", "runlock", "workers", "stats"}),
    ("data", {"data"}),
    ("ideas", {"model", "masks", "schedule", "topology", "attention", "flops", "kernels", "presets", "ladder"}),
    ("running", {"results", "checkpoint", "train", "training", "train_steps", "sweep", "benchstore", "benchmark",
                 "experimental", "gpu"}),
    ("evaluation", {"evaluate", "scoring", "fewshot"}),
    ("book", {"experiments", "pipeline", "tables", "plots", "verdicts", "notebook", "claims", "fair_test", "describe",
              "commands", "cli", "__main__"}),
]


def floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # the package itself: the front door, above everything
    room = parts[1]
    for i, (_, rooms) in enumerate(LAYERS):
        if room in rooms:
            return i
    raise AssertionError(f"{module} is on no floor of tests/test_house.py's LAYERS: add it where it belongs")


def test_no_import_circle():
    _, edges = G.graph(ROOT)
    assert G.circles(edges) == []


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The check can fail: a circle made only by an import inside a function is found."""
    pkg = tmp_path / "mstlib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n    return x\n")
    _, edges = G.graph(tmp_path)
    assert G.circles(edges) == [["mstlib.a", "mstlib.b"]]
    assert edges["mstlib.b"] == [("mstlib.a", 2, True)]


def test_imports_point_down():
    _, edges = G.graph(ROOT)
    up = [f"{m} (floor {LAYERS[floor(m)][0] if floor(m) < len(LAYERS) else 'door'}) imports {w} "
          f"(floor {LAYERS[floor(w)][0] if floor(w) < len(LAYERS) else 'door'}), line {line}"
          for m, es in edges.items() for w, line, _ in es if floor(w) > floor(m)]
    assert up == []


def test_imports_inside_functions_say_why():
    """An import of mstlib's own modules inside a function carries a comment (a heavy optional dependency
    behind it); anything else belongs at the top of the module."""
    modules, edges = G.graph(ROOT)
    bare = []
    for m, es in edges.items():
        lines = modules[m].read_text().splitlines()
        for _, line, inside in es:
            if inside and "#" not in lines[line - 1] and not lines[line - 2].strip().startswith("#"):
                bare.append(f"{modules[m].relative_to(ROOT)}:{line}: {lines[line - 1].strip()}")
    assert bare == []


def test_no_module_over_500_lines():
    modules = G.module_files(ROOT)
    long = {m: n for m, p in modules.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_over_120_lines():
    long = {f"{m}.{f}": n for m, p in G.module_files(ROOT).items() for f, n in G.functions(p)
            if n > MAX_FUNCTION_LINES and f"{m}.{f}" not in LONG_FUNCTIONS}
    assert long == {}
    for name in LONG_FUNCTIONS:  # an exception that is no longer needed is removed
        m, _, f = name.rpartition(".")
        while m and m not in G.module_files(ROOT):
            m, _, rest = m.rpartition(".")
            f = f"{rest}.{f}"
        assert dict(G.functions(G.module_files(ROOT)[m]))[f] > MAX_FUNCTION_LINES, name


def test_function_lengths_are_measured(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("class C:\n    def f(self):\n" + "        x = 1\n" * 130 + "\n\ndef g():\n    pass\n")
    assert G.functions(p) == [("C.f", 131), ("g", 2)]


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "mstlib").rglob("*.py")))
def test_every_module_parses(path):
    ast.parse((ROOT / path).read_text())
