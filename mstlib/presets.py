"""Presets (scales) x methods: every run of the book is ``make(preset, method, seed, overrides)``.

Presets (``PRESETS``):

* ``smoke``: CPU, seconds. GPT 2 layers x width 32 (2 heads), context 64 tokens, 30 steps of 2 x 4
  sequences, topology updates every 5 steps (so all three MST phases see updates), HSA window/stride 16
  (128 would exceed the context), no compile, float32. For tests and notebooks without a GPU.
* ``mini``: one H200. GPT 6 x 384 (6 heads of 64), context 1024, 1,000 steps of 32 x 2 sequences
  (65.5M tokens, 1.3 passes over the ``offline-50m`` corpus), updates every 25 steps, compile. Sized so the
  whole book's runs fit 30 minutes of a 4-GPU H200 machine (see the reproduce page).
* ``paper``: the paper's GPT-2 124M (12 x 768, 12 heads, context 1024, vocabulary 50304), 600,000 steps
  of 12 sequences x 40 accumulation steps x 1024 tokens = 491,520 tokens per step (480 sequences), nanoGPT's
  Table 4 hyperparameters (AdamW lr 6e-4, betas (0.9, 0.95), weight decay 0.1, 2,000 warm-up steps, cosine to
  6e-5, clip 1.0), OpenWebText. Where the paper is silent the official code's choices: every Linear and the
  tied lm_head sparse (``sparse_set="all"``), ER distribution, random initial mask, update interval
  ``delta`` = 100, drop fraction ``zeta`` = 0.3 cosine-annealed and restarted per phase, mixed growth 3:1.

Methods (``METHODS``):

* ``dense``: no masks (``schedule.kind="dense"``, ``growth="none"``), dense causal attention.
* ``mst``: sparsity variation (warm-up 0 -> ``s_max``, ultra-sparsification at ``s_max``, restoration to
  ``s_end``), mixed growth (75 % by gradient, 25 % random), hybrid sparse attention ``local_strided``
  during the ultra-sparsification phase.
* ``rigl`` (gradient growth), ``set`` (random growth), ``ss`` (static random mask, no updates): constant
  sparsity solved by bisection on :func:`mstlib.flops.training_flops` so each costs MST's training FLOPs
  (rounded to 4 decimals: within 0.05 % of MST); dense attention.
* ``tiny``: a dense GPT with head dimension as the preset's (64 for mini and paper), ``n_layer`` and
  ``n_embd`` searched (at most the preset's) for the training FLOPs closest to MST's.

**The MST default and its arithmetic** (paper scale; ``python -m mstlib flops --preset paper --all-methods``
prints the exact figures). Per token the dense model costs ``6 N + 12 L d T`` = 741.5M (weights) + 113.2M
(attention) = 854.8M FLOPs. MST's weight cost scales with the mean density of the sparse set (which holds
all but 19,200 LayerNorm weights), its attention cost with the pattern density during the HSA window:

* weights: with the cubic ramp ``r(x) = 1 - (1 - x)^3`` (mean 3/4) and the phases below, the mean
  sparsity is ``w s_max 3/4 + (u) s_max + (1 - w - u) (s_max + (s_end - s_max) 3/4)`` (w = warm-up fraction,
  u = ultra fraction). Our default ``s_max = 0.9, s_end = 0.5``, phases ``[0, 0.25) [0.25, 0.75) [0.75, 1]``
  give 0.25 * 0.675 + 0.5 * 0.9 + 0.25 * 0.6 = 0.76875 mean sparsity, density 0.23125:
  741.4M * 0.23125 = 171.5M FLOPs per token;
* dense gradient every 100th step (mixed growth needs it): ``2 (numel - nnz)`` per token on 1 % of
  steps: 0.01 * 2 * 123.6M * 0.769 = 1.9M per token;
* attention: ``local_strided`` at T = 1024, window = stride = 128 keeps 126,528 of 524,800 causal pairs
  (rho = 0.2411). HSA during the ultra phase only (half the run) leaves 113.2M * (0.5 + 0.5 * 0.2411) = 70.3M.

Total (with 0.1M for the dense LayerNorm weights) 243.8M = 0.285 of dense (3.5x). To reach about 4x with HSA kept to the ultra phase (its default, the
official code's single ``atten_schedule`` window) the peak must be higher or the ultra phase longer. We keep
the phase boundaries at quarters and raise the peak: ``s_max = 0.95, s_end = 0.5`` (mean sparsity
0.25 * 0.7125 + 0.5 * 0.95 + 0.25 * 0.6125 = 0.80625; weights 741.4M * 0.19375 = 143.7M; dense gradient 2.0M;
attention 70.3M; LayerNorm weights 0.1M; total 216.1M = **0.253 of dense, 3.96x**). The exact figure is printed by the CLI and tested
(``tests/test_presets.py``: ratio in [0.22, 0.28]). These values live in this preset, so the
``ScheduleConfig`` defaults in :mod:`mstlib.config` are unchanged.

HSA pattern default ``local_strided``: it is the Sparse Transformer's own "strided" attention (a local band
plus a strided look-back, the official code's ``attn_mode='sparse'``), the only official pattern that keeps
both the last 128 tokens and a path to every earlier token within one layer; ``local`` alone forgets
everything beyond 128 tokens per layer, ``strided`` alone loses the neighbourhood, and ``fixed`` routes all
long-range information through one summary token per block.

Overrides: ``make(..., overrides={"train.max_iters": 10})`` (dotted keys, validated by
:meth:`mstlib.config.RunConfig.replace`). The FLOP matching of ``rigl``/``set``/``ss``/``tiny`` is done
against MST *with the same overrides on the shared keys* (``model.*``, ``train.*``, ``data.*``,
``sparsity.*``, ``topology.update_interval``, ``topology.stop_at``); an explicit ``schedule.sparsity``
override skips the solve.

CLI: ``python -m mstlib config --preset mini --method mst [--set k=v ...]`` prints the config as JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any, Mapping

from .config import (
    AttentionConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    ScheduleConfig,
    SparsityConfig,
    TopologyConfig,
    TrainConfig,
    parse_override,
)
from .errors import ConfigError
from .flops import training_flops

__all__ = ["PRESETS", "METHODS", "make", "dense_reference_model", "matched_sparsity", "tiny_model", "run_flops", "solve_for_flops",
           "tiny_for_flops", "add_arguments", "main"]

PRESETS: tuple[str, ...] = ("smoke", "mini", "paper")
METHODS: tuple[str, ...] = ("dense", "mst", "rigl", "ss", "tiny", "set")

#: Decimals kept of a solved baseline sparsity (1e-4 in sparsity moves paper-scale FLOPs by < 0.05 %).
SPARSITY_DECIMALS = 4

#: MST's sparsity variation in every preset (see the module docstring for the 4x arithmetic).
MST_SCHEDULE = ScheduleConfig(
    kind="mst", s_max=0.95, s_end=0.5, warmup_end=0.25, restore_start=0.75, shape="cubic"
)

#: MST's hybrid sparse attention pattern (window and stride set per preset).
MST_PATTERN = "local_strided"


# ------------------------------------------------------------------------------------------ scales


def _base(preset: str) -> RunConfig:
    """The preset's shared parts (model, training, data, topology cadence, attention window), method-free."""
    if preset == "smoke":
        model = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)
        train = TrainConfig(
            max_iters=30, batch_size=4, grad_accum=2, lr=1e-3, min_lr=1e-4, warmup_iters=5,
            dtype="float32", compile=False, eval_interval=10, eval_iters=2, log_interval=5,
        )
        topo = TopologyConfig(update_interval=5)
        window = 16
        # a few documents of `offline`, prepared on first use by mstlib.pipeline (seconds)
        data = DataConfig(corpus="offline-smoke")
    elif preset == "mini":
        model = ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024)
        train = TrainConfig(
            max_iters=1000, batch_size=32, grad_accum=2, lr=1e-3, min_lr=1e-4, warmup_iters=100,
            compile=True, eval_interval=250, eval_iters=40, log_interval=10,
        )
        topo = TopologyConfig(update_interval=25)
        window = 128
        # the first 50M train tokens of `offline` (Wikipedia + Gutenberg interleaved in proportion) and its
        # full validation split: what fits one 64 MiB transfer to the GPU machine (tools/stage_corpus.sh)
        data = DataConfig(corpus="offline-50m")
    elif preset == "paper":
        model = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
        # nanoGPT's train_gpt2 config = the paper's Table 4; 12 x 40 x 1024 = 491,520 tokens per step
        train = TrainConfig(
            max_iters=600_000, batch_size=12, grad_accum=40, lr=6e-4, min_lr=6e-5, warmup_iters=2000,
            lr_decay_iters=600_000, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
            dtype="bfloat16", compile=True, eval_interval=2000, eval_iters=200, log_interval=10,
        )
        topo = TopologyConfig(update_interval=100, drop_fraction=0.3)  # official delta, zeta
        window = 128  # official atten_stride
        data = DataConfig(corpus="openwebtext")
    else:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    return RunConfig(
        method="dense", preset=preset, model=model, train=train, data=data,
        sparsity=SparsityConfig(sparse_set="all", distribution="er", init="random"),
        schedule=ScheduleConfig(kind="dense", s_max=0.0, s_end=0.0),
        topology=TopologyConfig(**{**topo.__dict__, "growth": "none"}),
        attention=AttentionConfig(pattern="dense", window=window, stride=window),
    )


