"""Small statistics for the tables: mean and 95% interval over seeds, and binomial intervals.

No SciPy: the Student-t quantile comes from bisection on the t CDF, which is written through the
regularised incomplete beta function (continued fraction, Numerical Recipes' ``betacf`` method, our own
code). A claim such as "MST loses nothing against dense" needs an interval, not a single pair of runs.
"""

from __future__ import annotations

import math
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
        spec = spec or ".3g"
        if self.n < 2:
            return f"{self.mean:{spec}} (n=1)"
        return f"{self.mean:{spec}} ± {self.half_width:{spec}}"


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
