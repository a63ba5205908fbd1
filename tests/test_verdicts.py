"""Every verdict rule on synthetic numbers: each outcome is reachable, and the boundaries sit where the
rule says (margins, orientation of lower/higher-is-better, too few runs)."""

import math

import pandas as pd
import pytest

from mstlib.errors import MstError
from mstlib.stats import fit_line
from mstlib.verdicts import (OUTCOMES, Verdict, at_least, better_than, combine, holm, no_worse_than, not_stored,
                             paired_values, rules_table, trend_shrinks, values, verdict_table)

DENSE = [3.00, 3.01, 2.99]


# ------------------------------------------------------------------------------ no loss (non-inferiority)
def test_no_worse_reproduced_when_interval_below_margin():
    v = no_worse_than([3.005, 3.015, 2.995], DENSE, 0.05, claim="no loss")
    assert v.outcome == "reproduced"
    assert v.hi < 0.05 and v.lo < v.estimate < v.hi
    assert "0.05" in v.rule


def test_no_worse_better_candidate_is_no_loss():
    assert no_worse_than([2.5, 2.51, 2.49], DENSE, 0.01, claim="x").outcome == "reproduced"


def test_no_worse_not_reproduced_when_interval_above_margin():
    v = no_worse_than([3.20, 3.21, 3.19], DENSE, 0.05, claim="no loss")
    assert v.outcome == "not reproduced"
    assert v.lo > 0.05
    assert v.estimate == pytest.approx(0.20)


def test_no_worse_inconclusive_when_interval_straddles_margin():
    v = no_worse_than([3.0, 3.1, 2.95], DENSE, 0.05, claim="no loss")
    assert v.outcome == "inconclusive"
    assert v.lo < 0.05 < v.hi


def test_no_worse_single_seed_is_inconclusive():
    v = no_worse_than([3.0], [3.0], 0.05, claim="x")
    assert v.outcome == "inconclusive" and "fewer than two" in v.note
    assert math.isnan(v.lo)


def test_no_worse_relative_margin_and_higher_is_better():
    # accuracy: candidate 0.02 below reference; 5% of 0.6 = 0.03 margin -> reproduced; 1% -> not
    cand, ref = [0.58, 0.581, 0.579], [0.60, 0.601, 0.599]
    kw = dict(claim="x", lower_is_better=False, relative=True)
    assert no_worse_than(cand, ref, 0.05, **kw).outcome == "reproduced"
    assert no_worse_than(cand, ref, 0.01, **kw).outcome == "not reproduced"


def test_no_worse_rejects_bad_input():
    with pytest.raises(MstError):
        no_worse_than([1.0, 2.0], [1.0, 2.0], -0.1, claim="x")
    with pytest.raises(MstError, match="non-finite"):
        no_worse_than([float("nan"), 1.0], [1.0, 2.0], 0.1, claim="x")
    with pytest.raises(MstError, match="no values"):
        no_worse_than([], [1.0, 2.0], 0.1, claim="x")


# ---------------------------------------------------------------------------- better than (superiority)
def test_better_than_all_outcomes_lower_is_better():
    assert better_than([2.90, 2.91, 2.89], DENSE, claim="x").outcome == "reproduced"
    assert better_than([3.10, 3.11, 3.09], DENSE, claim="x").outcome == "not reproduced"
    assert better_than([2.95, 3.05, 3.0], DENSE, claim="x").outcome == "inconclusive"


def test_better_than_higher_is_better_orientation():
    v = better_than([0.70, 0.71, 0.69], [0.60, 0.61, 0.59], claim="x", lower_is_better=False)
    assert v.outcome == "reproduced" and v.estimate == pytest.approx(0.10)
    v = better_than([0.70, 0.71, 0.69], [0.60, 0.61, 0.59], claim="x", lower_is_better=True)
    assert v.outcome == "not reproduced" and v.estimate == pytest.approx(-0.10)


def test_better_than_min_gain_turns_a_tie_into_not_reproduced():
    cand = [3.0, 3.004, 2.996]
    assert better_than(cand, DENSE, claim="x").outcome == "inconclusive"
    assert better_than(cand, DENSE, claim="x", min_gain=0.05).outcome == "not reproduced"


def test_better_than_single_seed_inconclusive():
    assert better_than([1.0], [2.0], claim="x").outcome == "inconclusive"