def _method(preset: str, method: str, sparsity: float = 0.0) -> RunConfig:
    """The method's config at the preset's scale, before matching (``sparsity`` for constant methods)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    base = _base(preset)
    d = base.to_dict()
    d["method"] = method
    if method in ("dense", "tiny"):
        pass
    elif method == "mst":
        d["schedule"] = MST_SCHEDULE.__dict__.copy()
        d["topology"].update(growth="mixed", mix_gradient_fraction=0.75)
        d["attention"].update(pattern=MST_PATTERN, when="ultra")
    else:
        growth = {"rigl": "gradient", "set": "random", "ss": "none"}[method]
        d["schedule"] = ScheduleConfig(kind="constant", sparsity=sparsity, s_max=0.0, s_end=0.0).__dict__.copy()
        d["topology"].update(growth=growth)
    return RunConfig.from_dict(d)


# ------------------------------------------------------------------------------------ FLOP matching

#: Override keys shared with the MST reference when matching FLOPs (prefixes end with ".").
_SHARED = ("model.", "train.", "data.", "sparsity.", "topology.update_interval", "topology.stop_at", "seed")


def _shared(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if any(k == s or (s.endswith(".") and k.startswith(s)) for s in _SHARED)}


def _freeze(overrides: Mapping[str, Any]) -> str:
    return json.dumps(dict(overrides), sort_keys=True)


def dense_reference_model(run: RunConfig) -> ModelConfig:
    """The model of the dense run ``run`` is compared with: its own, except for ``tiny``, whose point is
    to be a *smaller* model, so it is compared with its preset's full-size dense model (same context)."""
    if run.method == "tiny":
        if run.preset in PRESETS:
            full = make(run.preset, "dense").model
            return ModelConfig(n_layer=full.n_layer, n_head=full.n_head, n_embd=full.n_embd,
                               block_size=run.model.block_size, vocab_size=run.model.vocab_size)
    return run.model


