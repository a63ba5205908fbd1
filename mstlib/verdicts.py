"""Claim verdicts: turn stored results into "reproduced" / "not reproduced" / "inconclusive", by a rule
that is stated with every verdict.

Every rule reads a 95% interval, never a single pair of runs (the intervals are Student-t over seeds, from
:mod:`mstlib.stats`; differences between two methods use Welch's interval for independent samples, since
the runs of two methods are separate trainings). Margins are parameters, so a reader who disagrees with ours
can re-run the page with theirs. The three rules:

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
* **A factor of at least a target** (e.g. "4x fewer FLOPs"), :func:`at_least`. The factor's interval over
  runs (exact when the numbers are computed, not measured, as training FLOPs are): reproduced when
  ``lo >= target * (1 - tolerance)``, not reproduced when ``hi < target * (1 - tolerance)``, inconclusive
  otherwise.

A :class:`Verdict` carries the claim, the outcome, the rule in words (margins filled in), the estimate and
its interval, so a table of verdicts is its own explanation (:func:`verdict_table`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Literal, Sequence

import pandas as pd

from .errors import MstError
from .stats import MeanCI, difference_ci, mean_ci

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

    def __post_init__(self) -> None:
        # plain floats, so a glued value prints as a number (a numpy scalar's text is "np.float64(...)")
        for name in ("estimate", "lo", "hi"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "n", int(self.n))

    @property
    def interval(self) -> str:
        """``"[lo, hi]"`` (4 significant digits) or ``"no interval (n=1)"``."""
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"no interval (n={self.n})"
        return f"[{self.lo:.4g}, {self.hi:.4g}]"


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


def no_worse_than(
    candidate: Sequence[float], reference: Sequence[float], margin: float, *, claim: str,
    lower_is_better: bool = True, relative: bool = False, metric: str = "metric", level: float = 0.95,
) -> Verdict:
    """Non-inferiority of ``candidate`` (one value per seed) against ``reference`` within ``margin``.

    ``margin`` is in the metric's units (e.g. 0.02 nats of validation loss), or a fraction of the
    reference mean when ``relative`` (e.g. 0.02 = 2% perplexity). See the module docstring for the rule."""
    if margin < 0:
        raise MstError(f"no_worse_than: margin must be >= 0, got {margin}")
    c = _finite(candidate, f"{claim}: candidate {metric}")
    r = _finite(reference, f"{claim}: reference {metric}")
    ci = difference_ci(c, r, level) if lower_is_better else difference_ci(r, c, level)
    ref_mean = sum(r) / len(r)
    m = margin * abs(ref_mean) if relative else margin
    worse = f"{metric}: candidate - reference" if lower_is_better else f"{metric}: reference - candidate"
    m_txt = f"{margin:.3g} x |reference mean| = {m:.4g}" if relative else f"{m:.4g}"
    rule = (f"d = {worse} (positive = candidate worse); margin m = {m_txt}; reproduced if the "
            f"{level:.0%} interval of d lies below m, not reproduced if it lies above m, else inconclusive")
    if not _has_interval(ci):
        outcome: Outcome = "inconclusive"
        note = "fewer than two runs on a side: no interval, no verdict"
    elif ci.hi < m:
        outcome, note = "reproduced", ""
    elif ci.lo > m:
        outcome, note = "not reproduced", ""
    else:
        outcome, note = "inconclusive", "the interval contains the margin"
    return Verdict(claim, outcome, worse, ci.mean, ci.lo, ci.hi, ci.n, rule, level, note)


def better_than(
    candidate: Sequence[float], baseline: Sequence[float], *, claim: str, lower_is_better: bool = True,
    min_gain: float = 0.0, metric: str = "metric", level: float = 0.95,
) -> Verdict:
    """Superiority of ``candidate`` over ``baseline`` (one value per seed each); ``min_gain`` >= 0 is the
    smallest gain worth the claim, in the metric's units. See the module docstring for the rule."""
    if min_gain < 0:
        raise MstError(f"better_than: min_gain must be >= 0, got {min_gain}")
    c = _finite(candidate, f"{claim}: candidate {metric}")
    b = _finite(baseline, f"{claim}: baseline {metric}")
    ci = difference_ci(b, c, level) if lower_is_better else difference_ci(c, b, level)
    gain = f"{metric}: baseline - candidate" if lower_is_better else f"{metric}: candidate - baseline"
    rule = (f"g = {gain} (positive = candidate better); reproduced if the {level:.0%} interval of g "
            f"excludes 0 (lo > 0), not reproduced if it lies below {min_gain:.4g} (hi < {min_gain:.4g}), "
            "else inconclusive")
    if not _has_interval(ci):
        outcome: Outcome = "inconclusive"
        note = "fewer than two runs on a side: no interval, no verdict"
    elif ci.lo > 0:
        outcome, note = "reproduced", ""
    elif ci.hi < min_gain:
        outcome, note = "not reproduced", ""
    else:
        outcome, note = "inconclusive", "the interval contains 0"
    return Verdict(claim, outcome, gain, ci.mean, ci.lo, ci.hi, ci.n, rule, level, note)


