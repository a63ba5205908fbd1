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
# # Ablation: hybrid sparse attention
#
# **What the paper claims.** Hybrid Sparse Attention (HSA) is MST's third component: during part of
# training, attention follows a sparse pattern of the Sparse Transformer kind instead of attending to every
# earlier token, which removes part of the attention FLOPs. The paper's ablation shows that HSA helps.
# Its numbers, pattern, window and time window are **not available** to us; the official code offers a
# local band, a strided pattern, both together and a "fixed" pattern, with window and stride 128, switched
# on for every layer inside one window of iterations. Our default (in `mstlib.presets`) is local+strided
# during MST's ultra-sparsification phase.
#
# **What we ran.** Experiment `hsa` (`mstlib.experiments.attention_runs`): full MST with dense attention
# throughout, with each of the four patterns during the ultra phase (one of them is full MST), with the
# default pattern for the whole run, and with the default pattern on only the first half of the layers.
# The sparsity schedule and topology evolution are full MST's in every variant. Each variant is compared
# with full MST by final validation loss, as a difference with a 95% interval paired by seed; "attention
# density" is the share of causal query-key pairs the pattern keeps at the preset's context length.

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
seeds, variants = notebook.ablation_variants("hsa", preset, seeds, device, results_dir, evaluate)

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

from mstlib import pipeline, plots, tables, verdicts
from mstlib.attention import pattern_density

notebook.start_page(preset, seeds)

# %% tags=["remove-input"]
# The runs of experiment "hsa"; full MST (its own pattern in the ultra phase) is shared with the main table.
ablation = notebook.collect_ablation("hsa", variants, preset, device, results_dir, evaluate)
results, logs, ORDER, mst = ablation.results, ablation.logs, ablation.order, ablation.mst
mst_ids = {presets.make(preset, "mst", seed=s).run_id() for s in seeds}
FULL = results.loc[results["run_id"].isin(mst_ids), "variant"].iloc[0]  # the variant that is full MST
DENSE_ATTN = "dense attention"


def describe(run) -> dict:
    a, T = run.attention, run.model.block_size
    return {
        "pattern": a.pattern,
        "when": "-" if a.pattern == "dense" else (
            f"{a.start:.2f}-{a.end:.2f} of training" if a.when == "custom" else a.when),
        "layers": "-" if a.pattern == "dense" else ("all" if not a.layers else ",".join(map(str, a.layers))),
        "attention density": pattern_density(a.pattern, T, a.window, a.stride),
    }


described = {v.variant: describe(v.run) for v in variants}

# %% [markdown]
# ## The table
#
# "Δ val loss" is the variant's final validation loss minus full MST's (positive: the variant is worse),
# with its 95% interval paired by seed. "FLOPs / dense" is the run's training FLOPs over the dense
# model's, so the attention patterns' savings show up there; "val loss" is the mean ± 95% t half-width
# over seeds. The paper's numbers for this ablation are not available.

# %% tags=["hide-input"]
METRICS = ["metrics.final_val_loss", "metrics.flops_ratio_to_dense"]
summary = pipeline.summary(results, METRICS, by="variant").set_index("variant").loc[ORDER]
delta = verdicts.differences(results, "metrics.final_val_loss", FULL).set_index("variant").loc[ORDER]
table = pd.DataFrame([described[v] for v in ORDER], index=ORDER)
table["attention density"] = table["attention density"].map("{:.3f}".format)
table["seeds"] = summary["n"]
table["val loss"] = [tables.mean_pm(m, (hi - lo) / 2) for m, lo, hi in zip(
        summary["metrics.final_val_loss"], summary["metrics.final_val_loss_lo"], summary["metrics.final_val_loss_hi"])]
table["Δ val loss vs full MST [95% CI]"] = delta["text"]
table["FLOPs / dense"] = summary["metrics.flops_ratio_to_dense"].map("{:.4f}".format)
table.index = [f"{v} (full MST)" if v == FULL else v for v in table.index]
tables.style(table)  # a Styler shows every description in full (a DataFrame cuts them at 50 characters)

# %% tags=["remove-input"]
# Numbers for the prose.
glue("full", FULL, display=False)
glue("pattern", mst.attention.pattern, display=False)
glue("window", mst.attention.window, display=False)
glue("rho", pattern_density(mst.attention.pattern, mst.model.block_size, mst.attention.window,
                            mst.attention.stride), display=False)
glue("T", mst.model.block_size, display=False)
glue("val_full", float(summary.loc[FULL, "metrics.final_val_loss"]), display=False)
glue("ratio_full", float(summary.loc[FULL, "metrics.flops_ratio_to_dense"]), display=False)
glue("ratio_dense_attn", float(summary.loc[DENSE_ATTN, "metrics.flops_ratio_to_dense"]), display=False)
glue("d_dense_attn", float(delta.loc[DENSE_ATTN, "difference"]), display=False)
glue("d_dense_attn_ci", delta.loc[DENSE_ATTN, "text"].split(" ", 1)[1] if DENSE_ATTN != FULL else "",
     display=False)

# %% [markdown]
# Full MST uses the {glue:text}`pattern` pattern (window and stride {glue:text}`window` tokens) during
# the ultra-sparsification phase; at a context of {glue:text}`T` tokens it keeps {glue:text}`rho:.3f` of
# the causal query-key pairs. On the {glue:text}`preset` preset ({glue:text}`n_seeds` seed(s)) it trained
# with {glue:text}`ratio_full:.4f` of dense's FLOPs and reached a final validation loss of
# {glue:text}`val_full:.3f` nats. The same MST with dense attention throughout cost
# {glue:text}`ratio_dense_attn:.4f` of dense's FLOPs, and its validation loss minus full MST's was
# {glue:text}`d_dense_attn:+.4f` nats {glue:text}`d_dense_attn_ci` (positive: dense attention did worse).
# The verdict on "HSA helps" (with its rule) is on the "what reproduced" page.

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
plots.loss_curves(logs, y="val_loss", ax=axes[0], order=ORDER)
plots.density_curves(logs, attention=True, ax=axes[1], order=ORDER)
fig.tight_layout()

# %% tags=["hide-input"]
ax = plots.metric_bars(results, "metrics.final_val_loss", order=ORDER, highlight=FULL, style="point",
                       title="final validation loss by attention variant (mean, 95% CI over seeds)")

# %% [markdown]
# ## Caveats
#
# - HSA's FLOP saving is bounded by attention's share of the FLOPs (the `12 L d T` term of nanoGPT's count,
#   about an eighth of the total for GPT-2 small at 1,024 tokens) and by the part of the run it is on for;
#   most of MST's 4x comes from the weight sparsity (see the FLOP chapter for the exact split).
# - The saving is counted, not timed: split into a band and a strided part (`cudnn_split`, `flash_split`)
#   the sparse pattern runs as fast as dense attention at 1,024 tokens and faster at long contexts; with the
#   official masked SDPA it runs slower (see the training-speed chapter).
# - The logged attention density (right panel) is the share of causal pairs kept, averaged over all
#   layers (a layer without the pattern counts as 1), as `mstlib.train` logs it.
