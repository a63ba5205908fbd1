"""The fair test's analysis on a store of made-up finished runs (no training): which runs it reads, the
paired differences, Holm over the comparisons at the budget, the trend and its extrapolation, and the
frontier."""

from __future__ import annotations

import math

import pytest

from mstlib import fair_test as F
from mstlib import ladder as L
from mstlib.results import RunStore

PRESET = "smoke"
# made-up final validation losses: dense best, then Tiny, RigL, MST, dense at the budget; the search's best
# candidate is the third; the gap to dense shrinks by 0.1 per doubling of tokens (smoke-a -> smoke-b)
LOSS = {"dense": 4.0, "dense 1/2": 4.6, "dense 1/4": 5.4, "tiny": 4.7, "rigl": 4.9, "mst": 5.0}
GAP_SHRINK = {"smoke-a": 0.0, "smoke-b": -0.1, "smoke-wide": 0.0}


def fake(store: RunStore, run, loss: float) -> None:
    store.begin(run, {"seed": run.seed, "device_name": "fake GPU", "git": {"commit": "abc1234"}}, fresh=True)
    store.finish(run, {"final_val_loss": loss, "passes": 0.5, "wall_time_s": 60.0},
                 {"seed": run.seed, "device_name": "fake GPU", "git": {"commit": "abc1234"}})


def jitter(seed: int) -> float:
    return 0.01 * ((seed * 7) % 5)  # a seed effect shared by every method of that seed


@pytest.fixture()
def store(tmp_path):
    s = RunStore(tmp_path / "results")
    for r in L.selection_runs(PRESET):
        best = r.method == L.SCHEDULES[2].name
        fake(s, r.run, (4.0 if r.method == "dense" else 4.8 if best else 5.2) + jitter(r.seed))
    return s


def fill_ladder(store: RunStore, rungs=None) -> None:
    for r in [*L.ladder_runs(PRESET, store, rungs), *L.gap_runs(PRESET, store)]:
        if store.is_done(r.run):
            continue
        if r.rung in GAP_SHRINK and r.method in LOSS:
            base = LOSS[r.method] + (GAP_SHRINK[r.rung] if r.method == "mst" else 0.0)
        else:
            base = 4.5  # the diagnostics
        fake(store, r.run, base + jitter(r.seed) + 0.002 * r.seed * (r.method == "mst"))


def test_without_the_search_only_baselines_and_the_search_are_listed(tmp_path):
    df, chosen = F.collect(PRESET, RunStore(tmp_path / "empty"))
    assert chosen is None and not df["done"].any()
    assert set(df["part"]) == {"selection", "ladder"} and "mst" not in set(df.loc[df["part"] == "ladder", "method"])
    miss = F.missing(df, PRESET)
    assert (miss["stored"] == 0).all() and miss["command"].str.contains("python -m mstlib sweep --experiment").all()


def test_selection_is_reported_apart_with_the_choice(store):
    df, chosen = F.collect(PRESET, store)
    assert chosen == L.SCHEDULES[2].name
    sel = F.selection_table(df, chosen)
    assert list(sel["schedule"]).count(f"{chosen} (chosen)") == 1
    row = sel[sel["schedule"] == f"{chosen} (chosen)"].iloc[0]
    assert row["vs dense (paired)"].startswith("+0.800 [+0.800, +0.800]")  # the seed effect cancels
    assert sel[sel["schedule"] == "old default"]["solved"].iloc[0] == ""


def test_paired_differences_and_holm_at_the_budget(store):
    fill_ladder(store)
    df, chosen = F.collect(PRESET, store)
    assert df["done"].all()
    table = F.rung_table(df, PRESET).set_index(["rung", "method"])
    assert table.loc[("smoke-a", "mst"), "minus dense (paired)"].startswith("+1.00")
    budget = L.budget_method(PRESET)
    assert table.loc[("smoke-a", "mst"), f"minus {budget} (paired)"].startswith("+0.40")
    sec = F.at_budget(df, PRESET)
    assert set(sec["comparison"]) == {f"mst vs {budget}", "mst vs tiny", "mst vs rigl"}
    assert (sec["p (Holm)"] >= sec["p"] - 1e-15).all()
    by = sec.set_index(["rung", "comparison"])
    assert by.loc[("smoke-a", "mst vs tiny"), "gain"] == pytest.approx(-0.3, abs=0.01)
    assert by.loc[("smoke-a", "mst vs tiny"), "outcome"] == "worse"


def test_trend_fits_the_per_seed_gaps_and_extrapolates_with_a_caveat(store):
    fill_ladder(store)
    df, _ = F.collect(PRESET, store)
    t = F.trend(df, "smoke (2x32)")
    assert [r[0] for r in t["rungs"]] == ["smoke-a", "smoke-b"]
    # smoke-b has twice smoke-a's tokens and a gap 0.1 smaller: -0.1 per doubling
    assert t["fit"].slope == pytest.approx(-0.1, abs=1e-6)
    assert t["doublings_to_close"] == pytest.approx(t["gap_last"].mean / 0.1, rel=1e-6)
    assert t["doublings_to_paper"] == pytest.approx(math.log2(F.PAPER_TOKENS / 4096), rel=1e-9)
    one = F.trend(df, "smoke-wide (2x64)")
    assert one["fit"] is None and len(one["rungs"]) == 1  # one rung: a point, no line
    rows = F.trend_table(df)
    assert list(rows["model"]) == ["smoke (2x32)"]


def test_frontier_and_the_diagnostics(store):
    fill_ladder(store)
    df, _ = F.collect(PRESET, store)
    pts = F.frontier_points(df)
    dense = pts[(pts["model"] == "smoke (2x32)") & pts["dense"]]
    assert set(dense["method"]) == set(L.DENSE_FRACTIONS)
    # interpolation in log FLOPs between two dense points, NaN outside their range
    d = dense.groupby("flops")["loss"].mean().sort_index()
    (f0, l0), (f1, l1) = list(d.items())[:2]
    mid = math.sqrt(f0 * f1)
    assert F.frontier_at(df, "smoke (2x32)", mid) == pytest.approx((l0 + l1) / 2, rel=1e-9)
    assert math.isnan(F.frontier_at(df, "smoke (2x32)", d.index.max() * 10))
    gap = F.gap_table(df)
    assert set(gap["diagnostic"]) == set(L.GAP_CHANGES)
    assert (gap["seeds"] == 2).all()
