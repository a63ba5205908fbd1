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
# code included, simulates sparsity with masks over dense weights, so the masked weights are still
# multiplied and the counted savings never reach the clock. The official hybrid sparse attention passes its
# pattern to PyTorch's scaled-dot-product attention as a dense boolean mask, which makes attention *slower*
# than plain causal attention (the method notes report 1.9x slower on an H200). The paper reports no
# training times; its numbers here are not available to us.
#
# **What we measure.** `mstlib.benchmark.run_benchmark` times one optimizer step (forward, backward,
# gradient clipping, AdamW) of each variant in the same process, on the same device, with the same model,
# context and tokens per step, one after the other: dense; MST in each phase (masks at the phase's
# mid-point density, gradients masked before the step and weights after it, the topology update timed
# separately and amortised over its preset's interval; the ultra phase with hybrid sparse attention); and
# dense weights with a sparse attention pattern through one FlexAttention block mask (which skips the tiles
# the pattern leaves empty), through our *split* backend (the pattern cut into a FlexAttention band and a
# strided part regrouped so that its tiles are few too, merged exactly by log-sum-exp; see
# `mstlib.attention`), or through the official masked SDPA. Each time is the median over repeated steps
# after untimed warm-up steps. "Speed vs dense" is dense's time per step divided by the variant's: above 1
# is faster than dense.
#
# GPU numbers come from stored benchmark files (`results/bench/*.json`, written on the GPU by
# `python -m mstlib bench --out results/bench/<name>.json`); with the `smoke` preset this notebook runs a
# toy-sized benchmark on the spot instead, which checks the pipeline but says nothing about GPU speed.

# %% tags=["parameters"]
preset = "smoke"  # "smoke": measure a toy model here and now; "mini"/"paper": read the stored GPU benchmark
seeds = [0]  # timing does not depend on the seed; kept so every notebook takes the same parameters
device = "auto"  # where the smoke benchmark runs ("auto", "cpu", "cuda")
results_dir = "results"  # stored benchmark files are read from <results_dir>/bench/*.json
# the smoke benchmark (ignored for the GPU presets): variants, timed steps and untimed warm-up steps
bench_variants = ["dense", "mst_warmup", "mst_ultra", "mst_restoration", "hsa_sdpa:local_strided",
                  "hsa_split:local_strided", "hsa_flash:local_strided", "hsa_flex:local_strided"]
repeats = 3
warmup = 1

# %%
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

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from myst_nb import glue

sns.set_theme(style="whitegrid", context="notebook")

if preset == "smoke":
    # a toy benchmark on this machine: the smoke model at its context, a few sequences per step
    smoke_context = presets.make("smoke", "dense").model.block_size
    bench = pd.DataFrame(benchmark.run_benchmark(
        ["smoke"], [smoke_context], bench_variants, device=device, repeats=repeats, warmup=warmup,
        tokens_per_step=2 * smoke_context, progress=False,
    ))
    source = "measured in this notebook (smoke preset)"
    bench = bench.assign(file="this notebook")
    bench_all = bench.copy()
    compiled_all = bench.iloc[:0]
else:
    bench = benchmark.load_benchmarks(results_dir)
    if bench.empty:
        raise MstError(
            f"no stored benchmark in {bench_dir}/ (*.json). Run it on a GPU first: "
            f"python -m mstlib bench --models mini paper --contexts 1024 4096 --out {bench_dir}/h200.json "
            "(or run this notebook with preset='smoke' to measure a toy model here)"
        )
    # every ratio compares a variant with dense timed in the same process (ratio_to_dense is computed per
    # file); earlier files stay in results/bench for the record. Compiled calls (session 6 on) have their
    # own section below: the tables here are the eager model's.
    is_compiled = bench["compile"].fillna(False).astype(bool) if "compile" in bench else pd.Series(False, bench.index)
    compiled_all = bench[is_compiled].copy()
    bench = bench[~is_compiled]
    bench_all = bench.copy()
    # the latest call that timed each (device, model, context, variant); each ratio is to dense in that call
    latest = bench.groupby(["device_name", "model", "context", "variant"])["file"].transform("max")
    bench = bench[bench["file"] == latest]
    if "error" in bench:
        failed = bench[bench["error"].notna()]
        bench = bench[bench["error"].isna()]
        for r in failed.itertuples():
            print(f"not timed: {r.model} {r.context} {r.variant}: {r.error[:120]}")
    from mstlib.provenance import REPO_ROOT

    shown = bench_dir.resolve()
    shown = shown.relative_to(REPO_ROOT) if shown.is_relative_to(REPO_ROOT) else shown  # no machine paths in the book
    source = f"stored in {shown}/ ({', '.join(sorted(bench['file'].unique()))})"

required = {"model", "context", "variant", "ms_per_step_median", "ms_p10", "ms_p90", "tokens_per_s",
            "tflops_achieved", "ratio_to_dense", "predicted_ratio", "device_name"}
missing = required - set(bench.columns)
if missing:
    raise MstError(f"benchmark rows lack the columns {sorted(missing)}; re-run `python -m mstlib bench`")

# %%
VARIANT_NAMES = {
    "dense": "dense",
    "mst_warmup": "MST, warm-up phase",
    "mst_ultra": "MST, ultra phase (+ HSA, backend auto)",
    "mst_ultra_flash": "MST, ultra phase (+ HSA through flash_split)",
    "mst_ultra_cudnn": "MST, ultra phase (+ HSA through cudnn_split)",
    "mst_ultra_flex": "MST, ultra phase (+ HSA through FlexAttention)",
    "mst_restoration": "MST, restoration phase",
}


def variant_name(v: str) -> str:
    if v in VARIANT_NAMES:
        return VARIANT_NAMES[v]
    kind, _, pattern = v.partition(":")
    how = {"hsa_flex": "FlexAttention", "hsa_flash": "flash_split (Flash band + Triton far part)",
           "hsa_cudnn": "cudnn_split (cuDNN band + Triton far part)",
           "hsa_split": "split (Flex band + Flex far part)", "hsa_sdpa": "masked SDPA (official)"}
    return f"{pattern} attention, " + how.get(kind.split("@")[0], kind)


def attention_backend(r) -> str:
    """The attention backend a row ran: recorded since session 4's last call (``attn_backend``); before
    that, "auto" (``mst_ultra``) meant FlexAttention on the GPU."""
    recorded = getattr(r, "attn_backend", None)
    if isinstance(recorded, str):
        return recorded
    backend = benchmark.KIND_BACKENDS.get(str(r.variant).split(":")[0].split("@")[0])
    if backend == "auto":
        return "flex (auto at the time)" if r.device_name != "cpu" else "sdpa_mask (auto)"
    return backend or "dense causal (SDPA)"


bench = bench.assign(
    setting=lambda d: d["model"] + " model, context " + d["context"].astype(str),
    name=lambda d: d["variant"].map(variant_name),
)
bench["attention"] = [attention_backend(r) for r in bench.itertuples()]
# the prediction by today's rule, from each row's stored attention share and tile fraction (files written
# before session 4 predicted 1.0 for MST's ultra phase, whatever its attention pattern skipped, and counted
# FlexAttention's tiles for the masked SDPA way, which computes every score)
if "attn_block_density" in bench:
    bench["predicted_ratio"] = [
        benchmark.predicted_ratio(r.attn_share_flops, 1.0 if r.attention.startswith("sdpa") else r.attn_block_density)
        for r in bench.itertuples()]
bench["rounds"] = bench["rounds"].fillna(1).astype(int) if "rounds" in bench else 1
# the FLOPs the variant counts per step relative to dense: the speed-up the FLOP count would promise if
# sparsity were free (what the FLOP chapter's ratios mean for time)
dense_flops = bench[bench["variant"] == "dense"].set_index(["device_name", "model", "context"])["flops_per_step"]
bench["FLOP-count speed-up (ideal)"] = [
    dense_flops.get((r.device_name, r.model, r.context), np.nan) / r.flops_per_step for r in bench.itertuples()
]
order = [v for v in benchmark.VARIANTS if v in set(bench["variant"])]
bench["variant"] = pd.Categorical(bench["variant"], categories=order, ordered=True)
bench = bench.sort_values(["device_name", "model", "context", "variant"])

table = bench.assign(
    **{
        "weight density": bench["density"],
        "ms per step (median)": bench["ms_per_step_median"],
        "p10 – p90, steps without update (ms)": [f"{a:.2f} – {b:.2f}" for a, b in zip(bench["ms_p10"], bench["ms_p90"])],
        "topology update (ms, once per interval)": bench["update_ms"] if "update_ms" in bench else np.nan,
        "tokens / s": bench["tokens_per_s"],
        "TFLOP/s (counted FLOPs)": bench["tflops_achieved"],
        "speed vs dense (measured)": bench["ratio_to_dense"],
        "speed vs dense (predicted)": bench["predicted_ratio"],
        "attention backend": bench["attention"],
        "GPU busy": bench["gpu_busy"] if "gpu_busy" in bench else np.nan,
        "rounds": bench["rounds"],
        "call (file)": bench["file"].str.removesuffix(".json"),
    }
).set_index(["device_name", "setting", "name"])[[
    "weight density", "ms per step (median)", "p10 – p90, steps without update (ms)",
    "topology update (ms, once per interval)", "tokens / s", "TFLOP/s (counted FLOPs)",
    "speed vs dense (measured)", "speed vs dense (predicted)", "FLOP-count speed-up (ideal)",
    "attention backend", "GPU busy", "rounds", "call (file)",
]]
table.index.names = ["device", "model and context", "variant"]

devices = sorted(bench["device_name"].unique())
glue("bench_source", source, display=False)
glue("bench_devices", ", ".join(devices), display=False)
glue("bench_torch", ", ".join(sorted(str(t) for t in bench["torch"].dropna().unique())) if "torch" in bench else "unknown", display=False)
glue("bench_commit", ", ".join(sorted(str(c)[:10] for c in bench["git_commit"].dropna().unique())) if "git_commit" in bench else "unknown", display=False)

