#!/usr/bin/env python3
"""Check (and with ``--sync`` repair) the jupytext pairs in notebooks/.

A pair is ``NN_name.py`` (percent format, the source reviewed in git) and ``NN_name.ipynb`` (the same
cells with the executed outputs the book shows). It is in sync when both have the same cells (type,
source and tags) and both name the ``python3`` kernel (papermill needs it). Outputs and execution
metadata are not compared. The cell papermill inserts to record a run's parameters (tag
``injected-parameters``) is ignored: it documents how the stored outputs were made and has no place in
the source.

``--sync`` (``make sync``) brings drifted pairs together, the newer file being the source:
* ``.py`` newer (edited in an editor): the ``.ipynb`` gets its cells, keeping the outputs of cells whose
  source did not change (jupytext's own combine); the outputs of changed cells are gone until the
  notebook is executed again.
* ``.ipynb`` newer (edited in JupyterLab without jupytext): the ``.py`` is rewritten from it, without the
  injected-parameters cell and without papermill's execution metadata.
Plain ``jupytext --sync`` would copy papermill's cell and metadata into the source, which is why this
script exists.

Usage: python tools/check_pairs.py [--sync] [FOLDER]   (exit status 1 with one line per problem)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs

ROOT = Path(__file__).resolve().parent.parent
IGNORED_TAGS = {"injected-parameters"}
KERNEL = "python3"
PY_FORMAT = "py:percent"
#: cell metadata that records an execution (papermill, Jupyter): kept in the .ipynb, never in the source
EXECUTION_METADATA = ("papermill", "execution", "ExecuteTime", "trusted", "scrolled", "collapsed")


def _is_injected(cell: nbformat.NotebookNode) -> bool:
    return bool(IGNORED_TAGS & set(cell.get("metadata", {}).get("tags", [])))


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (cell.cell_type, cell.source.strip(), tuple(sorted(cell.get("metadata", {}).get("tags", []))))
        for cell in nb.cells
        if not _is_injected(cell)
    ]


def check_pair(py: Path) -> list[str]:
    """Problems with one pair, as messages naming the file and how to fix it (empty when in sync)."""
    problems = []
    ipynb = py.with_suffix(".ipynb")
    source = jupytext.read(py)
    if source.metadata.get("kernelspec", {}).get("name") != KERNEL:
        problems.append(f"{py}: no kernelspec '{KERNEL}' in its header (jupytext --set-kernel {KERNEL} {py})")
    if not ipynb.exists():
        return problems + [f"{py}: has no pair {ipynb.name} (make sync)"]
    paired = nbformat.read(ipynb, as_version=4)
    if paired.metadata.get("kernelspec", {}).get("name") != KERNEL:
        problems.append(f"{ipynb}: no kernelspec '{KERNEL}' in its metadata (papermill needs it)")
    a, b = _cells(source), _cells(paired)
    if a != b:
        where = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        problems.append(
            f"{py} and {ipynb.name} differ (.py {len(a)} cells, .ipynb {len(b)} cells; first difference at "
            f"cell {where}); run `make sync` (the newer file is taken as the source)"
        )
    return problems


def sync_pair(py: Path) -> str | None:
    """Bring one pair in sync (see the module docstring); return what was done, None if nothing."""
    ipynb = py.with_suffix(".ipynb")
    if not ipynb.exists():
        jupytext.write(jupytext.read(py), ipynb, fmt="ipynb")
        return f"created {ipynb.name} from {py.name} (no outputs yet: execute it)"
    if not check_pair(py):
        return None
    if py.stat().st_mtime >= ipynb.stat().st_mtime:
        combined = combine_inputs_with_outputs(jupytext.read(py), nbformat.read(ipynb, as_version=4))
        jupytext.write(combined, ipynb, fmt="ipynb")
        return f"updated {ipynb.name} from {py.name} (outputs of changed cells dropped)"
    nb = jupytext.read(ipynb)
    nb.cells = [c for c in nb.cells if not _is_injected(c)]
    for cell in nb.cells:
        for key in EXECUTION_METADATA:
            cell.metadata.pop(key, None)
    jupytext.write(nb, py, fmt=PY_FORMAT)
    return f"rewrote {py.name} from {ipynb.name}"


def check_folder(folder: Path) -> list[str]:
    problems = []
    for py in sorted(folder.glob("*.py")):
        problems += check_pair(py)
    for ipynb in sorted(folder.glob("*.ipynb")):
        if not ipynb.with_suffix(".py").exists():
            problems.append(f"{ipynb}: has no .py source (jupytext --to {PY_FORMAT} {ipynb})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--sync", action="store_true", help="repair drifted pairs (newer file wins)")
    args = parser.parse_args(argv)
    if args.sync:
        for py in sorted(args.folder.glob("*.py")):
            done = sync_pair(py)
            if done:
                print(done)
    problems = check_folder(args.folder)
    for p in problems:
        print(p, file=sys.stderr)
    n = len(list(args.folder.glob("*.py")))
    print(f"{n} notebook pair(s) in {args.folder}: " + (f"{len(problems)} problem(s)" if problems else "all in sync"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