def run_flops(run: RunConfig) -> float:
    """Total training FLOPs of ``run`` (:func:`mstlib.flops.training_flops`, no series)."""
    return training_flops(run, series=False, dense_model=dense_reference_model(run)).total_flops


def solve_for_flops(base: RunConfig, key: str, lo: float, hi: float, target: float,
                    decimals: int = SPARSITY_DECIMALS) -> float:
    """The value of the float field ``key`` in [``lo``, ``hi``], rounded to ``decimals``, at which ``base``
    costs the closest to ``target`` training FLOPs, by bisection. The FLOPs must be monotone in ``key``
    over the interval (either direction); a target outside the FLOPs at the two ends is a ConfigError."""
    def flops(v: float) -> float:
        return run_flops(base.replace(**{key: v}))

    f_lo, f_hi = flops(lo), flops(hi)
    falling = f_lo >= f_hi
    if not min(f_lo, f_hi) <= target <= max(f_lo, f_hi):
        raise ConfigError(
            f"no {key} in [{lo}, {hi}] makes this {base.method} run cost {target:.4e} FLOPs (it costs "
            f"{f_lo:.4e} at {lo} and {f_hi:.4e} at {hi}); check the overrides")
    while hi - lo > 10 ** -(decimals + 2):
        mid = 0.5 * (lo + hi)
        if (flops(mid) > target) == falling:
            lo = mid
        else:
            hi = mid
    cand = {round(lo, decimals), round(hi, decimals)}
    return min(sorted(cand), key=lambda v: abs(flops(v) - target))