# %% [markdown]
# ## Measured against dense, same device, same call
#
# Benchmark rows {glue:text}`bench_source`, on {glue:text}`bench_devices` (torch
# {glue:text}`bench_torch`, code at commit {glue:text}`bench_commit`). Each row is the latest call that
# timed that variant, and its speed is relative to dense *timed in the same call* (the last column names the
# call; dense's own row is from the latest call, so absolute times of rows from different calls can differ by
# a few percent while their ratios stay comparable). Calls from session 4 on time the whole list of
# variants in several interleaved rounds (`python -m mstlib bench --rounds`, the order reversed every other
# round): the time is then the median over rounds, and the speed vs dense the median of the ratios *paired*
# within each round, so a drift of the GPU's clocks during the call weighs on every variant alike. The
# `mini` model's eager steps are short (about 33 ms), and its paired ratios still move by a few percent from
# round to round; the `paper` model's repeat within about 0.5%. The spread is the 10th to 90th
# percentile of the timed steps; the median of the MST rows includes the topology update's time divided by
# the update interval, the percentiles do not. "Predicted" is what `mstlib.benchmark.predicted_ratio`
# expects before measuring: masks over dense storage do the same dense products, so they save nothing
# (1.0), and a sparse attention pattern (alone, or in MST's ultra phase) saves the tiles its backend skips
# as if they cost nothing (the attention share of the step's FLOPs times the fraction of tiles skipped;
# masked SDPA skips none). The FLOP-count column is what the FLOP count would promise if every
# skipped FLOP were saved time. "GPU busy" (calls from session 6 on, `--profile`) is the profiler's kernel
# time of a step over its event time: near 1 the GPU is the bound, lower the GPU waited for the host.

# %%
table.style.format({
    "weight density": "{:.3f}",
    "ms per step (median)": "{:.2f}",
    "topology update (ms, once per interval)": "{:.1f}",
    "tokens / s": "{:,.0f}",
    "TFLOP/s (counted FLOPs)": "{:.3g}",
    "speed vs dense (measured)": "{:.3f}",
    "speed vs dense (predicted)": "{:.3f}",
    "FLOP-count speed-up (ideal)": "{:.2f}",
    "GPU busy": "{:.2f}",
})

# %%
plot = bench.melt(
    id_vars=["device_name", "setting", "variant", "name"],
    value_vars=["ratio_to_dense", "predicted_ratio"],
    var_name="kind", value_name="speed vs dense",
).replace({"kind": {"ratio_to_dense": "measured", "predicted_ratio": "predicted"}})
plot = plot[plot["variant"] != "dense"]
settings = list(dict.fromkeys(bench["device_name"] + " | " + bench["setting"]))
plot["panel"] = plot["device_name"] + " | " + plot["setting"]
n = len(settings)
ncols = min(2, n)
nrows = -(-n // ncols)
fig, axes = plt.subplots(
    nrows, ncols, figsize=(6.8 * ncols, (0.55 * len(order) + 1.3) * nrows), squeeze=False, sharey=True
)
for ax, panel in zip(axes.flat, settings):
    d = plot[plot["panel"] == panel]
    sns.barplot(data=d, y="name", x="speed vs dense", hue="kind", ax=ax,
                palette={"measured": "tab:blue", "predicted": "tab:gray"}, orient="h", legend=False)
    ax.axvline(1.0, color="black", lw=1)
    ax.set(title=panel, ylabel="", xlabel="speed vs dense (> 1 is faster)")
for ax in list(axes.flat)[n:]:
    ax.set_visible(False)
handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("tab:blue", "tab:gray")]
fig.legend(handles, ["measured", "predicted"], loc="upper center", ncol=2, frameon=False,
           bbox_to_anchor=(0.5, 1.0))
fig.suptitle("Time per step relative to dense (dense time / variant time)", y=1.04)
fig.tight_layout()
plt.show()

# %%
def ratio_text(variant: str, context: int | None = None) -> str:
    """Measured speed vs dense of ``variant`` (at ``context``, else in the largest setting it was
    measured in), as text."""
    d = bench[bench["variant"] == variant]
    if context is not None:
        d = d[d["context"] == context]
    if d.empty:
        return "not measured here"
    r = d.sort_values(["context", "flops_per_step"]).iloc[-1]
    return f"{r.ratio_to_dense:.2f}x dense speed ({r.model} model, context {r.context})"


def span(variants: list[str]) -> tuple[float, float]:
    d = bench[bench["variant"].isin(variants)]["ratio_to_dense"]
    return (float(d.min()), float(d.max())) if len(d) else (float("nan"), float("nan"))


lo, hi = span(["mst_warmup", "mst_restoration"])
if np.isnan(lo):
    mst_summary = "were not measured here"
elif hi > 1.05:
    # masks leave every product dense, so a clear speed-up over dense can only be timing noise
    mst_summary = (
        f"ran at {lo:.2f} to {hi:.2f} times dense speed in the warm-up and restoration phases. A ratio clearly "
        "above 1 cannot come from masks, which leave every product dense: these timings are dominated by noise "
        "on this device (with the smoke preset on a shared CPU they are), so they say nothing about speed"
    )
else:
    mst_summary = (
        f"ran at {lo:.3f} to {hi:.3f} times dense speed in the warm-up and restoration phases: an overhead of at "
        f"most {max(0.0, 100.0 * (1.0 / lo - 1.0)):.1f}% of a dense step for masking the gradients every step and "
        "the amortised topology update (the target of the training-speed issue is at most 3%)"
    )
glue("mst_summary", mst_summary, display=False)
# every stored call's ratio for the masks-only phases (the table above keeps the latest call per variant)
mst_calls = bench_all[bench_all["variant"].isin(["mst_warmup", "mst_restoration"])]
if "error" in mst_calls:
    mst_calls = mst_calls[mst_calls["error"].isna()]
glue("mst_calls_span", "; ".join(
    f"{m} {T}: {g['ratio_to_dense'].min():.3f} to {g['ratio_to_dense'].max():.3f} over {g['file'].nunique()} calls"
    for (m, T), g in mst_calls.groupby(["model", "context"])) or "not measured", display=False)


def best_of(prefix: str) -> str:
    d = bench[bench["variant"].astype(str).str.startswith(prefix)]
    if d.empty:
        return "not measured here (FlexAttention has no CPU backward)" if prefix == "hsa_flex" else "not measured here"
    r = d.loc[d["ratio_to_dense"].idxmax()]
    return f"{r.ratio_to_dense:.2f}x ({variant_name(str(r.variant))}, {r.setting})"


glue("flex_best", best_of("hsa_flex"), display=False)
glue("flash_best", best_of("hsa_flash"), display=False)
sdpa = bench[bench["variant"] == "hsa_sdpa:local_strided"]
sdpa_verdict = "" if sdpa.empty else (
    ", slower than dense" if sdpa["ratio_to_dense"].min() < 0.97 else ", not measurably slower on this device"
)
glue("sdpa_local_strided", ratio_text("hsa_sdpa:local_strided") + sdpa_verdict, display=False)
glue("flex_local_strided", ratio_text("hsa_flex:local_strided"), display=False)
glue("flex_local_strided_1024", ratio_text("hsa_flex:local_strided", 1024), display=False)
glue("flash_local_strided", ratio_text("hsa_flash:local_strided"), display=False)
glue("flash_local_strided_1024", ratio_text("hsa_flash:local_strided", 1024), display=False)
glue("flex_local_1024", ratio_text("hsa_flex:local", 1024), display=False)
glue("flash_local_1024", ratio_text("hsa_flash:local", 1024), display=False)
glue("cudnn_local_strided", ratio_text("hsa_cudnn:local_strided"), display=False)
glue("cudnn_local_strided_1024", ratio_text("hsa_cudnn:local_strided", 1024), display=False)


ultra_all = bench_all[bench_all["variant"].astype(str).str.startswith("mst_ultra")]
ultra_all = ultra_all.assign(attention=[attention_backend(r) for r in ultra_all.itertuples()])
if "error" in ultra_all:
    ultra_all = ultra_all[ultra_all["error"].isna()]


def ultra_text(backend: str) -> str:
    """Speed vs dense of MST's ultra phase with its attention through ``backend`` (whichever variant ran
    it: ``mst_ultra_flash``/``_cudnn``/``_flex``, or ``mst_ultra`` through what "auto" was then), per setting,
    from the latest call that ran it that way (the step table keeps only the latest call per variant)."""
    d = ultra_all[ultra_all["attention"].str.startswith(backend)]
    if d.empty:
        return "not measured here"
    d = d.sort_values(["model", "context", "file"]).drop_duplicates(["model", "context"], keep="last")
    return ", ".join(f"{r.ratio_to_dense:.3f} ({r.model} {r.context})" for r in d.itertuples())


glue("ultra_flash_text", ultra_text("flash_split"), display=False)
glue("ultra_cudnn_text", ultra_text("cudnn_split"), display=False)


def faster_slower(prefix: str) -> str:
    """Which patterns through ``prefix`` (e.g. ``hsa_flash``) ran faster / slower than dense, per setting of
    the largest model measured."""
    d = bench[bench["variant"].astype(str).str.startswith(prefix + ":")]
    if d.empty:
        return "not measured here"
    model = "paper" if "paper" in set(d["model"]) else sorted(d["model"])[-1]
    parts = []
    for T, g in d[d["model"] == model].groupby("context"):
        fast = [f"`{str(v).split(':')[1]}` {x:.3f}" for v, x in zip(g["variant"], g["ratio_to_dense"]) if x >= 1.0]
        slow = [f"`{str(v).split(':')[1]}` {x:.3f}" for v, x in zip(g["variant"], g["ratio_to_dense"]) if x < 1.0]
        parts.append(f"at context {T}, faster than dense: {', '.join(fast) or 'none'}; slower: {', '.join(slow) or 'none'}")
    return f"on the {model} model " + "; ".join(parts)


glue("flash_verdict", faster_slower("hsa_flash"), display=False)
glue("cudnn_verdict", faster_slower("hsa_cudnn"), display=False)
glue("ultra_flex_text", ultra_text("flex"), display=False)

