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
# # Training speed: FLOPs saved are not time saved
#
# **The question.** The FLOP chapter counts a 4x reduction. Every sparse-training library, the official MST
# code included, simulates sparsity with masks over dense weights: the masked weights are still multiplied,
# so the counted savings need not reach the clock. The official hybrid sparse attention passes its pattern
# to PyTorch's attention as a dense boolean mask, which computes every score. The paper reports no training
# times; its numbers here are not available.
#
# **What we measure.** `python -m mstlib bench` times one optimizer step (forward, backward, clipping, AdamW)
# of each variant in the same process on one H200, with the same model, context and tokens per step:
# dense; MST in each phase (masks at the phase's mid-point density, the topology update amortised over its
# interval; the ultra phase with hybrid sparse attention); and dense weights with the sparse attention
# pattern alone. "Speed vs dense" is dense's time per step over the variant's, the median of ratios paired
# within interleaved rounds: above 1 is faster. Every table reads the files that
# `results/bench/manifest.json` marks current and names the call that wrote them; the
# [appendix](../book/speed_archive.md) lists every call of the speed work and its files. With the `smoke`
# preset this page times a toy model on the spot instead, which checks the pipeline and says nothing about
# GPU speed.

# %% tags=["parameters", "hide-cell"]
preset = "smoke"  # "smoke": measure a toy model here and now; "mini"/"paper": read the stored GPU benchmark
seeds = [0]  # timing does not depend on the seed; kept so every notebook takes the same parameters
device = "auto"  # where the smoke benchmark runs ("auto", "cpu", "cuda")
results_dir = "results"  # stored benchmark files are found through <results_dir>/bench/manifest.json
# the smoke benchmark (ignored for the GPU presets): variants, timed steps and untimed warm-up steps
bench_variants = ["dense", "mst_warmup", "mst_ultra", "mst_restoration", "hsa_sdpa:local_strided",
                  "hsa_split:local_strided", "hsa_flash:local_strided", "hsa_flex:local_strided"]
repeats = 3
warmup = 1

# %% tags=["remove-input"]
# Check the parameters first, so a typo stops here with a message that says what to use.
from pathlib import Path

from mstlib import benchmark, notebook, presets
from mstlib.errors import ConfigError, MstError

notebook.check_parameter_names()
seeds = notebook.check_parameters(preset, seeds, device, results_dir)
if not isinstance(bench_variants, (list, tuple)):
    raise ConfigError(f"bench_variants={bench_variants!r} must be a list of variant names, e.g. ['dense', 'mst_ultra']")
bad = [v for v in bench_variants if v not in benchmark.VARIANTS]
if bad or "dense" not in bench_variants:
    raise ConfigError(
        f"bench_variants: {bad or bench_variants} invalid; every entry must be one of "
        f"{list(benchmark.VARIANTS)} and 'dense' must be included (it is the reference of every ratio)"
    )
if not (isinstance(repeats, int) and repeats >= 1 and isinstance(warmup, int) and warmup >= 0):
    raise ConfigError(f"repeats={repeats!r} must be an integer >= 1 and warmup={warmup!r} an integer >= 0")
from mstlib.results import resolve_root

bench_dir = resolve_root(results_dir) / "bench"

# %% tags=["remove-input"]
import json

import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from mstlib import benchstore, tables
from mstlib.train import SPEED_WARMUP_WINDOWS

notebook.start_page(preset, seeds)
gpu = preset != "smoke"
NAMES = {"dense": "dense", "mst_warmup": "MST, warm-up", "mst_restoration": "MST, restoration",
         "mst_ultra": "MST, ultra (+ HSA)", "mst_ultra_flash": "MST, ultra (+ HSA, flash_split)",
         "hsa_cudnn:local_strided": "HSA alone (cudnn_split)", "hsa_flash:local_strided": "HSA alone (flash_split)",
         "hsa_sdpa:local_strided": "HSA as masked SDPA (official)", "hsa_flex:local": "band alone (FlexAttention)",
         "hsa_flash:local": "band alone (flash_split)"}