def at_least(
    factors: Sequence[float], target: float, *, claim: str, tolerance: float = 0.1, exact: bool = False,
    quantity: str = "factor", level: float = 0.95,
) -> Verdict:
    """Whether a factor (e.g. dense FLOPs / MST FLOPs, one value per run) reaches ``target`` within a
    relative ``tolerance`` (threshold = target * (1 - tolerance): "about 4x" with 10% is 3.6x).

    ``exact``: the values are computed, not measured (FLOP accounting from the config), so they carry no
    sampling noise: the interval is [min, max] of the values, and one run suffices."""
    if target <= 0 or not 0.0 <= tolerance < 1.0:
        raise MstError(f"at_least: need target > 0 and 0 <= tolerance < 1, got {target}, {tolerance}")
    xs = _finite(factors, f"{claim}: {quantity}")
    threshold = target * (1.0 - tolerance)
    if exact:
        ci = MeanCI(sum(xs) / len(xs), min(xs), max(xs), len(xs), level)
        how = "range over runs (computed, no sampling noise)"
    else:
        ci = mean_ci(xs, level)
        how = f"{level:.0%} t interval over runs"
    rule = (f"{quantity}, {how}; threshold = {target:.3g} x (1 - {tolerance:.3g}) = {threshold:.4g}; "
            "reproduced if the interval lies at or above the threshold, not reproduced if below it, "
            "else inconclusive")
    if not _has_interval(ci):
        outcome: Outcome = "inconclusive"
        note = "a single measured run: no interval, no verdict"
    elif ci.lo >= threshold:
        outcome, note = "reproduced", ""
    elif ci.hi < threshold:
        outcome, note = "not reproduced", ""
    else:
        outcome, note = "inconclusive", "the interval contains the threshold"
    return Verdict(claim, outcome, quantity, ci.mean, ci.lo, ci.hi, ci.n, rule, level, note)


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


def verdict_table(verdicts: Sequence[Verdict], paper: str = "not available") -> pd.DataFrame:
    """A DataFrame of verdicts for display: claim, verdict, quantity, estimate, interval, n, rule, note and
    the paper's number (``paper``: we do not have the paper's tables, so "not available")."""
    rows = []
    for v in verdicts:
        d = asdict(v)
        rows.append({
            "claim": v.claim, "verdict": v.outcome, "quantity": v.quantity, "estimate": v.estimate,
            f"{v.level:.0%} interval": v.interval, "n": d["n"], "paper": paper, "rule": v.rule,
            "note": v.note,
        })
    return pd.DataFrame(rows)


def differences(
    results: pd.DataFrame, metric: str, reference: str, *, by: str = "variant", level: float = 0.95,
    digits: int = 4,
) -> pd.DataFrame:
    """Each group's mean ``metric`` minus the ``reference`` group's, with a ``level`` Welch interval
    (independent runs): columns ``by, difference, lo, hi, n, text``; ``text`` is "+d [lo, hi]" (or
    "+d (n=1)" without an interval, "reference" for the reference row). Group order is kept. Used by the
    ablation tables ("what changes against full MST")."""
    ref = values(results, metric, by=by, group=reference)
    rows = []
    for name in dict.fromkeys(results[by]):
        if name == reference:
            rows.append({by: name, "difference": 0.0, "lo": math.nan, "hi": math.nan, "n": len(ref),
                         "text": "reference"})
            continue
        ci = difference_ci(_finite(values(results, metric, by=by, group=name), f"{name}: {metric}"),
                           _finite(ref, f"{reference}: {metric}"), level)
        f = f"{{:+.{digits}f}}"
        text = (f"{f.format(ci.mean)} [{f.format(ci.lo)}, {f.format(ci.hi)}]" if _has_interval(ci)
                else f"{f.format(ci.mean)} (n={ci.n})")
        rows.append({by: name, "difference": ci.mean, "lo": ci.lo, "hi": ci.hi, "n": ci.n, "text": text})
    return pd.DataFrame(rows)