# %% [markdown]
# ### Hybrid sparse attention: four ways to run the same pattern
#
# One FlexAttention call over the `local_strided` pattern ran at {glue:text}`flex_local_strided_1024` and
# {glue:text}`flex_local_strided`: slower than dense although it computes a quarter of the scores. With the
# official stride of 128 every 128 x 128 tile of scores holds one strided pair, so no tile is skipped and
# every tile pays for evaluating the mask ("predicted" says 1.0 for it for that reason). The `local` band
# alone skips tiles and ran at {glue:text}`flex_local_1024`, and faster at the longer context.
#
# So we cut the pattern into the band and the strided remainder, computed separately and merged exactly by
# their log-sum-exp (tested against a float64 reference, forward and backward, for every pattern):
#
# * **`split`** (`mstlib.attention`): both parts through FlexAttention, the strided part on the sequence
#   regrouped by residue class so that its tiles lie on the diagonal. Measured in an earlier call; the
#   regrouping copies and the second FlexAttention call cost more than the skipped tiles saved.
# * **`flash_split`** (`mstlib.flash_split`): the band through FlashAttention's own sliding-window kernel
#   (which visits only the band's tiles), the strided part through our Triton kernels, and one autograd
#   function whose backward feeds the *merged* output and log-sum-exp to each part, as ring attention does.
#   Within a residue class the strided part is a small causal attention (8 members at 1024, 32 at 4096);
#   one Triton program owns a group of residue classes, queries and keys alike, and computes them as one
#   tensor-core product masked to its block diagonal, so the forward (with the merge fused in) and the
#   whole backward are one kernel each that read `q, k, v` in place. It ran at
#   {glue:text}`flash_local_strided_1024` and {glue:text}`flash_local_strided`; its band alone (the `local`
#   pattern) at {glue:text}`flash_local_1024`.
# * **`cudnn_split`** (`mstlib._cudnn_band`, session 5): the same, with the band through **cuDNN's**
#   sliding-window kernels, the Hopper kernels PyTorch runs dense causal attention on. PyTorch does not
#   expose cuDNN's band (`diagonal_band_left_bound`); NVIDIA's `nvidia-cudnn-frontend` package builds the
#   cuDNN graphs from Python on the cuDNN library PyTorch already loads, and we execute one cached forward
#   and one backward graph per shape. It ran at {glue:text}`cudnn_local_strided_1024` and
#   {glue:text}`cudnn_local_strided`.
#
# The backend `"auto"` takes `cudnn_split` on the GPU for `local` and `local_strided` where
# `nvidia-cudnn-frontend` is installed (else `flash_split`), `flash_split` for `strided`, and FlexAttention
# for `fixed`, whose summary columns have no kernel of ours yet. MST's ultra phase with hybrid sparse
# attention ran at {glue:text}`ultra_cudnn_text` through `cudnn_split`, {glue:text}`ultra_flash_text` through
# `flash_split`, and {glue:text}`ultra_flex_text` through FlexAttention.
#
# The table has the latest call that measured each (setting, variant); every ratio is to dense *in that
# call*. "Predicted" counts the tiles the kernels visit and takes the far part as free.

# %%
hsa = bench_all[bench_all["variant"].astype(str).str.startswith(("hsa_", "mst_ultra"))]
hsa = hsa[hsa["file"] == hsa.groupby(["device_name", "model", "context", "variant"], observed=True)["file"].transform("max")]
hsa = hsa.assign(name=hsa["variant"].astype(str).map(variant_name),
                 setting=hsa["model"] + " model, context " + hsa["context"].astype(str))
hsa_table = hsa.pivot_table(index=["device_name", "name"], columns="setting", values="ratio_to_dense", sort=False)
hsa_table.index.names = ["device", "variant (speed vs dense in its call)"]
display(hsa_table.style.format("{:.3f}", na_rep="not measured"))
print("calls (files):", ", ".join(sorted(hsa["file"].unique())))

# %% [markdown]
# #### One attention layer, timed alone
#
# The step table dilutes attention with the rest of the model. `benchmarks/attention_speed.py` times one
# attention layer, forward and backward, at each model's shapes (bf16, 32,768 tokens per step), and reports
# beside the CUDA-event time the GPU *kernel* time from the PyTorch profiler: the event time of these
# sub-millisecond calls includes the gaps where the GPU waits for Python, which a whole step hides behind
# other layers' kernels, so the kernel time is the cost that matters there.

# %%
attn_files = [] if preset == "smoke" else benchmark.load_json_results(results_dir, "attention_speed_*.json")


def kernel_parts(kernels) -> dict[str, float]:
    """A per-kernel profile (``kernels`` of an attention_speed row) cut into the attention kernels'
    forward, backward and everything else (FlashAttention's and cuDNN's small pre- and post-processing
    kernels, copies, the merge), in ms per step; the library the main kernels come from."""
    parts = {"forward": 0.0, "backward": 0.0, "other": 0.0}
    libs = set()
    for k in kernels if isinstance(kernels, list) else []:
        n = k["name"]
        if "cudnn" in n:
            libs.add("cuDNN")
        elif "pytorch_flash" in n:
            libs.add("FlashAttention 2")
        elif "flex_attention" in n:
            libs.add("FlexAttention (Triton)")
        elif n.startswith("_far_"):
            libs.add("ours (Triton)")
        if "fprop" in n or "flash_fwd_kernel" in n or n.startswith("triton_tem_fused_flex_attention_0") or n == "_far_fwd_kernel":
            parts["forward"] += k["ms"]
        elif ("bprop" in n or "flash_bwd_dq_dk_dv" in n or n.startswith("triton_tem_fused_flex_attention_backward")
              or n == "_far_bwd_kernel"):
            parts["backward"] += k["ms"]
        else:
            parts["other"] += k["ms"]
    parts["library"] = " + ".join(sorted(libs)) or "not profiled"
    return parts


if attn_files:
    every = pd.concat([pd.DataFrame(f["rows"]).assign(file=f["file"], when=f["provenance"].get("start_utc", ""))
                       for f in attn_files], ignore_index=True)
    every = every[every["error"].isna()] if "error" in every else every
    # kernel time relative to dense *in the same call*, then the latest call per (model, context, variant)
    dense_k = every[every["variant"] == "dense"].set_index(["file", "model", "context"])["gpu_ms"]
    every["kernel time vs dense"] = [dense_k.get((r.file, r.model, r.context), np.nan) / r.gpu_ms
                                     for r in every.itertuples()]
    attn = every[every["when"] == every.groupby(["model", "context", "variant"])["when"].transform("max")]
    attn = attn.assign(call=attn["file"].str.removesuffix(".json"))
    attn_table = attn.set_index(["model", "context", "variant"])[
        ["fwd_ms", "fwd_bwd_ms", "gpu_ms", "ratio_to_dense", "kernel time vs dense", "tile_fraction",
         "max_abs_err", "call"]
    ].rename(columns={"fwd_ms": "forward (ms, events)", "fwd_bwd_ms": "fwd + bwd (ms, events)",
                      "gpu_ms": "fwd + bwd kernels (ms, profiler)", "ratio_to_dense": "event time vs dense",
                      "tile_fraction": "tiles vs causal", "max_abs_err": "max |error| vs float32"})
    display(attn_table.sort_index().style.format(
        {c: "{:.3f}" for c in attn_table.columns if c not in ("max |error| vs float32", "call")}
        | {"max |error| vs float32": "{:.1e}"}))

    def kernel_ms(model: str, context: int, variant: str, frame: pd.DataFrame = attn) -> float:
        d = frame[(frame["model"] == model) & (frame["context"] == context) & (frame["variant"] == variant)]
        return float(d["gpu_ms"].iloc[-1]) if len(d) and pd.notna(d["gpu_ms"].iloc[-1]) else float("nan")

    m = "paper" if "paper" in set(attn["model"]) else sorted(attn["model"])[0]
    glue("attn_model", m, display=False)
    for T in (1024, 4096):
        glue(f"attn_dense_{T}", kernel_ms(m, T, "dense"), display=False)
        glue(f"attn_band_flash_{T}", kernel_ms(m, T, "flash_split:local"), display=False)
        glue(f"attn_band_flex_{T}", kernel_ms(m, T, "flex:local"), display=False)
        glue(f"attn_band_cudnn_{T}", kernel_ms(m, T, "cudnn_split:local"), display=False)
        glue(f"attn_ls_cudnn_{T}", kernel_ms(m, T, "cudnn_split:local_strided"), display=False)
        glue(f"attn_far_{T}", kernel_ms(m, T, "flash_split:strided"), display=False)
        glue(f"attn_ls_flash_{T}", kernel_ms(m, T, "flash_split:local_strided"), display=False)
        glue(f"attn_ls_flex_{T}", kernel_ms(m, T, "flex:local_strided"), display=False)
    far = every[(every["model"] == m) & (every["context"] == 1024) & (every["variant"] == "flash_split:strided")]
    far = far.sort_values("when")
    glue("attn_far_history", ", then ".join(f"{r.gpu_ms:.3f} ms ({r.file.removesuffix('.json')})"
                                            for r in far.itertuples()) or "not measured", display=False)
    # rows of the table from an older call than the newest one of their model (e.g. a call that ran out of time)
    newest = attn.groupby("model")["when"].transform("max")
    stale = attn[(attn["when"] != newest) & attn["variant"].str.startswith(("flash_split", "cudnn_split"))]
    glue("attn_stale", "none" if stale.empty else "; ".join(
        f"{r.variant} at {r.context} ({r.model}) from {r.call}" for r in stale.itertuples()), display=False)

    # where the time goes, kernel by kernel (calls that recorded a per-kernel profile)
    prof = attn[attn["kernels"].apply(lambda k: isinstance(k, list) and len(k) > 0)] if "kernels" in attn else attn.iloc[:0]
    if len(prof):
        split = pd.DataFrame([kernel_parts(k) for k in prof["kernels"]], index=prof.index)
        prof = pd.concat([prof, split], axis=1)
        # forward time per tile of scores, relative to dense's: tiles = tile_fraction x causal's tiles
        dense_fwd = prof[prof["variant"] == "dense"].set_index(["model", "context"])["forward"]
        prof["forward per tile vs dense"] = [
            (r.forward / r.tile_fraction) / dense_fwd.get((r.model, r.context), np.nan)
            if r.tile_fraction > 0 and r.forward > 0 else np.nan for r in prof.itertuples()]
        show = ["dense", "flex:local", "flash_split:local", "cudnn_split:local", "flash_split:strided",
                "flash_split:local_strided", "cudnn_split:local_strided", "flex:local_strided"]
        kt = prof[prof["variant"].isin(show)].set_index(["model", "context", "variant"])[
            ["library", "forward", "backward", "other", "gpu_ms", "tile_fraction", "forward per tile vs dense", "call"]
        ].rename(columns={"forward": "forward kernel (ms)", "backward": "backward kernel (ms)",
                          "other": "other kernels (ms)", "gpu_ms": "all kernels (ms)", "tile_fraction": "tiles vs causal"})
        display(kt.sort_index().style.format({c: "{:.3f}" for c in kt.columns if c not in ("library", "call")},
                                             na_rep="-"))
        pm = prof[(prof["model"] == m) & (prof["context"] == 1024)].set_index("variant")
        dense_lib = pm.at["dense", "library"] if "dense" in pm.index else "not profiled"
        glue("attn_dense_lib", dense_lib, display=False)
        fpt = pm["forward per tile vs dense"].get("flash_split:local", np.nan)
        glue("attn_fa_per_tile", f"{fpt:.1f}" if pd.notna(fpt) else "not measured", display=False)
        fpt_flex = pm["forward per tile vs dense"].get("flex:local", np.nan)
        glue("attn_flex_per_tile", f"{fpt_flex:.1f}" if pd.notna(fpt_flex) else "not measured", display=False)
        fpt_cudnn = pm["forward per tile vs dense"].get("cudnn_split:local", np.nan)
        glue("attn_cudnn_per_tile", f"{fpt_cudnn:.1f}" if pd.notna(fpt_cudnn) else "not measured", display=False)
        other = pm["other"].get("flash_split:local", np.nan)
        glue("attn_fa_other", f"{other:.3f}" if pd.notna(other) else "not measured", display=False)
    else:
        for key in ("attn_dense_lib", "attn_fa_per_tile", "attn_flex_per_tile", "attn_cudnn_per_tile", "attn_fa_other"):
            glue(key, "not profiled", display=False)
