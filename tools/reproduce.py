#!/usr/bin/env python3
"""Execute the book's notebooks with papermill, in order, for one preset (``make reproduce PRESET=...``).

* ``smoke``: CPU (about 5 minutes for all notebooks on 2 cores); a check of the pipeline. Executed notebooks go to ``results-smoke/notebooks/`` and
  results to ``results-smoke/`` (both git-ignored), so a smoke run never overwrites what the book publishes.
* ``mini`` / ``paper``: need a CUDA GPU; executed notebooks replace ``notebooks/*.ipynb`` (the published
  outputs), results go where the notebooks store them by default (``results/``).

Each notebook gets the parameters it declares in its ``parameters`` cell, out of: ``preset`` (the preset),
``results_dir`` (only for smoke). The kernel runs in ``notebooks/`` (as in JupyterLab) with the repository
root on ``PYTHONPATH``, so ``import mstlib`` works also where mstlib is not installed (the GPU machines).
A failing notebook does not stop the run: its partial output (with the error) is written, the next
notebook runs, and the exit status is 1 at the end with a summary of what failed.

Usage: python tools/reproduce.py --preset smoke [--only 00_census 02_flops] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PRESETS = ("smoke", "mini", "paper")
GPU_PRESETS = ("mini", "paper")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def default_output_dir(preset: str) -> Path:
    """Where executed notebooks go: never the published notebooks/ for the smoke preset."""
    return ROOT / "results-smoke" / "notebooks" if preset == "smoke" else NOTEBOOKS


def notebook_list(folder: Path, only: list[str] | None) -> list[Path]:
    """folder/NN_*.ipynb in order; ``only`` selects by stem (``00_census``) or number prefix (``00``)."""
    books = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return books
    chosen = [p for p in books if any(p.stem == o or p.stem.startswith(o + "_") for o in only)]
    missing = [o for o in only if not any(p.stem == o or p.stem.startswith(o + "_") for p in books)]
    if missing:
        raise SystemExit(f"no notebook matches {missing}; there are: {[p.stem for p in books]}")
    return chosen


#: The seeds the published book uses per preset: three for the tables of the paper (main results, GLUE,
#: what reproduced), two for each ablation. The GPU sweep (tools/gpu/sweep.sh) trains exactly these.
PUBLISHED_SEEDS: dict[str, dict[str, list[int]]] = {
    "mini": {"main": [0, 1, 2], "ablation": [0, 1]},
    "paper": {"main": [0, 1, 2], "ablation": [0, 1]},
}
MAIN_TABLE_NOTEBOOKS = ("00_summary", "03_", "04_", "10_")


def parameters_for(path: Path, preset: str) -> dict[str, object]:
    """The overrides this notebook declares a slot for (papermill would inject unknown ones too)."""
    import papermill

    declared = papermill.inspect_notebook(str(path))
    wanted: dict[str, object] = {"preset": preset}
    if preset == "smoke":
        wanted["results_dir"] = str(ROOT / "results-smoke")
    seeds = PUBLISHED_SEEDS.get(preset)
    if seeds:
        main = path.name.startswith(MAIN_TABLE_NOTEBOOKS)
        wanted["seeds"] = seeds["main"] if main else seeds["ablation"]
        wanted["ablation_seeds"] = seeds["ablation"]
    return {k: v for k, v in wanted.items() if k in declared}


#: The book collapses the cell papermill inserts (tag ``injected-parameters``), as the sources collapse
#: their ``parameters`` cell; papermill gives it no other tag, so it is added after each execution.
INJECTED_TAGS = ("hide-cell",)


def hide_injected_parameters(path: Path) -> None:
    """Tag the injected-parameters cell of an executed notebook so the book shows it collapsed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and not set(INJECTED_TAGS) <= set(tags):
            cell.metadata["tags"] = [*tags, *(t for t in INJECTED_TAGS if t not in tags)]
            changed = True
    if changed:
        nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, required=True)
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run only these (e.g. 00_census or 00)")
    parser.add_argument("--output-dir", type=Path, help="where executed notebooks go (default: see above)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel (default python3)")
    parser.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS, help="where the notebooks are")
    parser.add_argument("--stored", action="store_true",
                        help="GPU presets on a machine without a GPU: read stored results only, train nothing")
    args = parser.parse_args(argv)

    if args.preset in GPU_PRESETS and not cuda_available() and not args.stored:
        print(
            f"preset {args.preset!r} trains on a CUDA GPU and this machine has none "
            "(torch.cuda.is_available() is False).\n"
            "Use `make reproduce PRESET=smoke` to check the pipeline on a CPU, run this on a GPU machine "
            "(book/reproduce.md says how), or add --stored to execute the notebooks against results already "
            "in results/ (from a GPU sweep; a missing run then stops its notebook with the sweep command).",
            file=sys.stderr,
        )
        return 2

    import papermill  # imported late so that the GPU check answers even where papermill is missing

    out_dir = args.output_dir or default_output_dir(args.preset)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the kernel is a child process: it inherits this environment
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

    failed: list[tuple[str, str]] = []
    notebooks = notebook_list(args.notebooks_dir, args.only)
    for i, nb in enumerate(notebooks, 1):
        params = parameters_for(nb, args.preset)
        out = out_dir / nb.name
        print(f"[{i}/{len(notebooks)}] {nb.name} -> {out} with {params}", flush=True)
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(nb), str(out), parameters=params, kernel_name=args.kernel, cwd=str(args.notebooks_dir), progress_bar=False
            )
        except Exception as e:  # noqa: BLE001 - keep going, report at the end
            reason = getattr(e, "ename", type(e).__name__) + ": " + str(getattr(e, "evalue", e)).splitlines()[0]
            failed.append((nb.name, reason))
            print(f"    FAILED after {time.perf_counter() - t0:.0f} s: {reason} (output kept in {out})", flush=True)
        else:
            print(f"    ok in {time.perf_counter() - t0:.0f} s", flush=True)
        if out.exists():
            hide_injected_parameters(out)

    print(f"\n{len(notebooks) - len(failed)} of {len(notebooks)} notebooks ran with preset {args.preset!r}.")
    for name, reason in failed:
        print(f"  FAILED {name}: {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
