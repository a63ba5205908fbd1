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
# # Few-shot GLUE: RTE and MRPC
#
# **What the paper claims.** Besides zero-shot language modelling, the paper evaluates its pretrained
# models few-shot, in the style of GPT-3, on two GLUE tasks: RTE (does the premise entail the hypothesis?)
# and MRPC (are two sentences paraphrases?). The claim is the same as for Table 3: MST keeps the dense
# model's quality while using about 4x fewer pretraining FLOPs. The paper's numbers, its number of
# demonstrations and its prompt templates are **not available** to us.
#
# **What we ran.** The same models as the main table (experiment `main`: Dense, MST, RigL, SS, Tiny, every
# seed), scored by `mstlib.evaluate.evaluate_fewshot`: `k` demonstrations drawn from the training split
# and the query, and the label word with the higher log-likelihood is the prediction (templates and the
# word choice in that module's docstring). Accuracy is on the GLUE dev split. Two kinds of interval:
# a **Wilson** 95% interval for each run (how precisely a fixed model's accuracy is known from a dev set of
# this size) and a **t** interval over seeds (how much pretraining randomness moves it). Two baselines:
# **chance** (1 / number of labels) and **majority** (always answer the most frequent training label,
# scored on the same dev examples). Small GPTs are often near these baselines on GLUE, so the
# comparison with them comes first.

# %% tags=["parameters", "hide-cell"]
preset = "smoke"  # "smoke" (CPU, meaningless numbers), "mini" (the book's GPU scale) or "paper"
seeds = [0]  # one run per seed and method; from the command line: papermill ... -y "seeds: [0, 1, 2]"
device = "auto"  # where missing runs are trained: "auto", "cpu", "cuda" or "cuda:N"
results_dir = "results"  # the run store to read (and, for smoke, write)
tasks = ["rte", "mrpc"]  # few-shot tasks to show (names of mstlib.evaluate.TASKS of kind "fewshot")

# %% tags=["remove-input"]
# Check the parameters first, so a typo stops here with a message that says what to use.
from mstlib import evaluate, experiments, notebook, presets
from mstlib.errors import ConfigError

notebook.check_parameter_names()
seeds = notebook.check_parameters(preset, seeds, device, results_dir)
FEWSHOT = [t for t, kind in evaluate.TASKS.items() if kind == "fewshot"]
if not isinstance(tasks, (list, tuple)) or not tasks or any(t not in FEWSHOT for t in tasks):
    raise ConfigError(f"tasks={tasks!r} must be a non-empty list drawn from {FEWSHOT}")
variants = experiments.variants_for("main", preset, list(seeds))  # ConfigError on a bad preset/seed

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

from mstlib import pipeline, plots, tables
from mstlib.stats import difference_ci

notebook.start_page(preset, seeds)

# %% tags=["remove-input"]
# The runs of experiment "main" (shared with the main-results chapter: trained once, read here).
results = pipeline.collect(variants, preset=preset, device=device, results_dir=results_dir)
NAMES = {"dense": "Dense", "mst": "MST", "rigl": "RigL", "ss": "SS", "tiny": "Tiny"}
results["variant"] = results["method"].map(NAMES)
ORDER = [NAMES[m] for m in experiments.MAIN_METHODS]
TASK_NAMES = {"rte": "RTE", "mrpc": "MRPC"}
missing = [f"eval.{t}.acc" for t in tasks if f"eval.{t}.acc" not in results.columns]
if missing:
    raise ConfigError(f"the stored runs have no {missing}: evaluate them with "
                      f"`python -m mstlib eval --tasks {','.join(tasks)}` on each run folder")

# %% [markdown]
# ## Every run, with its Wilson interval
#
# One row per run: per task the accuracy on the dev examples, the Wilson 95% interval from that run's
# correct/total, and whether the interval lies above the majority baseline.

# %% tags=["hide-input"]
rows = []
for _, r in results.iterrows():
    for t in tasks:
        lo, hi = r[f"eval.{t}.acc_ci95"]
        rows.append({
            "task": TASK_NAMES.get(t, t), "method": r["variant"], "seed": r["seed"],
            "k (mean used)": r[f"eval.{t}.mean_k_used"], "dev examples": int(r[f"eval.{t}.n"]),
            "accuracy": r[f"eval.{t}.acc"], "Wilson 95%": f"{lo:.3f}–{hi:.3f}",
            "majority": r[f"eval.{t}.majority_acc"], "chance": r[f"eval.{t}.chance_acc"],
            "above majority": "yes" if lo > r[f"eval.{t}.majority_acc"] else "no",
        })
per_run = pd.DataFrame(rows)
# what does not change from run to run is said once, above the table, instead of in a column per row
setup = per_run.groupby("task", sort=False)[["dev examples", "k (mean used)", "majority", "chance"]].agg(
    lambda c: ", ".join(sorted({tables.number(v, 3) for v in c})))
display(Markdown("; ".join(f"**{task}**: {r['dev examples']} dev examples, {r['k (mean used)']} demonstrations "
                           f"on average, majority baseline {r['majority']}, chance {r['chance']}"
                           for task, r in setup.iterrows())))
wide = per_run.pivot_table(index=["method", "seed"], columns="task", sort=False, aggfunc="first",
                           values=["accuracy", "Wilson 95%", "above majority"])
wide = wide.swaplevel(axis=1)[[(TASK_NAMES.get(t, t), c) for t in tasks
                               for c in ("accuracy", "Wilson 95%", "above majority")]].loc[ORDER]