else:
    glue("attn_model", "none (smoke preset: no stored GPU run)", display=False)
    for T in (1024, 4096):
        for key in ("dense", "band_flash", "band_flex", "band_cudnn", "far", "ls_flash", "ls_cudnn", "ls_flex"):
            glue(f"attn_{key}_{T}", float("nan"), display=False)
    glue("attn_far_history", "not measured here", display=False)
    glue("attn_stale", "none", display=False)
    for key in ("attn_dense_lib", "attn_fa_per_tile", "attn_flex_per_tile", "attn_cudnn_per_tile", "attn_fa_other"):
        glue(key, "not measured here", display=False)

# %% [markdown]
# Kernel times of one layer of the {glue:text}`attn_model` model, fwd + bwd (latest call per variant; rows
# of `flash_split` that come from an older call than their model's newest: {glue:text}`attn_stale`):
#
# | context | dense causal | band alone: FlashAttention window | band alone: FlexAttention | band alone: cuDNN window | strided far part alone (Triton) | `local_strided`: flash_split | `local_strided`: cudnn_split | `local_strided`: one FlexAttention call |
# |---|---|---|---|---|---|---|---|---|
# | 1024 | {glue:text}`attn_dense_1024:.3f` ms | {glue:text}`attn_band_flash_1024:.3f` ms | {glue:text}`attn_band_flex_1024:.3f` ms | {glue:text}`attn_band_cudnn_1024:.3f` ms | {glue:text}`attn_far_1024:.3f` ms | {glue:text}`attn_ls_flash_1024:.3f` ms | {glue:text}`attn_ls_cudnn_1024:.3f` ms | {glue:text}`attn_ls_flex_1024:.3f` ms |
# | 4096 | {glue:text}`attn_dense_4096:.3f` ms | {glue:text}`attn_band_flash_4096:.3f` ms | {glue:text}`attn_band_flex_4096:.3f` ms | {glue:text}`attn_band_cudnn_4096:.3f` ms | {glue:text}`attn_far_4096:.3f` ms | {glue:text}`attn_ls_flash_4096:.3f` ms | {glue:text}`attn_ls_cudnn_4096:.3f` ms | {glue:text}`attn_ls_flex_4096:.3f` ms |
#
# **Why the band is not cheaper than causal attention at 1024.** The per-kernel profile (second table)
# answers it: PyTorch runs dense causal attention on the H200 through {glue:text}`attn_dense_lib`, whose
# kernels are written for this GPU generation (Hopper's asynchronous tensor-core instructions, `wgmma` in
# the kernel names). The sliding-window kernel PyTorch ships is FlashAttention 2, written for the previous
# generation: per tile of scores its forward costs {glue:text}`attn_fa_per_tile` times cuDNN's
# (FlexAttention's, {glue:text}`attn_flex_per_tile` times). So the band, at 42% of causal attention's
# tiles, costs about as much as all of causal attention, and FlashAttention's small pre- and
# post-processing kernels ({glue:text}`attn_fa_other` ms) do not shrink with the band. PyTorch's cuDNN
# attention has no `window` option, but cuDNN itself has one: through `nvidia-cudnn-frontend` (the
# `cudnn_split` backend) the band runs on cuDNN's Hopper kernels at {glue:text}`attn_cudnn_per_tile` times
# dense's forward cost per tile, and costs {glue:text}`attn_band_cudnn_1024:.3f` ms at 1024 instead of
# FlashAttention's {glue:text}`attn_band_flash_1024:.3f` ms. It still does not shrink in proportion to its
# tiles (42%): cuDNN's backward has the same fixed pre- and post-processing kernels as dense's, and a
# 128-token band gives each program little work. With the strided far part added, `local_strided` through
# `cudnn_split` costs about what dense attention costs at 1024 ({glue:text}`attn_ls_cudnn_1024:.3f` against
# {glue:text}`attn_dense_1024:.3f` ms). At 4096 the band costs what it did at 1024 while causal attention
# grows with the context, and the split pays.
#
# The strided far part runs in our Triton kernels; at 1024 its kernel time was, call after call,
# {glue:text}`attn_far_history`. The first two versions did each class's small dot products on CUDA cores
# (3D tiles, then 2D tiles, one row per class and residue, each row reloading its keys); the current one
# (session 4) gives a program a group of residue classes, queries and keys alike, as one tile in memory
# order, and does the scores as one tensor-core product masked to the block diagonal, forward and backward
# each in one kernel. It is now about a quarter of the band's time and, unlike before, does not grow with
# the context (it is bound by reading `q, k, v` once). Compiled tensor algebra for the same far part
# (`flash_split@torch`, an earlier call in `results/bench/history/`) was slower than all of them.

# %% [markdown]
# #### Predicted against measured: the far part's kernels, and the step from the layer
#
# Two predictions check that we understand where the time goes. **The far part's floor**: its kernels must
# read `q, k, v` (and, in the backward, `out`, `dout`) once and write their outputs once; at the H200's
# peak memory bandwidth (4.8 TB/s, NVIDIA's specification, not a measurement) that takes the "floor" below.
# With the band (`local_strided`) the forward also reads the band's output and the backward reads and
# rewrites the band's three gradients. **The step from the layer**: if the attention kernels explain the
# step, a pattern's step should cost dense's step plus `n_layer` times the difference of one layer's kernel
# time (table above) from dense attention's; that prediction stands beside the tile count's and the
# measured ratio.

# %%
HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e peak bandwidth from NVIDIA's specification sheet
if attn_files and len(prof):
    far_rows = []
    for r in prof[prof["variant"].isin(["flash_split:strided", "flash_split:local_strided",
                                        "cudnn_split:local_strided"])].itertuples():
        far_ms = sum(k["ms"] for k in r.kernels if k["name"].startswith("_far_"))
        elem = r.batch * r.context * r.heads * r.head_dim * 2  # bytes of one bf16 [B, T, H, D] tensor
        lse = r.batch * r.context * r.heads * 4  # one float32 log-sum-exp
        with_band = r.variant.endswith("local_strided")
        # forward: q, k, v in, out (and lse) out; backward: q, k, v, out, dout, lse in, dq, dk, dv out;
        # with the band: its output and lse in (forward), its three gradients in (backward)
        moved = (4 + 8 + (1 + 3 if with_band else 0)) * elem + (2 + (1 if with_band else 0)) * lse
        floor = moved / HBM_BYTES_PER_S * 1e3
        far_rows.append({"model": r.model, "context": r.context, "variant": r.variant,
                         "far-part kernels (ms, measured)": far_ms, "memory floor (ms)": floor,
                         "share of peak bandwidth": floor / far_ms if far_ms else np.nan, "call": r.call})
    far_table = pd.DataFrame(far_rows).set_index(["model", "context", "variant"]).sort_index()
    display(far_table.style.format({"far-part kernels (ms, measured)": "{:.3f}", "memory floor (ms)": "{:.3f}",
                                    "share of peak bandwidth": "{:.0%}"}))
    fr = far_table["share of peak bandwidth"]
    glue("far_bw_share", f"{fr.min():.0%} to {fr.max():.0%}" if len(fr) else "not measured", display=False)

    # the step predicted from one layer's kernel times, for the HSA step rows of the latest calls
    from mstlib.config import MODEL_SIZES

    layer_ms = attn.set_index(["model", "context", "variant"])["gpu_ms"]
    step_rows = []
    for r in bench[bench["variant"].astype(str).str.startswith(("hsa_flex:", "hsa_flash:", "hsa_cudnn:"))].itertuples():
        kind, pattern = str(r.variant).split(":")
        layer_variant = benchmark.KIND_BACKENDS[kind] + ":" + pattern
        key, dkey = (r.model, r.context, layer_variant), (r.model, r.context, "dense")
        dense_row = bench_all[(bench_all["file"] == r.file) & (bench_all["model"] == r.model)
                              & (bench_all["context"] == r.context) & (bench_all["variant"] == "dense")]
        if key not in layer_ms.index or dkey not in layer_ms.index or dense_row.empty:
            continue
        dense_step = float(dense_row["ms_per_step_median"].iloc[0])
        extra = MODEL_SIZES[r.model].n_layer * (layer_ms[key] - layer_ms[dkey])
        step_rows.append({"model": r.model, "context": r.context, "variant": variant_name(str(r.variant)),
                          "predicted from the layer's kernels": dense_step / (dense_step + extra),
                          "predicted from the tile count": r.predicted_ratio, "measured": r.ratio_to_dense,
                          "step call": r.file.removesuffix(".json")})
    if step_rows:
        pred_table = pd.DataFrame(step_rows).set_index(["model", "context", "variant"]).sort_index()
        display(pred_table.style.format({c: "{:.3f}" for c in pred_table.columns if c != "step call"}))
        signed = pred_table["predicted from the layer's kernels"] - pred_table["measured"]
        glue("layer_pred_gap", "; ".join(
            f"on the {m} model by {g.abs().median():.3f} (median; at most {g.abs().max():.3f}; the prediction "
            f"{'above' if g.mean() > 0 else 'below'} the measurement on average by {abs(g.mean()):.3f})"
            for m, g in signed.groupby(level="model")), display=False)
    else:
        glue("layer_pred_gap", "not available (no matching step and layer rows)", display=False)
