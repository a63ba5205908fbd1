"""The fair test of the paper's claim: one FLOP budget, a declared search over MST schedules, a scale ladder.

Everything here was fixed before the runs it defines (``shared/docs/science.md``):

* **The budget.** MST's claim is a 4x cut of training FLOPs, so every method compared at equal FLOPs costs
  :func:`budget` = 1/4 of the dense run of the same model on the same tokens: MST (its schedule's one
  free parameter solved by bisection), RigL (its constant sparsity solved), Tiny (the smaller dense GPT
  closest to the budget) and dense trained for 1/4 of the steps with its own warm-up and cosine decay.
  Dense for all the steps (and for 1/2 at the ``mini`` model) joins the iso-FLOP frontier.
* **The schedule search.** The paper's schedule is unknown, so MST gets :data:`SCHEDULES`, each at the
  budget (within :data:`BUDGET_TOLERANCE`; checked). They run on :data:`SELECTION_SEEDS` at the first rung;
  :func:`chosen_schedule` takes the lowest mean final validation loss (ties: the order below). The preset's
  own schedule (:data:`OLD_DEFAULT`, 0.267 of dense at ``mini``, so not eligible) runs beside them as a row.
  The ladder's seeds are all fresh, so its MST runs at the first rung confirm the choice on seeds that did
  not make it.
* **The ladder.** :func:`rungs`: the ``mini`` model (6 x 384) at about 65M, 164M and 393M tokens and the
  paper's GPT-2 124M (12 x 768) at about 80M, 200M and 600M tokens (the last needs four GPUs), all on the whole offline corpus (146M unique
  training tokens: at most 4.1 passes), 64 x 1024 tokens per step, warm-up 10% of the steps, cosine to a
  tenth of the peak learning rate, topology updates every 25 steps (the ``mini`` rescaling, for both models).
* **Where the gap comes from** (:func:`gap_runs`): one change each against the first rung's MST (dense
  embedding, no skipped optimizer step, dense attention) and RigL with a dense embedding, each at its own
  true FLOPs (a dense embedding cannot fit the budget at ``mini``: it is 64% of the weights).

The ``smoke`` preset has the same structure at CPU scale (a few steps, two small models), so the chapter
and its tests run everywhere; its numbers mean nothing, and its budget is 1/2: a run of a few dozen steps
pays for its dense first steps (before the first topology update) and for a dense gradient on many update
steps, so no MST schedule reaches 1/4 there.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import RunConfig
from .errors import ConfigError
from .presets import make, run_flops, solve_for_flops, tiny_for_flops

__all__ = [
    "BUDGETS", "budget", "budget_method", "BUDGET_TOLERANCE", "SELECTION_SEEDS", "Schedule", "SCHEDULES", "OLD_DEFAULT", "Rung",
    "LadderRun", "rungs", "selection_rung", "rung_run", "schedule_run", "selection_runs", "chosen_schedule",
    "ladder_runs", "gap_runs", "budget_flops",
]

#: Training FLOPs of every method of the iso-FLOP comparison, as a fraction of the dense run's, per preset.
BUDGETS = {"mini": 0.25, "smoke": 0.5}
#: How far a solved schedule may miss the budget (the bisection lands within about 1e-4).
BUDGET_TOLERANCE = 0.01
#: Seeds that choose MST's schedule; the ladder's seeds are different, so its MST runs confirm the choice.
SELECTION_SEEDS = (0, 1)


@dataclass(frozen=True)
class Schedule:
    """A candidate MST schedule: ``fixed`` overrides against the preset's MST, and the one ``free`` config
    field solved in ``bounds`` so the run costs the :func:`budget` (no ``free``: taken as it is)."""

    name: str
    text: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    free: str | None = None
    bounds: tuple[float, float] = (0.0, 1.0)


_RESTORE_DENSE = {"schedule.s_max": 0.9, "schedule.warmup_end": 0.1, "schedule.s_end": 0.0}

#: The declared search, in tie-break order.
SCHEDULES: tuple[Schedule, ...] = (
    Schedule("default", "the preset's shape: warm-up to 1/4, restoration from 3/4 to 0.5; peak solved",
             {}, "schedule.s_max", (0.5, 0.999)),
    Schedule("restore-dense", "peak 0.9 after a 10% warm-up, restoration to dense; its start solved",
             _RESTORE_DENSE, "schedule.restore_start", (0.1, 1.0)),
    Schedule("restore-dense-0.95", "as restore-dense with peak 0.95 (a sparser peak buys a longer restoration)",
             {**_RESTORE_DENSE, "schedule.s_max": 0.95}, "schedule.restore_start", (0.1, 1.0)),
    Schedule("restore-dense-hsa-always", "as restore-dense with sparse attention in every phase",
             {**_RESTORE_DENSE, "attention.when": "always"}, "schedule.restore_start", (0.1, 1.0)),
    Schedule("restore-dense-linear", "as restore-dense with linear ramps (cubic elsewhere)",
             {**_RESTORE_DENSE, "schedule.shape": "linear"}, "schedule.restore_start", (0.1, 1.0)),
)
#: The preset's MST schedule as it is (peak 0.95, 0.267 of dense at ``mini``): a row, never chosen.
OLD_DEFAULT = Schedule("old default", "the preset's MST schedule unchanged (not at the budget)")


@dataclass(frozen=True)
class Rung:
    """One (model, token budget) of the ladder: ``steps`` of the base ``preset`` with ``overrides``."""

    name: str
    model: str
    preset: str
    steps: int
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)


#: The methods of a rung: dense at every length, then the methods at the budget.
MINI_METHODS = ("dense", "dense 1/2", "dense 1/4", "tiny", "rigl", "mst")
GPT2_METHODS = ("dense", "dense 1/4", "tiny", "mst")
DENSE_FRACTIONS = {"dense": 1.0, "dense 1/2": 0.5, "dense 1/4": 0.25}

_MINI = {"data.corpus": "offline"}
# GPT-2 124M at 64 x 1024 tokens per step in micro-batches of 16 (three such runs share one H200), the
# paper's learning rate, the ladder's cadence; eval over the same 1.3M validation tokens as mini
_GPT2 = {"data.corpus": "offline", "train.batch_size": 16, "train.grad_accum": 4, "train.lr_decay_iters": 0,
         "train.eval_interval": 250, "train.eval_iters": 80, "topology.update_interval": 25}
# updates every 2 steps: the density must follow the schedule within a run of a few dozen steps
_SMOKE = {"train.batch_size": 2, "train.grad_accum": 1, "train.eval_interval": 0, "train.eval_iters": 2,
          "topology.update_interval": 2}
_SMOKE_WIDE = {**_SMOKE, "model.n_embd": 64}

_RUNGS: dict[str, tuple[Rung, ...]] = {
    "mini": (
        Rung("mini-65m", "mini (6x384)", "mini", 1000, (2, 3, 4), MINI_METHODS, _MINI),
        Rung("mini-164m", "mini (6x384)", "mini", 2500, (2, 3, 4), MINI_METHODS, _MINI),
        Rung("mini-393m", "mini (6x384)", "mini", 6000, (2, 3), MINI_METHODS, _MINI),
        Rung("gpt2-80m", "GPT-2 124M (12x768)", "paper", 1220, (2, 3), GPT2_METHODS, _GPT2),
        Rung("gpt2-200m", "GPT-2 124M (12x768)", "paper", 3052, (2,), GPT2_METHODS, _GPT2),
        # the paper's model as long as the offline corpus allows (about 4 passes): one run per GPU on a
        # 4-GPU machine, so it waits for one to be lent (python -m mstlib sweep --experiment ladder-gpt2-600m)
        Rung("gpt2-600m", "GPT-2 124M (12x768)", "paper", 9156, (2, 3, 4), GPT2_METHODS, _GPT2),
    ),
    "smoke": (
        Rung("smoke-a", "smoke (2x32)", "smoke", 16, (2, 3), MINI_METHODS, _SMOKE),
        Rung("smoke-b", "smoke (2x32)", "smoke", 32, (2, 3), MINI_METHODS, _SMOKE),
        Rung("smoke-wide", "smoke-wide (2x64)", "smoke", 16, (2, 3), MINI_METHODS, _SMOKE_WIDE),
    ),
}


@dataclass(frozen=True)
class LadderRun:
    """A run of the fair test with its labels: ``rung`` (a :class:`Rung` name) and ``method`` (a rung
    method, a schedule name, or a diagnostic's label)."""

    rung: str
    method: str
    seed: int
    run: RunConfig


def budget(preset: str) -> float:
    """The iso-FLOP budget at ``preset`` scale, a fraction of the dense run's training FLOPs."""
    rungs(preset)  # the same error for an unknown preset
    return BUDGETS[preset]


def budget_method(preset: str) -> str:
    """The dense run trained for the budget's fraction of the steps (``dense 1/4`` at ``mini``)."""
    return next(m for m, f in DENSE_FRACTIONS.items() if f == budget(preset))


def rungs(preset: str) -> tuple[Rung, ...]:
    """The ladder at ``preset`` scale (``mini``: the GPU rungs; ``smoke``: the CPU check)."""
    try:
        return _RUNGS[preset]
    except KeyError:
        raise ConfigError(f"the ladder has rungs for {sorted(_RUNGS)}, not {preset!r}") from None


def selection_rung(preset: str) -> Rung:
    """The rung where the schedule is chosen and the diagnostics run: the first (smallest) one."""
    return rungs(preset)[0]


def _rung(preset: str, name: str) -> Rung:
    for r in rungs(preset):
        if r.name == name:
            return r
    raise ConfigError(f"no rung {name!r} at preset {preset!r}; choose one of {[r.name for r in rungs(preset)]}")


def _length(steps: int) -> dict[str, int]:
    """A run of ``steps`` with its own warm-up (10%) and cosine over exactly those steps."""
    return {"train.max_iters": steps, "train.warmup_iters": max(1, steps // 10)}


def _overrides(rung: Rung, fraction: float = 1.0) -> dict[str, Any]:
    return {**rung.overrides, **_length(max(1, round(rung.steps * fraction)))}


@functools.lru_cache(maxsize=None)
def budget_flops(preset: str, rung_name: str) -> float:
    """:func:`budget` times the training FLOPs of the rung's dense run (exact arithmetic)."""
    rung = _rung(preset, rung_name)
    return budget(preset) * run_flops(make(rung.preset, "dense", overrides=_overrides(rung)))


def _check_budget(run: RunConfig, preset: str, rung: Rung, what: str) -> RunConfig:
    b = budget(preset)
    ratio = run_flops(run) / (budget_flops(preset, rung.name) / b)
    if abs(ratio - b) > BUDGET_TOLERANCE:
        raise ConfigError(f"{what} at {rung.name} costs {ratio:.4f} of dense, outside {b} +/- "
                          f"{BUDGET_TOLERANCE}; widen its bounds or change its fixed settings")
    return run


@functools.lru_cache(maxsize=None)
def _solved(preset: str, rung_name: str, what: str) -> tuple[tuple[str, Any], ...]:
    """The budget-solving overrides of ``what`` (a schedule name, ``rigl`` or ``tiny``) at a rung (seed-free)."""
    rung = _rung(preset, rung_name)
    target = budget_flops(preset, rung_name)
    if what == "tiny":
        m = tiny_for_flops(make(rung.preset, "dense", overrides=_overrides(rung)), target)
        return (("model.n_layer", m.n_layer), ("model.n_head", m.n_head), ("model.n_embd", m.n_embd))
    if what == "rigl":
        base = make(rung.preset, "rigl", overrides={**_overrides(rung), "schedule.sparsity": 0.5})
        return (("schedule.sparsity", solve_for_flops(base, "schedule.sparsity", 0.0, 0.9999, target)),)
    sched = _schedule(what)
    if sched.free is None:
        return ()
    base = make(rung.preset, "mst", overrides={**_overrides(rung), **sched.fixed})
    return ((sched.free, solve_for_flops(base, sched.free, *sched.bounds, target)),)


def _schedule(name: str) -> Schedule:
    for s in (*SCHEDULES, OLD_DEFAULT):
        if s.name == name:
            return s
    raise ConfigError(f"unknown MST schedule {name!r}; choose one of {[s.name for s in SCHEDULES]}")


def schedule_run(preset: str, rung_name: str, schedule: str, seed: int) -> RunConfig:
    """MST with a named schedule at a rung, its free parameter solved for the budget."""
    rung = _rung(preset, rung_name)
    sched = _schedule(schedule)
    run = make(rung.preset, "mst", seed=seed,
               overrides={**_overrides(rung), **sched.fixed, **dict(_solved(preset, rung_name, schedule))})
    return run if sched is OLD_DEFAULT else _check_budget(run, preset, rung, f"schedule {schedule!r}")


def rung_run(preset: str, rung_name: str, method: str, seed: int, schedule: str | None = None) -> RunConfig:
    """The run of a rung's ``method`` (``dense``, ``dense 1/2``, ``dense 1/4``, ``tiny``, ``rigl``, ``mst``)
    with ``seed``; ``mst`` needs the ``schedule`` (see :func:`chosen_schedule`)."""
    rung = _rung(preset, rung_name)
    if method in DENSE_FRACTIONS:
        return make(rung.preset, "dense", seed=seed, overrides=_overrides(rung, DENSE_FRACTIONS[method]))
    if method == "tiny":
        dense = make(rung.preset, "dense", seed=seed, overrides=_overrides(rung))
        return dense.replace(method="tiny", **dict(_solved(preset, rung_name, "tiny")))
    if method == "rigl":
        run = make(rung.preset, "rigl", seed=seed,
                   overrides={**_overrides(rung), **dict(_solved(preset, rung_name, "rigl"))})
        return _check_budget(run, preset, rung, "rigl")
    if method == "mst":
        if schedule is None:
            raise ConfigError("the ladder's MST runs need a schedule: see mstlib.ladder.chosen_schedule")
        return schedule_run(preset, rung_name, schedule, seed)
    raise ConfigError(f"unknown rung method {method!r}; choose one of {list(MINI_METHODS)}")


def selection_runs(preset: str) -> list[LadderRun]:
    """The schedule search: every candidate and the old default on :data:`SELECTION_SEEDS` at the first
    rung, with dense on the same seeds for reference."""
    rung = selection_rung(preset)
    out = [LadderRun(rung.name, s.name, seed, schedule_run(preset, rung.name, s.name, seed))
           for s in (*SCHEDULES, OLD_DEFAULT) for seed in SELECTION_SEEDS]
    out += [LadderRun(rung.name, "dense", seed, rung_run(preset, rung.name, "dense", seed)) for seed in SELECTION_SEEDS]
    return out


def chosen_schedule(preset: str, store: Any) -> str:
    """The declared rule: the candidate of :data:`SCHEDULES` with the lowest mean final validation loss
    over :data:`SELECTION_SEEDS` (ties to the earlier one). A ConfigError names the missing runs."""
    rung = selection_rung(preset)
    missing, means = [], {}
    for s in SCHEDULES:
        losses = []
        for seed in SELECTION_SEEDS:
            run = schedule_run(preset, rung.name, s.name, seed)
            if not store.is_done(run):
                missing.append(f"{s.name} seed {seed} ({run.run_id()})")
                continue
            losses.append(float(store.load(run).metrics["final_val_loss"]))
        if losses:
            means[s.name] = sum(losses) / len(losses)
    if missing:
        raise ConfigError(
            f"the schedule is chosen on seeds {list(SELECTION_SEEDS)} at {rung.name}, and {len(missing)} of those "
            f"runs are not in {store.root}: {', '.join(missing)}. Train them first: "
            f"python -m mstlib sweep --experiment schedules --preset {preset} --results {store.root}")
    bad = [n for n, v in means.items() if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"schedules {bad} have a non-finite mean validation loss; the selection cannot be made")
    return min(means, key=lambda n: (round(means[n], 4), [s.name for s in SCHEDULES].index(n)))


def ladder_runs(preset: str, store: Any, rung_names: tuple[str, ...] | None = None) -> list[LadderRun]:
    """Every method and seed of the rungs (all by default), MST with :func:`chosen_schedule`."""
    chosen = chosen_schedule(preset, store)
    out = []
    for rung in rungs(preset):
        if rung_names is not None and rung.name not in rung_names:
            continue
        for method in rung.methods:
            for seed in rung.seeds:
                out.append(LadderRun(rung.name, method, seed, rung_run(preset, rung.name, method, seed, chosen)))
    return out


#: The diagnostics: label -> (rung method, one change), run on the first two ladder seeds.
GAP_CHANGES: dict[str, tuple[str, dict[str, Any]]] = {
    "MST, dense embedding": ("mst", {"sparsity.sparse_set": "blocks"}),
    "RigL, dense embedding": ("rigl", {"sparsity.sparse_set": "blocks"}),
    "MST, no skipped optimizer step": ("mst", {"topology.skip_step_on_update": False}),
    "MST, dense attention": ("mst", {"attention.pattern": "dense"}),
}


def gap_runs(preset: str, store: Any) -> list[LadderRun]:
    """One change each against the first rung's MST (chosen schedule) and RigL, at their true FLOPs."""
    rung = selection_rung(preset)
    chosen = chosen_schedule(preset, store)
    out = []
    for label, (method, change) in GAP_CHANGES.items():
        for seed in rung.seeds[:2]:
            out.append(LadderRun(rung.name, label, seed,
                                 rung_run(preset, rung.name, method, seed, chosen).replace(**change)))
    return out
