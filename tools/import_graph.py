"""mstlib's import graph, drawn from the source with ast: module-level and function-level imports.

    python tools/import_graph.py            # rooms, edges, circles, longest module and function
    python tools/import_graph.py --json     # the same as JSON
    python tools/import_graph.py --walk mstlib.train   # the modules reached from one module, in order

Only imports of mstlib's own modules count as edges. An import inside a function (or a class body) is an
edge like any other: hiding an import in a function hides a circle, it does not remove it.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mstlib"


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package's __init__ named for the package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` is or lies inside (`mstlib.a.b` -> `mstlib.a` if b is a name)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of the package's own modules."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    anchor = base[: len(base) - (child.level - 1)] if child.level > 1 else base
                    prefix = ".".join(anchor + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                # each name is a module or lies inside one (the longest known prefix); `*` names the prefix
                targets = [f"{prefix}.{a.name}" if a.name != "*" else prefix for a in child.names]
            seen = set()
            for t in targets:
                if not (t == PACKAGE or t.startswith(PACKAGE + ".")):
                    continue
                r = _resolve(t, modules)
                if r and r != module and r not in seen:
                    seen.add(r)
                    found.append((r, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def graph(root: Path = ROOT) -> tuple[dict[str, Path], dict[str, list[tuple[str, int, bool]]]]:
    modules = module_files(root)
    return modules, {m: imports_of(m, p, modules) for m, p in modules.items()}


def circles(edges: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _, _ in edges.get(v, []):
            if w not in index:
                strong(w)
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

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return sorted(out)


def functions(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method in a file, decorators excluded."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return out


def walk(start: str, edges: dict[str, list[tuple[str, int, bool]]]) -> tuple[list[str], dict[str, int]]:
    """The modules a reader following `start` reaches (breadth first), and how many imports among them lead
    into each one: the number of times the walk arrives at a module again."""
    seen, queue = [start], [start]
    while queue:
        m = queue.pop(0)
        for w, _, _ in edges.get(m, []):
            if w not in seen:
                seen.append(w)
                queue.append(w)
    arrivals = {m: 0 for m in seen}
    for m in seen:
        for w, _, _ in edges.get(m, []):
            arrivals[w] += 1
    return seen, arrivals


def summary(root: Path = ROOT) -> dict:
    modules, edges = graph(root)
    sizes = {m: len(p.read_text().splitlines()) for m, p in modules.items()}
    funcs = [(f"{m}.{f}", n) for m, p in modules.items() for f, n in functions(p)]
    longest_module = max(sizes.items(), key=lambda kv: kv[1])
    longest_function = max(funcs, key=lambda kv: kv[1])
    in_function = [(m, w, line) for m, es in edges.items() for w, line, f in es if f]
    return {
        "modules": len(modules),
        "packages": sorted(m for m, p in modules.items() if p.name == "__init__.py"),
        "edges": sum(len(e) for e in edges.values()),
        "imports_inside_functions": len(in_function),
        "circles": circles(edges),
        "longest_module": list(longest_module),
        "modules_over_500": sorted([m, n] for m, n in sizes.items() if n > 500),
        "longest_function": list(longest_function),
        "functions_over_120": sorted([f, n] for f, n in funcs if n > 120),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--walk", metavar="MODULE")
    args = ap.parse_args(argv)
    if args.walk:
        _, edges = graph()
        order, arrivals = walk(args.walk, edges)
        print(f"{len(order)} modules reached from {args.walk}: " + ", ".join(m.removeprefix("mstlib.") for m in order))
        print("imports into each (from modules reached): " + ", ".join(
            f"{m.removeprefix('mstlib.')} {n}" for m, n in sorted(arrivals.items(), key=lambda kv: (-kv[1], kv[0])) if n))
        return 0
    s = summary()
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"modules: {s['modules']} (packages: {', '.join(s['packages'])})")
    print(f"import edges: {s['edges']} ({s['imports_inside_functions']} made inside functions)")
    print(f"circles: {len(s['circles'])}")
    for c in s["circles"]:
        print("  " + " <-> ".join(m.removeprefix("mstlib.") for m in c))
    print(f"longest module: {s['longest_module'][0]} ({s['longest_module'][1]} lines); over 500: {len(s['modules_over_500'])}")
    print(f"longest function: {s['longest_function'][0]} ({s['longest_function'][1]} lines); over 120: {len(s['functions_over_120'])}")
    return 1 if s["circles"] else 0


if __name__ == "__main__":
    sys.exit(main())
