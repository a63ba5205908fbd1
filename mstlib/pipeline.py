"""From a list of experiment variants to a table: train what is missing, evaluate, and read it all back.

The notebooks call :func:`collect` with the variants of :mod:`mstlib.experiments`; the GPU sweep calls
:func:`train_and_evaluate` for each run. Both go through the same :class:`~mstlib.results.RunStore`, so a
run is trained once and every table that needs it reads the same stored files.

Evaluation protocol per preset (:data:`EVAL_SETTINGS`): the ``smoke`` preset scores a few examples of each
set so a CPU notebook finishes in about a minute (its numbers mean nothing); ``mini`` and ``paper`` score the
full sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from . import data as corpus
from . import train as trainer  # as a module: tests replace trainer.train
from .checkpoint import load_model
from .config import RunConfig
from .data.catalogue import SUBSETS
from .errors import MstError
from .evaluate import EvalSettings, evaluate_model
from .experiments import Variant
from .results import RunResult, RunStore, flatten
from .stats import mean_ci

if TYPE_CHECKING:
    import pandas as pd

#: the presets whose runs are trained on GPUs (a CPU may read their stored results, never train them)
GPU_PRESETS = ("mini", "paper")

#: evaluation settings (fields of :class:`mstlib.evaluate.EvalSettings`) per preset
EVAL_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {"max_examples": 16, "max_tokens": 2048, "k_shot": 2, "batch_size": 8},
    "mini": {"batch_size": 32},
    "paper": {"batch_size": 16},
}


def eval_settings(preset: str, **overrides: Any):
    """The :class:`~mstlib.evaluate.EvalSettings` of a preset (custom presets get the full protocol)."""
    return EvalSettings(**{**EVAL_SETTINGS.get(preset, {}), **overrides})


#: the smoke preset's corpus: the first documents of each source of ``offline`` (CPU, seconds to make)
SMOKE_CORPUS = SUBSETS["offline-smoke"]


def ensure_smoke_corpus(run: RunConfig, progress: bool = False) -> None:
    """Prepare the smoke preset's tiny corpus from ``<shared>/data/corpus`` unless an identical one is there,
    so a CPU check needs no manual step. Asking :func:`mstlib.data.prepare` every time costs about 50 ms and
    also remakes a corrupt copy, or one made from other sources (the recipe holds the sources' sha256).
    Other presets' corpora are never prepared implicitly: a missing one is a DataError that says how to make it."""
    if run.preset != "smoke" or run.data.corpus != "offline-smoke":
        return
    if not (corpus.default_source_dir() / "SOURCES.md").is_file() and \
            run.data.corpus in corpus.prepared_names(run.data.data_dir):
        return  # no sources to compare with: the copy here is all there is (opening it checks it)
    corpus.prepare(corpus.PrepareOptions(name=run.data.corpus, data_dir=run.data.data_dir, progress=progress,
                                         **SMOKE_CORPUS))


def train_and_evaluate(
    run: RunConfig, store: RunStore, device: str = "auto", evaluate: bool = True, progress: bool = True,
    tasks: str | Sequence[str] = "all",
) -> RunResult:
    """Train ``run`` unless stored, then evaluate it unless its ``eval.json`` exists. Returns the stored
    result. The model is read back from the run's final checkpoint, so evaluation also works in a later
    process (as long as ``checkpoints/`` is still there)."""

    if not store.is_done(run):
        ensure_smoke_corpus(run)
        trainer.train(run, store, device=device, progress=progress)
    result = store.load(run)
    if evaluate and result.eval is None:
        dev = trainer.resolve_device(device)
        model = load_model(result, map_location=dev).to(dev)
        res = evaluate_model(model, tasks, eval_settings(run.preset, progress=progress))
        store.write_eval(run, res)
        result = store.load(run)
    return result


def _missing(store: RunStore, runs: Iterable[RunConfig], evaluate: bool) -> list[RunConfig]:
    out = []
    for r in runs:
        if not store.is_done(r) or (evaluate and store.load(r).eval is None):
            out.append(r)
    return out


def collect(
    variants: Sequence[Variant], *, preset: str, device: str = "auto", results_dir: str = "results",
    evaluate: bool = True, progress: bool = False, allow_missing: bool = False,
) -> "pd.DataFrame":
    """One row per variant: ``table, variant, method, seed, run_id, preset``, ``metrics.*``, ``eval.*``
    (task metrics flattened, e.g. ``eval.wikitext2.ppl_word``), ``provenance.*`` and ``config``.

    Missing runs are trained (and evaluated) here when the preset allows it on this machine: always for
    ``smoke``; for the GPU presets only when CUDA is present. Otherwise the error names the sweep that
    makes them; with ``allow_missing`` their rows are left out instead and listed in
    ``df.attrs["missing"]`` (variant, seed, run id), for a page that reports what is stored so far."""
    import pandas as pd

    store = RunStore(results_dir)
    runs = {v.run.run_id(): v.run for v in variants}
    for v in variants:
        if v.run.preset != preset:
            raise MstError(f"variant {v.variant!r} is preset {v.run.preset!r}, not {preset!r}")
    missing = _missing(store, runs.values(), evaluate)
    left_out: set[str] = set()
    if missing and allow_missing and preset in GPU_PRESETS and not torch.cuda.is_available():
        left_out = {m.run_id() for m in missing}
        missing = []
    if missing:
        if preset in GPU_PRESETS and not torch.cuda.is_available():
            tables = sorted({v.table for v in variants if v.run.run_id() in {m.run_id() for m in missing}})
            raise MstError(
                f"{len(missing)} of {len(runs)} runs of preset {preset!r} are not in {store.root} "
                f"(tables {tables}), and this machine has no GPU to train them. Train them on a GPU with "
                f"`python -m mstlib sweep --experiment all --preset {preset}` and unpack the archive here, "
                f"or use preset='smoke' to check the pipeline on a CPU."
            )
        for r in missing:
            train_and_evaluate(r, store, device=device, evaluate=evaluate, progress=progress)
    rows = []
    for v in variants:
        if v.run.run_id() in left_out:
            continue
        res = store.load(v.run)
        row: dict[str, Any] = {
            "table": v.table, "variant": v.variant, "method": v.run.method, "seed": v.run.seed,
            "run_id": res.run_id, "preset": v.run.preset,
        }
        row.update(flatten(res.metrics, "metrics."))
        if res.eval:
            row.update(flatten(res.eval.get("tasks", res.eval), "eval."))
        row.update(flatten(res.provenance, "provenance."))
        row["config"] = v.run
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["missing"] = [(v.variant, v.run.seed, v.run.run_id()) for v in variants if v.run.run_id() in left_out]
    return df


def logs(df: "pd.DataFrame", results_dir: str = "results") -> "pd.DataFrame":
    """The per-step training logs of the runs in ``df`` (from :func:`collect`), long form, with
    ``run_id``, ``table``, ``variant``, ``method`` and ``seed`` added."""
    import pandas as pd

    store = RunStore(results_dir)
    parts = []
    for _, row in df.iterrows():
        log = store.load(row["config"]).log()
        for key in ("run_id", "table", "variant", "method", "seed"):
            log[key] = row[key]
        parts.append(log)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def summary(df: "pd.DataFrame", metrics: Sequence[str], by: str | Sequence[str] = "variant",
            level: float = 0.95) -> "pd.DataFrame":
    """Mean and ``level`` t-interval per group for each metric: columns ``<metric>``, ``<metric>_lo``,
    ``<metric>_hi``, ``<metric>_fmt`` ("mean ± half-width") and ``n`` (seeds). Group order is kept."""
    import pandas as pd

    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key))
        row["n"] = len(g)
        for m in metrics:
            if m not in g:
                raise MstError(f"metric {m!r} not in the table; available: {sorted(c for c in df.columns if '.' in c)}")
            ci = mean_ci(g[m].astype(float))
            row[m], row[f"{m}_lo"], row[f"{m}_hi"], row[f"{m}_fmt"] = ci.mean, ci.lo, ci.hi, f"{ci:.4g}"
        rows.append(row)
    return pd.DataFrame(rows)