# ------------------------------------------------------------------------------------- factor (4x FLOPs)
def test_at_least_exact_outcomes():
    assert at_least([4.1], 4.0, claim="4x", exact=True).outcome == "reproduced"
    assert at_least([3.7], 4.0, claim="4x", exact=True).outcome == "reproduced"  # 10% tolerance: 3.6
    assert at_least([3.5], 4.0, claim="4x", exact=True).outcome == "not reproduced"
    assert at_least([3.5], 4.0, claim="4x", exact=True, tolerance=0.0).outcome == "not reproduced"
    v = at_least([3.5, 3.7], 4.0, claim="4x", exact=True)
    assert v.outcome == "inconclusive" and "straddle" in v.note
    # an exact quantity has no interval and no p-value, whatever the number of runs
    for w in (v, at_least([4.1, 4.1, 4.1], 4.0, claim="4x", exact=True)):
        assert math.isnan(w.lo) and math.isnan(w.hi) and math.isnan(w.p) and w.interval == "exact (computed)"


def test_at_least_measured_needs_an_interval():
    assert at_least([4.2], 4.0, claim="4x").outcome == "inconclusive"
    assert at_least([4.2, 4.3, 4.25], 4.0, claim="4x").outcome == "reproduced"
    assert at_least([2.0, 2.1, 2.05], 4.0, claim="4x").outcome == "not reproduced"
    assert at_least([3.0, 4.5, 3.8], 4.0, claim="4x").outcome == "inconclusive"
    with pytest.raises(MstError):
        at_least([4.0], 0.0, claim="x")


# ------------------------------------------------------------------------------------ combine and tables
def _v(outcome):
    return Verdict("part", outcome, "q", 0.0, -1.0, 1.0, 3, "rule")


def test_combine_outcomes():
    assert combine("all", [_v("reproduced"), _v("reproduced")]).outcome == "reproduced"
    assert combine("all", [_v("reproduced"), _v("not reproduced"), _v("inconclusive")]).outcome == "not reproduced"
    assert combine("all", [_v("reproduced"), _v("inconclusive")]).outcome == "inconclusive"
    with pytest.raises(MstError):
        combine("none", [])


def test_every_outcome_reachable_by_each_rule():
    seen = {
        "no_worse": {no_worse_than(c, DENSE, 0.05, claim="x").outcome
                     for c in ([3.0, 3.01, 2.99], [3.3, 3.31, 3.29], [3.0, 3.1, 2.95])},
        "better": {better_than(c, DENSE, claim="x").outcome
                   for c in ([2.9, 2.91, 2.89], [3.1, 3.11, 3.09], [2.95, 3.05, 3.0])},
        "at_least": {at_least(c, 4.0, claim="x").outcome
                     for c in ([4.2, 4.3, 4.25], [2.0, 2.1, 2.05], [3.0, 4.5, 3.8])},
    }
    for rule, outs in seen.items():
        assert outs == set(OUTCOMES), rule


def test_values_and_table():
    df = pd.DataFrame({"variant": ["mst", "mst", "dense"], "metrics.final_val_loss": [3.0, 3.1, 2.9]})
    assert values(df, "metrics.final_val_loss", group="mst") == [3.0, 3.1]
    with pytest.raises(MstError, match="present"):
        values(df, "metrics.final_val_loss", group="rigl")
    with pytest.raises(MstError, match="no column"):
        values(df, "nope", group="mst")
    vs = [no_worse_than([3.0, 3.01, 2.99], DENSE, 0.05, claim="no loss", scope="mini"), _v("inconclusive")]
    t = verdict_table(vs)
    assert list(t["verdict"]) == ["reproduced", "inconclusive"] and t["scope"].iloc[0] == "mini"
    assert "paper" not in t.columns  # the paper's numbers are not available: said once on the page
    assert t["95% interval"].iloc[0].startswith("[")
    # each rule once in the rules table; the verdict table refers to it by number
    rules = rules_table(vs + vs)
    assert list(rules["rule"]) == ["R1", "R2"] and list(t["rule"]) == ["R1", "R2"]


