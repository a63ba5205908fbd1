# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -papermill,-execution,-ExecuteTime,-trusted
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Ablation: sparsity variation
#
# **What the paper claims.** Sparsity Variation (SV) is MST's schedule of the global sparsity over
# training: a **warm-up** that turns the dense model sparse, an **ultra-sparsification** phase at very high
# sparsity, and a **restoration** phase that gives connections back. The paper's ablation shows that this
# schedule does better than training at one constant sparsity with the same FLOPs, and that each phase
# matters. Its numbers, phase lengths and peak sparsity are **not available** to us; our schedule's
# defaults are in `mstlib.presets` (chosen so the analytic FLOP reduction at paper scale is about 4x).
#
# **What we ran.** Experiment `sv` (`mstlib.experiments.sparsity_variation_runs`), each variant changing
# one thing against full MST and keeping everything else (topology evolution, hybrid sparse attention over
# the same fraction of training): *constant sparsity* at the sparsity whose training FLOPs equal full MST's,
# solved by bisection with the hybrid sparse attention window included in the match (so the two cost the
# same FLOPs, exactly); *no warm-up* (MST's schedule starting at the peak); *no restoration* (ending at the
# peak); and other peak sparsities. Only constant sparsity is FLOP-matched: the others change the budget as
# well as the schedule, and the table shows each one's FLOPs beside its loss. Every variant is compared with
# full MST by final validation loss (nats per token, lower is better), as a difference paired by seed (runs
# of one seed share the initial weights and the data order) with a 95% t interval.

# %% tags=["parameters", "hide-cell"]
preset = "smoke"  # "smoke" (CPU, meaningless numbers), "mini" (the book's GPU scale) or "paper"
seeds = [0]  # one run per seed and variant; from the command line: papermill ... -y "seeds: [0, 1]"
device = "auto"  # where missing runs are trained: "auto", "cpu", "cuda" or "cuda:N"
results_dir = "results"  # the run store to read (and, for smoke, write)
evaluate = False  # also run the zero-shot/few-shot evaluation on missing ablation runs (slow; not needed here)

# %% tags=["remove-input"]
# Check the parameters first, so a typo stops here with a message that says what to use.
from mstlib import notebook, presets

notebook.check_parameter_names()
seeds, variants = notebook.ablation_variants("sv", preset, seeds, device, results_dir, evaluate)

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

from mstlib import pipeline, plots, verdicts

notebook.start_page(preset, seeds)

# %% tags=["hide-input"]
# The runs of experiment "sv"; full MST is shared with the main table (same config, same stored run).
# A GPU preset read on a machine without all the runs says which are not stored yet, and goes on.
ablation = notebook.collect_ablation("sv", variants, preset, device, results_dir, evaluate, allow_missing=True)
results, logs, ORDER, mst = ablation.results, ablation.logs, ablation.order, ablation.mst
FULL = "full MST"
described = {
    v.variant: (f"{v.run.schedule.kind}, s={v.run.schedule.sparsity:.4f}" if v.run.schedule.kind == "constant"
                else f"mst: 0 -> {v.run.schedule.s_max:.2f} by {v.run.schedule.warmup_end:.2f}, "
                     f"restore from {v.run.schedule.restore_start:.2f} to {v.run.schedule.s_end:.2f}")
    for v in variants
}

# %% [markdown]
# ## The table
#
# "Δ val loss" is the variant's final validation loss minus full MST's (positive: the variant is worse,
# i.e. the removed part of the schedule helped), paired by seed, with its 95% interval. "FLOPs / full MST"
# is exact arithmetic on the configs (no interval); "matched" says whether the variant costs full MST's
# FLOPs (within 0.1%), so its difference is a comparison at equal cost. The paper's numbers for this
# ablation are not available to us.

# %% tags=["hide-input"]
from mstlib.presets import run_flops

