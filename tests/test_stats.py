import math
import random

import pytest

from mstlib.stats import (betainc, difference_ci, fit_line, holm, mean_ci, paired_ci, paired_p, t_cdf, t_quantile,
                          wilson_interval)


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


def test_paired_ci_and_p_use_the_per_seed_differences():
    # a shared seed effect that Welch's unpaired interval counts as noise; the paired one removes it
    a, b = [5.0, 6.0, 7.0], [4.9, 5.88, 6.91]
    d = paired_ci(a, b)
    assert d.mean == pytest.approx(0.1033333, abs=1e-6) and d.lo > 0 and d.n == 3
    assert difference_ci(a, b).lo < 0 < difference_ci(a, b).hi
    # t = mean / (sd / sqrt 3) with the differences 0.1, 0.12, 0.09
    diffs = [0.1, 0.12, 0.09]
    m = sum(diffs) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in diffs) / 2)
    t = m / (sd / math.sqrt(3))
    assert paired_p(a, b) == pytest.approx(2 * (1 - t_cdf(t, 2)), rel=1e-12) and paired_p(a, b) < 0.01
    assert math.isnan(paired_p([1.0], [2.0])) and paired_p([1.0, 2.0], [1.0, 2.0]) == 1.0
    with pytest.raises(ValueError):
        paired_ci([1.0, 2.0], [1.0])


def test_holm_step_down():
    # hand-computed: sorted 0.01, 0.02, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 1 * 0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, math.nan, 0.2])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.2)


def test_fit_line_slope_interval_and_prediction():
    x = [0.0, 1.0, 2.0, 3.0]
    y = [1.0, 3.1, 4.9, 7.0]
    f = fit_line(x, y)
    assert f.slope == pytest.approx(1.98, abs=1e-9) and f.intercept == pytest.approx(1.03, abs=1e-9)
    assert f.slope_lo < 1.98 < f.slope_hi and f.slope_hi - f.slope_lo < 0.5
    at = f.at(10.0)  # far out: the interval widens with the distance from the data
    assert at.mean == pytest.approx(1.03 + 19.8) and at.hi - at.lo > (f.at(1.5).hi - f.at(1.5).lo) * 3
    two = fit_line([0.0, 1.0], [1.0, 2.0])
    assert two.slope == 1.0 and math.isnan(two.slope_lo) and math.isnan(two.at(5.0).lo)
    with pytest.raises(ValueError):
        fit_line([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


def test_mean_ci_text_is_for_people():
    # the half-width to the mean's last digit, separators on large numbers, no e-notation, no spread: no +/-
    assert f"{mean_ci([5.9, 6.0, 5.97]):.4g}" == "5.957 ± 0.127"
    assert f"{mean_ci([535600.0, 560000.0, 510000.0]):.4g}" == "535,200 ± 62,100"
    assert f"{mean_ci([0.6838, 0.6838, 0.6838]):.4g}" == "0.6838"
    assert "e" not in f"{mean_ci([1e-3, 2e-3, 1.5e-3]):.4g}"
    assert f"{mean_ci([5.0]):.4g}" == "5.000 (n=1)"
