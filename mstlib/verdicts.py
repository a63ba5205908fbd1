"""Claim verdicts: turn stored results into "reproduced" / "not reproduced" / "inconclusive", by a rule
that is stated with every verdict.

Every rule reads a 95% interval, never a single pair of runs. Runs of one seed share the initial weights
and the data order, so a difference between two methods is **paired by seed** by default (the t interval
of the per-seed differences, :func:`mstlib.stats.paired_ci`; the values must then come in the same seed
order, see :func:`paired_values`); ``paired=False`` uses Welch's interval for independent runs. Margins are
parameters, so a reader who disagrees with ours can re-run the page with theirs. The rules:

* **No loss vs a reference** (non-inferiority), :func:`no_worse_than`. ``d`` = candidate - reference,
  oriented so that positive ``d`` means the candidate is *worse* (for a lower-is-better metric such as
  validation loss or perplexity ``d = cand - ref``; for accuracy ``d = ref - cand``). With margin ``m >= 0``
  (in the metric's units, or relative to the reference mean with ``relative=True``):
  reproduced when the whole interval of ``d`` lies below ``m`` (the candidate is at most ``m`` worse, and
  being better is no loss); not reproduced when the whole interval lies above ``m`` (worse by more than
  the margin); inconclusive otherwise, or when there are too few seeds for an interval.
* **Better than a baseline** (superiority), :func:`better_than`. ``g`` = the candidate's gain, oriented so
  that positive ``g`` is in the candidate's favour. Reproduced when the interval of ``g`` excludes 0 in the
  candidate's favour (``lo > 0``); not reproduced when it excludes every gain of at least ``min_gain``
  (``hi < min_gain``; with the default ``min_gain = 0``: the baseline is significantly better);
  inconclusive otherwise. "Reproduced" is checked first, so a significant but small gain counts.
* **A factor of at least a target** (e.g. "4x fewer FLOPs"), :func:`at_least`. Measured factors: their t
  interval over runs against ``target * (1 - tolerance)``. Computed factors (``exact=True``, as training
  FLOPs are: arithmetic on the config) have **no interval**: the rule compares the exact values themselves.
* **A trend** (:func:`trend_shrinks`): the slope of a least-squares line with its t interval; reproduced
  when the whole interval is below 0 (the quantity shrinks), not reproduced when it is above 0, else
  inconclusive.

Every verdict also carries the two-sided p-value of the test its rule reads (``d = m``, ``g = 0``, factor =
threshold, slope = 0; NaN for exact quantities and single runs). :func:`holm` applies Holm's step-down
correction over a family of secondary comparisons: a verdict whose adjusted p-value exceeds the family's
level falls back to inconclusive, with a note. A :class:`Verdict` also says its ``scope`` (preset, tokens,
schedule), so a table of verdicts is its own explanation (:func:`verdict_table`, :func:`rules_table`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Literal, Sequence

import pandas as pd

from .errors import MstError
from .tables import number
from .stats import LineFit, MeanCI, difference_ci, holm as holm_adjust, mean_ci, paired_ci, t_cdf, t_quantile

Outcome = Literal["reproduced", "not reproduced", "inconclusive"]
OUTCOMES: tuple[Outcome, ...] = ("reproduced", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """One claim's verdict. ``estimate``/``lo``/``hi`` are the quantity the rule reads (a difference, a
    gain or a factor; see ``quantity``) with its ``level`` interval; ``n`` is the smaller number of runs
    behind it; ``rule`` says in words how the outcome follows from the interval."""

    claim: str
    outcome: Outcome
    quantity: str
    estimate: float
    lo: float
    hi: float
    n: int
    rule: str
    level: float = 0.95
    note: str = ""
    p: float = math.nan
    p_holm: float = math.nan
    scope: str = ""
    exact: bool = False

    def __post_init__(self) -> None:
        # plain floats, so a glued value prints as a number (a numpy scalar's text is "np.float64(...)")
        for name in ("estimate", "lo", "hi", "p", "p_holm"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "n", int(self.n))

    @property
    def interval(self) -> str:
        """``"[lo, hi]"`` (4 significant digits, as :func:`mstlib.tables.number` writes them), ``"exact"`` for a computed quantity, or
        ``"no interval (n=1)"``."""
        if self.exact:
            return "exact (computed)"
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"no interval (n={self.n})"
        return f"[{number(self.lo)}, {number(self.hi)}]"


def _finite(values: Iterable[float], what: str) -> list[float]:
    xs = [float(v) for v in values]
    if not xs:
        raise MstError(f"{what}: no values; are the runs missing from the results? (see pipeline.collect)")
    bad = [x for x in xs if not math.isfinite(x)]
    if bad:
        raise MstError(f"{what}: non-finite values {bad}; a run diverged or a metric is missing")
    return xs


def _has_interval(ci: MeanCI) -> bool:
    return math.isfinite(ci.lo) and math.isfinite(ci.hi)


def _difference(a: list[float], b: list[float], null: float, paired: bool, level: float) -> tuple[MeanCI, float]:
    """The interval of mean(a) - mean(b) and the two-sided p-value of ``mean(a - b) = null`` (paired by
    position, or Welch's for independent samples)."""
    if paired:
        if len(a) != len(b):
            raise MstError(f"paired values need one per seed on both sides, got {len(a)} and {len(b)}; "
                           "align them with paired_values, or pass paired=False")
        ci = paired_ci(a, b, level)
        d = [x - y for x, y in zip(a, b)]
        n = len(d)
        if n < 2:
            return ci, math.nan
        sd = math.sqrt(sum((x - ci.mean) ** 2 for x in d) / (n - 1))
        se, df = sd / math.sqrt(n), n - 1
    else:
        ci = difference_ci(a, b, level)
        if min(len(a), len(b)) < 2:
            return ci, math.nan
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
        vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
        se2 = va / len(a) + vb / len(b)
        se = math.sqrt(se2)
        df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1)) if se2 > 0 else 1.0
    if se == 0.0:
        return ci, (1.0 if ci.mean == null else 0.0)
    return ci, 2.0 * (1.0 - t_cdf(abs(ci.mean - null) / se, df))