else:
    glue("far_bw_share", "not measured here", display=False)
    glue("layer_pred_gap", "not measured here", display=False)

# %% [markdown]
# The far part's kernels reach {glue:text}`far_bw_share` of the bandwidth floor: they are memory-bound, as
# designed, and what is left of their time is the cost of touching every token once more. The step
# predicted from one layer's kernel times differs from the measured step ratio {glue:text}`layer_pred_gap`.
# Where the two agree closely (the `paper` model's long steps), the attention kernels explain the step: a
# faster HSA there needs faster attention kernels, not less work around them. Where the measurement falls
# below the prediction (the `mini` model's short eager steps, about 33 ms), the split backends' host work
# (an autograd function, several kernel launches per layer) is not hidden behind the GPU's (GPU busy in
# the step table), and ratios from different calls mix in.

# %% [markdown]
# ## Compiled, as the presets train
#
# The presets train with `torch.compile` (`train.compile`, on CUDA), so from session 6 on the step benchmark
# also runs the model compiled (`python -m mstlib bench --compile [MODE ...] --profile`; every variant
# compiles its own graphs, so these calls time fewer variants). Two modes: `default`, how the presets train,
# and `reduce-overhead`, which replays the compiled forward and backward as CUDA graphs (one launch per
# graph instead of one per kernel: `train.compile="reduce-overhead"` in a config). From session 7 on one
# call times both modes in the same rounds, so "vs dense (default mode)" pairs every row with the dense
# step the presets run. Each row's "GPU kernel time" is the profiler's sum over one step's kernels (the host
# left out) and "GPU busy" its share of the step's event time. The profiler slows kernels down a little, so
# on GPU-bound steps busy comes out slightly above 1: read it as "the GPU is the bound" from about 0.95 on.

# %%
#: What the compiled model ran in each call (the calls' logs in results/bench/logs/s6call* and s7call*, and
#: tools/gpu/compile_probe.py and trace_probe.py, show it): the defects found and fixed in sessions 6 and 7.
#: Superseded calls are kept in results/bench/history/.
COMPILED_CALL_CODE = {
    "session6a": "graph break at every attention call (Triton helper, far part passed to Function.apply)",
    "session6b": "graph break at every attention call (far part passed to Function.apply)",
    "session6c": "one graph, but autocast off after the first layer: later layers in float32, masked math",
    "session6e": "one graph, autocast kept (both defects fixed); logits returned",
    "session7a": "as session6e: the logits returned, so their unused gradient is a zero tensor each step",
    "session7b": "loss-only forward (no logits output, no zero gradient)",
    "session7c": "loss-only forward (no logits output, no zero gradient)",
}
#: The calls whose compiled graphs had a defect of session 6 (slower than needed, not different numbers).
DEFECT_CALLS = ("session6a", "session6b", "session6c")


def compiled_call(file: str) -> str:
    return next((k for k in COMPILED_CALL_CODE if k in file), "")


def with_mode(d: pd.DataFrame) -> pd.DataFrame:
    """``d`` with a ``mode`` column: the compile mode, ``"default"`` for rows written before modes existed."""
    return d.assign(mode=d["compile_mode"].fillna("default") if "compile_mode" in d else "default")


def latest_rows(d: pd.DataFrame) -> pd.DataFrame:
    """The latest call's row of each (device, model, context, variant, compile mode), failed variants left out."""
    if "error" in d:
        d = d[d["error"].isna()]
    d = with_mode(d)
    last = d.groupby(["device_name", "model", "context", "variant", "mode"], observed=True)["file"].transform("max")
    return d[d["file"] == last]


eager_prof = latest_rows(bench_all.dropna(subset=["gpu_busy"])) if "gpu_busy" in bench_all else bench_all.iloc[:0]
glue("eager_busy_text", "; ".join(
    f"{m} {T}: " + ", ".join(f"{r.variant} {r.gpu_busy:.2f}" for r in g.itertuples())
    for (m, T), g in eager_prof.groupby(["model", "context"])) or "not measured here", display=False)

COMPILED_GLUES = ("compiled_ultra_text", "compiled_local_strided_text", "compiled_busy_text", "compiled_history_text",
                  "compiled_dense_speedup", "leak_slowdown", "compiled_mini_dense_ms", "graphs_ultra_text",
                  "graphs_local_strided_text", "logits_fix_text", "zero_weight_matmul_text")
if compiled_all.empty:
    for key in COMPILED_GLUES:
        glue(key, "not measured here", display=False)
else:
    comp = latest_rows(compiled_all)
    # against dense in the call's first mode (default) where the call timed several; else its own mode's dense
    vs_default = comp["ratio_to_first_mode_dense"] if "ratio_to_first_mode_dense" in comp else comp["ratio_to_dense"]
    comp = comp.assign(name=comp["variant"].map(variant_name),
                       attention=[attention_backend(r) for r in comp.itertuples()],
                       rounds=comp["rounds"].fillna(1).astype(int) if "rounds" in comp else 1,
                       vs_default=vs_default.fillna(comp["ratio_to_dense"].where(comp["mode"] == "default")))
    comp_table = comp.assign(**{
        "ms per step (median)": comp["ms_per_step_median"],
        "GPU kernel time (ms)": comp["gpu_ms"] if "gpu_ms" in comp else np.nan,
        "GPU busy": comp["gpu_busy"] if "gpu_busy" in comp else np.nan,
        "speed vs dense, same mode": comp["ratio_to_dense"],
        "speed vs dense, default mode": comp["vs_default"],
        "speed vs dense (predicted)": [benchmark.predicted_ratio(r.attn_share_flops, r.attn_block_density)
                                       for r in comp.itertuples()],
        "attention backend": comp["attention"],
        "rounds": comp["rounds"],
        "call (file)": comp["file"].str.removesuffix(".json"),
    }).set_index(["device_name", "model", "context", "mode", "name"])[[
        "ms per step (median)", "GPU kernel time (ms)", "GPU busy", "speed vs dense, same mode",
        "speed vs dense, default mode", "speed vs dense (predicted)", "attention backend", "rounds",
        "call (file)"]].sort_index()
    display(comp_table.style.format({"ms per step (median)": "{:.2f}", "GPU kernel time (ms)": "{:.2f}",
                                     "GPU busy": "{:.2f}", "speed vs dense, same mode": "{:.3f}",
                                     "speed vs dense, default mode": "{:.3f}", "speed vs dense (predicted)": "{:.3f}"},
                                    na_rep="–"))

    def comp_ratio(variant: str, mode: str = "default", column: str = "ratio_to_dense") -> str:
        d = comp[(comp["variant"] == variant) & (comp["mode"] == mode)].sort_values(["model", "context"])
        return ", ".join(f"{getattr(r, column):.3f} ({r.model} {r.context}, {r.attention})" for r in d.itertuples()) \
            or "not measured"

    glue("compiled_ultra_text", comp_ratio("mst_ultra"), display=False)
    glue("compiled_local_strided_text", comp_ratio("hsa_cudnn:local_strided"), display=False)
    glue("graphs_ultra_text", comp_ratio("mst_ultra", "reduce-overhead", "vs_default"), display=False)
    glue("graphs_local_strided_text", comp_ratio("hsa_cudnn:local_strided", "reduce-overhead", "vs_default"),
         display=False)
    busy = comp.dropna(subset=["gpu_busy"]) if "gpu_busy" in comp else comp.iloc[:0]
    glue("compiled_busy_text", "; ".join(
        f"{m} {T} ({mode}): dense {g.loc[g['variant'] == 'dense', 'gpu_busy'].max():.2f}, hybrid attention "
        f"{g.loc[g['variant'] != 'dense', 'gpu_busy'].min():.2f} to {g.loc[g['variant'] != 'dense', 'gpu_busy'].max():.2f}"
        for (m, T, mode), g in busy.groupby(["model", "context", "mode"]) if (g["variant"] == "dense").any())
        or "not measured", display=False)
    # compiled dense against eager dense in the latest eager call of the same model and context
    eager_dense = latest_rows(bench_all[bench_all["variant"] == "dense"]).set_index(["model", "context"])
    glue("compiled_dense_speedup", ", ".join(
        f"{eager_dense.loc[(r.model, r.context), 'ms_per_step_median'] / r.ms_per_step_median:.2f}x ({r.model} {r.context})"
        for r in comp[(comp["variant"] == "dense") & (comp["mode"] == "default")].itertuples()
        if (r.model, r.context) in eager_dense.index) or "not measured", display=False)

    # the same variants compiled before the fixes of sessions 6 and 7 (results/bench/history/) and after
    hist = benchmark.load_benchmarks(results_dir, "bench/history")
    hist = hist[hist["compile"].fillna(False).astype(bool)] if "compile" in hist else hist.iloc[:0]
    both = pd.concat([hist, compiled_all])
    if "error" in both:
        both = both[both["error"].isna()]
    both = both[both["file"].map(compiled_call) != ""]
    both = with_mode(both).assign(defects=both["file"].map(lambda f: COMPILED_CALL_CODE[compiled_call(f)]),
                                  call=both["file"].str.removesuffix(".json"))
    hist_table = both.pivot_table(index=["model", "context", "call", "mode", "defects"], columns="variant",
                                  values="ratio_to_dense", aggfunc="first")
    hist_table = hist_table[[v for v in benchmark.VARIANTS if v in hist_table.columns and v != "dense"]]
    hist_table.columns = [variant_name(v) for v in hist_table.columns]
    display(hist_table.style.format("{:.3f}", na_rep="–").set_caption(
        "Speed vs dense (same call, same mode) of the compiled model, per call: before and after the fixes"))
    defect = both["file"].map(compiled_call).isin(DEFECT_CALLS)
    before = both[defect & (both["variant"] != "dense")]
    leak = both[both["file"].str.contains("session6c") & (both["variant"] != "dense")]
    slow = sorted(1 / leak["ratio_to_dense"])
    glue("leak_slowdown", "not measured" if not slow else f"{slow[0]:.1f}x" if f"{slow[0]:.1f}" == f"{slow[-1]:.1f}"
         else f"{slow[0]:.1f}x to {slow[-1]:.1f}x", display=False)
    glue("compiled_mini_dense_ms", ", ".join(
        f"{r.ms_per_step_median:.1f} ms ({r.mode})" for r in
        comp[(comp["variant"] == "dense") & (comp["model"] == "mini")].itertuples()) or "not measured", display=False)
    glue("compiled_history_text", ", ".join(
        f"{g['ratio_to_dense'].min():.2f} to {g['ratio_to_dense'].max():.2f} ({m})"
        for m, g in before.groupby("model")) or "not measured", display=False)

    # the loss-only forward: dense mini steps and the two logits-sized kernels, before (session7a) and after
    def kernels_where(kernels, match) -> list:
        return [k for k in (kernels if isinstance(kernels, list) else []) if match(k["name"])]

    def is_logits_kernel(name: str) -> bool:  # the zero gradient's fill, and its copy into a CUDA graph
        return "FillFunctor<c10::BFloat16>" in name or "Memcpy DtoD" in name

    def logits_kernels(kernels) -> str:
        return " + ".join(f"{k['ms']:.2f} ms {'zero fill' if 'Fill' in k['name'] else 'graph-input copy'}"
                          for k in kernels_where(kernels, is_logits_kernel)) or "neither"

    dm = both[(both["variant"] == "dense") & (both["model"] == "mini") & both["file"].str.contains("session7")]
    logits_pairs = []  # (mode, the session7a row, the latest row after the fix)
    for mode, g in dm.groupby("mode"):
        old, new = g[g["file"].str.contains("session7a")], g[~g["file"].str.contains("session7a")]
        if len(old) and len(new):
            logits_pairs.append((mode, old.iloc[-1], new.sort_values("file").iloc[-1]))
    glue("logits_fix_text", "; ".join(
        f"{mode}: {o.ms_per_step_median:.2f} ms ({logits_kernels(o.kernels)}) to "
        f"{n.ms_per_step_median:.2f} ms ({logits_kernels(n.kernels)})" for mode, o, n in logits_pairs)
        or "not measured", display=False)

    # predicted against measured for the session-7 optimisations (mini model, where the host was the bound).
    # Loss-only forward: the old step minus the logits-sized kernels its profile shows. CUDA graphs: at best
    # the variant's default-mode kernel time (every host gap closed), against dense in the default mode.
    opt_rows = [{"optimisation": f"loss-only forward ({mode})", "model": "mini", "variant": "dense",
                 "predicted": o.ms_per_step_median - sum(k["ms"] for k in kernels_where(o.kernels, is_logits_kernel)),
                 "measured": n.ms_per_step_median, "unit": "ms per step",
                 "how": f"{compiled_call(o.file)} minus its zero-fill/copy kernels; {compiled_call(n.file)}"}
                for mode, o, n in logits_pairs]
    for (m, T), g in comp.groupby(["model", "context"]):
        dflt = g[g["mode"] == "default"].set_index("variant")
        graphs_rows = g[g["mode"] == "reduce-overhead"].set_index("variant")
        if "dense" not in dflt.index or "gpu_ms" not in g:
            continue
        for v, r in graphs_rows.iterrows():
            if v in dflt.index and pd.notna(dflt.loc[v, "gpu_ms"]) and dflt.loc[v, "gpu_busy"] < 0.95:
                opt_rows.append({"optimisation": "CUDA graphs", "model": f"{m} {T}", "variant": variant_name(v),
                                 "predicted": dflt.loc["dense", "ms_per_step_median"] / dflt.loc[v, "gpu_ms"],
                                 "measured": r["vs_default"], "unit": "speed vs dense, default mode (bound)",
                                 "how": f"dense's step / the variant's default-mode kernel time; {compiled_call(r['file'])}"})
    if opt_rows:
        display(pd.DataFrame(opt_rows).set_index(["optimisation", "model", "variant"]).style.format(
            {"predicted": "{:.3f}", "measured": "{:.3f}"}).set_caption(
            "Session 7's optimisations: predicted beside measured (host-bound rows only: GPU busy below 0.95)"))

    # masked weights and the matrix products' kernel time (same shapes, same kernels)
    def matmul_ms(kernels) -> float:
        return sum(k["ms"] for k in kernels_where(kernels, lambda name: name.startswith("nvjet")))

    zw = []
    for (m, T, mode), g in comp.groupby(["model", "context", "mode"]):
        g = g.set_index("variant")
        if {"dense", "mst_ultra"} <= set(g.index) and "kernels" in g:
            d, u = matmul_ms(g.loc["dense", "kernels"]), matmul_ms(g.loc["mst_ultra", "kernels"])
            if d > 0:
                zw.append(f"{m} {T} ({mode}): {d:.1f} to {u:.1f} ms ({u / d - 1:+.0%}, weight density "
                          f"{g.loc['mst_ultra', 'density']:.2f})")
    glue("zero_weight_matmul_text", "; ".join(zw) or "not measured", display=False)