def tiny_for_flops(base: RunConfig, target: float) -> ModelConfig:
    """The dense GPT with ``base``'s head dimension, at most its depth and heads, whose training FLOPs on
    ``base``'s tokens are closest to ``target`` (ties go to the deeper model: depth is what a small GPT
    needs most)."""
    m = base.model
    hd = m.n_embd // m.n_head
    best: tuple[float, int, int] | None = None
    for n_layer in range(1, m.n_layer + 1):
        for n_head in range(1, m.n_head + 1):
            run = base.replace(**{"model.n_layer": n_layer, "model.n_head": n_head, "model.n_embd": n_head * hd})
            err = abs(run_flops(run) / target - 1.0)
            if best is None or err < best[0] - 1e-12:
                best = (err, n_layer, n_head)
    assert best is not None
    return ModelConfig(n_layer=best[1], n_head=best[2], n_embd=best[2] * hd, block_size=m.block_size,
                       vocab_size=m.vocab_size)


@functools.lru_cache(maxsize=64)
def _mst_flops(preset: str, shared_json: str) -> float:
    return run_flops(_method(preset, "mst").replace(**json.loads(shared_json)))


@functools.lru_cache(maxsize=64)
def _solve_sparsity(preset: str, method: str, shared_json: str) -> float:
    base = _method(preset, method).replace(**json.loads(shared_json))
    # FLOPs fall as sparsity rises; 0.9999 keeps a few weights in every matrix
    return solve_for_flops(base, "schedule.sparsity", 0.0, 0.9999, _mst_flops(preset, shared_json))


def matched_sparsity(preset: str, method: str, overrides: Mapping[str, Any] | None = None) -> float:
    """The constant sparsity at which ``method`` (rigl, set or ss) costs MST's training FLOPs."""
    if method not in ("rigl", "set", "ss"):
        raise ConfigError(f"matched_sparsity is for the constant-sparsity methods rigl, set, ss, not {method!r}")
    return _solve_sparsity(preset, method, _freeze(_shared(overrides or {})))


@functools.lru_cache(maxsize=64)
def _solve_tiny(preset: str, shared_json: str) -> ModelConfig:
    base = _method(preset, "tiny").replace(**json.loads(shared_json))
    return tiny_for_flops(base, _mst_flops(preset, shared_json))


def tiny_model(preset: str, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """Tiny's model: the dense GPT (head dimension as the preset's, at most its depth and width) whose
    training FLOPs are closest to MST's with the same tokens."""
    return _solve_tiny(preset, _freeze(_shared(overrides or {})))


# ------------------------------------------------------------------------------------------- make


def make(preset: str, method: str, seed: int = 0, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The validated :class:`~mstlib.config.RunConfig` of ``method`` at ``preset`` scale with ``seed``;
    ``overrides`` are dotted keys (``{"train.max_iters": 10}``) applied last. Unknown presets, methods and
    keys are :class:`~mstlib.errors.ConfigError` naming the valid ones."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    overrides = dict(overrides or {})
    if method in ("rigl", "set", "ss") and "schedule.sparsity" not in overrides:
        run = _method(preset, method, matched_sparsity(preset, method, overrides))
    elif method == "tiny":
        m = tiny_model(preset, overrides)
        run = _method(preset, "tiny").replace(
            **{"model.n_layer": m.n_layer, "model.n_head": m.n_head, "model.n_embd": m.n_embd}
        )
    else:
        run = _method(preset, method)
    return run.replace(**{"seed": seed, **overrides})


# -------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m mstlib config``: the full config of a preset and method as JSON."""
    parser.add_argument("--preset", default="mini", help=f"one of {', '.join(PRESETS)} (default mini)")
    parser.add_argument("--method", default="mst", help=f"one of {', '.join(METHODS)} (default mst)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. --set train.max_iters=100)")


def main(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.overrides)
    run = make(args.preset, args.method, seed=args.seed, overrides=overrides or None)
    out = run.to_dict()
    out["run_id"] = run.run_id()
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
