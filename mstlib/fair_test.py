"""The fair test's analysis: what the stored runs of :mod:`mstlib.ladder` say, as tables for the book.

The plan was fixed with the runs (the issue that asked for them, ``shared/docs/science.md``):

* runs of one seed share the initial weights (same model) and the data order (:class:`mstlib.train.Batches`
  is a function of the seed and the step), so every method comparison is **paired by seed**: the t interval
  of the per-seed differences (:func:`mstlib.stats.paired_ci`);
* FLOPs are computed from the config (exact arithmetic), so they carry no interval;
* the **primary** question is the gap at equal tokens, MST minus dense, and its **trend** per doubling of
  tokens (a least-squares line through the per-seed gaps against log2 tokens, per model); the comparisons at
  the budget (MST against dense for 1/4 of the steps, Tiny and RigL) are **secondary**, with Holm's
  correction across them (:func:`at_budget`);
* the schedule search is reported apart (:func:`selection_table`): its runs chose the schedule and are not
  evidence for it; the ladder's own seeds confirm it.

Everything here reads a run store and never trains: a rung whose runs are not stored yet is listed by
:func:`missing` with the command that makes it, and left out of the tables.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from . import ladder
from .errors import ConfigError
from .flops import nanogpt_params
from .pipeline import GPU_PRESETS, train_and_evaluate
from .presets import run_flops
from .stats import fit_line, holm, mean_ci, paired_ci, paired_p

__all__ = [
    "PAPER_TOKENS", "collect", "missing", "selection_table", "rung_table", "paired", "at_budget", "trend",
    "trend_table", "gap_table", "frontier_points", "frontier_at", "train_missing",
]

#: The paper's training tokens: 600,000 steps of 480 x 1024 tokens (nanoGPT's GPT-2 recipe).
PAPER_TOKENS = 600_000 * 480 * 1024


def _row(part: str, r: ladder.LadderRun, preset: str, store: Any) -> dict[str, Any]:
    rung = next(x for x in ladder.rungs(preset) if x.name == r.rung)
    dense = ladder.budget_flops(preset, rung.name) / ladder.budget(preset)
    done = store.is_done(r.run)
    res = store.load(r.run) if done else None
    m = res.metrics if res else {}
    prov = res.provenance if res else {}
    # tokens per parameter of the rung's model (nanoGPT's count, as in 6N), the same for Tiny's row
    n_params = nanogpt_params(ladder.rung_run(preset, rung.name, "dense", r.seed).model)
    tokens = r.run.train.max_iters * r.run.tokens_per_step()
    return {
        "part": part, "rung": rung.name, "model": rung.model, "method": r.method, "seed": r.seed,
        "run_id": r.run.run_id(), "done": done, "tokens": tokens, "rung_tokens": rung.steps * r.run.tokens_per_step(),
        "params": n_params, "tokens_per_param": rung.steps * r.run.tokens_per_step() / n_params,
        "flops": run_flops(r.run), "flops_vs_dense": run_flops(r.run) / dense,
        "val_loss": float(m["final_val_loss"]) if "final_val_loss" in m else math.nan,
        "passes": m.get("passes", math.nan), "wall_time_s": m.get("wall_time_s", math.nan),
        "device": prov.get("device_name"), "commit": (prov.get("git") or {}).get("commit"),
        "config": r.run,
    }


def collect(preset: str, store: Any) -> tuple[pd.DataFrame, str | None]:
    """Every run of the fair test as a row (``part``: ``selection``, ``ladder`` or ``gap``; ``done``
    False where not stored) and the chosen schedule (None while the search is incomplete: the ladder's MST
    rows and the gap's rows are then left out, since they depend on it)."""
    runs = [("selection", r) for r in ladder.selection_runs(preset)]
    try:
        chosen: str | None = ladder.chosen_schedule(preset, store)
    except ConfigError:
        chosen = None
    if chosen is not None:
        runs += [("ladder", r) for r in ladder.ladder_runs(preset, store)]
        runs += [("gap", r) for r in ladder.gap_runs(preset, store)]
    else:
        runs += [("ladder", ladder.LadderRun(rung.name, m, s, ladder.rung_run(preset, rung.name, m, s)))
                 for rung in ladder.rungs(preset) for m in rung.methods if m != "mst" for s in rung.seeds]
    return pd.DataFrame([_row(part, r, preset, store) for part, r in runs]), chosen


def missing(df: pd.DataFrame, preset: str) -> pd.DataFrame:
    """Per part and rung: runs stored and runs missing, with the sweep that makes the missing ones."""
    rows = []
    for (part, rung), g in df.groupby(["part", "rung"], sort=False):
        exp = {"selection": "schedules", "gap": "gap"}.get(part, f"ladder-{rung}")
        rows.append({"part": part, "rung": rung, "stored": int(g["done"].sum()), "missing": int((~g["done"]).sum()),
                     "command": "" if g["done"].all() else f"python -m mstlib sweep --experiment {exp} --preset {preset}"})
    return pd.DataFrame(rows)


def _fmt_ci(ci: Any, digits: int = 3) -> str:
    if ci.n < 2 or not math.isfinite(ci.lo):
        return f"{ci.mean:+.{digits}f} (n={ci.n})"
    return f"{ci.mean:+.{digits}f} [{ci.lo:+.{digits}f}, {ci.hi:+.{digits}f}]"


def _loss_ci(values: Sequence[float], digits: int = 3) -> str:
    ci = mean_ci(values)
    if ci.n < 2:
        return f"{ci.mean:.{digits}f} (n=1)"
    return f"{ci.mean:.{digits}f} [{ci.lo:.{digits}f}, {ci.hi:.{digits}f}]"


def paired(df: pd.DataFrame, rung: str, method: str, reference: str, part: str = "ladder") -> tuple[list[float], list[float]]:
    """The final validation losses of ``method`` and ``reference`` on the seeds both have stored at ``rung``,
    in seed order (``reference`` is looked up in the ladder's rows, e.g. ``"dense"``)."""
    a = df[(df["part"] == part) & (df["rung"] == rung) & (df["method"] == method) & df["done"]]
    b = df[(df["part"].isin(["ladder", "selection"])) & (df["rung"] == rung) & (df["method"] == reference) & df["done"]]
    a, b = a.drop_duplicates("seed").set_index("seed"), b.drop_duplicates("seed").set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    return [float(a.loc[s, "val_loss"]) for s in seeds], [float(b.loc[s, "val_loss"]) for s in seeds]


def selection_table(df: pd.DataFrame, chosen: str | None) -> pd.DataFrame:
    """The schedule search (seeds 0-1, first rung): each candidate's solved parameter, exact FLOPs / dense,
    the loss per seed and their mean, and the paired difference to dense on the same seeds."""
    sel = df[df["part"] == "selection"]
    rows = []
    for s in (*ladder.SCHEDULES, ladder.OLD_DEFAULT):
        g = sel[sel["method"] == s.name]
        if g.empty:
            continue
        run = g.iloc[0]["config"]
        free = "" if s.free is None else f"{s.free.split('.')[-1]} = {_get(run, s.free):.4g}"
        done = g[g["done"]].sort_values("seed")
        a, b = paired(df, done.iloc[0]["rung"] if len(done) else "", s.name, "dense", part="selection")
        rows.append({
            "schedule": s.name + (" (chosen)" if s.name == chosen else ""), "what it is": s.text,
            "solved": free, "FLOPs / dense": f"{g.iloc[0]['flops_vs_dense']:.4f}",
            **{f"loss, seed {int(r.seed)}": f"{r.val_loss:.4f}" for r in done.itertuples()},
            "mean loss": f"{done['val_loss'].mean():.4f}" if len(done) else "not stored",
            "vs dense (paired)": _fmt_ci(paired_ci(a, b)) if a else "",
        })
    return pd.DataFrame(rows)


def _get(run: Any, key: str) -> Any:
    obj = run
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def rung_table(df: pd.DataFrame, preset: str) -> pd.DataFrame:
    """Per rung and method: seeds stored, passes, exact FLOPs / dense, loss mean [95% interval], and the
    paired differences to dense (equal tokens) and to dense at the budget (equal FLOPs)."""
    lad = df[(df["part"] == "ladder") & df["done"]]
    rows = []
    preset_budget = ladder.budget_method(preset)
    for (rung, method), g in lad.groupby(["rung", "method"], sort=False):
        eq_tok = paired(df, rung, method, "dense") if method != "dense" else ([], [])
        eq_fl = paired(df, rung, method, preset_budget) if method not in ladder.DENSE_FRACTIONS else ([], [])
        rows.append({
            "rung": rung, "model": g.iloc[0]["model"], "tokens": f"{g.iloc[0]['tokens'] / 1e6:,.0f}M",
            "method": method, "seeds": len(g), "passes": f"{g['passes'].mean():.2f}",
            "FLOPs / dense": f"{g['flops_vs_dense'].iloc[0]:.3f}", "val loss": _loss_ci(g["val_loss"]),
            "minus dense (paired)": _fmt_ci(paired_ci(*eq_tok)) if eq_tok[0] else "",
            f"minus {preset_budget} (paired)": _fmt_ci(paired_ci(*eq_fl)) if eq_fl[0] else "",
        })
    return pd.DataFrame(rows)


def at_budget(df: pd.DataFrame, preset: str, candidate: str = "mst", baselines: Sequence[str] | None = None,
              alpha: float = 0.05) -> pd.DataFrame:
    """The secondary comparisons: at every rung, ``candidate`` against each baseline at the same FLOPs
    (dense at the budget, Tiny, RigL), paired by seed; Holm's adjustment over all of them together (the
    family is the whole table). ``gain`` = baseline minus candidate loss (positive: the candidate is better)."""
    baselines = list(baselines or (ladder.budget_method(preset), "tiny", "rigl"))
    rows = []
    for rung in dict.fromkeys(df.loc[df["part"] == "ladder", "rung"]):
        for b in baselines:
            c, r = paired(df, rung, candidate, b)
            if not c:
                continue
            ci = paired_ci(r, c)
            rows.append({"rung": rung, "comparison": f"{candidate} vs {b}", "seeds": ci.n, "gain": ci.mean,
                         "lo": ci.lo, "hi": ci.hi, "p": paired_p(r, c)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p (Holm)"] = holm(out["p"].tolist())
    out["outcome"] = [("better" if g > 0 else "worse") if p <= alpha else "no difference shown"
                      for g, p in zip(out["gain"], out["p (Holm)"])]
    out.loc[out["seeds"] < 2, "outcome"] = "one seed: no test"
    return out


def trend(df: pd.DataFrame, model: str, method: str = "mst", reference: str = "dense") -> dict[str, Any] | None:
    """The equal-token gap (``method`` minus ``reference``) of ``model`` against log2 tokens: one point per
    seed and rung (``rungs``: name, tokens, paired interval, tokens per parameter), a least-squares line, its slope per doubling with a 95% interval, the fitted gap at the
    largest rung, the gap the line would give at the paper's tokens (an extrapolation, not a measurement),
    and the doublings that would close the gap if the line held (``fit`` and what follows from it are None
    with fewer than two rungs stored; the result is None with none)."""
    xs, ys, per_rung = [], [], []
    for rung in dict.fromkeys(df.loc[(df["part"] == "ladder") & (df["model"] == model), "rung"]):
        c, r = paired(df, rung, method, reference)
        if not c:
            continue
        tokens = float(df.loc[df["rung"] == rung, "rung_tokens"].iloc[0])
        per_param = float(df.loc[df["rung"] == rung, "tokens_per_param"].iloc[0])
        per_rung.append((rung, tokens, paired_ci(c, r), per_param))
        xs += [math.log2(tokens)] * len(c)
        ys += [a - b for a, b in zip(c, r)]
    if not per_rung:
        return None
    if len(set(xs)) < 2:
        return {"model": model, "rungs": per_rung, "fit": None, "n_points": len(xs)}
    fit = fit_line(xs, ys)
    x_last = max(xs)
    last = fit.at(x_last)
    paper = fit.at(math.log2(PAPER_TOKENS))
    close = -last.mean / fit.slope if fit.slope < 0 and last.mean > 0 else math.inf
    return {"model": model, "rungs": per_rung, "fit": fit, "n_points": len(xs), "gap_last": last,
            "gap_paper": paper, "doublings_to_close": close,
            "doublings_to_paper": math.log2(PAPER_TOKENS) - x_last}


def trend_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model with a trend (see :func:`trend`)."""
    rows = []
    for model in dict.fromkeys(df.loc[df["part"] == "ladder", "model"]):
        t = trend(df, model)
        if t is None or t["fit"] is None:
            continue
        f = t["fit"]
        slope = (f"{f.slope:+.4f} [{f.slope_lo:+.4f}, {f.slope_hi:+.4f}]" if math.isfinite(f.slope_lo)
                 else f"{f.slope:+.4f} (two points: no interval)")
        rows.append({
            "model": model, "rungs": len(t["rungs"]), "points (seed x rung)": t["n_points"],
            "gap change per doubling of tokens": slope, "fitted gap at the largest rung": _fmt_ci(t["gap_last"]),
            "line at the paper's 295B tokens (extrapolation)": _fmt_ci(t["gap_paper"]),
            "doublings to close (if the line held)": ("never (the gap does not shrink)" if math.isinf(t["doublings_to_close"])
                                                      else f"{t['doublings_to_close']:.1f}"),
            "doublings to the paper's tokens": f"{t['doublings_to_paper']:.1f}",
        })
    return pd.DataFrame(rows)


def gap_table(df: pd.DataFrame) -> pd.DataFrame:
    """The diagnostics: each one change (:data:`mstlib.ladder.GAP_CHANGES`) against the first rung's MST or
    RigL ("against", with that run's FLOPs / dense), at its true (exact) FLOPs, with the paired change in
    loss against the unchanged run and the distance to the dense frontier at the diagnostic's own FLOPs
    (:func:`frontier_at`)."""
    gap = df[(df["part"] == "gap") & df["done"]]
    rows = []
    for label, g in gap.groupby("method", sort=False):
        base, _ = ladder.GAP_CHANGES[label]
        rung = g.iloc[0]["rung"]
        a, b = paired(df, rung, label, base, part="gap")
        unchanged = df[(df["part"] == "ladder") & (df["rung"] == rung) & (df["method"] == base)]
        front = frontier_at(df, g.iloc[0]["model"], float(g["flops"].iloc[0]))
        rows.append({
            "diagnostic": label, "against": f"{base} ({unchanged['flops_vs_dense'].iloc[0]:.3f})" if len(unchanged) else base,
            "seeds": len(g), "FLOPs / dense": f"{g['flops_vs_dense'].iloc[0]:.3f}",
            "val loss": _loss_ci(g["val_loss"]),
            "minus unchanged (paired)": _fmt_ci(paired_ci(a, b)) if a else "",
            "minus dense frontier at its FLOPs": "" if math.isnan(front) else f"{g['val_loss'].mean() - front:+.3f}",
        })
    return pd.DataFrame(rows)


def frontier_at(df: pd.DataFrame, model: str, flops: float) -> float:
    """The dense frontier's loss at ``flops`` for ``model``: the mean losses of its dense runs (every length
    of every rung) joined piecewise linearly in log FLOPs; NaN outside their range (no extrapolation)."""
    pts = frontier_points(df)
    if pts.empty:
        return math.nan
    d = pts[(pts["model"] == model) & pts["dense"]].sort_values("flops")
    d = d.groupby("flops", as_index=False)["loss"].mean()  # one length may serve two rungs
    xs, ys = [math.log(v) for v in d["flops"]], list(d["loss"])
    x = math.log(flops)
    if not xs or x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return math.nan
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 - 1e-12 <= x <= x1 + 1e-12:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[0]


def frontier_points(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, rung and method: exact training FLOPs and the loss mean with its 95% interval (the
    frontier figure's points; dense runs of one model at every length form its frontier)."""
    lad = df[(df["part"] == "ladder") & df["done"]]
    rows = []
    for (model, rung, method), g in lad.groupby(["model", "rung", "method"], sort=False):
        ci = mean_ci(g["val_loss"])
        rows.append({"model": model, "rung": rung, "method": method, "flops": float(g["flops"].iloc[0]),
                     "tokens": float(g["tokens"].iloc[0]), "loss": ci.mean, "lo": ci.lo, "hi": ci.hi, "n": ci.n,
                     "dense": method in ladder.DENSE_FRACTIONS})
    return pd.DataFrame(rows)


def train_missing(preset: str, store: Any, device: str = "auto", progress: bool = False) -> int:
    """Train the fair test's runs that are not stored (the search first, then what uses its choice), where
    this machine may: always at ``smoke``; at a GPU preset only with CUDA (else nothing, and
    :func:`missing` says what is left). Returns the number of runs trained."""
    import torch

    if preset in GPU_PRESETS and not torch.cuda.is_available():
        return 0
    n = 0
    for r in ladder.selection_runs(preset):
        if not store.is_done(r.run):
            train_and_evaluate(r.run, store, device=device, evaluate=False, progress=progress)
            n += 1
    chosen = ladder.chosen_schedule(preset, store)
    for r in [*ladder.ladder_runs(preset, store), *ladder.gap_runs(preset, store)]:
        if not store.is_done(r.run):
            train_and_evaluate(r.run, store, device=device, evaluate=False, progress=progress)
            n += 1
    assert chosen == ladder.chosen_schedule(preset, store)  # the choice reads only the search's runs
    return n