# %% [markdown]
# **Compiled as the presets train, MST's ultra phase ran at {glue:text}`compiled_ultra_text` of dense
# speed**, and `local_strided` through `cudnn_split` alone at {glue:text}`compiled_local_strided_text`.
# **With CUDA graphs (`reduce-overhead`), against dense as the presets run it, the ultra phase ran at
# {glue:text}`graphs_ultra_text`, and `local_strided` alone at {glue:text}`graphs_local_strided_text`.**
# Compiling makes dense itself {glue:text}`compiled_dense_speedup` faster than the eager dense step of the
# latest eager call. GPU busy in the compiled calls: {glue:text}`compiled_busy_text`.
#
# The `mini` model's default-mode steps show where the rest of its time goes. Its dense step
# ({glue:text}`compiled_mini_dense_ms`) keeps the GPU busy. The hybrid attention's steps leave gaps: the
# split backends' host work (per layer an autograd function, the cuDNN graph's execution, Triton launches:
# custom operators that a compiled graph calls one by one). Their GPU kernel time is about dense's, so what
# the `mini` model loses there is host time, not kernel time. CUDA graphs replay all of it with one launch
# per graph, and the gaps close. On the `paper` model the host work hides behind longer kernels in either
# mode.
#
# **Masked weights make the same matrix products faster on this GPU, without skipping any.** MST's ultra
# phase beats `local_strided` alone, though both run the same attention. The difference is in cuBLAS's
# matrix-product kernels (the `nvjet` kernels among each step's twelve longest), dense against the ultra
# phase's masked weights: {glue:text}`zero_weight_matmul_text`. The shapes and kernels are the same; only
# the values differ. This fits data-dependent power: an H200 running large matrix products is held back
# by its power limit, and zero operands switch fewer bits. We did not measure clocks or power, so this is
# an explanation, not a measurement.
#
# **The loss-only forward (session 7).** Until session 7 the model returned its logits to the training
# loop, which never used them. A compiled model's backward then takes a gradient for every output that
# requires one, so each step filled a zero tensor of the logits' size (3.3 GB in bf16 at 32K tokens per
# step). The loss's backward kernel read it and added it. Under CUDA graphs it was also copied into the
# graph's static input. Training now calls `model(x, y, return_logits=False)`; a CPU test checks that the
# compiled backward takes no logits gradient. The dense `mini` step, compiled, before and after (two calls):
# {glue:text}`logits_fix_text`. This is why the session-6 CUDA-graph calls made dense slower, not faster.
# Loss and gradients are unchanged: the zero gradient only ever added 0.
#
# **Two defects, found by these calls and fixed in session 6, had made the compiled hybrid attention slow**:
# before the fixes the compiled HSA steps ran at {glue:text}`compiled_history_text` of dense speed (table
# above, from `results/bench/history/`).
#
# 1. `torch.compile` broke the graph at every attention call. The Triton far part's support check called
#    into Triton's module, and the compiled torch far part was an argument of `Function.apply`, on which
#    torch 2.11's tracing fails. The attention and the loss then ran eagerly.
# 2. Once the graph was whole, the autocast-off context inside the autograd function's forward leaked out
#    of torch 2.11's tracing. Every layer after the first then traced in float32 and took the masked math
#    path: correct numbers, at {glue:text}`leak_slowdown` dense's step time.
#
# Both are tested now: no graph break, and every compiled layer sees the autocast dtype (a test that fails
# on the old code with torch 2.11). Stored training runs keep their numbers. Before the first fix, the
# graph break ran the attention eagerly, in bf16, through the fast path, so those runs were slower during
# the ultra phase than they needed to be, not different.

# %% [markdown]
# ### Whole training runs with CUDA graphs
#
# The step benchmark synchronises after every step, so the first launches of each step are never hidden.
# The trainer synchronises once per log window, and the `mini` preset does two micro-steps per optimizer
# step, so its host can run ahead further. Whole runs therefore say what training gets.
# `tools/gpu/speed20.sh` ran the `mini` preset through `mstlib.train` for 300 steps (random tokens; MST's
# phases, topology updates and hybrid-attention window compressed into them), dense and MST, each with
# `train.compile=true` and with `"reduce-overhead"`, once each. Tokens/s per phase is the median over log
# windows of 10 steps, after the first two windows (compilation).