def no_worse_than(
    candidate: Sequence[float], reference: Sequence[float], margin: float, *, claim: str,
    lower_is_better: bool = True, relative: bool = False, metric: str = "metric", level: float = 0.95,
    paired: bool = True, scope: str = "",
) -> Verdict:
    """Non-inferiority of ``candidate`` (one value per seed) against ``reference`` within ``margin``.

    ``margin`` is in the metric's units (e.g. 0.02 nats of validation loss), or a fraction of the
    reference mean when ``relative`` (e.g. 0.02 = 2% perplexity). ``paired``: the two lists hold the same
    seeds in the same order. See the module docstring for the rule."""
    if margin < 0:
        raise MstError(f"no_worse_than: margin must be >= 0, got {margin}")
    c = _finite(candidate, f"{claim}: candidate {metric}")
    r = _finite(reference, f"{claim}: reference {metric}")
    ref_mean = sum(r) / len(r)
    m = margin * abs(ref_mean) if relative else margin
    ci, p = _difference(c, r, m, paired, level) if lower_is_better else _difference(r, c, m, paired, level)
    worse = f"{metric}: candidate - reference" if lower_is_better else f"{metric}: reference - candidate"
    m_txt = f"{margin:.3g} x |reference mean| = {m:.4g}" if relative else f"{m:.4g}"
    rule = (f"non-inferiority: d = {worse} (positive = candidate worse), {_how(paired, level)}; margin "
            f"m = {m_txt}; reproduced if the interval of d lies below m, not reproduced if above m, else "
            "inconclusive")
    if not _has_interval(ci):
        outcome: Outcome = "inconclusive"
        note = "fewer than two runs on a side: no interval, no verdict"
    elif ci.hi < m:
        outcome, note = "reproduced", ""
    elif ci.lo > m:
        outcome, note = "not reproduced", ""
    else:
        outcome, note = "inconclusive", "the interval contains the margin"
    return Verdict(claim, outcome, worse, ci.mean, ci.lo, ci.hi, ci.n, rule, level, note, p=p, scope=scope)


def _how(paired: bool, level: float) -> str:
    return f"{level:.0%} t interval of the per-seed differences" if paired else f"{level:.0%} Welch interval"


