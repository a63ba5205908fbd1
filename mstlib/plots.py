"""The book's shared figures (seaborn/matplotlib): one function per kind of figure, so every chapter draws
loss curves, density schedules, FLOPs-vs-quality and bar charts the same way.

Inputs are the DataFrames of :mod:`mstlib.pipeline`:

* per-step logs (``pipeline.logs``; long form): one row per logged step of a run, with at least ``step``,
  the hue column (``variant``), ``seed`` and the value plotted (``loss``, ``val_loss``, ``density``,
  ``attn_density``, ...);
* per-run results (``pipeline.collect``): one row per run, with ``variant``, ``seed`` and the metric
  columns (``metrics.final_val_loss``, ``metrics.flops_total``, ``eval.<task>.<metric>``, ...).

Intervals are the same Student-t 95% intervals over seeds as the tables (:func:`mstlib.stats.mean_ci`), not
seaborn's bootstrap, so a band in a figure and a "mean ± half-width" in a table say the same thing. With a
single seed there is no interval and only the mean is drawn. Every function returns the matplotlib ``Axes``
it drew on (pass ``ax=`` to draw into a grid) and always labels both axes.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from .errors import MstError
from .stats import mean_ci

#: Human-readable axis labels for the columns the pipeline produces; anything else is shown as is.
LABELS: dict[str, str] = {
    "step": "optimizer step",
    "tokens": "training tokens",
    "flops": "training FLOPs so far",
    "loss": "training loss (nats/token)",
    "val_loss": "validation loss (nats/token)",
    "density": "weight density of the sparse set",
    "attn_density": "attention density (share of causal pairs)",
    "lr": "learning rate",
    "metrics.final_val_loss": "final validation loss (nats/token)",
    "metrics.final_train_loss": "final training loss (nats/token)",
    "metrics.flops_total": "training FLOPs",
    "metrics.flops_ratio_to_dense": "training FLOPs / dense",
    "metrics.tokens_per_s_median": "throughput (tokens/s, median)",
    "metrics.wall_time_s": "wall time (s)",
    "metrics.final_density": "final weight density",
    "eval.lambada.acc": "LAMBADA accuracy",
    "eval.lambada.ppl": "LAMBADA perplexity",
    "eval.ptb.ppl_word": "PTB perplexity (per word)",
    "eval.wikitext2.ppl_word": "WikiText-2 perplexity (per word)",
    "eval.wikitext103.ppl_word": "WikiText-103 perplexity (per word)",
    "eval.1bw.ppl_word": "1BW perplexity (per word)",
    "eval.rte.acc": "RTE k-shot accuracy",
    "eval.mrpc.acc": "MRPC k-shot accuracy",
}


def label(column: str) -> str:
    """The axis label of a column: a known description, else the column name itself."""
    return LABELS.get(column, column)


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MstError(
            f"{what}: the DataFrame lacks column(s) {missing}; it has {sorted(map(str, df.columns))}. "
            "Pass the per-step logs from mstlib.pipeline.logs or the results from mstlib.pipeline.collect."
        )
    if df.empty:
        raise MstError(f"{what}: the DataFrame is empty (no runs or no logged steps to plot)")


def _axes(ax: Optional[Axes], figsize: tuple[float, float] = (7.0, 4.2)) -> Axes:
    if ax is not None:
        return ax
    _, new = plt.subplots(figsize=figsize)
    return new


def _legend_below(ax: Axes) -> None:
    """Legend under the axes, where it cannot cover a curve or a point: two columns of short labels, one
    column of long ones (two columns of long labels run wider than the axes, into a neighbour's legend)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ncol = 2 if len(labels) > 1 and max(len(s) for s in labels) <= 28 else 1
        ax.legend(handles, labels, fontsize="small", frameon=False, loc="upper center",
                  bbox_to_anchor=(0.5, -0.16), ncol=ncol)


def _ci_row(values: Sequence[float], level: float) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n) of the finite values; lo/hi NaN when fewer than two."""
    xs = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not xs:
        return math.nan, math.nan, math.nan, 0
    ci = mean_ci(xs, level)
    return ci.mean, ci.lo, ci.hi, ci.n


def band_table(
    df: pd.DataFrame, x: str, y: str, hue: str = "variant", *, run: str = "seed", smooth: int = 1,
    level: float = 0.95,
) -> pd.DataFrame:
    """Mean and t interval of ``y`` over runs (``run`` column, one per seed) at every ``x`` of every
    ``hue`` group: columns ``hue, x, mean, lo, hi, n``. Rows with a missing ``y`` (for example steps
    without a validation evaluation) are dropped first; ``smooth`` > 1 takes a centred rolling mean of
    that many logged points within each run before averaging (training loss is noisy per step)."""
    _require(df, [x, y, hue], f"band_table({y!r} over {x!r})")
    d = df[[c for c in dict.fromkeys([hue, run, x, y]) if c in df.columns]].dropna(subset=[y])
    if d.empty:
        raise MstError(f"band_table: column {y!r} has no values to plot")
    if smooth > 1:
        keys = [hue, run] if run in d.columns else [hue]
        d = d.sort_values(keys + [x])
        d[y] = d.groupby(keys, sort=False)[y].transform(
            lambda s: s.rolling(smooth, center=True, min_periods=1).mean()
        )
    rows = []
    for (h, xv), g in d.groupby([hue, x], sort=True):
        m, lo, hi, n = _ci_row(g[y].to_numpy(), level)
        rows.append({hue: h, x: xv, "mean": m, "lo": lo, "hi": hi, "n": n})
    return pd.DataFrame(rows)


def curves(
    logs: pd.DataFrame, y: str, *, x: str = "step", hue: str = "variant", smooth: int = 1,
    ax: Optional[Axes] = None, title: Optional[str] = None, logy: bool = False, level: float = 0.95,
    order: Optional[Sequence[str]] = None,
) -> Axes:
    """A line per ``hue`` group (mean over seeds) with a shaded ``level`` t band where there are two or
    more seeds. ``x`` is usually ``step`` (optimizer steps) or ``tokens``."""
    bands = band_table(logs, x, y, hue, smooth=smooth, level=level)
    ax = _axes(ax)
    groups = list(order) if order is not None else list(dict.fromkeys(bands[hue]))
    palette = sns.color_palette(n_colors=max(1, len(groups)))
    for colour, name in zip(palette, groups):
        g = bands[bands[hue] == name].sort_values(x)
        if g.empty:
            continue
        n = int(g["n"].max())
        ax.plot(g[x], g["mean"], color=colour, lw=1.6, label=f"{name} (n={n})")
        if g["lo"].notna().any():
            ax.fill_between(g[x], g["lo"], g["hi"], color=colour, alpha=0.2, lw=0)
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y))
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    _legend_below(ax)
    return ax


def loss_curves(
    logs: pd.DataFrame, *, y: str = "val_loss", x: str = "step", hue: str = "variant", smooth: int = 1,
    ax: Optional[Axes] = None, title: Optional[str] = None, order: Optional[Sequence[str]] = None,
) -> Axes:
    """Loss over training by ``hue`` with seed bands. ``y="val_loss"`` (default: evaluated every
    ``eval_interval`` steps) or ``"loss"`` (training loss; use ``smooth`` of a few points)."""
    return curves(logs, y, x=x, hue=hue, smooth=smooth, ax=ax, title=title or f"{label(y)} during training",
                  order=order)


def density_curves(
    logs: pd.DataFrame, *, x: str = "step", hue: str = "variant", attention: bool = False,
    ax: Optional[Axes] = None, title: Optional[str] = None, order: Optional[Sequence[str]] = None,
) -> Axes:
    """Weight density (1 - sparsity of the sparse set) over training by ``hue``; with ``attention`` the
    attention density is drawn instead. The schedule is deterministic, so seed bands are flat."""
    y = "attn_density" if attention else "density"
    ax = curves(logs, y, x=x, hue=hue, ax=ax, title=title or f"{label(y)} over training", order=order)
    ax.set_ylim(0.0, 1.05)
    return ax


def summarise(
    results: pd.DataFrame, metrics: Sequence[str], by: str = "variant", level: float = 0.95
) -> pd.DataFrame:
    """Per ``by`` group and metric: ``mean, lo, hi, half, n`` (t interval over seeds). Order of first
    appearance is kept, so tables and figures list variants as the experiment defines them."""
    _require(results, [by, *metrics], "summarise")
    rows = []
    for name in dict.fromkeys(results[by]):
        g = results[results[by] == name]
        for m in metrics:
            mean, lo, hi, n = _ci_row(pd.to_numeric(g[m], errors="coerce").to_numpy(dtype=float), level)
            rows.append({by: name, "metric": m, "mean": mean, "lo": lo, "hi": hi,
                         "half": (hi - lo) / 2 if n >= 2 else math.nan, "n": n})
    return pd.DataFrame(rows)


def _err(s: pd.DataFrame) -> Optional[np.ndarray]:
    """Asymmetric error-bar array from mean/lo/hi (zeros where there is no interval)."""
    lo = (s["mean"] - s["lo"]).fillna(0.0).to_numpy()
    hi = (s["hi"] - s["mean"]).fillna(0.0).to_numpy()
    return np.vstack([lo, hi]) if (lo.any() or hi.any()) else None


def flops_vs_quality(
    results: pd.DataFrame, *, flops: str = "metrics.flops_total", quality: str = "metrics.final_val_loss",
    by: str = "variant", ax: Optional[Axes] = None, title: Optional[str] = None, logx: bool = True,
    annotate: bool = True, reference: Optional[str] = None,
) -> Axes:
    """One point per ``by`` group at (mean training FLOPs, mean quality) with 95% t error bars over seeds
    on both axes. ``reference`` (a group name, e.g. ``"dense"``) gets dotted guide lines, so "same quality
    with fewer FLOPs" reads as a point left of the vertical line and on/below the horizontal one (for a
    lower-is-better quality)."""
    s = summarise(results, [flops, quality], by)
    fx = s[s["metric"] == flops].set_index(by)
    qy = s[s["metric"] == quality].set_index(by)
    ax = _axes(ax)
    palette = sns.color_palette(n_colors=max(1, len(fx)))
    for colour, name in zip(palette, fx.index):
        xr, yr = fx.loc[[name]], qy.loc[[name]]
        ax.errorbar(xr["mean"], yr["mean"], xerr=_err(xr), yerr=_err(yr), fmt="o", color=colour, capsize=3,
                    ms=6, label=f"{name} (n={int(yr['n'].iloc[0])})")
        if annotate:
            ax.annotate(str(name), (float(xr["mean"].iloc[0]), float(yr["mean"].iloc[0])),
                        textcoords="offset points", xytext=(5, 5), fontsize="small")
    if reference is not None and reference in fx.index:
        ax.axvline(float(fx.loc[reference, "mean"]), color="grey", ls=":", lw=1)
        ax.axhline(float(qy.loc[reference, "mean"]), color="grey", ls=":", lw=1)
    if logx and (fx["mean"] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(label(flops))
    ax.set_ylabel(label(quality))
    ax.set_title(title or f"{label(quality)} against {label(flops)}")
    _legend_below(ax)
    return ax


def metric_bars(
    results: pd.DataFrame, metric: str, *, by: str = "variant", ax: Optional[Axes] = None,
    title: Optional[str] = None, references: Optional[Mapping[str, float]] = None,
    order: Optional[Sequence[str]] = None, highlight: Optional[str] = None, style: str = "bar",
) -> Axes:
    """The mean of ``metric`` per ``by`` group with 95% t error bars over seeds, and each seed as a black
    dot. ``style="bar"``: horizontal bars from 0 (for accuracies and other ratio-scale numbers);
    ``style="point"``: a dot per group on a free axis (for losses and perplexities, whose differences
    would vanish on bars from 0, and where a cut bar would mislead). ``references`` draws labelled
    vertical lines (e.g. chance and majority accuracy); ``highlight`` marks one group (e.g. full MST)."""
    if style not in ("bar", "point"):
        raise MstError(f"metric_bars: style must be 'bar' or 'point', got {style!r}")
    s = summarise(results, [metric], by)
    if order is not None:
        s = s.set_index(by).loc[[o for o in order if o in set(s[by])]].reset_index()
    ax = _axes(ax, figsize=(7.0, 0.45 * len(s) + 1.6))
    ypos = np.arange(len(s))
    colours = sns.color_palette(n_colors=max(1, len(s)))
    marked = [n == highlight for n in s[by]]
    if style == "bar":
        bars = ax.barh(ypos, s["mean"], xerr=_err(s), color=colours, alpha=0.8, capsize=3)
        for bar, mark in zip(bars.patches, marked):  # outline only the highlighted group
            bar.set_edgecolor("black" if mark else bar.get_facecolor())
            bar.set_linewidth(2.0 if mark else 0.0)
    else:
        ax.errorbar(s["mean"], ypos, xerr=_err(s), fmt="none", ecolor="grey", capsize=3, zorder=2)
        ax.scatter(s["mean"], ypos, c=colours[: len(s)], s=[110 if m else 60 for m in marked], marker="D",
                   edgecolors=["black" if m else "none" for m in marked], linewidths=1.5, zorder=4)
    for i, name in enumerate(s[by]):
        vals = pd.to_numeric(results.loc[results[by] == name, metric], errors="coerce").dropna()
        ax.scatter(vals, np.full(len(vals), ypos[i]), color="black", s=10, zorder=5)
    ax.set_yticks(ypos)
    ax.set_yticklabels([f"{n} (n={k})" for n, k in zip(s[by], s["n"])])
    ax.invert_yaxis()
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axvline(value, color="grey", ls=["--", ":", "-."][i % 3], lw=1.2, label=f"{name} = {value:.3g}")
    if references:
        ax.legend(fontsize="small", frameon=True, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # long tick labels (e.g. 10.7875) must not collide
    ax.set_xlabel(label(metric))
    ax.set_ylabel(by)
    ax.set_title(title or f"{label(metric)} by {by} (mean, 95% CI over seeds)")
    return ax


def frontier(points: pd.DataFrame, *, axes: Optional[Sequence[Axes]] = None) -> Sequence[Axes]:
    """The iso-FLOP frontier (:func:`mstlib.fair_test.frontier_points`): per model, final validation loss
    against exact training FLOPs (log axis); every dense run of the model (each length of each rung, its own
    warm-up and decay) joined as the frontier, the methods at the budget as marked points with 95% t error
    bars over seeds. A point below the line trains better per FLOP than dense; one above it, worse."""
    _require(points, ["model", "rung", "method", "flops", "loss", "lo", "hi", "n", "dense"], "frontier")
    models = list(dict.fromkeys(points["model"]))
    if axes is None:
        _, grid = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4.6), squeeze=False)
        axes = list(grid[0])
    markers = {"mst": "D", "rigl": "s", "tiny": "^"}
    colours = {"mst": "tab:red", "rigl": "tab:blue", "tiny": "tab:green"}
    for ax, model in zip(axes, models):
        p = points[points["model"] == model]
        d = p[p["dense"]].groupby("flops", as_index=False).agg(loss=("loss", "mean"), lo=("lo", "min"),
                                                               hi=("hi", "max"))
        ax.plot(d["flops"], d["loss"], "-o", color="black", lw=1.5, ms=4, label="dense, every length (frontier)")
        ax.fill_between(d["flops"], d["lo"].fillna(d["loss"]), d["hi"].fillna(d["loss"]), color="black", alpha=0.1)
        for method, g in p[~p["dense"]].groupby("method", sort=False):
            err = np.vstack([(g["loss"] - g["lo"]).fillna(0.0), (g["hi"] - g["loss"]).fillna(0.0)])
            ax.errorbar(g["flops"], g["loss"], yerr=err, fmt=markers.get(method, "o"), ms=7, capsize=3,
                        color=colours.get(method), label=f"{method} (n={int(g['n'].min())})")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (exact, log scale)")
        ax.set_ylabel(label("metrics.final_val_loss"))
        ax.set_title(model)
        _legend_below(ax)
    return axes


def gap_trend(trends: Sequence[Mapping], *, ax: Optional[Axes] = None) -> Axes:
    """The equal-token gap (MST minus dense, paired by seed) against training tokens (log2 axis), one colour
    per model (:func:`mstlib.fair_test.trend` results): each rung's mean with its 95% interval and the
    least-squares line through the per-seed gaps, drawn over the measured range only (none for a model with
    one rung)."""
    ax = _axes(ax, figsize=(7.4, 4.4))
    for colour, t in zip(sns.color_palette(n_colors=max(1, len(trends))), trends):
        toks = np.array([r[1] for r in t["rungs"]], dtype=float)
        mean = np.array([r[2].mean for r in t["rungs"]])
        lo = np.array([r[2].lo for r in t["rungs"]])
        hi = np.array([r[2].hi for r in t["rungs"]])
        err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])
        ax.errorbar(toks, mean, yerr=err, fmt="o", color=colour, capsize=3, label=f"{t['model']}")
        f = t["fit"]
        if f is None:  # one rung: its point, no line
            continue
        xs = np.linspace(np.log2(toks.min()), np.log2(toks.max()), 20)
        ax.plot(2.0 ** xs, f.intercept + f.slope * xs, "--", color=colour, lw=1.2,
                label=f"{t['model']}: {f.slope:+.3f} nats per doubling")
    ax.axhline(0.0, color="grey", lw=1, ls=":")
    ax.set_xscale("log", base=2)
    ticks = {r[1]: f"{r[1] / 1e6:,.0f}M\n{r[3]:.1f} tok/param" for t in trends for r in t["rungs"]}
    ax.set_xticks(sorted(ticks), [ticks[k] for k in sorted(ticks)], fontsize="small")
    ax.minorticks_off()
    lo, hi = min(ticks), max(ticks)
    ax.set_xlim(lo / 1.5, hi * 1.5)
    ax.set_xlabel("training tokens (log2 scale) and tokens per parameter")
    ax.set_ylabel("MST minus dense, final validation loss (nats)")
    ax.set_title("The gap at equal tokens, against training length")
    ax.legend(fontsize="small", frameon=True, loc="best")  # two-line tick labels leave no room below
    return ax
