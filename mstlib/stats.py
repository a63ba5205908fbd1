"""Small statistics for the tables: mean and 95% interval over seeds, paired differences, Holm's correction,
a straight-line fit with its interval, and binomial intervals.

No SciPy: the Student-t quantile comes from bisection on the t CDF, which is written through the
regularised incomplete beta function (continued fraction, Numerical Recipes' ``betacf`` method, our own
code). A claim such as "MST loses nothing against dense" needs an interval, not a single pair of runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """Inverse of :func:`t_cdf` (bisection to 1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with a two-sided ``level`` t interval [lo, hi] (NaN bounds when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def __format__(self, spec: str) -> str:
        """``"5.957 ± 0.088"``: the mean to ``spec``'s significant digits (``.4g``; default ``.3g``; a
        ``.Nf`` spec fixes the decimals instead), the half-width rounded to the mean's last digit; large
        numbers with thousands separators (``"535,200 ± 62,100"``), never e-notation beside a ±; without an
        interval ``"5.957 (n=1)"``, without spread (an exact value) the mean alone."""
        match = re.fullmatch(r"([+ ]?)\.(\d+)([fg])", spec or ".3g")
        if match is None:
            raise ValueError(f"MeanCI format spec must be like '.4g', '.3f' or '+.3f', got {spec!r}")
        sign, n, kind = match.group(1), int(match.group(2)), match.group(3)
        if kind == "f":
            digits = n
        else:
            digits = n - 1 - math.floor(math.log10(abs(self.mean))) if math.isfinite(self.mean) and self.mean else n
        mean = _fixed(self.mean, digits)
        if sign == "+" and not mean.startswith("-"):
            mean = "+" + mean
        if self.n < 2:
            return f"{mean} (n=1)"
        if not math.isfinite(self.half_width) or self.half_width <= 1e-12 * max(1.0, abs(self.mean)):
            return mean
        return f"{mean} ± {_fixed(self.half_width, digits)}"


def _fixed(x: float, digits: int) -> str:
    """``x`` rounded to ``digits`` decimals (negative: to tens, hundreds, ...), plain notation with
    thousands separators."""
    if not math.isfinite(x):
        return str(x)
    x = round(x, digits)
    return f"{x:,.{max(0, digits)}f}"


def mean_ci(values: Iterable[float], level: float = 0.95) -> MeanCI:
    """Mean and Student-t interval of independent values (one per seed)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci of no values")
    m = sum(xs) / n
    if n < 2:
        return MeanCI(m, math.nan, math.nan, n, level)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return MeanCI(m, m - h, m + h, n, level)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (accuracy on n examples)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = successes / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> MeanCI:
    """Interval of mean(a) - mean(b) for independent samples (Welch's t, Welch-Satterthwaite df)."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    d = ma - mb
    if na < 2 or nb < 2:
        return MeanCI(d, math.nan, math.nan, min(na, nb), level)
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0.0:
        return MeanCI(d, d, d, min(na, nb), level)
    df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    h = t_quantile(0.5 + level / 2.0, df) * math.sqrt(se2)
    return MeanCI(d, d - h, d + h, min(na, nb), level)


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> MeanCI:
    """Interval of the mean of ``a[i] - b[i]`` (Student t on the differences, n - 1 df): for runs that
    share a seed, and with it the initial weights and the data order, so their difference is paired."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)], level)


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t test of ``mean(a - b) = 0`` (NaN with fewer than two pairs; 0 or 1
    when the differences do not vary)."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    if n < 2:
        return math.nan
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    if sd == 0.0:
        return 1.0 if m == 0.0 else 0.0
    t = m / (sd / math.sqrt(n))
    return 2.0 * (1.0 - t_cdf(abs(t), n - 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order: reject a
    hypothesis at family-wise level alpha where its adjusted p-value is at most alpha. NaN stays NaN and
    does not count in the family."""
    idx = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class LineFit:
    """Least-squares line ``y = intercept + slope * x`` over ``n`` points, with the slope's two-sided
    ``level`` t interval (n - 2 df; NaN bounds with fewer than three points)."""

    slope: float
    intercept: float
    slope_lo: float
    slope_hi: float
    n: int
    x_mean: float
    sxx: float
    resid_sd: float
    level: float = 0.95

    def at(self, x: float) -> MeanCI:
        """The fitted mean at ``x`` with its t interval (an extrapolation far from the data is not a
        measurement: the interval only says how uncertain the line is, if the line is the right model)."""
        y = self.intercept + self.slope * x
        if self.n < 3:
            return MeanCI(y, math.nan, math.nan, self.n, self.level)
        se = self.resid_sd * math.sqrt(1.0 / self.n + (x - self.x_mean) ** 2 / self.sxx)
        h = t_quantile(0.5 + self.level / 2.0, self.n - 2) * se
        return MeanCI(y, y - h, y + h, self.n, self.level)


def fit_line(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> LineFit:
    """Ordinary least squares of ``y`` on ``x`` (at least two distinct ``x``)."""
    n = len(x)
    if n != len(y) or n < 2:
        raise ValueError(f"fit_line needs two or more (x, y) pairs of equal length, got {n} and {len(y)}")
    xm, ym = sum(x) / n, sum(y) / n
    sxx = sum((v - xm) ** 2 for v in x)
    if sxx == 0.0:
        raise ValueError("fit_line needs at least two distinct x")
    slope = sum((u - xm) * (v - ym) for u, v in zip(x, y)) / sxx
    intercept = ym - slope * xm
    if n < 3:
        return LineFit(slope, intercept, math.nan, math.nan, n, xm, sxx, math.nan, level)
    resid = [v - (intercept + slope * u) for u, v in zip(x, y)]
    sd = math.sqrt(sum(r * r for r in resid) / (n - 2))
    h = t_quantile(0.5 + level / 2.0, n - 2) * sd / math.sqrt(sxx)
    return LineFit(slope, intercept, slope - h, slope + h, n, xm, sxx, sd, level)