above = int((per_run["above majority"] == "yes").sum())
# a metric at its floor says nothing about the methods: shown, but kept out of every verdict (claims.UNINFORMATIVE)
display(Markdown(
    f"**{above} of {len(per_run)} runs score above the majority baseline**: at this scale few-shot GLUE accuracy "
    "is at its floor, so these numbers are shown but uninformative, and no verdict of the book uses them."
    if above == 0 else
    f"{above} of {len(per_run)} runs score above the majority baseline; the verdicts of the book still do "
    "not use GLUE accuracy (it sits near the majority class at this scale)."))
tables.style(wide, digits=3)

# %% [markdown]
# ## The GLUE table: mean over seeds
#
# Accuracy per method and task at our scale, mean ± 95% t half-width over seeds (no ± where every seed
# scored the same); the baselines do not depend on the model. The paper's numbers are not available.

# %% tags=["hide-input"]
acc_cols = [f"eval.{t}.acc" for t in tasks]
summary = pipeline.summary(results, acc_cols, by="variant").set_index("variant").loc[ORDER]
ours = pd.DataFrame({TASK_NAMES.get(t, t): [tables.mean_pm(m, (hi - lo) / 2, digits=3) for m, lo, hi in zip(
    summary[c], summary[f"{c}_lo"], summary[f"{c}_hi"])] for t, c in zip(tasks, acc_cols)}, index=summary.index)
ours.insert(0, "seeds", summary["n"].astype(str))
baselines = pd.DataFrame({
    TASK_NAMES.get(t, t): [f"{results[f'eval.{t}.chance_acc'].iloc[0]:.3f}",
                           f"{results[f'eval.{t}.majority_acc'].iloc[0]:.3f}"] for t in tasks
}, index=["chance", "majority (training label)"])
baselines.insert(0, "seeds", "")
glue_table = pd.concat([ours, baselines])
glue_table.index.name = f"{preset} preset"
glue_table

# %% tags=["remove-input"]
# Numbers for the prose.
for t in tasks:
    glue(f"{t}_majority", float(results[f"eval.{t}.majority_acc"].iloc[0]), display=False)
    glue(f"{t}_n", int(results[f"eval.{t}.n"].iloc[0]), display=False)
    for m in experiments.MAIN_METHODS:
        glue(f"{t}_{m}", float(summary.loc[NAMES[m], f"eval.{t}.acc"]), display=False)
    d = difference_ci(results.loc[results["method"] == "mst", f"eval.{t}.acc"].astype(float).tolist(),
                      results.loc[results["method"] == "dense", f"eval.{t}.acc"].astype(float).tolist())
    glue(f"{t}_d", d.mean, display=False)
    glue(f"{t}_d_ci", f"[{d.lo:+.3f}, {d.hi:+.3f}]" if d.n >= 2 else "no interval with one seed",
         display=False)
    above = per_run[(per_run["task"] == TASK_NAMES.get(t, t)) & (per_run["above majority"] == "yes")]
    glue(f"{t}_n_above", len(above), display=False)
glue("n_runs", len(results), display=False)

# %% [markdown]
# With the {glue:text}`preset` preset and {glue:text}`n_seeds` seed(s) per method: on RTE
# ({glue:text}`rte_n` dev examples, majority baseline {glue:text}`rte_majority:.3f`), MST scored
# {glue:text}`rte_mst:.3f` and Dense {glue:text}`rte_dense:.3f` (MST minus Dense
# {glue:text}`rte_d:+.3f`, 95% interval {glue:text}`rte_d_ci`); on MRPC ({glue:text}`mrpc_n` dev examples,
# majority {glue:text}`mrpc_majority:.3f`), MST scored {glue:text}`mrpc_mst:.3f` and Dense
# {glue:text}`mrpc_dense:.3f` (difference {glue:text}`mrpc_d:+.3f`, 95% interval {glue:text}`mrpc_d_ci`).
# Of the {glue:text}`n_runs` runs, {glue:text}`rte_n_above` have a Wilson interval wholly above the
# majority baseline on RTE and {glue:text}`mrpc_n_above` on MRPC. A model that is not above the majority
# baseline has learned nothing usable about the task from the prompt, and differences between such
# models say nothing about pretraining quality.

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.2), squeeze=False)
for ax, t in zip(axes[0], tasks):
    refs = {"chance": float(results[f"eval.{t}.chance_acc"].iloc[0]),
            "majority": float(results[f"eval.{t}.majority_acc"].iloc[0])}
    plots.metric_bars(results, f"eval.{t}.acc", ax=ax, order=ORDER, references=refs, highlight="MST",
                      title=f"{TASK_NAMES.get(t, t)}: k-shot accuracy (mean, 95% CI over seeds)")
fig.tight_layout()

# %% [markdown]
# ## Caveats
#
# - The dev sets are small (RTE 277, MRPC 408 examples at full size), so the Wilson intervals of one run
#   are several points wide; differences of a point or two between methods are within that noise.
# - Few-shot accuracy depends strongly on the template, the label words and the demonstrations; ours are
#   GPT-3-like but not the paper's (unknown), and the demonstrations are drawn with a fixed seed, the
#   same for every model, so the comparison between methods is fair but the absolute level is ours.
# - MRPC is scored on GLUE's tokenized text (as the Hugging Face `glue/mrpc` dataset gives it).
