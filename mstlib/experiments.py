"""Which runs each table of the book needs: the one place that defines the experiments.

Every notebook asks for its runs here (``runs_for("main", preset, seeds)``) and the GPU sweep trains the
same list (``python -m mstlib sweep --experiment all --preset mini``), so a table can never show a run that
its notebook did not define. Each run is a preset/method from :mod:`mstlib.presets` plus named overrides;
a variant's name is stored with it (``variant`` below) so tables can label rows without guessing.

Ablations change one thing against full MST and keep everything else, hybrid sparse attention included:
where a variant has no ultra-sparsification phase (constant sparsity), HSA runs over the same fraction of
training that full MST's ultra phase covers, so the SV ablation does not also ablate HSA.

The fair test of the claim (:mod:`mstlib.ladder`: the schedule search, the scale ladder, the gap's
diagnostics) is here too, under :data:`FAIR_TEST`: its seeds are declared with its runs, and its MST runs
use the schedule that its selection runs chose, so those experiments read the run store.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from . import ladder
from .config import RunConfig
from .errors import ConfigError
from .presets import make, run_flops, solve_for_flops
from .results import RunStore

MAIN_METHODS = ("dense", "mst", "rigl", "ss", "tiny")


@dataclass(frozen=True)
class Variant:
    """A labelled run: ``table`` and ``variant`` name the row, ``run`` is the config."""

    table: str
    variant: str
    run: RunConfig


def _mst(preset: str, seed: int, overrides: dict[str, Any] | None = None) -> RunConfig:
    return make(preset, "mst", seed=seed, overrides=overrides)


def _ultra_window(preset: str) -> dict[str, Any]:
    """HSA over full MST's ultra-sparsification phase, for schedules that have no such phase."""
    s = make(preset, "mst").schedule
    return {"attention.when": "custom", "attention.start": s.warmup_end, "attention.end": s.restore_start}


def main_runs(preset: str, seeds: list[int]) -> list[Variant]:
    """Table 3 and the GLUE table: Dense, MST, RigL, SS, Tiny, every seed."""
    return [Variant("main", m, make(preset, m, seed=s)) for m in MAIN_METHODS for s in seeds]


def sparsity_variation_runs(preset: str, seeds: list[int]) -> list[Variant]:
    """SV ablation: full MST against constant sparsity at MST's FLOPs, no warm-up, no restoration, and
    other peak sparsities."""
    mst = make(preset, "mst")
    constant = {"schedule.kind": "constant", **_ultra_window(preset)}
    out = []
    for s in seeds:
        out.append(Variant("sv", "full MST", _mst(preset, s)))
        out.append(Variant("sv", "constant sparsity", _mst(preset, s, {
            **constant, "schedule.sparsity": _constant_matched(preset)})))
        out.append(Variant("sv", "no warm-up", _mst(preset, s, {"schedule.warmup_end": 0.0})))
        out.append(Variant("sv", "no restoration", _mst(preset, s, {
            "schedule.restore_start": 1.0, "schedule.s_end": mst.schedule.s_max})))
        for peak in (0.8, 0.95):
            if abs(peak - mst.schedule.s_max) > 1e-9:
                out.append(Variant("sv", f"peak {peak:.2f}", _mst(preset, s, {
                    "schedule.s_max": peak, "schedule.s_end": min(mst.schedule.s_end, peak)})))
    return out


@functools.lru_cache(maxsize=None)
def _constant_matched(preset: str) -> float:
    """The constant sparsity at which MST's topology evolution with hybrid sparse attention over the ultra
    phase's window costs full MST's training FLOPs (attention's saving included in the match)."""
    base = _mst(preset, 0, {"schedule.kind": "constant", "schedule.sparsity": 0.5, **_ultra_window(preset)})
    return solve_for_flops(base, "schedule.sparsity", 0.0, 0.9999, run_flops(make(preset, "mst")))


def topology_runs(preset: str, seeds: list[int]) -> list[Variant]:
    """TE ablation: growth by mixed (MG, full MST) / gradient (RigL) / random (SET) / none (static), and
    the drop-fraction schedule."""
    out = []
    for s in seeds:
        out.append(Variant("te", "mixed (MG)", _mst(preset, s)))
        out.append(Variant("te", "gradient (RigL)", _mst(preset, s, {"topology.growth": "gradient"})))
        out.append(Variant("te", "random (SET)", _mst(preset, s, {"topology.growth": "random"})))
        out.append(Variant("te", "none (static)", _mst(preset, s, {"topology.growth": "none"})))
        out.append(Variant("te", "MG, constant drop fraction",
                           _mst(preset, s, {"topology.drop_anneal": "constant"})))
        out.append(Variant("te", "MG, no per-phase restart",
                           _mst(preset, s, {"topology.restart_per_phase": False})))
    return out


