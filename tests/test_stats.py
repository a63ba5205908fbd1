import math
import random

import pytest

from mstlib.stats import betainc, difference_ci, mean_ci, t_cdf, t_quantile, wilson_interval


@pytest.mark.parametrize(
    "df,q,expected",  # two-sided 95% critical values from any t table
    [(1, 0.975, 12.7062), (2, 0.975, 4.3027), (4, 0.975, 2.7764), (30, 0.975, 2.0423), (10, 0.95, 1.8125)],
)
def test_t_quantile_matches_tables(df, q, expected):
    assert t_quantile(q, df) == pytest.approx(expected, abs=2e-4)


def test_t_cdf_symmetry_and_betainc_edges():
    for df in (1, 3, 7.5):
        for t in (0.1, 1.0, 3.0):
            assert t_cdf(t, df) + t_cdf(-t, df) == pytest.approx(1.0, abs=1e-12)
    assert betainc(2, 3, 0.0) == 0.0 and betainc(2, 3, 1.0) == 1.0
    # I_x(1, 1) = x
    assert betainc(1, 1, 0.37) == pytest.approx(0.37, abs=1e-12)


def test_mean_ci_hand_computed():
    ci = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, se = 1/sqrt(3), t(0.975, 2) = 4.3027
    assert ci.mean == 2.0
    assert ci.half_width == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    single = mean_ci([5.0])
    assert single.n == 1 and math.isnan(single.lo)
    assert f"{single:.1f}" == "5.0 (n=1)"


def test_mean_ci_coverage_is_about_95_percent():
    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        ci = mean_ci([rng.gauss(1.0, 2.0) for _ in range(4)])
        hits += ci.lo <= 1.0 <= ci.hi
    assert 0.93 < hits / 2000 < 0.97


def test_wilson_and_difference():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    d = difference_ci([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert d.mean == pytest.approx(-1.0) and d.hi < 0
    with pytest.raises(ValueError):
        mean_ci([])
