"""Measured training speed: dense, MST in each phase, and hybrid sparse attention, side by side.

Every variant is timed in the same process on the same device, one after the other, with the same model
size, context and tokens per step, so their ratios are comparable (absolute numbers depend on the GPU).
A variant's time per step is the median over ``repeats`` timed optimizer steps after ``warmup`` untimed
ones (CUDA events around each step; on the CPU a wall clock). MST's topology update is timed separately
and amortised over its interval (``update_ms / update_interval`` is added to the step).

Variants:
* ``dense``: the plain GPT step (bf16 autocast on CUDA, fused AdamW).
* ``mst_warmup`` / ``mst_ultra`` / ``mst_restoration``: masks at the sparsity each phase has at its middle
  (the schedule of the ``mst`` preset), gradients masked before the step and weights after it, the update
  amortised; in the ultra phase with hybrid sparse attention (the preset's pattern, backend ``"auto"``;
  ``mst_ultra_flash`` / ``mst_ultra_cudnn`` / ``mst_ultra_flex``: the same through the ``flash_split`` /
  ``cudnn_split`` / ``flex`` backend). Each
  row with a pattern records the backend that ran (``attn_backend``): ``"auto"`` resolved to ``flex`` in
  files written before session 4 and to ``flash_split`` (for ``local_strided``) since.
* ``hsa_flex:<pattern>`` / ``hsa_flash:<pattern>`` / ``hsa_cudnn:<pattern>`` / ``hsa_split:<pattern>`` /
  ``hsa_sdpa:<pattern>``: dense weights with the attention pattern through one FlexAttention block mask
  (skips empty tiles), the ``flash_split`` backend (FlashAttention's sliding window for the band, the
  strided keys through Triton kernels, the summary columns as compiled tensor algebra, one custom backward:
  :mod:`mstlib.attention.flash_split`), the ``cudnn_split`` backend (the same with cuDNN's sliding window for the band:
  :mod:`mstlib.kernels.cudnn_band`), the ``split`` backend (a
  FlexAttention band plus the far part through FlexAttention, see :mod:`mstlib.attention`) or the official
  code's dense boolean mask passed to SDPA.

Compiled (``--compile [MODE ...]``, :data:`COMPILE_MODES`): ``default`` is how the presets train;
``reduce-overhead`` replays the compiled forward and backward as CUDA graphs (rows then count the graphs
Inductor declined to capture, ``cudagraph_skips``). Several modes are timed in the same rounds, one row per
(variant, mode). The step calls the model loss-only (``return_logits=False``), as training does.

Each model size takes its own preset's MST settings (``mini``: update every 25 steps; ``paper``: every 100,
the official interval), so the amortised update is the one that preset's runs pay.

``predicted_ratio`` (:func:`predicted_ratio`) says what we expected before measuring: masks over dense
storage do the same dense matrix products, so MST's masks are predicted to save nothing (1.0); the attention
variants, and MST's ultra phase with its attention pattern, at
``1 / (1 - f_attn * (1 - b))`` where ``b`` is the fraction of 128x128 score tiles the backend computes,
relative to causal attention (:func:`mstlib.attention.tile_fraction`: FlexAttention's non-empty tiles; for
``split`` and ``flash_split`` the tiles of the band part, the far part counted as free; 1.0 for the masked
SDPA way, which computes every score), and ``f_attn`` the share of attention in the dense step's FLOPs.
Step files written before this rule gave ``hsa_sdpa`` FlexAttention's tiles (a prediction above 1).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import provenance
from . import schedule as sched
from .attention.backends import build_attention, flex_pattern_attention, resolve_backend
from .attention.patterns import FLEX_BLOCK, pattern_density, tile_fraction
from .config import MODEL_SIZES, RunConfig
from .errors import ConfigError
from .flops import nanogpt_params
from .presets import make
from .results import atomic_write_json
from .topology import Sparsifier
from .training import autocast_dtype, build_model, build_optimizer, resolve_device

#: Every variant :func:`time_variant` knows; ``hsa_flex@64``/``@32`` (FlexAttention with smaller tiles)
#: failed to compile on the H200 with torch 2.11 (``NoValidChoicesError``), so they are not in the default.
VARIANTS = ("dense", "mst_warmup", "mst_ultra", "mst_ultra_flash", "mst_ultra_flex", "mst_restoration",
            "hsa_flex:local", "hsa_flex:local_strided", "hsa_flex:fixed", "hsa_flex:strided",
            "hsa_flash:local", "hsa_flash:local_strided", "hsa_flash:fixed", "hsa_flash:strided",
            "hsa_cudnn:local", "hsa_cudnn:local_strided", "mst_ultra_cudnn",
            "hsa_split:local_strided", "hsa_split:fixed", "hsa_split:strided",
            "hsa_flex@64:local_strided", "hsa_flex@32:local_strided",
            "hsa_sdpa:local", "hsa_sdpa:local_strided")
#: Not by default: the tile-size experiments, and the cuDNN band (it needs ``nvidia-cudnn-frontend``).
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if "@" not in v and "cudnn" not in v)
#: The attention backend each kind of variant asks for (the part before ``:`` and ``@``); ``"auto"`` is
#: resolved on the device (:func:`mstlib.attention.resolve_backend`, recorded per row as ``attn_backend``).
KIND_BACKENDS = {"hsa_flex": "flex", "hsa_flash": "flash_split", "hsa_cudnn": "cudnn_split", "hsa_split": "split",
                 "hsa_sdpa": "sdpa_mask", "mst_ultra": "auto", "mst_ultra_flash": "flash_split",
                 "mst_ultra_cudnn": "cudnn_split", "mst_ultra_flex": "flex"}


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """A function that runs ``fn`` once and returns its time in milliseconds."""
    if device.type == "cuda":
        def run(fn: Callable[[], None]) -> float:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b)
    else:
        def run(fn: Callable[[], None]) -> float:
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
    return run


def kernel_profile(step: Callable[[], None], n: int) -> tuple[float | None, list[dict[str, Any]]]:
    """GPU kernel time of one ``step`` (torch.profiler: the sum of the device time of every kernel, averaged
    over ``n`` steps), and the same per kernel name (longest first); ``(None, [])`` where the profiler
    fails. Unlike the CUDA-event time it leaves out the gaps where the GPU waits for Python: a step whose
    event time is well above its kernel time is bound by the host (``gpu_busy`` in the step rows), and for a
    layer timed alone the gaps can be most of a small kernel's time. The per-kernel list says where a
    variant's time goes. Shared with ``benchmarks/block_sparse.py`` and ``benchmarks/attention_speed.py``."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                step()
            torch.cuda.synchronize()
        per = [{"name": e.key[:160], "ms": getattr(e, "self_device_time_total", 0) / 1e3 / n,
                "calls": e.count / n} for e in prof.key_averages()]
    except Exception:  # the profiler is a diagnostic here; its failure is not the benchmark's
        return None, []
    per = sorted((k for k in per if k["ms"] > 0), key=lambda k: -k["ms"])
    return sum(k["ms"] for k in per), per


