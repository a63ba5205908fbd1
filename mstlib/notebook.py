"""What every notebook of the book does first: check its parameters, and set up the page.

Each notebook's ``parameters`` cell (papermill) is followed by :func:`check_parameter_names` (a parameter
name that the notebook does not have, such as ``-p model_sise smoke``, is an error listing the valid ones;
papermill itself only warns and runs with the default) and one call of :func:`check_parameters`, so a typo
stops right there with a message that says what to use instead; then :func:`start_page` sets the figure
style, glues the preset and the number of seeds for the prose, and, under the ``smoke`` preset, shows a
visible note that the numbers mean nothing.
"""

from __future__ import annotations

import ast
import difflib
from typing import TYPE_CHECKING, Any, Sequence

from dataclasses import dataclass

from . import experiments, pipeline
from .claims import scale_line
from .config import RunConfig
from .errors import ConfigError
from .presets import PRESETS, make

if TYPE_CHECKING:
    import pandas as pd

SMOKE_NOTE = (
    "> **Smoke preset: these numbers mean nothing.** The `smoke` preset trains 2-layer GPTs of width 32 for a "
    "few dozen steps on a CPU (and scores a handful of evaluation examples), only to check that every step "
    "of this page works. The book's results use the `mini` preset on a GPU."
)


#: the first line of the cell papermill injects after the ``parameters`` cell (papermill.translators)
INJECTED_MARK = "# Parameters"


def assigned_names(source: str) -> list[str]:
    """Names a cell's top-level statements assign (``x = ...``, ``x: int = ...``, ``a, b = ...``), in order."""
    names: list[str] = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            names += [n.id for n in ast.walk(t) if isinstance(n, ast.Name) and n.id not in names]
    return names


def unknown_parameters(cells: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(unknown, valid)`` parameter names from the sources of the cells run so far, in order: the last cell
    papermill injected against the cell run just before it, the notebook's ``parameters`` cell (papermill
    puts its cell right after that one). No injected cell (JupyterLab, papermill without parameters): none."""
    for i in range(len(cells) - 1, 0, -1):
        if cells[i].lstrip().startswith(INJECTED_MARK):
            valid = assigned_names(cells[i - 1])
            return [n for n in assigned_names(cells[i]) if n not in valid], valid
    return [], []


def check_parameter_names() -> None:
    """In a notebook run by papermill, a ConfigError for every injected parameter name that the notebook's
    ``parameters`` cell does not define, listing the valid names (a misspelt name would otherwise be
    ignored: papermill warns, and the notebook runs with the default). Call it in the cell after that one."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return
    # the parsed history: magics already turned into Python, so every cell parses
    unknown, valid = unknown_parameters([c for c in shell.history_manager.input_hist_parsed if c.strip()])
    if unknown:
        hints = [f"{n!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(n, valid, 1)) else repr(n)
                 for n in unknown]
        raise ConfigError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: this notebook's "
                          f"parameters are {valid} (papermill -p NAME VALUE)")


def check_seeds(seeds: Any, name: str = "seeds") -> list[int]:
    """A non-empty list of integer seeds >= 0, or a ConfigError that shows the papermill syntax."""
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{name}={seeds!r} must be a non-empty list of integers >= 0, e.g. [0, 1, 2] "
                          f"(papermill: -y '{name}: [0, 1, 2]')")
    return list(seeds)


def check_parameters(preset: Any, seeds: Any, device: Any = "auto", results_dir: Any = "results",
                     **flags: Any) -> list[int]:
    """Check the parameters every notebook shares; ``flags`` are named booleans (e.g. ``evaluate=False``).
    Returns the seeds as a list."""
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r} is not one of {list(PRESETS)}")
    out = check_seeds(seeds)
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"device={device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not isinstance(results_dir, str) or not results_dir:
        raise ConfigError(f"results_dir={results_dir!r} must be a folder path (str)")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be True or False")
    return out


def start_page(preset: str, seeds: Sequence[int] = (), note: str = SMOKE_NOTE, scale: bool = True) -> None:
    """Figure style, the glued ``preset`` and ``n_seeds``, the book's scale line (``scale``: the same on
    every results page, :func:`mstlib.claims.scale_line`) and the smoke note where it applies."""
    import seaborn as sns
    from IPython.display import Markdown, display
    from myst_nb import glue

    sns.set_theme(style="whitegrid", context="notebook")
    glue("preset", preset, display=False)
    glue("n_seeds", len(seeds), display=False)
    if scale:
        glue("scale_line", scale_line(preset), display=False)
        display(Markdown(scale_line(preset)))
    if preset == "smoke":
        display(Markdown(note))


# ------------------------------------------------------------------------------- the ablation chapters


def ablation_variants(experiment: str, preset: Any, seeds: Any, device: Any = "auto", results_dir: Any = "results",
                      evaluate: Any = False) -> tuple[list[int], list[experiments.Variant]]:
    """The opening of an ablation chapter (05, 06, 07), after :func:`check_parameter_names`: the shared
    parameters checked, and the variants of ``experiment`` (``"sv"``, ``"te"``, ``"hsa"``). Returns
    ``(seeds, variants)``; a bad preset or seed is a ConfigError here, before anything runs."""
    seeds = check_parameters(preset, seeds, device, results_dir, evaluate=evaluate)
    return seeds, experiments.variants_for(experiment, preset, list(seeds))


@dataclass
class Ablation:
    """An ablation chapter's runs: one row per variant and seed (``results``), their logs, the variants in
    the experiment's order, and the preset's full MST run (the reference every variant is compared with)."""

    results: "pd.DataFrame"
    logs: "pd.DataFrame"
    order: list[str]
    mst: RunConfig


def collect_ablation(experiment: str, variants: Sequence[experiments.Variant], preset: str, device: str = "auto",
                     results_dir: str = "results", evaluate: bool = False, allow_missing: bool = False) -> Ablation:
    """The chapter's runs read from the store (trained where the preset allows it here). With
    ``allow_missing`` a GPU preset read without all its runs shows which are not stored yet and the sweep
    that makes them, and goes on with the rest."""
    from IPython.display import Markdown, display  # the notebooks' display; not a dependency of the library

    results = pipeline.collect(variants, preset=preset, device=device, results_dir=results_dir, evaluate=evaluate,
                               allow_missing=allow_missing)
    if results.attrs.get("missing"):
        display(Markdown("> **Not stored yet:** " + "; ".join(f"{v} (seed {s}, run {i})" for v, s, i in
                                                           results.attrs["missing"])
                         + f". Train them with `python -m mstlib sweep --experiment {experiment} --preset {preset}`."))
    return Ablation(results, pipeline.logs(results, results_dir=results_dir),
                    list(dict.fromkeys(v.variant for v in variants)), make(preset, "mst"))