def better_than(
    candidate: Sequence[float], baseline: Sequence[float], *, claim: str, lower_is_better: bool = True,
    min_gain: float = 0.0, metric: str = "metric", level: float = 0.95, paired: bool = True, scope: str = "",
) -> Verdict:
    """Superiority of ``candidate`` over ``baseline`` (one value per seed each, in the same seed order
    when ``paired``); ``min_gain`` >= 0 is the smallest gain worth the claim, in the metric's units. See
    the module docstring for the rule."""
    if min_gain < 0:
        raise MstError(f"better_than: min_gain must be >= 0, got {min_gain}")
    c = _finite(candidate, f"{claim}: candidate {metric}")
    b = _finite(baseline, f"{claim}: baseline {metric}")
    ci, p = _difference(b, c, 0.0, paired, level) if lower_is_better else _difference(c, b, 0.0, paired, level)
    gain = f"{metric}: baseline - candidate" if lower_is_better else f"{metric}: candidate - baseline"
    rule = (f"superiority: g = {gain} (positive = candidate better), {_how(paired, level)}; reproduced if "
            f"the interval of g excludes 0 (lo > 0), not reproduced if it lies below {min_gain:.4g} "
            f"(hi < {min_gain:.4g}), else inconclusive")
    if not _has_interval(ci):
        outcome: Outcome = "inconclusive"
        note = "fewer than two runs on a side: no interval, no verdict"
    elif ci.lo > 0:
        outcome, note = "reproduced", ""
    elif ci.hi < min_gain:
        outcome, note = "not reproduced", ""
    else:
        outcome, note = "inconclusive", "the interval contains 0"
    return Verdict(claim, outcome, gain, ci.mean, ci.lo, ci.hi, ci.n, rule, level, note, p=p, scope=scope)


def at_least(
    factors: Sequence[float], target: float, *, claim: str, tolerance: float = 0.1, exact: bool = False,
    quantity: str = "factor", level: float = 0.95, scope: str = "",
) -> Verdict:
    """Whether a factor (e.g. dense FLOPs / MST FLOPs, one value per run) reaches ``target`` within a
    relative ``tolerance`` (threshold = target * (1 - tolerance): "about 4x" with 10% is 3.6x).

    ``exact``: the values are computed, not measured (FLOP accounting from the config), so they carry no
    sampling noise and get no interval: reproduced when every value reaches the threshold, not reproduced
    when none does (one run suffices)."""
    if target <= 0 or not 0.0 <= tolerance < 1.0:
        raise MstError(f"at_least: need target > 0 and 0 <= tolerance < 1, got {target}, {tolerance}")
    xs = _finite(factors, f"{claim}: {quantity}")
    threshold = target * (1.0 - tolerance)
    mean = sum(xs) / len(xs)
    if exact:
        rule = (f"{quantity}, computed exactly (no interval); threshold = {target:.3g} x (1 - {tolerance:.3g}) "
                f"= {threshold:.4g}; reproduced if every run reaches it, not reproduced if none does")
        if min(xs) >= threshold:
            outcome: Outcome = "reproduced"
            note = ""
        elif max(xs) < threshold:
            outcome, note = "not reproduced", ""
        else:
            outcome, note = "inconclusive", f"the runs' exact factors ({min(xs):.4g} to {max(xs):.4g}) straddle it"
        return Verdict(claim, outcome, quantity, mean, math.nan, math.nan, len(xs), rule, level, note,
                       scope=scope, exact=True)
    ci = mean_ci(xs, level)
    rule = (f"{quantity}, {level:.0%} t interval over runs; threshold = {target:.3g} x (1 - {tolerance:.3g}) = "
            f"{threshold:.4g}; reproduced if the interval lies at or above the threshold, not reproduced if "
            "below it, else inconclusive")
    p = math.nan
    if not _has_interval(ci):
        outcome, note = "inconclusive", "a single measured run: no interval, no verdict"
    else:
        se = (ci.hi - ci.lo) / 2.0 / t_quantile(0.5 + level / 2.0, ci.n - 1)
        p = 2.0 * (1.0 - t_cdf(abs(ci.mean - threshold) / se, ci.n - 1)) if se > 0 else float(ci.mean != threshold)
        if ci.lo >= threshold:
            outcome, note = "reproduced", ""
        elif ci.hi < threshold:
            outcome, note = "not reproduced", ""
        else:
            outcome, note = "inconclusive", "the interval contains the threshold"
    return Verdict(claim, outcome, quantity, ci.mean, ci.lo, ci.hi, ci.n, rule, level, note, p=p, scope=scope)