def test_differences_against_reference():
    from mstlib.verdicts import differences

    df = pd.DataFrame({"variant": ["full", "full", "full", "abl", "abl", "abl", "one"],
                       "seed": [0, 1, 2, 2, 1, 0, 0],
                       "loss": [3.0, 3.01, 2.99, 3.19, 3.21, 3.2, 3.5]})
    d = differences(df, "loss", "full").set_index("variant")
    assert d.loc["full", "text"] == "reference"
    assert d.loc["abl", "difference"] == pytest.approx(0.2)
    # paired by seed (abl's rows are in another order): every per-seed difference is exactly 0.2
    assert d.loc["abl", "lo"] == pytest.approx(0.2) and d.loc["abl", "hi"] == pytest.approx(0.2)
    assert d.loc["abl", "text"].startswith("+0.2000 [")
    assert d.loc["one", "text"].endswith("(n=1)")
    w = differences(df, "loss", "full", paired=False).set_index("variant")
    assert w.loc["abl", "lo"] < 0.2 - 1e-3  # Welch counts the seed-to-seed spread as noise


def test_verdict_numbers_are_plain_python():
    import numpy as np

    v = better_than(np.array([2.9, 2.91, 2.89]), np.array(DENSE), claim="x")
    assert type(v.estimate) is float and type(v.lo) is float and type(v.n) is int
    assert repr(v.estimate).replace(".", "").replace("-", "").replace("e", "").isdigit()


def test_paired_rules_read_per_seed_differences():
    # a seed effect shared by both methods: unpaired it hides a clear gain, paired it shows it
    base, cand = [3.0, 3.2, 2.8], [2.95, 3.15, 2.76]
    assert better_than(cand, base, claim="x").outcome == "reproduced"
    assert better_than(cand, base, claim="x", paired=False).outcome == "inconclusive"
    assert better_than(cand, base, claim="x").p < 0.05 < better_than(cand, base, claim="x", paired=False).p
    with pytest.raises(MstError, match="one per seed"):
        better_than([1.0, 2.0], [1.0, 2.0, 3.0], claim="x")
    df = pd.DataFrame({"variant": ["a", "a", "b", "b", "b"], "seed": [1, 0, 0, 1, 2],
                       "m": [10.0, 20.0, 2.0, 1.0, 9.0]})
    assert paired_values(df, "m", "a", "b") == ([20.0, 10.0], [2.0, 1.0])
    with pytest.raises(MstError, match="no seed"):
        paired_values(df.assign(seed=[5, 6, 0, 1, 2]), "m", "a", "b")


def test_holm_downgrades_what_the_family_cannot_carry():
    strong = better_than([2.90, 2.905, 2.895], DENSE, claim="strong")  # p ~ 1e-3
    weak = better_than([2.97, 2.99, 2.95], DENSE, claim="weak")  # p ~ 0.035: significant alone
    tie = better_than([3.0, 3.02, 2.98], DENSE, claim="tie")  # p = 1
    assert strong.outcome == weak.outcome == "reproduced" and 0.01 < weak.p < 0.05
    exact = at_least([4.1], 4.0, claim="4x", exact=True)
    fam = holm([strong, weak, tie, tie, _v("inconclusive"), exact])
    assert fam[0].outcome == "reproduced" and fam[0].p_holm == pytest.approx(4 * strong.p)
    # the second smallest of four p-values is multiplied by 3: above 0.05
    assert fam[1].outcome == "inconclusive" and "Holm" in fam[1].note and fam[1].p_holm == pytest.approx(3 * weak.p)
    assert fam[5] == exact and fam[4].outcome == "inconclusive"  # outside the family: no p-value


def test_trend_verdict_reads_the_slope_interval():
    x = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    assert trend_shrinks(fit_line(x, [1.0, 1.02, 0.8, 0.82, 0.6, 0.61]), claim="t", quantity="q").outcome == "reproduced"
    assert trend_shrinks(fit_line(x, [1.0, 1.02, 1.2, 1.22, 1.4, 1.41]), claim="t", quantity="q").outcome == "not reproduced"
    assert trend_shrinks(fit_line(x, [1.0, 0.8, 1.1, 0.9, 1.0, 0.95]), claim="t", quantity="q").outcome == "inconclusive"
    none = trend_shrinks(None, claim="t", quantity="q", scope="mini")
    assert none.outcome == "inconclusive" and "fewer than two" in none.note and none.scope == "mini"
    assert not_stored("c", "q", "r").note.endswith("not stored yet")
