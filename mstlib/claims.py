"""The paper's claims and our verdicts on them, computed in one place from the stored runs: the verdict
chapter and the book's first page both call :func:`evaluate`, so the two can never disagree.

The claims (the paper's title and abstract) and the comparisons behind each:

1. **4x fewer training FLOPs than dense**: exact arithmetic on the configs (no interval), at the paper's
   scale with our schedule defaults, in the main table's runs, and in the fair test (whose budget is 1/4
   by construction). Where a factor holds by construction, the verdict says so.
2. **No loss in quality against dense** (the **primary** comparison: MST with the schedule chosen by the
   fair test's search, against dense at equal tokens, at the ladder's first rung, on the ladder's own seeds;
   validation loss, margin ``loss_margin``), and the main table's validation loss and zero-shot perplexities.
3. **Better than RigL, SS and Tiny at equal FLOPs** (main table; and RigL and Tiny at the fair test's rungs).
4. **Better than dense trained for the same FLOPs** (our question, the iso-FLOP frontier: dense for 1/4 of
   the steps with its own schedule), at every stored rung.
5. - 7. **Sparsity variation, topology evolution by mixed growth, hybrid sparse attention each help** (the
   ablations, at the main table's scale).
8. **The gap to dense shrinks as training grows** (not a claim of the paper, but what its claim at 295B
   tokens needs of our small runs): the slope of the equal-token gap per doubling of tokens, per model.

Runs of one seed share weights and data order, so every comparison is paired by seed. Every comparison but
the primary one and the exact ones forms one family, corrected with Holm's method. Metrics at their floor at
this scale (LAMBADA accuracy near 0, GLUE accuracy at or below the majority class) are shown by the pages but
never enter a verdict (:data:`UNINFORMATIVE`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import experiments, fair_test, flops, ladder, presets
from .errors import MstError
from .pipeline import collect
from .results import RunStore
from .verdicts import (Verdict, at_least, better_than, combine, holm, no_worse_than, not_stored, paired_values,
                       trend_shrinks)

__all__ = ["Margins", "Claims", "UNINFORMATIVE", "evaluate", "PRIMARY", "scale_line", "scale_table"]

#: Metrics that sit at their floor at our scale: shown, never decisive.
UNINFORMATIVE = {
    "eval.lambada.acc": "LAMBADA last-word accuracy (near 0 for models this small)",
    "eval.rte.acc": "RTE k-shot accuracy (at the majority class)",
    "eval.mrpc.acc": "MRPC k-shot accuracy (at or below the majority class)",
}
#: The one comparison outside the Holm family.
PRIMARY = "MST vs dense at equal tokens (fair test, first rung)"
VAL = "validation loss"


@dataclass(frozen=True)
class Margins:
    """The verdicts' parameters (the verdict chapter's papermill parameters)."""

    flops_target: float = 4.0
    flops_tolerance: float = 0.1
    loss_margin: float = 0.02
    ppl_margin: float = 0.02
    min_gain: float = 0.0
    alpha: float = 0.05

    def __post_init__(self) -> None:
        checks = (("flops_target", self.flops_target > 0), ("flops_tolerance", 0 <= self.flops_tolerance < 1),
                  ("loss_margin", self.loss_margin >= 0), ("ppl_margin", self.ppl_margin >= 0),
                  ("min_gain", self.min_gain >= 0), ("alpha", 0 < self.alpha < 1))
        for name, ok in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok:
                raise MstError(f"{name}={value!r} is out of range (targets > 0, tolerance in [0, 1), margins >= 0, "
                               "alpha in (0, 1))")


@dataclass
class Claims:
    """Every comparison (``parts``: claim -> verdicts, after Holm), one combined verdict per claim, and the
    data they were read from (``main``, ``ablations``, ``fair``: DataFrames; ``chosen``: the schedule)."""

    parts: dict[str, list[Verdict]]
    claims: list[Verdict]
    main: pd.DataFrame
    ablations: dict[str, pd.DataFrame]
    fair: pd.DataFrame
    chosen: str | None
    scopes: dict[str, str] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per claim: the claim, its verdict, and where the comparisons behind it come from (the
        short scopes; each comparison's full scope is in the evidence)."""
        return pd.DataFrame({
            "claim": [c.claim for c in self.claims],
            "verdict": [c.outcome for c in self.claims],
            "from": [_short(self.parts[c.claim]) for c in self.claims],
        }, index=range(1, len(self.claims) + 1))


