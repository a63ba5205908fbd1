#!/usr/bin/env python3
"""Check the jupytext pairs in notebooks/: every ``NN_name.py`` (percent format, the source) has an
``NN_name.ipynb`` whose cells are the same (type, source and tags), and both name the ``python3`` kernel.

Outputs and execution metadata are not compared (the .ipynb carries them, the .py does not). A cell that
papermill inserts to record the parameters of a run (tag ``injected-parameters``) is ignored: it documents
how the stored outputs were made and has no counterpart in the source.

Usage: python tools/check_pairs.py [FOLDER]   (exit status 1 and one line per problem when out of sync;
fix with `make sync`, which runs jupytext --sync)
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
IGNORED_TAGS = {"injected-parameters"}
KERNEL = "python3"


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple[str, ...]]]:
    out = []
    for cell in nb.cells:
        tags = tuple(sorted(cell.get("metadata", {}).get("tags", [])))
        if IGNORED_TAGS & set(tags):
            continue
        out.append((cell.cell_type, cell.source.strip(), tags))
    return out


def check_pair(py: Path) -> list[str]:
    """Problems with one pair, as messages naming the file and how to fix it (empty when in sync)."""
    problems = []
    ipynb = py.with_suffix(".ipynb")
    source = jupytext.read(py)
    if source.metadata.get("kernelspec", {}).get("name") != KERNEL:
        problems.append(f"{py}: no kernelspec '{KERNEL}' in its header (jupytext --set-kernel {KERNEL} {py})")
    if not ipynb.exists():
        return problems + [f"{py}: has no pair {ipynb.name} (make sync, or jupytext --to ipynb {py})"]
    paired = nbformat.read(ipynb, as_version=4)
    if paired.metadata.get("kernelspec", {}).get("name") != KERNEL:
        problems.append(f"{ipynb}: no kernelspec '{KERNEL}' in its metadata (papermill needs it)")
    a, b = _cells(source), _cells(paired)
    if a != b:
        where = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        problems.append(
            f"{py} and {ipynb.name} differ (.py {len(a)} cells, .ipynb {len(b)} cells; first difference at "
            f"cell {where}); run `make sync` (jupytext --sync takes the newer file as the source)"
        )
    return problems


def check_folder(folder: Path) -> list[str]:
    problems = []
    for py in sorted(folder.glob("*.py")):
        problems += check_pair(py)
    for ipynb in sorted(folder.glob("*.ipynb")):
        if not ipynb.with_suffix(".py").exists():
            problems.append(f"{ipynb}: has no .py source (jupytext --to py:percent {ipynb})")
    return problems


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else ROOT / "notebooks"
    problems = check_folder(folder)
    for p in problems:
        print(p, file=sys.stderr)
    n = len(list(folder.glob("*.py")))
    print(f"{n} notebook pair(s) checked in {folder}: " + ("all in sync" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
