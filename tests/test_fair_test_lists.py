"""tools/gpu/fair_test_lists.py: the run lists a GPU campaign trains, on stores of made-up finished runs (no
training): before the schedule search is stored, the search and the baselines, the chosen schedule's runs
left to the GPU machine (chosen.txt); once it is stored, every run in one list, longest first, --seeds
keeping only those seeds, done runs left out."""

from __future__ import annotations

import json
import importlib.util
from pathlib import Path

import pytest

from mstlib import experiments
from mstlib import ladder as L
from mstlib.config import RunConfig
from mstlib.results import RunStore

ROOT = Path(__file__).resolve().parents[1]
PRESET = "smoke"


def fake(store: RunStore, run, loss: float) -> None:
    store.begin(run, {"seed": run.seed, "device_name": "fake GPU", "git": {"commit": "abc1234"}}, fresh=True)
    store.finish(run, {"final_val_loss": loss, "passes": 0.5, "wall_time_s": 60.0},
                 {"seed": run.seed, "device_name": "fake GPU", "git": {"commit": "abc1234"}})


def tool():
    spec = importlib.util.spec_from_file_location("fair_test_lists", ROOT / "tools/gpu/fair_test_lists.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lists(results: Path, out: Path, *args: str) -> tuple[list[RunConfig], list[RunConfig], str]:
    assert tool().main(["--preset", PRESET, "--results", str(results), "--out", str(out), *args]) == 0
    read = lambda name: [RunConfig.from_dict(d) for d in json.loads((out / name).read_text())]  # noqa: E731
    return read("first.json"), read("last.json"), (out / "chosen.txt").read_text()


def ids(runs) -> set[str]:
    return {r.run_id() for r in runs}


def test_before_the_search_is_stored_the_chosen_runs_are_left_to_the_gpu_machine(tmp_path):
    first, last, chosen = lists(tmp_path / "results", tmp_path / "runs")
    rung = L.selection_rung(PRESET)
    search = {r.run.run_id() for r in L.selection_runs(PRESET) if r.method in {s.name for s in L.SCHEDULES}}
    assert search <= ids(first)
    assert "mst" not in {r.method for r in first if r.run_id() not in search}  # baselines only besides the search
    assert chosen.split() == [f"ladder-{rung.name}", "gap"]
    assert not ids(first) & ids(last)


@pytest.fixture()
def searched(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "results")
    for i, r in enumerate(L.selection_runs(PRESET)):
        fake(store, r.run, 4.0 + 0.01 * i)
    return store


def test_once_the_search_is_stored_one_list_holds_every_run_longest_first(searched, tmp_path):
    rung = L.rungs(PRESET)[1]
    first, last, chosen = lists(searched.root, tmp_path / "runs", "--rungs", rung.name)
    want = {L.rung_run(PRESET, rung.name, m, s, L.chosen_schedule(PRESET, searched)).run_id()
            for m in rung.methods for s in rung.seeds}
    want |= {r.run.run_id() for r in L.gap_runs(PRESET, searched)}
    assert want <= ids(first) and last == [] and chosen == ""
    assert not any(searched.is_done(r) for r in first)  # the search's runs are stored: none listed again
    tokens = [r.train.max_iters * r.train.batch_size * r.train.grad_accum for r in first]
    same_model = [t for r, t in zip(first, tokens) if r.model == first[0].model]
    assert same_model == sorted(same_model, reverse=True)


def test_seeds_and_no_gap_narrow_the_list(searched, tmp_path):
    rung = L.rungs(PRESET)[1]
    seed = rung.seeds[0]
    first, _, _ = lists(searched.root, tmp_path / "runs", "--rungs", rung.name, "--seeds", str(seed), "--no-gap")
    gap = {r.run.run_id() for r in L.gap_runs(PRESET, searched)}
    # the sparsity-variation ablation's matched run (seeds 0 and 1) is listed whatever the rungs' seeds
    sv = {v.run.run_id() for v in experiments.variants_for("sv", PRESET, [0, 1]) if v.variant == "constant sparsity"}
    assert sv <= ids(first) and not ids(first) & gap
    assert {r.seed for r in first if r.run_id() not in sv} == {seed}
    done = first[0]
    fake(searched, done, 4.0)
    again, _, _ = lists(searched.root, tmp_path / "runs2", "--rungs", rung.name, "--seeds", str(seed), "--no-gap")
    assert ids(again) == ids(first) - {done.run_id()}


def test_an_unknown_rung_is_an_error_that_names_the_rungs(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        tool().main(["--preset", PRESET, "--results", str(tmp_path), "--out", str(tmp_path / "runs"),
                     "--rungs", "smoke-zz"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "smoke-zz" in err and L.rungs(PRESET)[0].name in err