def _seed_text(seeds: list[int]) -> str:
    return "seed " + str(seeds[0]) if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def _scope(part: str, run: Any, seeds: list[int], schedule: str) -> str:
    """``"part: preset, 66M tokens of corpus, schedule, seeds 0, 1, 2"``; the part before the colon is the
    short scope (:meth:`Claims.table`)."""
    tokens = run.train.max_iters * run.tokens_per_step()
    return f"{part}: {run.preset}, {tokens / 1e6:,.0f}M tokens of {run.data.corpus}, {schedule}, {_seed_text(seeds)}"


def _short(verdicts: list[Verdict]) -> str:
    """Where a claim's stored comparisons come from ("main table; fair test mini-65m"), and how many of its
    comparisons wait for runs not stored yet."""
    stored = [v for v in verdicts if v.exact or not math.isnan(v.estimate)]
    parts = list(dict.fromkeys(v.scope.split(":")[0] for v in stored if v.scope))
    fair = [p.removeprefix("fair test ") for p in parts if p.startswith("fair test ") and "," not in p]
    other = [p for p in parts if not (p.startswith("fair test ") and "," not in p)]
    text = "; ".join(other + ([f"fair test {', '.join(fair)}"] if fair else [])) or (
        verdicts[0].note if verdicts and verdicts[0].note else "nothing stored yet")
    waiting = len(verdicts) - len(stored)
    return text + (f" ({waiting} more comparison{'s' if waiting > 1 else ''} not stored yet)" if waiting and stored else "")


def _vals(df: pd.DataFrame, group: str, metric: str = "metrics.final_val_loss", by: str = "method") -> list[float]:
    return [float(v) for v in pd.to_numeric(df.loc[df[by] == group, metric], errors="coerce")]


def _pair(df: pd.DataFrame, a: str, b: str, metric: str = "metrics.final_val_loss",
          by: str = "method") -> tuple[list[float], list[float]] | None:
    if df.empty or not ((df[by] == a).any() and (df[by] == b).any()):
        return None
    return paired_values(df, metric, a, b, by=by)