# %%
GRAPH_RUNS = "train_speed_graphs_*"
# the runs' folders (log, config, metrics) lie in results/bench/runs/, out of reach of the run store's
# <preset>/<method>/<run_id> listing: they are speed measurements, not results of the book
graph_dirs = [] if preset == "smoke" else sorted(d for d in (bench_dir / "runs").glob(GRAPH_RUNS) if d.is_dir())
if graph_dirs:
    from mstlib.train import SPEED_WARMUP_WINDOWS

    PHASES = {"dense": "whole run (dense)", "warmup": "warm-up", "ultra": "ultra, with HSA", "restoration": "restoration"}
    per_phase = []
    for run_dir in sorted(graph_dirs[-1].iterdir()):
        cfg = json.loads((run_dir / "config.json").read_text())
        log_df = pd.read_csv(run_dir / "log.csv")
        window = (log_df["tokens_per_s"] != log_df["tokens_per_s"].shift()).cumsum()  # one value per log window
        w = log_df.assign(window=window).groupby("window").agg(phase=("phase", "last"), tok_s=("tokens_per_s", "first"))
        w = w.iloc[SPEED_WARMUP_WINDOWS:]
        mode = "CUDA graphs" if cfg["train"]["compile"] == "reduce-overhead" else "compiled (default)"
        for ph, g in w.groupby("phase", sort=False):
            per_phase.append({"method": cfg["method"], "mode": mode, "phase": PHASES.get(ph, ph),
                              "tokens/s (median over windows)": g["tok_s"].median(), "windows": len(g)})
    per_phase = pd.DataFrame(per_phase)
    dense_ref = per_phase.query("method == 'dense' and mode == 'compiled (default)'")["tokens/s (median over windows)"]
    per_phase["vs dense, default mode"] = per_phase["tokens/s (median over windows)"] / dense_ref.iloc[0]
    display(per_phase.set_index(["method", "phase", "mode"]).sort_index().style.format(
        {"tokens/s (median over windows)": "{:,.0f}", "vs dense, default mode": "{:.3f}"}).set_caption(
        f"mini preset, 300 steps per run, {graph_dirs[-1].name}"))
    ultra = per_phase[per_phase["phase"] == PHASES["ultra"]].set_index("mode")["vs dense, default mode"]
    glue("graphs_run_ultra", ", ".join(f"{v:.3f} ({m})" for m, v in ultra.items()) or "not measured", display=False)
    mst_rest = per_phase[(per_phase["method"] == "mst") & (per_phase["phase"] != PHASES["ultra"])]
    glue("graphs_run_other", f"{mst_rest['vs dense, default mode'].min():.3f} to "
         f"{mst_rest['vs dense, default mode'].max():.3f}", display=False)
    gd = per_phase[per_phase["method"] == "dense"].set_index("mode")["vs dense, default mode"]
    glue("graphs_run_dense", f"{gd.get('CUDA graphs', float('nan')):.3f}", display=False)
    glue("graphs_run_source", f"{shown}/runs/{graph_dirs[-1].name}/", display=False)
else:
    for key in ("graphs_run_ultra", "graphs_run_other", "graphs_run_dense", "graphs_run_source"):
        glue(key, "not measured here", display=False)

# %% [markdown]
# In whole `mini` runs ({glue:text}`graphs_run_source`), **the ultra phase with hybrid sparse attention ran
# at {glue:text}`graphs_run_ultra` of dense's speed** (dense compiled as the presets train). MST's other
# phases ran at {glue:text}`graphs_run_other`, and dense with CUDA graphs at {glue:text}`graphs_run_dense`.
# These are single runs. For scale, the paired repeats of one variant in the whole-run section below spread
# by up to {glue:text}`speed_pair_spread`. MST's phases above dense's speed fit the zero-weight effect of the
# compiled section: same products, fewer switching bits, not less work. The default mode's ultra phase is
# closer to dense here than in the step benchmark, because the trainer does not synchronise every step.

# %% [markdown]
# ## Where MST's overhead went: the topology update
#
# Masking gradients costs one fused multiply per step. The topology update (drop and grow in every sparse
# matrix, every `topology.update_interval` steps) was the larger part: `benchmarks/topology_update.py` times
# one update of each model size in each phase on the GPU. The first version looped over the matrices with
# about 30 small operations each, most of the time being kernel launches; the current one stacks matrices of
# equal shape and selects in batches (`mstlib.topology`, checked against the per-matrix loop in
# `tests/test_topology.py`). The cost per step divides the update by each preset's interval (`mini`: 25,
# `paper`: 100, the official value) and compares it with dense's step time from the table above.

# %%
upd_files = [] if preset == "smoke" else benchmark.load_json_results(results_dir, "topology_update_*.json")
if upd_files:
    dense_ms = bench[(bench["variant"] == "dense") & (bench["context"] == 1024)].set_index("model")["ms_per_step_median"]
    upd = pd.concat([pd.DataFrame(f["rows"]).assign(commit=str(f["git"]["commit"])[:10], file=f["file"])
                     for f in upd_files], ignore_index=True)
    upd["version"] = np.where(upd["file"].str.contains("profile"), "per-matrix loop", "grouped by shape")
    upd["interval"] = [presets.make(m, "mst").topology.update_interval for m in upd["model"]]
    upd["ms per step"] = upd["update_ms_median"] / upd["interval"]
    upd["% of a dense step"] = 100 * upd["ms per step"] / upd["model"].map(dense_ms)
    upd_table = upd.pivot_table(index=["model", "phase"], columns="version",
                                values=["update_ms_median", "% of a dense step"], sort=False)
    upd_table.columns = [f"{a.replace('update_ms_median', 'update (ms)')}, {b}" for a, b in upd_table.columns]
    display(upd_table.style.format("{:.2f}"))
    after = upd[upd["version"] == "grouped by shape"]
    glue("update_after", f"{after['update_ms_median'].min():.0f} to {after['update_ms_median'].max():.0f} ms "
         f"per update ({after['% of a dense step'].max():.2f}% of a dense step at most, amortised)", display=False)
    before = upd[upd["version"] == "per-matrix loop"]
    glue("update_before", f"{before['update_ms_median'].min():.0f} to {before['update_ms_median'].max():.0f} ms",
         display=False)
else:
    glue("update_after", "not measured here (smoke preset)", display=False)
    glue("update_before", "not measured here", display=False)

# %% [markdown]
# An update took {glue:text}`update_before` before and {glue:text}`update_after` after the change.

# %% [markdown]
# ## Whole training runs: `mstlib` against a plain loop, and data-parallel training
#
# The step benchmark above times single steps without compilation. Training runs are what the book pays
# for, so `benchmarks/train_speed.py` also times whole compiled runs of the `mini` model in one process: a
# plain nanoGPT-style loop (no masks, no logging to disk), `mstlib.train` dense, full MST (all three phases,
# topology updates every 25 steps, hybrid sparse attention switched on and off) and MST with the split
# attention backend. Each variant runs three times, interleaved (plain, dense, MST, ..., then in reverse
# order, then again), and each run is compared with dense of the same repeat: the spread of these paired
# ratios is the measurement noise. Tokens/s is the median over log windows after the first two
# (compilation). And `benchmarks/compare_logs.py` compares a 2-GPU DDP run with the 1-GPU run of the same
# global batch, using a repeat of the 1-GPU run as the noise level.

# %%
speed_files = [] if preset == "smoke" else benchmark.load_json_results(results_dir, "train_speed_*.json")
ddp_files = [] if preset == "smoke" else benchmark.load_json_results(results_dir, "ddp_compare_*.json")
# the repeated comparisons with the plain loop (the CUDA-graph runs of session 7 have their own table above)
repeated = [f for f in speed_files if f.get("summary") and not f["file"].startswith("train_speed_graphs")]


def describe(f: dict) -> str:
    return (f"{f['device_name']}, {f['preset']} model, {f['steps']} steps per run, torch {f['packages']['torch']}, "
            f"commit {str(f['git']['commit'])[:10]}")


if repeated:
    rows = []
    for f in repeated:
        for r in f["summary"]:
            rows.append({"file": f["file"], "commit": str(f["git"]["commit"])[:10], "variant": r["variant"],
                         "median tokens/s": r["tokens_per_s_median"],
                         "vs mstlib dense (paired, median)": r["paired_ratio_median"],
                         "paired ratios per repeat": ", ".join(f"{x:.3f}" for x in r["paired_ratios_to_dense"])})
    display(pd.DataFrame(rows).set_index(["file", "variant"]).style.format(
        {"median tokens/s": "{:,.0f}", "vs mstlib dense (paired, median)": "{:.3f}"}))
    last = repeated[-1]
    by = {r["variant"]: r for r in last["summary"]}
    glue("speed_device", describe(last), display=False)
    plain = by.get("plain nanoGPT loop")
    glue("speed_dense_vs_plain", 1.0 / plain["paired_ratio_median"] if plain else float("nan"), display=False)
    glue("speed_plain_pairs", ", ".join(f"{1.0 / x:.3f}" for x in plain["paired_ratios_to_dense"]) if plain
         else "not measured", display=False)
    mst = by.get("mstlib mst")
    glue("speed_mst_vs_dense", mst["paired_ratio_median"] if mst else float("nan"), display=False)
    glue("speed_mst_pairs", ", ".join(f"{x:.3f}" for x in mst["paired_ratios_to_dense"]) if mst else "not measured",
         display=False)
    split = next((r for v, r in by.items() if "split" in v), None)
    glue("speed_split_vs_dense", split["paired_ratio_median"] if split else float("nan"), display=False)
    first = repeated[0]
    p0 = {r["variant"]: r for r in first["summary"]}.get("plain nanoGPT loop")
    glue("speed_dense_vs_plain_before", 1.0 / p0["paired_ratio_median"] if p0 else float("nan"), display=False)
    glue("speed_before_commit", str(first["git"]["commit"])[:10], display=False)
    spreads = [max(r["paired_ratios_to_dense"]) - min(r["paired_ratios_to_dense"]) for r in last["summary"]
               if r["variant"] != "mstlib dense" and len(r["paired_ratios_to_dense"]) > 1]
    glue("speed_pair_spread", f"{max(spreads):.3f} ({last['file']})" if spreads else "not measured", display=False)
else:
    glue("speed_device", "not measured (smoke preset: no stored GPU run)", display=False)
    for key in ("speed_mst_vs_dense", "speed_dense_vs_plain", "speed_split_vs_dense", "speed_dense_vs_plain_before"):
        glue(key, float("nan"), display=False)
    for key in ("speed_plain_pairs", "speed_mst_pairs", "speed_before_commit", "speed_pair_spread"):
        glue(key, "not measured", display=False)
single = [f for f in speed_files if not f.get("summary")]
if single:
    print("Earlier single-run comparisons (one run per variant, first session):")
    display(pd.concat([pd.DataFrame(f["rows"]).assign(file=f["file"], commit=str(f["git"]["commit"])[:10])
                       for f in single], ignore_index=True).set_index(["file", "variant"])[
        ["commit", "tokens_per_s_median", "ratio_median_to_dense"]].style.format(
        {"tokens_per_s_median": "{:,.0f}", "ratio_median_to_dense": "{:.3f}"}))
if ddp_files:
    dd = ddp_files[-1]
    glue("ddp_diff", float(dd["loss: B - A"]["mean_abs"]), display=False)
    glue("ddp_noise", float(dd["loss: A2 - A (noise)"]["mean_abs"]), display=False)
    glue("ddp_steps", int(dd["loss: B - A"]["n"]), display=False)