full_flops = run_flops(next(v.run for v in variants if v.variant == FULL))
cost = {v.variant: run_flops(v.run) / full_flops for v in variants}
stored = [v for v in ORDER if (results["variant"] == v).any()]
summary = pipeline.summary(results, ["metrics.final_val_loss", "metrics.final_density"], by="variant").set_index("variant")
delta = verdicts.differences(results, "metrics.final_val_loss", FULL).set_index("variant")
table = pd.DataFrame({
    "schedule": [described[v] for v in ORDER],
    "FLOPs / full MST": [f"{cost[v]:.3f}" for v in ORDER],
    "matched": ["yes" if abs(cost[v] - 1) < 1e-3 else "no" for v in ORDER],
    "seeds": [int(summary.loc[v, "n"]) if v in stored else 0 for v in ORDER],
    "val loss": [summary.loc[v, "metrics.final_val_loss_fmt"] if v in stored else "not stored yet" for v in ORDER],
    "Δ val loss vs full MST (paired) [95% CI]": [delta.loc[v, "text"] if v in stored else "" for v in ORDER],
    "final density": [f"{summary.loc[v, 'metrics.final_density']:.3f}" if v in stored else "" for v in ORDER],
}, index=ORDER)
# a loss and its interval on one line each; the schedule's description wraps instead
table.style.set_properties(subset=["val loss"], **{"white-space": "nowrap"})

# %% tags=["remove-input"]
# Numbers for the prose.
glue("s_max", mst.schedule.s_max, display=False)
glue("s_end", mst.schedule.s_end, display=False)
glue("s_const", next(v.run for v in variants if v.variant == "constant sparsity").schedule.sparsity, display=False)
KEYS = {"constant sparsity": "const", "no warm-up": "nowarm", "no restoration": "norestore"}
for name, key in KEYS.items():
    text = (f"{delta.loc[name, 'text']} nats at {cost[name]:.3f} of full MST's FLOPs" if name in stored
            else f"not stored yet (it costs {cost[name]:.3f} of full MST's FLOPs)")
    glue(f"d_{key}_text", text, display=False)
glue("val_full", float(summary.loc[FULL, "metrics.final_val_loss"]), display=False)
glue("ratio_full", full_flops / run_flops(presets.make(preset, "dense")), display=False)  # exact

# %% [markdown]
# Full MST (peak sparsity {glue:text}`s_max:.2f`, restored to {glue:text}`s_end:.2f`) reached a final
# validation loss of {glue:text}`val_full:.3f` nats with {glue:text}`ratio_full:.3f` of dense's FLOPs on the
# {glue:text}`preset` preset ({glue:text}`n_seeds` seed(s)). Against it (variant minus full MST; positive
# means the variant is worse):
#
# - constant sparsity {glue:text}`s_const:.4f` (FLOP-matched): {glue:text}`d_const_text`;
# - no warm-up (not matched): {glue:text}`d_nowarm_text`;
# - no restoration (not matched): {glue:text}`d_norestore_text`.
#
# The verdict on "SV helps" (full MST against constant sparsity, with its rule) is on the "what reproduced"
# page.

# %% [markdown]
# ## Density over training, and what it does to the loss
#
# The left panel is each variant's schedule as the trainer applied it (density of the sparse set, logged
# every step): the three phases of full MST, the flat line of constant sparsity. The right panel is the
# validation loss over the same steps.

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
plots.density_curves(logs, ax=axes[0], order=ORDER)
plots.loss_curves(logs, y="val_loss", ax=axes[1], order=ORDER)
fig.tight_layout()

# %% tags=["hide-input"]
ax = plots.metric_bars(results, "metrics.final_val_loss", order=ORDER, highlight=FULL, style="point",
                       title="final validation loss by schedule (mean, 95% CI over seeds)")

# %% [markdown]
# ## Caveats
#
# - "No warm-up", "no restoration" and the other peaks change the FLOP budget as well as the schedule, so
#   they are not FLOP-matched; only "constant sparsity" is. Read their differences together with the FLOPs
#   column: a variant that is worse while costing less has not shown that the removed part helps at equal
#   cost.
# - Few seeds make the intervals wide; an interval that contains 0 means "no difference detected", not
#   "no difference".
