"""The fair test's definitions: every budget-matched run costs the budget, the schedule search is the
declared one, the selection rule picks what it says, and the ladder's runs are the rungs' runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from mstlib import ladder as L
from mstlib.errors import ConfigError
from mstlib.presets import run_flops


def dense_flops(preset: str, rung: str) -> float:
    return L.budget_flops(preset, rung) / L.budget(preset)


@pytest.mark.parametrize("preset", ["smoke", "mini"])
def test_every_matched_run_costs_the_budget(preset):
    b = L.budget(preset)
    for rung in L.rungs(preset):
        d = dense_flops(preset, rung.name)
        for s in L.SCHEDULES:
            ratio = run_flops(L.schedule_run(preset, rung.name, s.name, 0)) / d
            assert abs(ratio - b) <= 1e-3, (rung.name, s.name, ratio)  # the bisection lands well inside 0.01
        assert abs(run_flops(L.rung_run(preset, rung.name, "rigl", 0)) / d - b) <= 1e-3
        assert abs(run_flops(L.rung_run(preset, rung.name, "tiny", 0)) / d - b) <= L.BUDGET_TOLERANCE
        for method, f in L.DENSE_FRACTIONS.items():
            run = L.rung_run(preset, rung.name, method, 0)
            assert run_flops(run) / d == pytest.approx(f, rel=1e-12)
            # its own warm-up and cosine over its own steps, not a checkpoint of the long run
            assert run.train.max_iters == round(rung.steps * f) and run.train.lr_decay_iters == 0
            assert run.train.warmup_iters == max(1, run.train.max_iters // 10)
    assert L.budget_method(preset) in L.DENSE_FRACTIONS


def test_the_declared_search_and_the_old_default():
    names = [s.name for s in L.SCHEDULES]
    assert len(names) >= 4 and len(set(names)) == len(names)
    assert "default" in names and "restore-dense" in names
    rd = L.schedule_run("mini", "mini-65m", "restore-dense", 0).schedule
    assert (rd.s_max, rd.warmup_end, rd.s_end) == (0.9, 0.1, 0.0)  # peak 0.9, short warm-up, ends dense
    default = L.schedule_run("mini", "mini-65m", "default", 0).schedule
    assert (default.warmup_end, default.restore_start, default.s_end) == (0.25, 0.75, 0.5)
    # the old default is the preset's schedule as it is, and it does not fit the budget
    old = L.schedule_run("mini", "mini-65m", "old default", 0)
    assert old.schedule.s_max == 0.95 and run_flops(old) / dense_flops("mini", "mini-65m") > 0.26


def test_rungs_as_the_issue_declares_them():
    by = {r.name: r for r in L.rungs("mini")}
    tokens = {n: L.rung_run("mini", n, "dense", 2).train.max_iters * 65536 for n in by}
    assert [round(tokens[n] / 1e6) for n in ("mini-65m", "mini-164m", "mini-393m")] == [66, 164, 393]
    assert [round(tokens[n] / 1e6) for n in ("gpt2-80m", "gpt2-200m")] == [80, 200]
    # no rung goes past about 4 passes over the offline corpus's 146,084,836 unique training tokens
    assert max(tokens.values()) / 146_084_836 < 4.2
    assert [len(by[n].seeds) for n in by] == [3, 3, 2, 2, 1, 3]
    assert round(tokens["gpt2-600m"] / 1e6) == 600
    g = L.rung_run("mini", "gpt2-80m", "dense", 2)
    assert (g.model.n_layer, g.model.n_head, g.model.n_embd, g.train.lr) == (12, 12, 768, 6e-4)
    assert g.tokens_per_step() == 64 * 1024 and g.data.corpus == "offline"
    # the ladder's seeds never overlap the seeds that chose the schedule
    assert all(not set(r.seeds) & set(L.SELECTION_SEEDS) for p in ("smoke", "mini") for r in L.rungs(p))


def test_unknown_names_are_errors():
    with pytest.raises(ConfigError, match="rungs for"):
        L.rungs("paper")
    with pytest.raises(ConfigError, match="no rung"):
        L.rung_run("mini", "mini-1b", "dense", 0)
    with pytest.raises(ConfigError, match="unknown MST schedule"):
        L.schedule_run("mini", "mini-65m", "best", 0)
    with pytest.raises(ConfigError, match="need a schedule"):
        L.rung_run("mini", "mini-65m", "mst", 2)


@dataclass
class _Result:
    metrics: dict


class FakeStore:
    """is_done/load of a store whose runs have the given final validation losses (by run id)."""

    def __init__(self, losses: dict[str, float]):
        self.losses, self.root = losses, Path("fake-results")

    def is_done(self, run) -> bool:
        return run.run_id() in self.losses

    def load(self, run) -> _Result:
        return _Result({"final_val_loss": self.losses[run.run_id()]})


def _losses(preset: str, by_name: dict[str, tuple[float, float]]) -> dict[str, float]:
    rung = L.selection_rung(preset).name
    return {L.schedule_run(preset, rung, name, seed).run_id(): v
            for name, vals in by_name.items() for seed, v in zip(L.SELECTION_SEEDS, vals)}


def test_chosen_schedule_is_the_lowest_mean_and_ties_go_first():
    names = [s.name for s in L.SCHEDULES]
    vals = {n: (5.0, 5.2) for n in names}
    vals[names[3]] = (4.9, 5.0)
    assert L.chosen_schedule("smoke", FakeStore(_losses("smoke", vals))) == names[3]
    vals[names[1]] = (4.95, 4.95)  # the same mean as names[3]: the earlier one wins
    assert L.chosen_schedule("smoke", FakeStore(_losses("smoke", vals))) == names[1]


def test_chosen_schedule_names_missing_runs_and_the_command():
    vals = {s.name: (5.0, 5.0) for s in L.SCHEDULES[:-1]}
    with pytest.raises(ConfigError, match="sweep --experiment schedules --preset smoke") as e:
        L.chosen_schedule("smoke", FakeStore(_losses("smoke", vals)))
    assert L.SCHEDULES[-1].name in str(e.value)
    vals[L.SCHEDULES[-1].name] = (float("nan"), 5.0)
    with pytest.raises(ConfigError, match="non-finite"):
        L.chosen_schedule("smoke", FakeStore(_losses("smoke", vals)))


def test_ladder_and_gap_runs_use_the_chosen_schedule():
    chosen = L.SCHEDULES[2].name
    vals = {s.name: (5.0, 5.0) for s in L.SCHEDULES}
    vals[chosen] = (4.0, 4.0)
    store = FakeStore(_losses("smoke", vals))
    runs = L.ladder_runs("smoke", store)
    assert len(runs) == sum(len(r.methods) * len(r.seeds) for r in L.rungs("smoke"))
    for rung in L.rungs("smoke"):  # within a rung every run differs (across rungs one run may serve two:
        ids = [r.run.run_id() for r in runs if r.rung == rung.name]  # smoke-b's dense 1/2 is smoke-a's dense)
        assert len(set(ids)) == len(ids)
    for r in runs:
        if r.method == "mst":
            assert r.run == L.schedule_run("smoke", r.rung, chosen, r.seed)
    only = L.ladder_runs("smoke", store, ("smoke-b",))
    assert {r.rung for r in only} == {"smoke-b"}
    gap = L.gap_runs("smoke", store)
    assert {r.method for r in gap} == set(L.GAP_CHANGES)
    for r in gap:
        method, change = L.GAP_CHANGES[r.method]
        assert r.run == L.rung_run("smoke", r.rung, method, r.seed, chosen).replace(**change)


def test_the_four_gpu_rung_smoke_on_a_cpu(tmp_path):
    """The gpt2-600m rung's MST run, one step at the true depth and width (12 x 768, the chosen schedule's
    structure) with the context and batch cut to CPU size: the config builds, trains and stays finite."""
    from mstlib import train as T
    from mstlib.data import make_example_source, prepare, PrepareOptions
    from mstlib.results import RunStore

    src = make_example_source(tmp_path / "src")
    prepare(PrepareOptions(corpus="offline", name="tiny", data_dir=str(tmp_path / "data"), source_dir=str(src),
                           progress=False))
    run = L.rung_run("mini", "gpt2-600m", "mst", 2, L.SCHEDULES[1].name)
    assert run.model.n_layer == 12 and run.model.n_embd == 768 and run.train.max_iters == 9156
    small = run.replace(**{"train.max_iters": 2, "train.batch_size": 1, "train.grad_accum": 1,
                           "train.eval_iters": 1, "train.warmup_iters": 1, "model.block_size": 64,
                           "attention.window": 16, "attention.stride": 16, "topology.update_interval": 1,
                           "data.corpus": "tiny", "data.data_dir": str(tmp_path / "data")})
    res = T.train(small, RunStore(tmp_path / "results"), device="cpu", progress=False)
    assert res.done and math.isfinite(res.metrics["final_val_loss"])