# every number the prose glues from the GPU files; the smoke preset has none of them
GPU_GLUES = ("dense_tflops", "ultra_density", "ultra_saved", "hsa_saved", "contexts", "run_steps", "mini_graphs",
             "runs_ultra", "runs_other", "masks_span", "sdpa_text", "eager_4096", "bs_best", "bs_best_kernel",
             "attn_share", "layer_4096", "zero_weights")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def saved(flops: float, time: float, model: str) -> str:
    """Counted FLOPs and time saved, as a reader says it (a negative saving is a longer step)."""
    return (f"{pct(flops)} of the counted FLOPs and {'took' if time < 0 else 'saved'} {pct(abs(time))} "
            f"{'more' if time < 0 else 'of the'} time on the {model} model")


def caption(records: list) -> None:
    display(Markdown("Stored in " + "; ".join(f"`{benchstore.describe(r)}`" for r in records) + "."))


if not gpu:  # a toy benchmark on this machine: the pipeline, not GPU speed
    smoke_context = presets.make("smoke", "dense").model.block_size
    toy = pd.DataFrame(benchmark.run_benchmark(["smoke"], [smoke_context], bench_variants, device=device,
                                               repeats=repeats, warmup=warmup, tokens_per_step=2 * smoke_context,
                                               progress=False))
    display(tables.style(toy.set_index("variant")[["ms_per_step_median", "ratio_to_dense"]]
                         .rename(columns={"ms_per_step_median": "ms per step", "ratio_to_dense": "speed vs dense"})))
    for key in GPU_GLUES:
        glue(key, "not measured here (smoke preset)", display=False)

# %% [markdown]
# ## What a FLOP saved is worth on an H200
#
# Compiled as the presets train it, the dense step runs at {glue:text}`dense_tflops` of counted FLOPs. If
# time followed the FLOP count, every variant below would save the time share it saves in FLOPs. MST's
# ultra phase (a weight density of {glue:text}`ultra_density` in the sparse set, hybrid sparse attention
# on) saves {glue:text}`ultra_saved`.
# Hybrid sparse attention alone saves {glue:text}`hsa_saved`. "Compiled" is `torch.compile` as the presets
# train (`train.compile=true`), "CUDA graphs" the same replayed as graphs (`"reduce-overhead"`); time saved
# is against dense compiled as the presets train it.

# %% tags=["hide-input"]
if gpu:
    compiled = [f for f in benchstore.files(results_dir, kind="step times") if f["compile"] != ["eager"]]
    comp = benchstore.step_rows(compiled).assign(mode=lambda d: d["compile_mode"].map(
        {"default": "compiled", "reduce-overhead": "CUDA graphs"}))
    dense = comp[(comp["variant"] == "dense") & (comp["mode"] == "compiled")].set_index("model")
    comp["FLOPs / dense"] = comp["flops_per_step"] / comp["model"].map(dense["flops_per_step"])
    # against dense as the presets train it (the call's first mode), paired per round
    comp["vs dense"] = comp["ratio_to_first_mode_dense"]
    comp["name"] = comp["variant"].map(NAMES)
    worth = comp[comp["variant"] != "dense"].pivot_table(index=["model", "name"], columns="mode", values="vs dense")
    flops = comp[comp["variant"] != "dense"].groupby(["model", "name"])["FLOPs / dense"].first()
    worth = pd.DataFrame({"counted FLOPs saved": 1 - flops, "time saved, compiled": 1 - 1 / worth["compiled"],
                          "time saved, CUDA graphs": 1 - 1 / worth["CUDA graphs"]})
    display(tables.style(worth, formats={c: pct for c in worth.columns}))
    glue("dense_tflops", "; ".join(f"{tables.number(r.tflops_achieved, 3)} TFLOP/s on the {m} model "
                                   f"({tables.number(r.flops_per_step / 1e12, 3)} TFLOP in "
                                   f"{tables.number(r.ms_per_step_median, 3)} ms)" for m, r in dense.iterrows()),
         display=False)
    for key, variant in (("ultra_saved", NAMES["mst_ultra"]), ("hsa_saved", NAMES["hsa_cudnn:local_strided"])):
        glue(key, "; ".join(saved(w["counted FLOPs saved"], w["time saved, compiled"], m)
                            for (m, v), w in worth.iterrows() if v == variant), display=False)
    glue("ultra_density", ", ".join(sorted({tables.number(d, 3) for d in comp.loc[comp["variant"] == "mst_ultra",
                                                                                   "density"]})), display=False)
    glue("contexts", " and ".join(str(c) for c in sorted(set(comp["context"]))), display=False)