def _run_config(model: str, context: int, batch: int, compile_: bool) -> RunConfig:
    base = make(model if model in ("smoke", "mini", "paper") else "mini", "mst")
    mc = MODEL_SIZES[model]
    return base.replace(**{
        "model.n_layer": mc.n_layer, "model.n_head": mc.n_head, "model.n_embd": mc.n_embd,
        "model.block_size": context, "train.batch_size": batch, "train.grad_accum": 1,
        "train.compile": compile_,
        "attention.window": min(base.attention.window, context), "attention.stride": min(base.attention.stride, context),
    })


def _phase_sparsity(run: RunConfig, phase: str) -> float:
    ph = {p.name: p for p in sched.phases(run.schedule)}[phase]
    return sched.target_sparsity((ph.start + ph.end) / 2, run.schedule)


def attention_share(run: RunConfig) -> float:
    """Share of attention products (12*L*d*T) in nanoGPT's dense FLOPs per token (6N + 12*L*d*T)."""
    m = run.model
    attn = 12 * m.n_layer * m.n_embd * m.block_size
    return attn / (6 * nanogpt_params(m) + attn)


#: ``torch.compile`` modes the benchmark takes (``--compile MODE``): ``"default"`` is how the presets train;
#: ``"reduce-overhead"`` replays the compiled forward and backward as CUDA graphs (no Python per kernel);
#: ``"max-autotune-no-cudagraphs"`` autotunes Inductor's kernels.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def time_variant(run: RunConfig, variant: str, device: torch.device, repeats: int, warmup: int,
                 profile: bool = False, compile_mode: str = "default") -> dict[str, Any]:
    """Median time of one optimizer step of ``variant`` (see the module docstring). ``profile`` (CUDA):
    also the profiler's kernel time of a step, ``gpu_ms``, its ratio to the event time, ``gpu_busy``
    (near 1: the GPU is the bound; well below: the host is), and the longest kernels, ``kernels``.
    ``compile_mode``: :data:`COMPILE_MODES`, when ``run.train.compile``."""

    if device.type == "cuda":
        # every variant compiles its own FlexAttention graph; past dynamo's recompile limit (8) it would
        # silently fall back to eager FlexAttention (10x slower), so start each variant from a clean cache
        from .attention import common, flash_split, split

        torch._dynamo.reset()
        common.compiled_flex.cache_clear()
        split._compiled_merge2.cache_clear()
        flash_split._compiled.cache_clear()
    kind, _, pattern = variant.partition(":")
    kind, _, tile = kind.partition("@")  # "hsa_flex@64": FlexAttention with 64-token tiles
    block = int(tile) if tile else None
    model = build_model(run, device)
    opt = build_optimizer(model, run, device)
    sparsifier = None
    density = 1.0
    attn_cfg = None
    if kind.startswith("mst_"):
        # "mst_ultra_flash" / "_cudnn" / "_flex": the ultra phase with HSA through that backend, not "auto"
        phase = kind.removeprefix("mst_").partition("_")[0]
        sparsifier = Sparsifier(model, run, opt)
        sparsifier.masks.init(_phase_sparsity(run, phase), run.seed, "random")
        density = sparsifier.density()
        if phase == "ultra" and run.attention.pattern != "dense":
            attn_cfg = run.attention.__class__(**{**run.attention.__dict__, "backend": KIND_BACKENDS[kind]})
    elif kind in KIND_BACKENDS:
        attn_cfg = run.attention.__class__(**{**run.attention.__dict__, "pattern": pattern,
                                              "backend": KIND_BACKENDS[kind]})
    if attn_cfg is not None:
        if block is not None:
            fn = flex_pattern_attention(attn_cfg.pattern, run.model.block_size, attn_cfg.window, attn_cfg.stride,
                                        device, block=block)
        else:
            fn = build_attention(attn_cfg, run.model.block_size, device)
        model.set_attention(fn, attn_cfg.layers)
    graphs = run.train.compile and compile_mode == "reduce-overhead"
    fwd = torch.compile(model, mode=None if compile_mode == "default" else compile_mode) if run.train.compile else model
    dtype = autocast_dtype(run, device)
    g = torch.Generator(device="cpu").manual_seed(0)
    B, T = run.train.batch_size, run.model.block_size
    x = torch.randint(0, run.model.vocab_size, (B, T), generator=g).to(device)
    y = torch.randint(0, run.model.vocab_size, (B, T), generator=g).to(device)

    def fwd_bwd() -> None:
        if graphs:  # a new iteration: the CUDA graphs may reuse the previous step's output memory
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            _, loss = fwd(x, y, return_logits=False)
        loss.backward()

    def step() -> None:
        fwd_bwd()
        if sparsifier is not None:
            sparsifier.mask_grads_()
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sparsifier is not None:
            sparsifier.after_step_()

    timer = _timer(device)
    skips = _cudagraph_skips()
    for _ in range(warmup):
        step()
    times = [timer(step) for _ in range(repeats)]
    gpu_ms, kernels = kernel_profile(step, 3) if profile and device.type == "cuda" else (None, [])
    update_ms = 0.0
    if sparsifier is not None:
        fwd_bwd()  # dense gradients for the update, as on a real update step
        ph = {"warmup": 0.0, "ultra": 0.5, "restoration": 1.0}[phase]
        upd_step = max(run.topology.update_interval, int(ph * run.train.max_iters) // run.topology.update_interval * run.topology.update_interval)
        upd_step = min(upd_step, run.train.max_iters - 1)
        update_ms = statistics.median(timer(lambda: sparsifier.update(upd_step)) for _ in range(3))
        opt.zero_grad(set_to_none=True)
    amortised = update_ms / run.topology.update_interval
    ms = statistics.median(times) + amortised
    tokens = B * T
    row: dict[str, Any] = {
        "variant": variant, "density": density, "ms_per_step_median": ms,
        "ms_p10": _quantile(times, 0.1) + amortised, "ms_p90": _quantile(times, 0.9) + amortised,
        "update_ms": update_ms,
        "tokens_per_s": tokens / (ms / 1e3), "tokens_per_step": tokens,
    }
    if run.train.compile:
        row["compile_mode"] = compile_mode
    if graphs:  # graphs Inductor declined to capture (they then run without CUDA graphs; TORCH_LOGS=perf_hints says why)
        row["cudagraph_skips"] = _cudagraph_skips() - skips
    if gpu_ms is not None:  # the step's kernels, against its event time without the amortised update
        row.update(gpu_ms=gpu_ms, gpu_busy=gpu_ms / statistics.median(times),
                   kernels=[{**k, "name": k["name"][:100]} for k in kernels[:12]])
    if attn_cfg is not None:
        # tiles computed relative to causal attention (masked SDPA computes every score: 1.0)
        resolved = resolve_backend(attn_cfg.backend, device, attn_cfg.pattern)
        row["attn_backend"] = resolved
        row["attn_block_density"] = tile_fraction(resolved, attn_cfg.pattern, T, attn_cfg.window, attn_cfg.stride,
                                                  block=block or FLEX_BLOCK)
    del model, opt, fwd, sparsifier
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _cudagraph_skips() -> int:
    """Inductor's running count of compiled graphs it ran without CUDA graphs in ``reduce-overhead`` mode."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def run_benchmark(models: Sequence[str] = ("mini", "paper"), contexts: Sequence[int] = (1024, 4096),
                  variants: Sequence[str] = DEFAULT_VARIANTS, device: str = "auto", repeats: int = 20, warmup: int = 5,
                  tokens_per_step: int = 32 * 1024, compile_: bool = False, progress: bool = True,
                  out: str | Path | None = None, rounds: int = 1, profile: bool = False,
                  compile_mode: str | Sequence[str] = "default") -> list[dict[str, Any]]:
    """Time every variant for every (model, context); rows as described in the module docstring, with
    ``ratio_to_dense`` (dense step time / variant step time: above 1 is faster than dense),
    ``predicted_ratio`` and ``tflops_achieved`` (the variant's counted training FLOPs per step / time).

    ``rounds > 1`` times the whole list of variants that many times, interleaved (the order reversed on
    every other round, so a slow drift of the GPU's clocks weighs on all variants alike). A row then holds
    the median over rounds of the per-round step times (``round_ms``), and ``ratio_to_dense`` is the median
    of the *paired* ratios (``round_ratios``: each round's dense time over the variant's in that round).
    ``out``: a JSON file rewritten (atomically) after every (model, context), so a run cut short by a time
    limit keeps what it measured. ``profile``/``compile_mode``: :func:`time_variant` (``compile_mode`` only
    with ``compile_``).

    ``compile_mode`` may name several modes (e.g. ``["default", "reduce-overhead"]``): every variant is then
    timed in each, interleaved in the same rounds, one row per (variant, mode). ``ratio_to_dense`` stays
    paired with dense *in the same mode*; ``ratio_to_first_mode_dense`` pairs each row with dense in the
    first mode named (how the presets train, when that is ``"default"``), so a variant in one mode is
    compared with the dense step a user would otherwise run."""
    # the text bar: tqdm.auto warns in a kernel without ipywidgets, and that warning lands in a page
    from tqdm import tqdm


    dev = resolve_device(device)
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"unknown benchmark variant {v!r}; choose from {list(VARIANTS)}")
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    modes = [compile_mode] if isinstance(compile_mode, str) else list(compile_mode)
    for mode in modes:
        if mode not in COMPILE_MODES:
            raise ConfigError(f"unknown compile mode {mode!r}; choose from {list(COMPILE_MODES)}")
    if not modes or len(set(modes)) < len(modes):
        raise ConfigError(f"compile modes {modes} must be one or more distinct modes")
    if modes != ["default"] and not compile_:
        raise ConfigError(f"compile mode {' '.join(modes)!r} without compiling: pass --compile {' '.join(modes)}")
    if rounds > 1 and "dense" not in variants:
        raise ConfigError("rounds > 1 pairs every variant with dense in the same round: include 'dense'")
    if dev.type != "cuda":
        # FlexAttention has no CPU backward (torch 2.13): time those variants on a GPU only (the split
        # backend runs on CPU, through masked dense math for its band)
        variants = [v for v in variants if not v.startswith("hsa_flex")]
    prov = provenance.collect(0, dev, 1)
    prov_cols = {"device_name": prov["device_name"], "torch": prov["packages"].get("torch"),
                 "git_commit": prov["git"].get("commit"), "git_dirty": prov["git"].get("dirty")}
    rows: list[dict[str, Any]] = []
    jobs = [(m, c) for m in models for c in contexts]
    cells = [(v, mode) for mode in modes for v in variants]  # what one round times
    bar = tqdm(total=len(jobs) * len(cells) * rounds, disable=not progress, desc="benchmark")
    for model, context in jobs:
        if model not in MODEL_SIZES:
            raise ConfigError(f"unknown model size {model!r}; choose from {sorted(MODEL_SIZES)}")
        batch = max(1, tokens_per_step // context)
        run = _run_config(model, context, batch, compile_)
        share = attention_share(run)
        timed: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in cells}
        errors: dict[tuple[str, str], str] = {}
        for rnd in range(rounds):
            for cell in (cells if rnd % 2 == 0 else list(reversed(cells))):
                bar.update()
                if cell in errors:
                    continue
                try:
                    timed[cell].append(time_variant(run, cell[0], dev, repeats, warmup, profile, cell[1]))
                except Exception as e:  # one variant the kernel cannot run must not lose the others
                    errors[cell] = f"{type(e).__name__}: {str(e)[:300]}"
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
        dense_ms = {mode: [r["ms_per_step_median"] for r in timed.get(("dense", mode), [])] for mode in modes}
        for v, mode in cells:
            mode_cols = {"compile_mode": mode} if compile_ else {}
            if (v, mode) in errors:
                rows.append({"model": model, "context": context, "variant": v, **mode_cols,
                             "error": errors[(v, mode)]})
                continue
            row = _combine_rounds(timed[(v, mode)], dense_ms[mode])
            paired = _paired_ratios(dense_ms[modes[0]], [r["ms_per_step_median"] for r in timed[(v, mode)]])
            if len(modes) > 1 and paired:
                row["ratio_to_first_mode_dense"] = statistics.median(paired)
            row.update(model=model, context=context, batch=batch, compile=compile_, attn_share_flops=share)
            row["predicted_ratio"] = predicted_ratio(share, row.get("attn_block_density"))
            row["backend"] = v.split(":")[0]
            row["flops_per_step"] = _step_flops(run, row)
            row["tflops_achieved"] = row["flops_per_step"] / (row["ms_per_step_median"] / 1e3) / 1e12
            row.update(prov_cols)
            rows.append(row)
        if out:
            atomic_write_json(out, rows)
    bar.close()
    return rows


def predicted_ratio(attn_share: float, tile_fraction: float | None) -> float:
    """Speed vs dense expected before measuring (module docstring): masks save nothing (1.0), and an attention
    pattern saves its skipped tiles' share of the attention FLOPs, ``1 / (1 - f_attn * (1 - b))``. MST's ultra
    phase with hybrid sparse attention gets the attention term too (files written before session 4 gave it
    1.0)."""
    if tile_fraction is None or (isinstance(tile_fraction, float) and math.isnan(tile_fraction)):
        return 1.0
    return 1.0 / (1.0 - attn_share * (1.0 - tile_fraction))


def _paired_ratios(dense_ms: list[float], ms: list[float]) -> list[float] | None:
    """Each round's dense time over the variant's in that round; ``None`` unless both have every round."""
    return [d / m for d, m in zip(dense_ms, ms)] if dense_ms and len(dense_ms) == len(ms) else None


def _combine_rounds(per_round: list[dict[str, Any]], dense_ms: list[float]) -> dict[str, Any]:
    """One row from a variant's rounds: medians over rounds; the ratio to dense paired round by round."""
    row = dict(per_round[0])
    if len(per_round) > 1:
        ms = [r["ms_per_step_median"] for r in per_round]
        for key in ("ms_per_step_median", "ms_p10", "ms_p90", "update_ms", "gpu_ms", "gpu_busy"):
            if all(r.get(key) is not None for r in per_round):
                row[key] = statistics.median(r[key] for r in per_round)
        row["tokens_per_s"] = row["tokens_per_step"] / (row["ms_per_step_median"] / 1e3)
        row["round_ms"] = ms
        paired = _paired_ratios(dense_ms, ms)
        if paired:
            row["round_ratios"] = paired
            row["ratio_to_dense"] = statistics.median(paired)
        row["rounds"] = len(per_round)
    elif dense_ms:
        row["ratio_to_dense"] = dense_ms[0] / row["ms_per_step_median"]
    return row


def _step_flops(run: RunConfig, row: dict[str, Any]) -> float:
    """Training FLOPs the variant *counts* per step: nanoGPT's 6N per token at the variant's weight density
    (embeddings and LayerNorms left as nanoGPT counts them) plus the attention term at its pattern density."""

    m = run.model
    n = nanogpt_params(m)
    attn = 12 * m.n_layer * m.n_embd * m.block_size

    variant = row["variant"]
    ad = 1.0
    if ":" in variant:
        ad = pattern_density(variant.split(":")[1], m.block_size, run.attention.window, run.attention.stride)
    elif variant.startswith("mst_ultra") and run.attention.pattern != "dense":
        ad = pattern_density(run.attention.pattern, m.block_size, run.attention.window, run.attention.stride)
    return (6 * n * row["density"] + attn * ad) * row["tokens_per_step"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["mini", "paper"], help="model sizes (config.MODEL_SIZES)")
    parser.add_argument("--contexts", nargs="+", type=int, default=[1024, 4096], help="tokens per sequence")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        help=f"variants to time (default: all but the small-tile ones; known: {', '.join(VARIANTS)})")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--tokens-per-step", type=int, default=32 * 1024)
    parser.add_argument("--compile", nargs="*", default=None, choices=COMPILE_MODES, metavar="MODE",
                        help="torch.compile the model (slow to start); MODE: "
                        f"{', '.join(COMPILE_MODES)} (default: default, how the presets train); several modes "
                        "time every variant in each, in the same rounds")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time the variant list this many times, interleaved; ratios paired per round")
    parser.add_argument("--out", default=None, help="write the rows as JSON here (atomically)")
    parser.add_argument("--profile", action="store_true",
                        help="also record each step's GPU kernel time (gpu_ms, gpu_busy: is the host the bound?)")


def main(args: argparse.Namespace) -> int:
    rows = run_benchmark(args.models, args.contexts, args.variants, args.device, args.repeats, args.warmup,
                         args.tokens_per_step, args.compile is not None, out=args.out, rounds=args.rounds,
                         profile=args.profile, compile_mode=args.compile or "default")
    modes = len({r.get("compile_mode") for r in rows}) > 1
    print(f"{'model':6} {'T':>5} {'variant':24} {'mode':>15} {'ms/step':>9} {'tok/s':>10} {'vs dense':>8} "
          f"{'pred':>6} {'busy':>5}" + (f" {'vs 1st':>6}" if modes else ""))
    for r in rows:
        head = f"{r['model']:6} {r['context']:5d} {r['variant']:24} {r.get('compile_mode', 'eager'):>15}"
        if "error" in r:
            print(f"{head} failed: {r['error'][:80]}")
            continue
        print(f"{head} {r['ms_per_step_median']:9.2f} {r['tokens_per_s']:10.0f} {r.get('ratio_to_dense', math.nan):8.3f} "
              f"{r['predicted_ratio']:6.3f} {r.get('gpu_busy', math.nan):5.2f}"
              + (f" {r.get('ratio_to_first_mode_dense', math.nan):6.3f}" if modes else ""))
    return 0
