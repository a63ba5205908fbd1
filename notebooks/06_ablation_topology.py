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
# # Ablation: topology evolution
#
# **What the paper claims.** MST keeps changing which weights are connected in all three phases
# ("Algorithm 1: Topology Evolution by MG"): every few hundred steps it drops the active weights of
# smallest magnitude and grows new ones. The paper's ablation compares growth schemes and finds its own
# ("MG") best. Its numbers, and the exact meaning of "MG", are **not available** to us: our reading is the
# official code's mixed growth (`grow_mix`), three parts of the new connections chosen by the largest dense
# gradient and one part at random.
#
# **What we ran.** Experiment `te` (`mstlib.experiments.topology_runs`): full MST with mixed growth against
# growth by gradient only (RigL's rule), at random (SET's rule), and no growth (static: the mask changes
# only where the sparsity target changes); and two drop-fraction schedules: constant instead of
# cosine-annealed, and one cosine over the whole run instead of a restart in each phase. Everything else
# (sparsity schedule, hybrid sparse attention, FLOPs up to the dense gradients of update steps) is full
# MST's. Each variant is compared with full MST by final validation loss, as a difference with a 95% interval
# paired by seed (the variants of one seed share their data order and initial weights).

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
seeds, variants = notebook.ablation_variants("te", preset, seeds, device, results_dir, evaluate)

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

from mstlib import pipeline, plots, tables, verdicts

notebook.start_page(preset, seeds)

# %% tags=["remove-input"]
# The runs of experiment "te"; "mixed (MG)" is full MST, shared with the main table.
ablation = notebook.collect_ablation("te", variants, preset, device, results_dir, evaluate)
results, logs, ORDER, mst = ablation.results, ablation.logs, ablation.order, ablation.mst
FULL = "mixed (MG)"
def describe(topo) -> str:
    if topo.growth == "none":  # the drop fraction is 0: the mask changes only with the sparsity target
        return "no growth; mask changes only with the sparsity target"
    mix = f" ({topo.mix_gradient_fraction:.0%} by gradient)" if topo.growth == "mixed" else ""
    anneal = ", restart per phase" if topo.restart_per_phase else ", one anneal"
    return f"growth {topo.growth}{mix}; drop {topo.drop_fraction:g}, {topo.drop_anneal}{anneal}"


described = {v.variant: describe(v.run.topology) for v in variants}

# %% [markdown]
# ## The table
#
# "Δ val loss" is the variant's final validation loss minus full MST's (positive: the variant is worse,
# i.e. MST's choice helped), with its 95% interval paired by seed; "val loss" is the mean ± 95% t
# half-width over seeds. The paper's numbers for this ablation are not available.

# %% tags=["hide-input"]
METRICS = ["metrics.final_val_loss", "metrics.flops_ratio_to_dense"]
summary = pipeline.summary(results, METRICS, by="variant").set_index("variant").loc[ORDER]
delta = verdicts.differences(results, "metrics.final_val_loss", FULL).set_index("variant").loc[ORDER]
table = pd.DataFrame({
    "topology evolution": [described[v] for v in ORDER],
    "seeds": summary["n"],
    "val loss": [tables.mean_pm(m, (hi - lo) / 2) for m, lo, hi in zip(
        summary["metrics.final_val_loss"], summary["metrics.final_val_loss_lo"], summary["metrics.final_val_loss_hi"])],
    "Δ val loss vs MG [95% CI]": delta["text"],
    "FLOPs / dense": summary["metrics.flops_ratio_to_dense"].map("{:.3f}".format),
}, index=ORDER)
tables.style(table)  # a Styler shows every description in full (a DataFrame cuts them at 50 characters)

# %% tags=["remove-input"]
# Numbers for the prose.
glue("mix", mst.topology.mix_gradient_fraction, display=False)
glue("interval", mst.topology.update_interval, display=False)
glue("drop", mst.topology.drop_fraction, display=False)
glue("val_full", float(summary.loc[FULL, "metrics.final_val_loss"]), display=False)
KEYS = {"gradient (RigL)": "grad", "random (SET)": "rand", "none (static)": "none",
        "MG, constant drop fraction": "const", "MG, no per-phase restart": "norestart"}
for name, key in KEYS.items():
    glue(f"d_{key}", float(delta.loc[name, "difference"]), display=False)
    glue(f"d_{key}_ci", delta.loc[name, "text"].split(" ", 1)[1], display=False)

# %% [markdown]
# Full MST grows {glue:text}`mix:.0%` of its new connections by gradient and the rest at random, every
# {glue:text}`interval` steps, dropping a fraction that starts at {glue:text}`drop:.2f`; its final
# validation loss was {glue:text}`val_full:.3f` nats ({glue:text}`preset` preset, {glue:text}`n_seeds`
# seed(s)). Against it (variant minus MG; positive means the variant is worse):
#
# - growth by gradient only: {glue:text}`d_grad:+.4f` nats {glue:text}`d_grad_ci`;
# - random growth: {glue:text}`d_rand:+.4f` nats {glue:text}`d_rand_ci`;
# - no growth (static): {glue:text}`d_none:+.4f` nats {glue:text}`d_none_ci`;
# - constant drop fraction: {glue:text}`d_const:+.4f` nats {glue:text}`d_const_ci`;
# - one cosine anneal over the run: {glue:text}`d_norestart:+.4f` nats {glue:text}`d_norestart_ci`.
#
# The verdict on "TE (MG) helps" (MG against each other growth rule, with its rule) is on the "what
# reproduced" page.

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
plots.loss_curves(logs, y="val_loss", ax=axes[0], order=ORDER)
plots.metric_bars(results, "metrics.final_val_loss", ax=axes[1], order=ORDER, highlight=FULL, style="point",
                  title="final validation loss (mean, 95% CI)")
fig.tight_layout()

# %% [markdown]
# ## Caveats
#
# - Growth by gradient (and the gradient part of MG) needs the dense gradient on update steps, which costs
#   FLOPs that random growth and static training do not spend; the "FLOPs / dense" column shows how much.
# - "No growth" still changes the mask when the sparsity target changes (net pruning by magnitude during
#   the warm-up, random regrowth during restoration; see `mstlib.topology`), so it is static only between
#   changes of the target.
# - Our reading of "MG" may not be the paper's; the mix fraction is a config field
#   (`topology.mix_gradient_fraction`) for a reader who knows better.
