"""Every verdict rule on synthetic numbers: each outcome is reachable, and the boundaries sit where the
rule says (margins, orientation of lower/higher-is-better, too few runs)."""

import math

import pandas as pd
import pytest

from mstlib.errors import MstError
from mstlib.verdicts import (OUTCOMES, Verdict, at_least, better_than, combine, no_worse_than, values,
                             verdict_table)

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
    assert v.outcome == "inconclusive" and (v.lo, v.hi) == (3.5, 3.7)


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
    t = verdict_table([no_worse_than([3.0, 3.01, 2.99], DENSE, 0.05, claim="no loss"), _v("inconclusive")])
    assert list(t["verdict"]) == ["reproduced", "inconclusive"]
    assert set(t["paper"]) == {"not available"}
    assert t["95% interval"].iloc[0].startswith("[")


def test_differences_against_reference():
    from mstlib.verdicts import differences

    df = pd.DataFrame({"variant": ["full", "full", "full", "abl", "abl", "abl", "one"],
                       "loss": [3.0, 3.01, 2.99, 3.2, 3.21, 3.19, 3.5]})
    d = differences(df, "loss", "full").set_index("variant")
    assert d.loc["full", "text"] == "reference"
    assert d.loc["abl", "difference"] == pytest.approx(0.2)
    assert d.loc["abl", "lo"] < 0.2 < d.loc["abl", "hi"]
    assert d.loc["abl", "text"].startswith("+0.2000 [")
    assert d.loc["one", "text"].endswith("(n=1)")


def test_verdict_numbers_are_plain_python():
    import numpy as np

    v = better_than(np.array([2.9, 2.91, 2.89]), np.array(DENSE), claim="x")
    assert type(v.estimate) is float and type(v.lo) is float and type(v.n) is int
    assert repr(v.estimate).replace(".", "").replace("-", "").replace("e", "").isdigit()