def evaluate(preset: str, seeds: list[int], ablation_seeds: list[int], results_dir: str = "results",
             device: str = "auto", margins: Margins = Margins()) -> Claims:
    """All verdicts of the book at ``preset`` (missing smoke runs are trained; a GPU preset's missing runs
    make their comparisons inconclusive, saying so)."""
    main = collect(experiments.variants_for("main", preset, seeds), preset=preset, device=device,
                   results_dir=results_dir, allow_missing=True)
    abl = {name: collect(experiments.variants_for(name, preset, ablation_seeds), preset=preset, device=device,
                         results_dir=results_dir, evaluate=False, allow_missing=True)
           for name in ("sv", "te", "hsa")}
    scale = "mini" if preset == "paper" else preset
    store = RunStore(results_dir)
    fair_test.train_missing(scale, store, device=device)
    fair, chosen = fair_test.collect(scale, store)
    m = margins
    mst = presets.make(preset, "mst")
    main_scope = _scope("main table", mst, seeds, f"the preset's MST schedule (peak {mst.schedule.s_max:g})")
    abl_scope = _scope("ablations", mst, ablation_seeds, "one change against the preset's MST")
    first = ladder.selection_rung(scale)
    fair_run = ladder.rung_run(scale, first.name, "dense", first.seeds[0])
    fair_scope = _scope(f"fair test {first.name}", fair_run, list(first.seeds),
                        f"schedule {chosen or '(search incomplete)'}")
    parts: dict[str, list[Verdict]] = {}

    # 1. FLOPs: exact arithmetic everywhere, so no interval, and said where it holds by construction
    parts["4x fewer training FLOPs than dense"] = _flop_verdicts(preset, scale, mst, m, main_scope, fair_scope)

    # 2. No loss against dense: the primary comparison first
    rule_nw = no_worse_than([0.0, 0.0], [0.0, 0.0], m.loss_margin, claim="", metric=VAL).rule
    a, b = fair_test.paired(fair, first.name, "mst", "dense") if chosen else ([], [])
    quality = [no_worse_than(a, b, m.loss_margin, claim=PRIMARY, metric=VAL, scope=fair_scope) if a
               else not_stored(PRIMARY, VAL, rule_nw, fair_scope)]
    p = _pair(main, "mst", "dense")
    quality.append(no_worse_than(*p, m.loss_margin, claim=f"MST vs dense, {VAL} (main table)", metric=VAL,
                                 scope=main_scope) if p else not_stored("MST vs dense (main table)", VAL, rule_nw, main_scope))
    for task, name in (("wikitext103", "WikiText-103"), ("wikitext2", "WikiText-2"), ("ptb", "PTB"),
                       ("1bw", "1BW"), ("lambada", "LAMBADA")):
        col = f"eval.{task}.ppl_word" if task != "lambada" else "eval.lambada.ppl"
        if p and col in main.columns and main[col].notna().all():
            quality.append(no_worse_than(*_pair(main, "mst", "dense", col), m.ppl_margin, relative=True,
                                         claim=f"MST vs dense, {name} perplexity (main table)",
                                         metric=f"{name} perplexity", scope=main_scope))
    parts["No loss in quality against dense"] = quality

    # 3. Better than the baselines at equal FLOPs
    rule_bt = better_than([0.0, 0.0], [0.0, 0.0], claim="", metric=VAL, min_gain=m.min_gain).rule
    base = []
    for bm, label in (("rigl", "RigL"), ("ss", "SS"), ("tiny", "Tiny")):
        p = _pair(main, "mst", bm)
        base.append(better_than(*p, min_gain=m.min_gain, claim=f"MST vs {label} (main table)", metric=VAL,
                                scope=main_scope) if p else not_stored(f"MST vs {label} (main table)", VAL, rule_bt, main_scope))
    # 4. ... and dense for the same FLOPs, at every rung of the fair test
    frontier = []
    for rung in ladder.rungs(scale):
        run = ladder.rung_run(scale, rung.name, "dense", rung.seeds[0])
        scope = _scope(f"fair test {rung.name}", run, list(rung.seeds), f"schedule {chosen or '(search incomplete)'}")
        for bm, label, target in (("rigl", "RigL", base), ("tiny", "Tiny", base),
                                  (ladder.budget_method(scale), f"{ladder.budget_method(scale)} (its own schedule)", frontier)):
            if bm not in rung.methods:
                continue
            c, r = fair_test.paired(fair, rung.name, "mst", bm) if chosen else ([], [])
            claim = f"MST vs {label}, {rung.name}"
            target.append(better_than(c, r, min_gain=m.min_gain, claim=claim, metric=VAL, scope=scope) if c
                          else not_stored(claim, VAL, rule_bt, scope))
    parts["Better than RigL, SS and Tiny at equal FLOPs"] = base
    parts["Better than dense trained for the same FLOPs (the frontier)"] = frontier

    # 5.-7. The ablations (their variants are labelled; full MST is the preset's MST)
    parts.update(_ablation_verdicts(abl, preset, mst, m, abl_scope))

    # 8. The trend of the equal-token gap, per model
    parts["The gap to dense shrinks as training grows (our question)"] = _trend_verdicts(fair, scale, chosen)

    # Holm over every comparison but the primary one (exact and unstored ones are outside by themselves)
    flat = [(k, i, v) for k, vs in parts.items() for i, v in enumerate(vs) if v.claim != PRIMARY]
    corrected = holm([v for _, _, v in flat], alpha=m.alpha)
    for (k, i, _), v in zip(flat, corrected):
        parts[k][i] = v
    claims = [combine(name, vs) for name, vs in parts.items()]
    return Claims(parts, claims, main, abl, fair, chosen,
                  {"main": main_scope, "ablations": abl_scope, "fair": fair_scope})