def trend_shrinks(fit: LineFit | None, *, claim: str, quantity: str, scope: str = "",
                  missing: str = "fewer than two token budgets stored: no trend") -> Verdict:
    """Whether a quantity shrinks along a fitted line (e.g. the gap to dense per doubling of tokens):
    reproduced if the slope's interval lies below 0, not reproduced if above 0, else inconclusive."""
    rule = ("trend: least-squares slope with its t interval (n - 2 df); reproduced if the interval lies below "
            "0 (it shrinks), not reproduced if above 0 (it grows), else inconclusive")
    if fit is None:
        return Verdict(claim, "inconclusive", quantity, math.nan, math.nan, math.nan, 0, rule, note=missing,
                       scope=scope)
    p = math.nan
    if math.isfinite(fit.slope_lo):
        se = fit.resid_sd / math.sqrt(fit.sxx)
        p = 2.0 * (1.0 - t_cdf(abs(fit.slope) / se, fit.n - 2)) if se > 0 else float(fit.slope != 0)
    if not math.isfinite(fit.slope_lo):
        outcome: Outcome = "inconclusive"
        note = "two points: no interval for the slope"
    elif fit.slope_hi < 0:
        outcome, note = "reproduced", ""
    elif fit.slope_lo > 0:
        outcome, note = "not reproduced", ""
    else:
        outcome, note = "inconclusive", "the slope's interval contains 0"
    return Verdict(claim, outcome, quantity, fit.slope, fit.slope_lo, fit.slope_hi, fit.n, rule, fit.level, note,
                   p=p, scope=scope)


def not_stored(claim: str, quantity: str, rule: str, scope: str = "", what: str = "its runs") -> Verdict:
    """The verdict of a comparison whose runs are not in the store yet: inconclusive, saying so."""
    return Verdict(claim, "inconclusive", quantity, math.nan, math.nan, math.nan, 0, rule,
                   note=f"{what} are not stored yet", scope=scope)


def holm(verdicts: Sequence[Verdict], alpha: float = 0.05) -> list[Verdict]:
    """Holm's step-down correction over a family of comparisons: each verdict gets ``p_holm``; one whose
    adjusted p-value exceeds ``alpha`` is inconclusive (with a note), whatever its own interval said.
    Verdicts without a p-value (exact quantities, single runs) are outside the family and unchanged."""
    from dataclasses import replace

    adjusted = holm_adjust([v.p for v in verdicts])
    out = []
    for v, ph in zip(verdicts, adjusted):
        if math.isnan(ph):
            out.append(v)
            continue
        if v.outcome != "inconclusive" and ph > alpha:
            note = "; ".join(filter(None, [v.note, f"{v.outcome} by its own interval, but not significant after "
                                                   f"Holm's correction (adjusted p = {ph:.2g} > {alpha:g})"]))
            out.append(replace(v, outcome="inconclusive", note=note, p_holm=ph))
        else:
            out.append(replace(v, p_holm=ph))
    return out


def combine(claim: str, parts: Sequence[Verdict], rule: str = "") -> Verdict:
    """One verdict from several (e.g. "better than RigL, SS and Tiny"): reproduced when every part is,
    not reproduced when any part is not, inconclusive otherwise. The numbers are the first part's, the
    note lists every part's outcome."""
    if not parts:
        raise MstError(f"combine({claim!r}): no verdicts to combine")
    outcomes = [p.outcome for p in parts]
    if all(o == "reproduced" for o in outcomes):
        outcome: Outcome = "reproduced"
    elif any(o == "not reproduced" for o in outcomes):
        outcome = "not reproduced"
    else:
        outcome = "inconclusive"
    first = parts[0]
    note = "; ".join(f"{p.claim}: {p.outcome}" for p in parts)
    rule = rule or "reproduced if every part is, not reproduced if any part is not, else inconclusive"
    return Verdict(claim, outcome, first.quantity, first.estimate, first.lo, first.hi,
                   min(p.n for p in parts), rule, first.level, note)