# %% tags=["hide-input"]
# Time saved against counted FLOPs saved, one point per variant, model and compile mode: on the diagonal a
# FLOP saved is a FLOP's worth of time; below it, the saving does not reach the clock.
import matplotlib.pyplot as plt

if gpu:
    points = worth.reset_index().melt(id_vars=["model", "name", "counted FLOPs saved"],
                                      value_vars=["time saved, compiled", "time saved, CUDA graphs"],
                                      var_name="mode", value_name="time saved")
    points["label"] = points["model"] + ", " + points["mode"].str.removeprefix("time saved, ")
else:
    d = toy.set_index("variant")
    points = pd.DataFrame({"name": [NAMES.get(v, v) for v in d.index], "label": "smoke, this machine",
                           "counted FLOPs saved": 1 - d["flops_per_step"] / d.loc["dense", "flops_per_step"],
                           "time saved": 1 - 1 / d["ratio_to_dense"]}).query("name != 'dense'")
fig, ax = plt.subplots(figsize=(7.2, 4.6))
for label, g in points.groupby("label", sort=False):
    ax.scatter(100 * g["counted FLOPs saved"], 100 * g["time saved"], s=45, label=label)
top = 100 * max(points["counted FLOPs saved"].max(), points["time saved"].max(), 0.05)
ax.plot([0, top], [0, top], ls=":", color="black", lw=1, label="time saved = FLOPs saved")
ax.axhline(0, color="grey", lw=0.8)
ax.set_xlabel("counted FLOPs saved against dense (%)")
ax.set_ylabel("step time saved against dense (%)")
ax.set_title("What a FLOP saved is worth")
ax.legend(fontsize="small", loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Every variant against dense, in both compile modes
#
# The headline: time per step at context {glue:text}`contexts`, each variant against dense as the presets
# train it. "GPU
# busy" is the profiler's kernel time over the step's time: near 1 the GPU is the bound (the profiler's own
# cost puts it a little above 1 on GPU-bound steps), lower it waited for the host.

# %% tags=["hide-input"]
if gpu:
    head = comp.assign(**{"ms per step": comp["ms_per_step_median"], "GPU busy": comp["gpu_busy"]}).pivot_table(
        index=["model", "name"], columns="mode", values=["ms per step", "vs dense", "GPU busy"], sort=False)
    head = head.swaplevel(axis=1)[[(m, c) for m in ("compiled", "CUDA graphs") for c in ("ms per step", "vs dense", "GPU busy")]]
    head.columns.names, head.index.names = [None, None], ["model", "variant"]
    order = [NAMES[v] for v in ("dense", "mst_ultra", "hsa_cudnn:local_strided")]
    display(tables.style(head.reindex(sorted(head.index, key=lambda k: (k[0], order.index(k[1])))), digits=3))
    caption(compiled)
    g = comp[(comp["model"] == "mini") & (comp["mode"] == "CUDA graphs") & (comp["variant"] != "dense")]
    glue("mini_graphs", ", ".join(f"{r['name']} {tables.number(r['vs dense'], 3)}" for _, r in g.iterrows()),
         display=False)

# %% [markdown]
# On the `mini` model the hybrid attention's split backends leave the GPU idle between launches (GPU busy
# below dense's) when compiled as the presets train; CUDA graphs close those gaps, and against dense as the
# presets run it the variants then ran at {glue:text}`mini_graphs`. On the `paper` model the host work
# hides behind longer kernels in either mode. Whole `mini` training runs (`mstlib.train`,
# {glue:text}`run_steps` steps of random tokens with MST's phases compressed into them, one run per mode;
# tokens/s is the median over log
# windows after compilation) say what training gets: the ultra phase ran at {glue:text}`runs_ultra` of
# dense's speed, MST's other phases at {glue:text}`runs_other`.

# %% tags=["hide-input"]
if gpu:
    run_files = benchstore.files(results_dir, kind="whole runs, both compile modes")
    run_dir = next(Path(f["full_path"]) for f in run_files if Path(f["full_path"]).is_dir())
    PHASES = {"warmup": "warm-up", "ultra": "ultra (+ HSA)"}
    phases = []
    for d in sorted(run_dir.iterdir()):
        cfg, log = json.loads((d / "config.json").read_text()), pd.read_csv(d / "log.csv")
        window = (log["tokens_per_s"] != log["tokens_per_s"].shift()).cumsum()  # one value per log window
        w = log.assign(window=window).groupby("window").agg(phase=("phase", "last"), tok=("tokens_per_s", "first"))
        mode = "CUDA graphs" if cfg["train"]["compile"] == "reduce-overhead" else "compiled"
        for ph, g in w.iloc[SPEED_WARMUP_WINDOWS:].groupby("phase", sort=False):
            phases.append({"run": f"MST, {PHASES.get(ph, ph)}" if cfg["method"] == "mst" else cfg["method"],
                           "mode": mode, "tokens/s": g["tok"].median()})
    phases = pd.DataFrame(phases)
    ref = phases.query("run == 'dense' and mode == 'compiled'")["tokens/s"].iloc[0]
    phases["vs dense"] = phases["tokens/s"] / ref
    runs = phases.pivot_table(index="run", columns="mode", values=["tokens/s", "vs dense"], sort=False).swaplevel(axis=1)
    runs.columns.names, runs.index.name = [None, None], None
    display(tables.style(runs[[(m, c) for m in ("compiled", "CUDA graphs") for c in ("tokens/s", "vs dense")]], digits=3))
    caption(run_files[:1])
    ultra_run = "MST, " + PHASES["ultra"]
    ultra = phases[phases["run"] == ultra_run].set_index("mode")["vs dense"]
    glue("runs_ultra", ", ".join(f"{tables.number(v, 3)} ({m})" for m, v in ultra.items()), display=False)
    glue("run_steps", str(benchstore.read(run_files[0])["steps"]), display=False)
    other = phases[phases["run"].str.startswith("MST") & (phases["run"] != ultra_run)]["vs dense"]
    glue("runs_other", f"{tables.number(other.min(), 3)} to {tables.number(other.max(), 3)}", display=False)

# %% [markdown]
# ### More variants, eager, at two contexts
#
# The compiled calls time few variants (each compiles its own graphs). The eager step table, from calls
# on older code (named below), has MST's masks-only phases, both split backends and the official masked
# SDPA, at two contexts. Masks-only phases ran at {glue:text}`masks_span` of
# dense speed: masking gradients and the amortised topology update cost at most a few percent, and the
# FLOPs they count as saved are not saved. The official way, the pattern as a dense boolean mask passed to
# SDPA, ran at {glue:text}`sdpa_text`: a mask disables the fused causal kernels and still computes every
# score. At the longer context, where attention is a larger share of the step, the split backends beat dense:
# {glue:text}`eager_4096`.

# %% tags=["hide-input"]
if gpu:
    eager_files = [f for f in benchstore.files(results_dir, kind="step times") if f["compile"] == ["eager"]]
    eager = benchstore.step_rows(eager_files)
    eager = eager[eager["variant"].isin(NAMES) & eager["error"].isna() if "error" in eager else eager["variant"].isin(NAMES)]
    # where two current files timed the same variant, the later call's row (files come oldest call first)
    eager = eager.drop_duplicates(["model", "context", "variant"], keep="last")
    eager["setting"] = eager["model"] + " " + eager["context"].astype(str)
    eager_table = eager[eager["variant"] != "dense"].pivot_table(index="variant", columns="setting",
                                                                  values="ratio_to_dense", sort=False)
    eager_table = eager_table.loc[[v for v in NAMES if v in eager_table.index]]
    eager_table.index, eager_table.columns.name = eager_table.index.map(NAMES), None
    display(tables.style(eager_table, digits=3))
    caption(eager_files)
    masks = eager[eager["variant"].isin(["mst_warmup", "mst_restoration"])]["ratio_to_dense"]
    glue("masks_span", f"{tables.number(masks.min(), 3)} to {tables.number(masks.max(), 3)}", display=False)
    sdpa = eager[eager["variant"] == "hsa_sdpa:local_strided"]
    glue("sdpa_text", ", ".join(f"{tables.number(r.ratio_to_dense, 3)} ({r.setting})" for r in sdpa.itertuples()),
         display=False)
    at4k = eager[(eager["context"] == eager["context"].max()) & (eager["model"] == "paper") & eager["variant"].isin(
        ["hsa_cudnn:local_strided", "mst_ultra"])]
    glue("eager_4096", ", ".join(f"{NAMES[r.variant]} {tables.number(r.ratio_to_dense, 3)} against "
                                 f"{tables.number(r.predicted_ratio, 3)} if the skipped attention tiles were free "
                                 f"(paper model)" for r in at4k.itertuples()), display=False)

# %% [markdown]
# ## Block-sparse weights: a saving that reaches the clock
#
# Masks save nothing, so we tried the structure that can: block sparsity, where a weight keeps whole square
# tiles and only those are stored and multiplied (`mstlib.experimental.blocksparse`: the forward,
# the input gradient and the tile gradients all skip the missing tiles). `benchmarks/block_sparse.py` times
# forward plus backward of one GPT-2 small matrix against the dense product: PyTorch's block-sparse kernels
# (`triton_bsr`), ours (`triton`), and the dense product of a masked weight (`dense_masked`, what MST
# does). The table gives the best speed over the block sizes against the FLOP count's promise. Our kernels
# beat dense only on the MLP matrices at the lowest density: by event time {glue:text}`bs_best`, by kernel
# time {glue:text}`bs_best_kernel`. None of this is in MST's training: it would need a topology that
# prunes and regrows whole tiles, and the paper's MST prunes single weights.

# %% tags=["hide-input"]
if gpu:
    bs_file = benchstore.files(results_dir, kind="block-sparse matrix products")
    bs = pd.DataFrame(benchstore.read(bs_file[0])["summary"])
    bs = bs[bs["tokens"] == bs["tokens"].max()].assign(density=lambda d: d["density"].map("{:g}".format))
    by = {}
    for col, label in (("ratio_to_dense", "event time"), ("kernel_ratio_to_dense", "kernel time")):
        t = bs.pivot_table(index=["name", "density"], columns="backend", values=col, sort=False)
        t["FLOP-count promise"] = bs.groupby(["name", "density"], sort=False)["predicted_ratio"].max()
        t.columns.name = None
        by[label] = t
    display(Markdown(f"Speed vs dense `F.linear` by event time (above 1 is faster), {int(bs['tokens'].max()):,} "
                     "tokens, bf16:"))
    display(tables.style(by["event time"], digits=3))
    caption(bs_file)

    def best(col: str) -> str:
        b = bs[bs["backend"] == "triton"].sort_values(col).iloc[-1]
        return (f"{tables.number(b[col], 3)}x ({b['name']} at density {b['density']}, against the FLOP count's "
                f"{tables.number(b['predicted_ratio'], 3)}x)")

    glue("bs_best", best("ratio_to_dense"), display=False)
    glue("bs_best_kernel", best("kernel_ratio_to_dense"), display=False)

# %% tags=["hide-input", "hide-output"]
if gpu:  # the same products by the profiler's kernel time (what the GPU spends, the host left out)
    display(tables.style(by["kernel time"], digits=3))

# %% [markdown]
# ## What would make sparsity pay
#
# * **Structure the kernels can skip.** Masked weights multiply zeros at full price; our kernels skip
#   whole tiles (block sparsity, above), and that pays only where the matrices are large and sparse
#   enough. MST's unstructured masks would have to become block masks.
# * **Longer contexts, for the attention pattern.** Attention is {glue:text}`attn_share` of the dense step's
#   FLOPs, so at the shorter context even free sparse attention saves little; one attention layer through
#   `cudnn_split` costs about dense's kernel time there and much less at the longer one (table: dense's
#   kernel time over the variant's, forward and backward): {glue:text}`layer_4096`.
# * **Zero operands help a little, for free.** The same matrix-product kernels (cuBLAS's `nvjet`) ran
#   faster on MST's masked weights than on dense ones, compiled: {glue:text}`zero_weights`. That fits the
#   data-dependent power of a GPU held at its power limit; we did not measure clocks or power, so it is an
#   explanation, not a measurement.

# %% tags=["hide-input"]
if gpu:
    attn_file = benchstore.files(results_dir, kind="attention layer")
    layer = pd.DataFrame(benchstore.read(attn_file[0])["rows"])
    layer = layer[layer["error"].isna()] if "error" in layer else layer
    dense_k = layer[layer["variant"] == "dense"].set_index(["model", "context"])["gpu_ms"]
    layer["kernel speed vs dense"] = [dense_k[(r.model, r.context)] / r.gpu_ms for r in layer.itertuples()]
    layer["setting"] = layer["model"] + " " + layer["context"].astype(str)
    lt = layer[layer["variant"] != "dense"].pivot_table(index="variant", columns="setting",
                                                         values="kernel speed vs dense", sort=False)
    lt.columns.name = None
    display(tables.style(lt, digits=3))
    caption(attn_file)
    share = eager[eager["variant"] == "dense"].set_index("setting")["attn_share_flops"]
    glue("attn_share", ", ".join(f"{pct(v)} ({k})" for k, v in share.items()), display=False)
    ls = lt.loc["cudnn_split:local_strided"]
    glue("layer_4096", ", ".join(f"{tables.number(v, 3)}x ({k})" for k, v in ls.items()), display=False)

    def matmul_ms(kernels) -> float:
        return sum(k["ms"] for k in kernels if k["name"].startswith("nvjet"))

    zw = []
    for (m, mode), g in comp.groupby(["model", "mode"]):
        g = g.set_index("variant")
        d, u = matmul_ms(g.loc["dense", "kernels"]), matmul_ms(g.loc["mst_ultra", "kernels"])
        zw.append(f"{tables.number(d, 3)} to {tables.number(u, 3)} ms ({u / d - 1:+.0%}, {m}, {mode})")
    glue("zero_weights", "; ".join(zw), display=False)

# %% [markdown]
# So the FLOP chapter's 4x is a statement about arithmetic, not about time: with masked dense weights MST
# cannot train faster than dense, and its attention pattern pays only where attention dominates the step.
#
# ## Caveats
#
# * Only ratios measured in the same call are compared; absolute times depend on the GPU, the PyTorch
#   version (each file records it) and the batch. Each table names the call and its code commit; the
#   eager tables come from calls on older code than the compiled ones.
# * The MST rows use the phase's mid-point density with a random mask; a real run's masks differ in where
#   the nonzeros are, which masked dense products do not care about.
# * The topology update's time is amortised over its interval; on update steps the official schedule also
#   skips the optimizer step, which a per-step median does not show.
# * The history of the speed work (each fix, the calls that exposed it, superseded measurements) is in the
#   [appendix](../book/speed_archive.md), generated from the manifest.