def _flop_verdicts(preset: str, scale: str, mst: Any, m: Margins, main_scope: str, fair_scope: str) -> list[Verdict]:
    """The 4x claim: exact FLOP factors at paper scale, of the main table's MST and of the fair test's budget."""
    paper = presets.make("paper", "mst")
    paper_factor = (flops.training_flops(presets.make("paper", "dense"), series=False).total_flops
                    / flops.training_flops(paper, series=False).total_flops)
    fl = [at_least([paper_factor], m.flops_target, tolerance=m.flops_tolerance, exact=True,
                   claim="at paper scale, our schedule defaults (chosen for about 4x: holds by construction)",
                   quantity="dense FLOPs / MST FLOPs", scope="paper scale: GPT-2 124M, 600k steps, computed")]
    main_ratio = (flops.training_flops(presets.make(preset, "dense"), series=False).total_flops
                  / flops.training_flops(mst, series=False).total_flops)
    fl.append(at_least([main_ratio], m.flops_target, tolerance=m.flops_tolerance, exact=True,
                       claim="the main table's MST runs", quantity="dense FLOPs / MST FLOPs", scope=main_scope))
    fl.append(at_least([1.0 / ladder.budget(scale)], m.flops_target, tolerance=m.flops_tolerance, exact=True,
                       claim="the fair test's MST runs (the budget is 1/4: holds by construction)",
                       quantity="dense FLOPs / MST FLOPs", scope=fair_scope))
    return fl


def _ablation_verdicts(abl: dict[str, pd.DataFrame], preset: str, mst: Any, m: Margins,
                       abl_scope: str) -> dict[str, list[Verdict]]:
    """The claims of the three ablations (SV, TE by MG, HSA), full MST against each variant."""
    rule_nw = no_worse_than([0.0, 0.0], [0.0, 0.0], m.loss_margin, claim="", metric=VAL).rule
    rule_bt = better_than([0.0, 0.0], [0.0, 0.0], claim="", metric=VAL, min_gain=m.min_gain).rule

    def abl_part(name: str, full_label: str, others: list[str]) -> list[Verdict]:
        df = abl[name]
        out = []
        for o in others:
            claim = f"{full_label} vs {o}"
            p = _pair(df, full_label, o, by="variant")
            out.append(better_than(*p, min_gain=m.min_gain, claim=claim, metric=VAL, scope=abl_scope) if p
                       else not_stored(claim, VAL, rule_bt, abl_scope))
        return out

    parts: dict[str, list[Verdict]] = {}
    parts["Sparsity variation (SV) helps"] = abl_part("sv", "full MST", ["constant sparsity"])
    parts["Topology evolution by MG helps"] = abl_part("te", "mixed (MG)", ["gradient (RigL)", "random (SET)",
                                                                             "none (static)"])
    hsa = abl["hsa"]
    names = list(dict.fromkeys(hsa["variant"])) if not hsa.empty else []
    hsa_full = next((v for v in names if v.startswith(mst.attention.pattern + " (ultra")), None)
    h: list[Verdict] = []
    if hsa_full is not None and "dense attention" in names:
        dense_att = presets.make(preset, "mst", overrides={"attention.pattern": "dense"})
        factor = (flops.training_flops(dense_att, series=False).total_flops
                  / flops.training_flops(mst, series=False).total_flops)
        h.append(at_least([factor], 1.0, tolerance=0.0, exact=True, claim="HSA saves FLOPs",
                          quantity="FLOPs with dense attention / with HSA", scope=abl_scope))
        h.append(no_worse_than(*_pair(hsa, hsa_full, "dense attention", by="variant"), m.loss_margin,
                               claim=f"HSA vs dense attention, {VAL}", metric=VAL, scope=abl_scope))
    else:
        h.append(not_stored("HSA vs dense attention", VAL, rule_nw, abl_scope))
    parts["Hybrid sparse attention (HSA) helps"] = h
    return parts


def _trend_verdicts(fair: pd.DataFrame, scale: str, chosen: str | None) -> list[Verdict]:
    """Our question: does the equal-token gap to dense shrink per doubling of tokens, per model."""
    trend = []
    for model in dict.fromkeys(r.model for r in ladder.rungs(scale)):
        t = fair_test.trend(fair, model) if chosen else None
        rungs_of = [r.name for r in ladder.rungs(scale) if r.model == model]
        scope = f"fair test, {model}: rungs {', '.join(rungs_of)}, schedule {chosen or '(search incomplete)'}"
        trend.append(trend_shrinks(t["fit"] if t else None, claim=f"gap per doubling of tokens, {model}",
                                   quantity="change of (MST - dense) per doubling of tokens", scope=scope,
                                   missing=("fewer than two rungs stored: no trend yet" if t or chosen else
                                            "the schedule search is not complete")))
    return trend


def _m(x: float) -> str:
    """A token or parameter count for people: 15,360, 65.5M, 294.9B."""
    return f"{x / 1e9:,.1f}B" if x >= 1e9 else f"{x / 1e6:,.1f}M" if x >= 1e6 else f"{x:,.0f}"