else:
    glue("ddp_diff", float("nan"), display=False)
    glue("ddp_noise", float("nan"), display=False)
    glue("ddp_steps", 0, display=False)

# %% [markdown]
# Measured on {glue:text}`speed_device`: `mstlib`'s dense loop runs at {glue:text}`speed_dense_vs_plain:.3f`
# of the plain loop's tokens/s (median of the paired ratios {glue:text}`speed_plain_pairs`; the target was
# at least 1.0; the pairs' spread, a few tenths of a percent, is the noise, so the two loops are as fast
# as each other). In the first interleaved measurement (commit {glue:text}`speed_before_commit`) it ran at
# {glue:text}`speed_dense_vs_plain_before:.3f` (never above the plain loop in its three pairs); the trainer then stopped adding work the
# plain loop does not do: no per-step `found_inf` tensor for the fused AdamW (losses and gradient norms are
# checked once per log window on the GPU, before anything is saved), the step's loss summed without an
# extra buffer, and no re-masking of weights that AdamW already keeps at zero. Full MST trains at
# {glue:text}`speed_mst_vs_dense:.3f` of dense's tokens/s (paired ratios {glue:text}`speed_mst_pairs`; the
# target was at least 0.97); with the split attention backend at {glue:text}`speed_split_vs_dense:.3f`. The
# 2-GPU DDP run's loss curve differs from the 1-GPU run's by {glue:text}`ddp_diff:.4f` nats per step on
# average over {glue:text}`ddp_steps` steps, against {glue:text}`ddp_noise:.4f` between two 1-GPU runs:
# within bf16 noise.

# %% [markdown]
# ## Real savings from weight sparsity? Block-sparse matrix products
#
# Masks save nothing, so we tried the most promising structure for real savings: block sparsity, where a
# weight keeps whole `block x block` tiles and only those are stored and multiplied
# (`mstlib.blocksparse`: a linear layer whose forward, input gradient and tile gradient all skip the
# missing tiles). `benchmarks/block_sparse.py` times forward plus backward of one GPT-2 small matrix
# against the dense matmul on the GPU, for several kernels: a pure-PyTorch gather and batched matmul,
# PyTorch's own Triton block-sparse (BSR) kernels (`triton_bsr`), and our Triton kernels (`triton`,
# session 4: the forward and the input gradient as one kernel over the pattern's rows or columns, with
# thousands of programs at these sizes, and the tile gradients as a sampled product split over tokens until
# every SM has work, summed in a fixed order). `dense_masked` is the dense product of a masked weight (what
# MST does). The tables give, per matrix and density, the best speed over the block sizes measured, against
# the FLOP count's promise (1 / density): first by CUDA-event time (what a training step pays when the host
# keeps up), then by the profiler's kernel time (what the GPU spends).

# %%
bs_files = [] if preset == "smoke" else benchmark.load_json_results(results_dir, "block_sparse_*.json")
if bs_files:
    bsf = bs_files[-1]
    summ = pd.DataFrame(bsf["summary"])
    summ = summ[summ["tokens"] == summ["tokens"].max()]
    tables = {}
    for col, label in (("ratio_to_dense", "event time"), ("kernel_ratio_to_dense", "kernel time")):
        if col not in summ or summ[col].isna().all():
            continue
        t = summ.pivot_table(index=["name", "shape", "density"], columns="backend", values=col, sort=False)
        t["FLOP-count promise"] = summ.groupby(["name", "shape", "density"], sort=False)["predicted_ratio"].max()
        tables[label] = t
    where = bsf["provenance"].get("device_name", bsf["provenance"].get("device"))
    for label, t in tables.items():
        print(f"{where}, {int(summ['tokens'].max())} tokens, bf16; speed vs dense F.linear by {label} "
              f"(above 1 is faster); {bsf['file']}")
        display(t.style.format("{:.2f}"))

    def best_sparse(col: str) -> str:
        d = summ[summ["backend"].isin(["gather", "triton_bsr", "triton"])].dropna(subset=[col])
        if d.empty:
            return "not measured"
        b = d.loc[d[col].idxmax()]
        return (f"{b[col]:.2f}x dense ({b['backend']}, {b['name']} at density {b['density']}, FLOP count "
                f"{b['predicted_ratio']:.0f}x)")

    glue("bs_best", best_sparse("ratio_to_dense"), display=False)
    glue("bs_best_kernel", best_sparse("kernel_ratio_to_dense") if "kernel_ratio_to_dense" in summ else "not measured",
         display=False)
    ours = summ[summ["backend"] == "triton"]
    faster = ours[ours["ratio_to_dense"] > 1.0]
    glue("bs_triton_faster", "none" if faster.empty else ", ".join(
        f"{r.name} at density {r.density} ({r.ratio_to_dense:.2f}x)" for r in faster.itertuples()), display=False)
else:
    for key in ("bs_best", "bs_best_kernel", "bs_triton_faster"):
        glue(key, "not measured here (smoke preset)", display=False)

# %% [markdown]
# The best block-sparse result by event time was {glue:text}`bs_best`, and by kernel time
# {glue:text}`bs_best_kernel`. Our `triton` kernels beat the dense product's event time only for
# {glue:text}`bs_triton_faster`: the two MLP matrices, at the lowest densities. That is a real, measured
# saving from weight sparsity, but far below the FLOP count's 10x, and nowhere on the attention matrices
# (`attn.c_attn`, `attn.c_proj`), whose dense products are short enough that a single layer's step is paced
# by the host (Python, launches, the autograd engine): even the dense-masked product, the same matmul as
# dense plus a multiply, runs at a fraction of dense's event time there. PyTorch's own BSR kernels and the
# gather kernel stay well below dense. None of this is in MST's training yet: a block-structured topology
# (whole tiles pruned and regrown) would be needed to use it, and the paper's MST prunes single weights.
# 2:4 semi-structured sparsity was 2.5-4x slower than dense at these shapes (the project's GPU notes).

# %% [markdown]
# ## What it shows
#
# * **Weight sparsity through masks saves no time, and now costs little.** MST's steps {glue:text}`mst_summary`.
#   Over every stored call the warm-up and restoration phases ran at {glue:text}`mst_calls_span` (calls before
#   session 4 timed one round, unpaired, and ran older code; a masks-only step cannot be faster than dense,
#   so ratios above 1 are noise).
#   Its ultra phase counts a fraction of dense's FLOPs (last column of the table), but masks change which
#   numbers are zero, not how many are multiplied. With hybrid sparse attention switched on, the ultra phase
#   ran at {glue:text}`ultra_cudnn_text` of dense speed through `cudnn_split` (what `"auto"` picks where
#   `nvidia-cudnn-frontend` is installed), {glue:text}`ultra_flash_text` through `flash_split`, and
#   {glue:text}`ultra_flex_text` through FlexAttention: the attention pattern and its kernels, not the masks,
#   decide.
# * **FlexAttention skips empty tiles, but the official pattern has none.** The best FlexAttention speed was
#   {glue:text}`flex_best`; for the `local_strided` pattern MST uses, {glue:text}`flex_local_strided`.
# * **Splitting the pattern beats dense where its kernels are ours or the band is cheap.** `flash_split`
#   (FlashAttention band, tensor-core Triton far part) ran {glue:text}`flash_verdict`; `cudnn_split` (cuDNN
#   band, same far part) ran {glue:text}`cudnn_verdict`. MST's own pattern, `local_strided`, reaches dense's
#   speed at the paper's context of 1024 only with cuDNN's band: FlashAttention 2's band, written for the
#   previous GPU generation, costs about as much as cuDNN's causal attention there (the layer tables above).
#   It does not beat dense at 1024: with cuDNN's band, band plus strided keys cost what causal attention
#   costs. `fixed` is slower everywhere: its summary columns still run as compiled tensor algebra, with no
#   kernel of ours. The gain is bounded by attention's share of the step anyway: at a context of 1024 most of
#   a GPT-2 small step is the weight matrices.
# * **The `mini` model's hybrid attention needs CUDA graphs to keep up with dense at 1024.** Eager, and
#   compiled as the presets train, its steps are slower than dense's. Its eager dense step keeps the GPU
#   busy (session 6's profiled call: {glue:text}`eager_busy_text`; session 5's guess that the eager `mini`
#   step was bound by the host was wrong for dense). The split backends' host work opens gaps in the HSA
#   steps: an autograd function and several launches per layer, and the cuDNN band's graph execution costs
#   about 0.1 ms of host time per call (`tools/gpu/cudnn_probe2.py`). With CUDA graphs
#   (`train.compile="reduce-overhead"`) the gaps close. Against dense as the presets run it, the ultra
#   phase then ran at {glue:text}`graphs_ultra_text` in the step benchmark, and at
#   {glue:text}`graphs_run_ultra` in whole training runs. At 1024 the band plus the strided keys cost about
#   what causal attention costs in kernel time, so the hybrid attention saves nothing at the `mini` size
#   either; what MST's ultra phase gains there comes from its zero weights (above).
# * **The official way is slower** (the method notes report 1.9x slower than causal attention on an
#   H200). The same `local_strided` pattern as a dense boolean mask passed to SDPA ran at
#   {glue:text}`sdpa_local_strided`: a mask disables the fused causal kernels and still computes every score.
# * **Block-sparse weights paid only on the MLP matrices at low density**, by event time
#   {glue:text}`bs_best` (kernel time {glue:text}`bs_best_kernel`), far below the FLOP count, and they are
#   not part of MST's training.
#
# So the FLOP chapter's 4x is a statement about arithmetic, not about time: with masked dense weights, MST
# cannot train faster than dense; the table shows what its masks and its attention pattern cost.
#
# ## Caveats
#
# * Timings depend on the device, the PyTorch version, compilation and the batch; only ratios measured in
#   the same call are compared here. With the `smoke` preset the "benchmark" is a toy model on whatever
#   machine runs the notebook (on a shared CPU the ratios are noise); read the GPU numbers from a `mini` or
#   `paper` execution.
# * The step table runs the model without `torch.compile` (compiling every variant would take longer than
#   timing it); the compiled calls (own section) time a few variants at 1024, and the whole-run comparison
#   compiles.
# * The MST rows use the phase's mid-point density with a random mask; a real run's masks differ in where
#   the nonzeros are, which masked dense products do not care about.
# * The topology update's time is measured on a few calls and amortised; on update steps the official
#   schedule also skips the optimizer step, which a per-step median does not show.
