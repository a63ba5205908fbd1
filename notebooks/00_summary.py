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
# # Mixed Sparsity Training, reproduced
#
# This book reproduces *Mixed Sparsity Training: Achieving 4x FLOP Reduction for Transformer Pretraining*
# (Pihe Hu, Shaolong Li, Xun Wang, Longbo Huang; TMLR 2025,
# [arXiv:2408.11746](https://arxiv.org/abs/2408.11746)). The paper claims that pretraining GPT-2 with
# *Mixed Sparsity Training* (MST) cuts about 75% of the training FLOPs without losing quality. MST combines
# dynamic sparse training (most weights are zero, and which ones changes), sparsity variation (dense, then
# very sparse, then connections come back) and hybrid sparse attention (a sparse attention pattern during
# the sparse phase). Every number in this book is computed by its notebooks from stored runs; none is typed
# by hand, and the paper's own table values are not available to us, so none of them appears.

# %% tags=["parameters", "hide-cell"]
preset = "smoke"  # "smoke" (CPU, meaningless numbers), "mini" (the book's GPU scale) or "paper"
seeds = [0]  # seeds of the main table; from the command line: papermill ... -y "seeds: [0, 1, 2]"
ablation_seeds = None  # seeds of the ablations; None: the same as seeds
device = "auto"  # where missing smoke runs are trained: "auto", "cpu", "cuda" or "cuda:N"
results_dir = "results"  # the run store to read (and, for smoke, write)

# %% tags=["remove-input"]
# Check the parameters first, so a typo stops here with a message that says what to use.
from mstlib import claims, notebook

notebook.check_parameter_names()
seeds = notebook.check_parameters(preset, seeds, device, results_dir)
ablation_seeds = seeds if ablation_seeds is None else notebook.check_seeds(ablation_seeds, "ablation_seeds")

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from myst_nb import glue

from mstlib import fair_test, plots

notebook.start_page(preset, seeds, note=(
    "> **Smoke preset: this page means nothing.** It was executed with the `smoke` preset (tiny models, a "
    "few CPU steps) to check the pipeline. The published book uses the `mini` preset on a GPU."))
book = claims.evaluate(preset, seeds, ablation_seeds, results_dir=results_dir, device=device)

# %% [markdown]
# ## The bottom line
#
# The paper's claims and our two questions about them, with our verdicts (the same function computes them
# as the {doc}`verdict chapter <10_what_reproduced>`, which shows every comparison, interval and rule):

# %% tags=["hide-input"]
COLOURS = {"reproduced": "background-color: #d9f2d9", "not reproduced": "background-color: #f7d4d4",
           "inconclusive": "background-color: #f3ecc8"}
book.table().style.map(lambda v: COLOURS.get(v, ""), subset=["verdict"]).set_properties(**{"text-align": "left"})

# %% [markdown]
# ## The scale, in numbers
#
# What was trained, and how far it is from the paper's run ("wall hours": the runs' wall time together;
# several runs shared one GPU at a time; "devices": the GPUs their provenance names). Of the paper's run
# only the configuration is known: its seeds, time and GPUs are not available to us ("–").

# %% tags=["hide-input"]
claims.scale_table(book, preset)

# %% [markdown]
# ## The headline figure: the iso-FLOP frontier
#
# Final validation loss against exact training FLOPs in the fair test ({doc}`its chapter <12_fair_test>`):
# the black line joins dense runs of every length, the marks are MST, RigL and Tiny at a quarter of dense's
# FLOPs. Below the line trains better per FLOP than dense; above it, worse.

# %% tags=["hide-input"]
points = fair_test.frontier_points(book.fair)
if points.empty:
    display(Markdown("No rung of the fair test is stored yet."))
else:
    plots.frontier(points)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## How to read this book
#
# - {doc}`../book/reproduce` says how to build this book, run its tests and re-run its experiments (CPU,
#   GPU, JupyterLab); {doc}`01_data` where every token of training and evaluation data comes from.
# - **The model and its cost.** {doc}`00_census` counts the parameters of the model the paper trains and
#   which of them MST makes sparse; {doc}`02_flops` integrates the training FLOPs of every method over its
#   schedule and shows where the 4x comes from; {doc}`08_hyperparameters` renders the paper's Tables 4-8
#   from the config objects that the runs used.
# - **The paper's tables.** {doc}`03_main_results` (Table 3: zero-shot LAMBADA, PTB, WikiText-2,
#   WikiText-103, 1BW and FLOPs for Dense, MST, RigL, SS and Tiny) and {doc}`04_fewshot_glue` (few-shot RTE
#   and MRPC), every number a mean over seeds with a 95% interval.
# - **Testing the claim at scale.** {doc}`12_fair_test`: MST given its best schedule in a declared search,
#   against dense on an iso-FLOP frontier and on a ladder of token budgets and two model sizes.
# - **Ablations.** {doc}`05_ablation_sparsity_variation`, {doc}`06_ablation_topology` and
#   {doc}`07_ablation_attention` change one part of MST at a time.
# - **Speed, deviations and verdicts.** {doc}`09_training_speed` measures what the FLOP savings are worth
#   on an H200; {doc}`11_deviations` lists where we and the official code differ from the paper and what that
#   changes; {doc}`10_what_reproduced` gives every verdict with its evidence.
#
# ## What we have and what we do not
#
# We reproduce from the paper's public abstract, its tables' structure and the authors' official code
# ([hupihe/Mixed-Sparsity-Training](https://github.com/hupihe/Mixed-Sparsity-Training), a fork of nanoGPT).
# Where the paper's exact values (phase lengths, peak sparsity, attention pattern) are unknown to us, the book
# says so and uses documented defaults that you can change in one place, `mstlib.config`; the fair test
# searches over several of them instead of trusting one.