def attention_runs(preset: str, seeds: list[int]) -> list[Variant]:
    """HSA ablation: dense attention against each pattern, the time window and a layer subset."""
    base = make(preset, "mst")
    n_layer = base.model.n_layer
    hsa = base.attention.pattern if base.attention.pattern != "dense" else "local_strided"
    out = []
    for s in seeds:
        out.append(Variant("hsa", "dense attention", _mst(preset, s, {"attention.pattern": "dense"})))
        for pattern in ("local", "strided", "local_strided", "fixed"):
            label = f"{pattern} (ultra phase)"
            out.append(Variant("hsa", label, _mst(preset, s, {"attention.pattern": pattern})))
        out.append(Variant("hsa", f"{hsa} (always)",
                           _mst(preset, s, {"attention.pattern": hsa, "attention.when": "always"})))
        out.append(Variant("hsa", "first half of layers",
                           _mst(preset, s, {"attention.layers": list(range(n_layer // 2))})))
    return out


def deviation_runs(preset: str, seeds: list[int]) -> list[Variant]:
    """The official code's defects that change results: ``config/mst.py`` as released trains plain RigL at
    a constant 50% ER sparsity with dense attention; and AdamW moments that are never masked."""
    out = []
    for s in seeds:
        out.append(Variant("deviations", "official config as released (RigL 50%, unmasked moments)",
                           make(preset, "rigl", seed=s, overrides={
                               "schedule.sparsity": 0.5, "topology.mask_optimizer_moments": False})))
        out.append(Variant("deviations", "MST with unmasked AdamW moments",
                           _mst(preset, s, {"topology.mask_optimizer_moments": False})))
    return out


#: The book's classic experiments (``"all"``): preset and seeds in, labelled runs out.
EXPERIMENTS: dict[str, Callable[[str, list[int]], list[Variant]]] = {
    "main": main_runs,
    "sv": sparsity_variation_runs,
    "te": topology_runs,
    "hsa": attention_runs,
    "deviations": deviation_runs,
}


#: The fair test's experiments: preset and run store in (the ladder's MST uses the chosen schedule).
FAIR_TEST: dict[str, Callable[[str, Any], list[ladder.LadderRun]]] = {
    "schedules": lambda preset, store: ladder.selection_runs(preset),
    "ladder": lambda preset, store: ladder.ladder_runs(preset, store),
    "gap": ladder.gap_runs,
    **{f"ladder-{r.name}": (lambda preset, store, name=r.name: ladder.ladder_runs(preset, store, (name,)))
       for p in ladder.BUDGETS for r in ladder.rungs(p)},
}


def names() -> list[str]:
    """Every experiment name ``variants_for`` knows."""
    return sorted(EXPERIMENTS) + ["all"] + sorted(FAIR_TEST)


def variants_for(name: str, preset: str, seeds: list[int] | None = None, store: Any = None) -> list[Variant]:
    """The labelled runs of experiment ``name`` (or ``"all"``, the classic ones), duplicates (same run id)
    kept once per table. ``seeds`` default to ``[0]``; the fair test's experiments have declared seeds
    (passing any is an error) and read ``store`` (default ``RunStore("results")``)."""
    if name in FAIR_TEST:
        if seeds is not None:
            raise ConfigError(f"experiment {name!r} has declared seeds (mstlib.ladder); do not pass seeds")
        if store is None:
            store = RunStore()
        return [Variant(name, f"{r.rung} {r.method}", r.run) for r in FAIR_TEST[name](preset, store)]
    seeds = [0] if seeds is None else list(seeds)
    if name == "all":
        return [v for n in EXPERIMENTS for v in variants_for(n, preset, seeds)]
    try:
        fn = EXPERIMENTS[name]
    except KeyError:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {names()}") from None
    return fn(preset, seeds)


def runs_for(name: str, preset: str, seeds: list[int] | None = None, store: Any = None) -> list[RunConfig]:
    """The distinct runs (by run id, first occurrence kept) that experiment ``name`` needs."""
    seen: dict[str, RunConfig] = {}
    for v in variants_for(name, preset, seeds, store):
        seen.setdefault(v.run.run_id(), v.run)
    return list(seen.values())
