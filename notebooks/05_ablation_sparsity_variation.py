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
# the same fraction of training): *constant sparsity* at the sparsity whose training FLOPs equal MST's (the
# RigL baseline's); *no warm-up* (MST's schedule starting at the peak); *no restoration* (ending at the
# peak); and other peak sparsities. Every variant is compared with full MST by final validation loss
# (nats per token, lower is better), as a difference with a 95% Welch interval over seeds.

# %% tags=["parameters"]
preset = "smoke"  # "smoke" (CPU, meaningless numbers), "mini" (the book's GPU scale) or "paper"
seeds = [0]  # one run per seed and variant; from the command line: papermill ... -y "seeds: [0, 1]"
device = "auto"  # where missing runs are trained: "auto", "cpu", "cuda" or "cuda:N"
results_dir = "results"  # the run store to read (and, for smoke, write)
evaluate = False  # also run the zero-shot/few-shot evaluation on missing ablation runs (slow; not needed here)

# %%
# Check the parameters first, so a typo stops here with a message that says what to use.
from mstlib import experiments, notebook, presets

seeds = notebook.check_parameters(preset, seeds, device, results_dir, evaluate=evaluate)
variants = experiments.variants_for("sv", preset, list(seeds))  # ConfigError on a bad preset/seed

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

from mstlib import pipeline, plots, verdicts

notebook.start_page(preset, seeds)

# %%
# The runs of experiment "sv"; full MST is shared with the main table (same config, same stored run).
results = pipeline.collect(variants, preset=preset, device=device, results_dir=results_dir, evaluate=evaluate)
logs = pipeline.logs(results, results_dir=results_dir)
ORDER = list(dict.fromkeys(v.variant for v in variants))
FULL = "full MST"
mst = presets.make(preset, "mst")
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
# i.e. the removed part of the schedule helped), with its 95% Welch interval over seeds. "FLOPs / dense"
# shows which variants cost the same as full MST and which do not (a different peak changes the budget).

# %%
METRICS = ["metrics.final_val_loss", "metrics.flops_ratio_to_dense", "metrics.final_density"]
summary = pipeline.summary(results, METRICS, by="variant").set_index("variant").loc[ORDER]
delta = verdicts.differences(results, "metrics.final_val_loss", FULL).set_index("variant").loc[ORDER]
table = pd.DataFrame({
    "schedule": [described[v] for v in ORDER],
    "seeds": summary["n"],
    "val loss": summary["metrics.final_val_loss_fmt"],
    "Δ val loss vs full MST [95% CI]": delta["text"],
    "FLOPs / dense": summary["metrics.flops_ratio_to_dense"].map("{:.3f}".format),
    "final density": summary["metrics.final_density"].map("{:.3f}".format),
    "paper": "not available",
}, index=ORDER)
table

# %%
# Numbers for the prose.
glue("s_max", mst.schedule.s_max, display=False)
glue("s_end", mst.schedule.s_end, display=False)
glue("s_const", presets.make(preset, "rigl").schedule.sparsity, display=False)
KEYS = {"constant sparsity": "const", "no warm-up": "nowarm", "no restoration": "norestore"}
for name, key in KEYS.items():
    glue(f"d_{key}", float(delta.loc[name, "difference"]), display=False)
    glue(f"d_{key}_ci", delta.loc[name, "text"].split(" ", 1)[1], display=False)
glue("val_full", float(summary.loc[FULL, "metrics.final_val_loss"]), display=False)
glue("ratio_full", float(summary.loc[FULL, "metrics.flops_ratio_to_dense"]), display=False)
glue("ratio_const", float(summary.loc["constant sparsity", "metrics.flops_ratio_to_dense"]), display=False)

# %% [markdown]
# Full MST (peak sparsity {glue:text}`s_max:.2f`, restored to {glue:text}`s_end:.2f`) reached a final
# validation loss of {glue:text}`val_full:.3f` nats with {glue:text}`ratio_full:.3f` of dense's FLOPs on the
# {glue:text}`preset` preset ({glue:text}`n_seeds` seed(s)). Against it (variant minus full MST; positive
# means the variant is worse):
#
# - constant sparsity {glue:text}`s_const:.3f` at {glue:text}`ratio_const:.3f` of dense's FLOPs:
#   {glue:text}`d_const:+.4f` nats {glue:text}`d_const_ci`;
# - no warm-up: {glue:text}`d_nowarm:+.4f` nats {glue:text}`d_nowarm_ci`;
# - no restoration: {glue:text}`d_norestore:+.4f` nats {glue:text}`d_norestore_ci`.
#
# The verdict on "SV helps" (full MST against constant sparsity, with its rule) is on the "what reproduced"
# page.

# %% [markdown]
# ## Density over training, and what it does to the loss
#
# The left panel is each variant's schedule as the trainer applied it (density of the sparse set, logged
# every step): the three phases of full MST, the flat line of constant sparsity. The right panel is the
# validation loss over the same steps.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
plots.density_curves(logs, ax=axes[0], order=ORDER)
plots.loss_curves(logs, y="val_loss", ax=axes[1], order=ORDER)
fig.tight_layout()

# %%
ax = plots.metric_bars(results, "metrics.final_val_loss", order=ORDER, highlight=FULL, style="point",
                       title="final validation loss by schedule (mean, 95% CI over seeds)")

# %% [markdown]
# ## Caveats
#
# - "No warm-up" and "no restoration" change the FLOP budget as well as the schedule (they spend longer at
#   the peak), so they are not FLOP-matched; only "constant sparsity" is. Read their differences together
#   with the FLOPs column.
# - Few seeds make the intervals wide; an interval that contains 0 means "no difference detected", not
#   "no difference".