def values(results: pd.DataFrame, metric: str, *, by: str = "variant", group: str) -> list[float]:
    """The ``metric`` values (one per run/seed) of group ``group`` in a results DataFrame from
    :func:`mstlib.pipeline.collect`; an error naming the groups present when there are none."""
    if metric not in results.columns:
        raise MstError(f"no column {metric!r} in the results; columns: {sorted(map(str, results.columns))}")
    rows = results[results[by] == group]
    if rows.empty:
        raise MstError(f"no runs of {by}={group!r}; present: {sorted(map(str, set(results[by])))}")
    return [float(v) for v in pd.to_numeric(rows[metric], errors="coerce")]


def paired_values(results: pd.DataFrame, metric: str, candidate: str, reference: str, *,
                  by: str = "variant") -> tuple[list[float], list[float]]:
    """The ``metric`` values of ``candidate`` and ``reference`` on the seeds both have, in seed order (one
    value per seed and group), for the paired rules."""
    a = pd.Series(values(results, metric, by=by, group=candidate),
                  index=results.loc[results[by] == candidate, "seed"].to_numpy())
    b = pd.Series(values(results, metric, by=by, group=reference),
                  index=results.loc[results[by] == reference, "seed"].to_numpy())
    a, b = a[~a.index.duplicated()], b[~b.index.duplicated()]
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        raise MstError(f"{candidate!r} and {reference!r} share no seed; a paired comparison needs common seeds")
    return [float(a[s]) for s in seeds], [float(b[s]) for s in seeds]


def rules_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """Each distinct rule once, numbered R1, R2, ... in order of first use (:func:`verdict_table` refers
    to these numbers)."""
    rules = list(dict.fromkeys(v.rule for v in verdicts))
    return pd.DataFrame({"rule": [f"R{i + 1}" for i in range(len(rules))], "how the outcome follows": rules})


def verdict_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """A DataFrame of verdicts for display: comparison, scope, verdict, quantity, estimate, interval (or
    "exact"), n, Holm-adjusted p-value where the comparison is in a family, the rule's number in
    :func:`rules_table` and the note. The paper's own numbers are not available to us, so no column
    pretends to hold them."""
    ids = {r: f"R{i + 1}" for i, r in enumerate(dict.fromkeys(v.rule for v in verdicts))}
    rows = []
    for v in verdicts:
        rows.append({
            "comparison": v.claim, "scope": v.scope, "verdict": v.outcome, "quantity": v.quantity,
            "estimate": v.estimate, f"{v.level:.0%} interval": v.interval, "n": v.n,
            "p (Holm)": "" if math.isnan(v.p_holm) else f"{v.p_holm:.2g}", "rule": ids[v.rule], "note": v.note,
        })
    return pd.DataFrame(rows)


def differences(
    results: pd.DataFrame, metric: str, reference: str, *, by: str = "variant", level: float = 0.95,
    digits: int = 4, paired: bool = True,
) -> pd.DataFrame:
    """Each group's mean ``metric`` minus the ``reference`` group's, with a ``level`` interval: paired by
    seed (the default: ablation variants of one seed share weights and data order; needs a ``seed``
    column), or Welch's for independent runs. Columns ``by, difference, lo, hi, n, text``; ``text`` is
    "+d [lo, hi]" (or "+d (n=1)" without an interval, "reference" for the reference row). Group order is
    kept. Used by the ablation tables ("what changes against full MST")."""
    ref = values(results, metric, by=by, group=reference)
    rows = []
    for name in dict.fromkeys(results[by]):
        if name == reference:
            rows.append({by: name, "difference": 0.0, "lo": math.nan, "hi": math.nan, "n": len(ref),
                         "text": "reference"})
            continue
        if paired:
            a, b = paired_values(results, metric, name, reference, by=by)
            ci = paired_ci(_finite(a, f"{name}: {metric}"), _finite(b, f"{reference}: {metric}"), level)
        else:
            ci = difference_ci(_finite(values(results, metric, by=by, group=name), f"{name}: {metric}"),
                               _finite(ref, f"{reference}: {metric}"), level)
        f = f"{{:+.{digits}f}}"
        text = (f"{f.format(ci.mean)} [{f.format(ci.lo)}, {f.format(ci.hi)}]" if _has_interval(ci)
                else f"{f.format(ci.mean)} (n={ci.n})")
        rows.append({by: name, "difference": ci.mean, "lo": ci.lo, "hi": ci.hi, "n": ci.n, "text": text})
    return pd.DataFrame(rows)
