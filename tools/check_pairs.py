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
Plain ``jupytext --sync`` would copy papermill's cell and metadata into the source, and jupytext's
combine loses tags edited in the .py and the injected cell, which is why this script exists.

Code on demand: the book shows outputs, and code only when the reader asks. Every code cell of a
notebook's .py carries one of these myst-nb tags (``# %% tags=["hide-input"]``), which ``--sync`` carries
into the .ipynb with its outputs kept; tests/test_book.py fails on a page that shows a code cell open:
* ``hide-input``: the cell's output matters (a table, a figure, printed text); its code is collapsed.
* ``remove-input``: plumbing (imports, checks, loading, cells that only glue numbers); its code is left
  off the page, and anything it does print (a warning, an error) still shows.
* ``hide-cell``: the ``parameters`` cell (``tags=["parameters", "hide-cell"]``), collapsed whole; the
  cell papermill injects gets the same from tools/reproduce.py.

Usage: python tools/check_pairs.py [--sync] [FOLDER]   (exit status 1 with one line per problem)
"""

from __future__ import annotations

import argparse
import sys
import uuid
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


def _combine(source: nbformat.NotebookNode, paired: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The source's cells with the paired notebook's outputs. jupytext's combine keeps the outputs of
    unchanged cells but takes their metadata from the outputs' side, so a tag edited in the .py (the
    book's ``hide-input``) would be lost, and it drops the injected-parameters cell, the record of how
    the outputs were made; both are put back here."""
    combined = combine_inputs_with_outputs(source, paired)
    executed = [c for c in paired.cells if not _is_injected(c)]
    for cell, src in zip(combined.cells, source.cells):
        # the execution record of the same cell in the paired notebook (same type and source)
        same = next((i for i, c in enumerate(executed)
                     if c.cell_type == src.cell_type and c.source.strip() == src.source.strip()), None)
        kept = {}
        if same is not None:
            kept = {k: v for k, v in executed[same].metadata.items() if k in EXECUTION_METADATA}
            del executed[: same + 1]
        cell.metadata = nbformat.from_dict({**kept, **src.metadata})
    injected = [c for c in paired.cells if _is_injected(c)]
    if injected:
        tags = [c.metadata.get("tags", []) for c in combined.cells]
        at = next((i + 1 for i, t in enumerate(tags) if "parameters" in t), 0)
        combined.cells[at:at] = injected
        # combine hands unmatched cells ids of the outputs' side, the injected cell's among them
        taken = {c.get("id") for c in injected}
        for cell in combined.cells:
            if not _is_injected(cell) and cell.get("id") in taken:
                cell["id"] = uuid.uuid4().hex[:8]
    return combined


def sync_pair(py: Path) -> str | None:
    """Bring one pair in sync (see the module docstring); return what was done, None if nothing."""
    ipynb = py.with_suffix(".ipynb")
    if not ipynb.exists():
        jupytext.write(jupytext.read(py), ipynb, fmt="ipynb")
        return f"created {ipynb.name} from {py.name} (no outputs yet: execute it)"
    if not check_pair(py):
        return None
    if py.stat().st_mtime >= ipynb.stat().st_mtime:
        jupytext.write(_combine(jupytext.read(py), nbformat.read(ipynb, as_version=4)), ipynb, fmt="ipynb")
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