def _per(x: float) -> str:
    """Tokens per parameter: 0.01, 2.2, 2,386."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def scale_line(preset: str) -> str:
    """One line that says the scale of the book's runs against the paper's (config arithmetic only): the
    preset's model and tokens per run, the fair test's ladder, and the paper's run. Every results page
    opens with it (:func:`mstlib.notebook.start_page`)."""
    run = presets.make(preset, "dense")
    n = flops.nanogpt_params(run.model)
    tokens = run.train.max_iters * run.tokens_per_step()
    m = run.model
    out = (f"**Scale.** `{preset}` preset: a {m.n_layer}x{m.n_embd} GPT ({_m(n)} parameters) trained on "
           f"{_m(tokens)} tokens per run ({_per(tokens / n)} per parameter)")
    scale = "mini" if preset == "paper" else preset
    if preset != "paper":
        by_model: dict[str, list[float]] = {}
        for r in ladder.rungs(scale):
            d = ladder.rung_run(scale, r.name, "dense", r.seeds[0])
            by_model.setdefault(r.model, []).append(r.steps * d.tokens_per_step())
        out += "; the fair test's ladder: " + ", ".join(
            f"{model} on {_m(min(t))} to {_m(max(t))} tokens" for model, t in by_model.items())
    paper = presets.make("paper", "dense")
    pn, pt = flops.nanogpt_params(paper.model), paper.train.max_iters * paper.tokens_per_step()
    return out + f"; the paper: GPT-2 124M ({_m(pn)} parameters) on {_m(pt)} tokens ({_per(pt / pn)} per parameter)."


def scale_table(book: Claims, preset: str) -> pd.DataFrame:
    """The scale in numbers for the first page: per part of the book, the model, its parameters, tokens per
    run, tokens per parameter, seeds, the GPU-hours its stored runs took (their wall time together;
    several runs shared one GPU at a time, so GPU time was less) and the GPUs named in their provenance."""
    rows = []
    run = presets.make(preset, "dense")
    n = flops.nanogpt_params(run.model)
    tokens = run.train.max_iters * run.tokens_per_step()
    for part, df in (("main table", book.main), *((f"ablation {k}", d) for k, d in book.ablations.items())):
        if df.empty:
            continue
        rows.append({"part": part, "model": f"{run.model.n_layer}x{run.model.n_embd}", "parameters": _m(n),
                     "tokens per run": _m(tokens), "tokens / parameter": _per(tokens / n),
                     "seeds": ", ".join(map(str, sorted(set(df["seed"])))), "runs": int(df["run_id"].nunique()),
                     "wall hours": f"{pd.to_numeric(df['metrics.wall_time_s']).sum() / 3600:.2f}",
                     "devices": _devices(df.get("provenance.device_name"))})
    fair = book.fair[book.fair["done"]]
    for (rung, model), g in fair.groupby(["rung", "model"], sort=False):
        rows.append({"part": f"fair test, {rung}", "model": model, "parameters": _m(float(g["params"].iloc[0])),
                     "tokens per run": _m(float(g["rung_tokens"].iloc[0])),
                     "tokens / parameter": _per(float(g["tokens_per_param"].iloc[0])),
                     "seeds": ", ".join(map(str, sorted(set(g["seed"])))), "runs": int(g["run_id"].nunique()),
                     "wall hours": f"{g['wall_time_s'].sum() / 3600:.2f}", "devices": _devices(g["device"])})
    paper = presets.make("paper", "dense")
    pn, pt = flops.nanogpt_params(paper.model), paper.train.max_iters * paper.tokens_per_step()
    rows.append({"part": "the paper (for scale)", "model": "12x768", "parameters": _m(pn), "tokens per run": _m(pt),
                 "tokens / parameter": _per(pt / pn), "seeds": "–", "runs": "–",
                 "wall hours": "–", "devices": "–"})  # not available to us: said once, in the page's text
    return pd.DataFrame(rows).set_index("part")


def _devices(names: Any) -> str:
    """The GPUs that trained a part, from its runs' provenance ("NVIDIA H200"; several, comma-separated)."""
    if names is None:
        return ""
    return ", ".join(sorted({str(n) for n in names if isinstance(n, str) and n}))
