"""Training FLOPs of a run, integrated exactly over its schedule, and the ratio to the dense run.

Conventions (nanoGPT's, so numbers compare with its MFU; a multiply-add is 2 FLOPs):

* **Dense per token** ``flops_per_token_dense = 6 N + 12 L d T`` with ``N`` the parameters as nanoGPT's
  ``get_num_params()`` counts them (all parameters, the tied ``wte``/``lm_head`` once, minus the position
  embedding ``wpe``), ``L`` layers, width ``d``, context ``T``. ``6 N``: every weight does 2 FLOPs forward
  and 4 backward (input gradient and weight gradient) per token. For the paper's GPT-2 124M this is
  854,770,176 FLOPs per token. The dense run's total is this times its tokens.
* **Sparse weights**: a sparse matrix with ``nnz`` nonzeros costs ``2 nnz`` forward and ``4 nnz`` backward
  per token (sparse input gradient ``2 nnz`` + sparse weight gradient ``2 nnz``). On a topology-update
  step of a run that grows by gradient (RigL, MST's mixed growth) the weight gradient must be dense, so
  that step costs ``2 nnz + 2 nnz + 2 numel`` per token (RigL's extra cost); random or no growth needs no
  dense gradient. Parameters outside the sparse set (LayerNorm weights; the tied embedding/lm_head when
  ``sparse_set="blocks"``) count ``6 numel``, as in ``6 N``, so a run at sparsity 0 costs exactly the dense run.
  The embedding lookup is free (its gradient is the lm_head's, already counted); LayerNorm, softmax and GELU
  arithmetic are ignored (as nanoGPT does); the cost of the topology update itself (a top-k over each
  matrix every ``update_interval`` steps, O(numel)) is ignored too.
* **Attention**: nanoGPT's ``12 L d T`` per token counts the score product ``q k^T`` and the value product
  ``a v`` at ``2 T d`` FLOPs each per token forward (every query against all ``T`` keys, causality not
  discounted), times 3 for forward + backward. With hybrid sparse attention active at a step, each layer
  that uses the pattern contributes ``12 d T * rho`` with ``rho = allowed pairs / causal pairs``
  (:func:`mstlib.attention.pattern_density`): **we scale nanoGPT's attention term by the pattern's density
  relative to causal attention**, so dense attention keeps nanoGPT's figure and a pattern keeps the same
  fraction of it as it keeps of the causal pairs.
* **When masks change**: :func:`mstlib.topology` updates masks *after* the backward of an update step, so
  the forward and backward of step ``t`` run with the masks in force at the end of step ``t - 1``:
  density ``1 - schedule.sparsity_in_force(t - 1)`` (step 0: ``sparsity_in_force(0)``, the initial mask).
  The update step ``u`` itself pays the dense weight gradient at the old density.
* **Tokens**: every step processes ``batch_size * grad_accum * block_size`` tokens (``grad_accum`` is the
  total over all processes, so the world size changes nothing); a run is ``train.max_iters`` steps
  ``0 .. max_iters - 1``.

Speed: the density is piecewise constant, so the integral is a sum over segments between update steps
(6,000 update intervals at paper scale: about 12,000 segments, each a few dictionary look-ups;
:func:`mstlib.masks.layer_nnz` is cached per sparsity). Phase and attention-window boundaries split
segments too, and each segment is checked to be constant at both ends.

CLI: ``python -m mstlib flops --preset paper --method mst [--json] [--all-methods] [--set k=v ...]``.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from . import schedule as sched
from .attention.patterns import pattern_density
from .config import ModelConfig, RunConfig
from .errors import ConfigError
from .masks import sparse_shapes

__all__ = [
    "FlopReport",
    "PhaseFlops",
    "nanogpt_params",
    "flops_per_token_dense",
    "training_flops",
]


# ------------------------------------------------------------------------------------ per-token pieces


def nanogpt_params(m: ModelConfig) -> int:
    """``N`` as nanoGPT's ``get_num_params(non_embedding=True)`` counts it (equal to
    :meth:`mstlib.model.GPT.num_params`): token embedding (= lm_head) ``V d``, per block two LayerNorm
    weights ``2 d`` and four Linear matrices ``12 d^2``, the final LayerNorm ``d``; ``wpe`` left out."""
    d = m.n_embd
    return m.vocab_size * d + m.n_layer * (12 * d * d + 2 * d) + d


def attention_flops_per_token(m: ModelConfig) -> int:
    """nanoGPT's attention term ``12 L d T`` FLOPs per token (forward + backward, full ``T`` keys)."""
    return 12 * m.n_layer * m.n_embd * m.block_size


def flops_per_token_dense(m: ModelConfig) -> int:
    """``6 N + 12 L d T`` FLOPs per token, nanoGPT's ``estimate_mfu`` numerator (GPT-2 124M: 854,770,176)."""
    return 6 * nanogpt_params(m) + attention_flops_per_token(m)


# --------------------------------------------------------------------------------------------- report


@dataclass
class PhaseFlops:
    """Training FLOPs of one phase: steps ``[start_step, end_step)``."""

    name: str
    start_step: int
    end_step: int
    tokens: int
    flops: float
    dense_flops: float
    ratio_to_dense: float
    mean_weight_density: float  # token-weighted mean of nnz / numel over the sparse set
    mean_attention_density: float  # token-weighted mean over layers of the attention term's factor


@dataclass
class FlopReport:
    """Training FLOPs of a run. FLOP counts are floats (exact integers up to 2**53; the paper run's
    ~2.5e20 total is exact to 1 part in 1e16, plenty). Per-token figures are FLOPs per training token."""

    method: str
    preset: str
    tokens: int
    steps: int
    tokens_per_step: int
    flops_per_token_dense: int  # of this run's own model, nanoGPT's 6N + 12LdT (for MFU)
    dense_reference: str  # "layers x width" of the dense run compared with (tiny: the preset's full model)
    flops_per_token_dense_reference: int
    dense_total_flops: float  # the reference dense run's total: flops_per_token_dense_reference * tokens
    total_flops: float
    ratio_to_dense: float
    n_update_steps: int
    dense_gradient_on_updates: bool
    phases: dict[str, PhaseFlops]
    #: totals of the parts: ``weights_dense`` (parameters outside the sparse set), ``weights_sparse``
    #: (``6 nnz`` per token), ``dense_gradient_extra`` (``2 (numel - nnz)`` per token on update steps),
    #: ``attention``
    breakdown: dict[str, float]
    #: columnar, one row per segment of constant density (update intervals; update steps of gradient-growth
    #: runs are their own one-step rows): ``start_step``, ``end_step``, ``sparsity``, ``weight_density``,
    #: ``attention_density``, ``flops_per_token``, ``dense_gradient``, ``phase``
    series: dict[str, list[Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON the CLI prints (without the series unless asked)."""
        d = asdict(self)
        d.pop("series")
        return d

    def to_json(self, series: bool = False) -> str:
        d = asdict(self) if series else self.summary()
        return json.dumps(d, indent=1)


# ----------------------------------------------------------------------------------------- integral


@functools.lru_cache(maxsize=65536)
def _nnz_total(S: int, sparsity: float) -> int:
    """Total nonzeros over a sparse set of ``S`` weights at global ``sparsity``.

    :func:`mstlib.masks.layer_nnz` guarantees that its per-matrix counts sum to exactly
    ``round((1 - sparsity) * S)`` (exact rational arithmetic, Python's round); the FLOP count needs only
    that sum, so it uses the identity instead of distributing over the matrices (3,000 distinct sparsities in
    the paper's MST run; ``tests/test_flops.py`` checks the identity against ``layer_nnz``)."""
    return round((1 - Fraction(sparsity)) * S)


def _first_step_at(frac: float, max_iters: int) -> int:
    """Smallest step ``t`` with ``progress(t) >= frac`` (exactly as :mod:`mstlib.schedule` compares)."""
    t = max(0, min(max_iters, math.ceil(frac * max_iters)))
    while t > 0 and sched.progress(t - 1, max_iters) >= frac:
        t -= 1
    while t < max_iters and sched.progress(t, max_iters) < frac:
        t += 1
    return t


def _regions(run: RunConfig) -> list[tuple[int, int, str, bool]]:
    """Step ranges ``[a, z)`` of constant phase and attention state: ``(a, z, phase name, HSA active)``.
    Split at every phase boundary and at the ends of a custom attention window, then checked: both ends
    of every range must agree with :func:`mstlib.schedule.phase_at` / ``attention_active``."""
    M = run.train.max_iters
    fracs = [ph.start for ph in sched.phases(run.schedule)]
    att = run.attention
    if att.when == "custom":
        fracs += [att.start, att.end]
    pts = sorted({0, M} | {_first_step_at(f, M) for f in fracs})
    out = []
    for a, z in zip(pts[:-1], pts[1:]):
        if z <= a:
            continue
        state = (sched.phase_at(sched.progress(a, M), run.schedule).name, sched.attention_active(a, run))
        end = (sched.phase_at(sched.progress(z - 1, M), run.schedule).name, sched.attention_active(z - 1, run))
        if state != end:  # a boundary this module did not foresee: a bug, so say so loudly
            raise AssertionError(f"FLOP region [{a}, {z}) is not constant: {state} at {a}, {end} at {z - 1}")
        out.append((a, z, *state))
    return out


def _segments(a: int, z: int, updates: list[int], dense_grad: bool) -> list[tuple[int, int, bool]]:
    """Split ``[a, z)`` into ranges of constant masks: ``(start, end, dense gradient)``. The masks change
    after the backward of an update step ``u``, so a new density starts at ``u + 1``; with gradient growth
    the update step ``u`` itself is its own range (it pays the dense weight gradient)."""
    lo = bisect.bisect_left(updates, a)
    hi = bisect.bisect_left(updates, z)
    pts = {a, z}
    for u in updates[lo:hi]:
        if dense_grad:
            pts.add(u)
        if u + 1 < z:
            pts.add(u + 1)
    pts_sorted = sorted(pts)
    upd = set(updates[lo:hi]) if dense_grad else set()
    return [(x, y, dense_grad and x in upd and y == x + 1) for x, y in zip(pts_sorted[:-1], pts_sorted[1:])]


def attention_layer_equivalents(run: RunConfig) -> float:
    """While the run's attention pattern is on: the attention cost in units of one dense causal layer,
    ``k * rho + (n_layer - k)`` for a pattern of density ``rho`` in ``k`` layers (``n_layer`` when the
    pattern is ``"dense"``). Divided by ``n_layer`` it is the layer-averaged attention density."""
    att, n = run.attention, run.model.n_layer
    if att.pattern == "dense":
        return float(n)
    k = len(att.layers) if att.layers else n
    rho = pattern_density(att.pattern, run.model.block_size, att.window, att.stride)
    return k * rho + (n - k)


def training_flops(
    run: RunConfig, world_size: int = 1, *, series: bool = True, dense_model: ModelConfig | None = None
) -> FlopReport:
    """Exact training FLOPs of ``run`` (see the module docstring for every convention).

    ``world_size`` is accepted for the API's sake and changes nothing: ``train.grad_accum`` already counts
    the micro-batches of all processes. ``series=False`` skips the per-segment series (faster, for
    bisection). ``dense_model``: the model of the dense run that ``ratio_to_dense`` divides by, trained on
    the same tokens (default: the run's own; a ``tiny`` run must be given one, see
    :func:`mstlib.presets.dense_reference_model`): the yardstick is data, so this module needs no presets."""
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    m = run.model
    M = run.train.max_iters
    tps = run.tokens_per_step()
    N = nanogpt_params(m)
    per_dense = flops_per_token_dense(m)
    att_dense_layer = 12 * m.n_embd * m.block_size  # one layer's share of 12 L d T

    shapes = sparse_shapes(m, run.sparsity.sparse_set) if run.is_sparse else {}
    S = sum(o * i for o, i in shapes.values())  # weights in the sparse set
    dense_part = 6 * (N - S)  # per token: parameters outside the sparse set (6 numel each)
    dense_grad = sched.uses_dense_gradient(run)
    updates = sched.update_steps(run)

    att_active = att_dense_layer * attention_layer_equivalents(run)
    att_off = att_dense_layer * m.n_layer

    phase_acc: dict[str, dict[str, float]] = {}
    parts = {"weights_dense": 0.0, "weights_sparse": 0.0, "dense_gradient_extra": 0.0, "attention": 0.0}
    cols: dict[str, list[Any]] = {k: [] for k in (
        "start_step", "end_step", "sparsity", "weight_density", "attention_density", "flops_per_token",
        "dense_gradient", "phase")}
    total = 0.0
    for ra, rz, phase, active in _regions(run):
        att_f = att_active if active else att_off
        a_density = att_f / att_off
        acc = phase_acc.setdefault(phase, {"start": ra, "end": rz, "tokens": 0, "flops": 0.0, "wd": 0.0, "ad": 0.0})
        acc["start"] = min(acc["start"], ra)
        acc["end"] = max(acc["end"], rz)
        for a, z, dg in _segments(ra, rz, updates, dense_grad):
            # the masks of step a are those in force after step a - 1 (see the module docstring)
            s = sched.sparsity_in_force(max(a - 1, 0), run) if S else 0.0
            nnz = _nnz_total(S, s) if S else 0
            w_sparse = 6 * nnz
            w_extra = 2 * (S - nnz) if dg else 0
            per_tok = dense_part + w_sparse + w_extra + att_f
            tokens = (z - a) * tps
            f = float(per_tok * tokens)
            total += f
            parts["weights_dense"] += dense_part * tokens
            parts["weights_sparse"] += w_sparse * tokens
            parts["dense_gradient_extra"] += w_extra * tokens
            parts["attention"] += att_f * tokens
            wd = nnz / S if S else 1.0
            acc["tokens"] += tokens
            acc["flops"] += f
            acc["wd"] += wd * tokens
            acc["ad"] += a_density * tokens
            if series:
                cols["start_step"].append(a)
                cols["end_step"].append(z)
                cols["sparsity"].append(s)
                cols["weight_density"].append(wd)
                cols["attention_density"].append(a_density)
                cols["flops_per_token"].append(per_tok)
                cols["dense_gradient"].append(dg)
                cols["phase"].append(phase)

    tokens_all = M * tps
    if dense_model is None and run.method == "tiny":
        raise ConfigError(
            "a tiny run is compared with a larger dense model: pass dense_model= "
            "(mstlib.presets.dense_reference_model(run) gives its preset's full-size one)"
        )
    ref = dense_model if dense_model is not None else run.model
    per_ref = flops_per_token_dense(ref)
    dense_total = float(per_ref) * tokens_all
    phases_out = {}
    for ph in sched.phases(run.schedule):
        acc = phase_acc.get(ph.name)
        if acc is None:  # a phase shorter than one step
            continue
        dense_ph = float(per_ref) * acc["tokens"]
        phases_out[ph.name] = PhaseFlops(
            name=ph.name,
            start_step=int(acc["start"]),
            end_step=int(acc["end"]),
            tokens=int(acc["tokens"]),
            flops=acc["flops"],
            dense_flops=dense_ph,
            ratio_to_dense=acc["flops"] / dense_ph,
            mean_weight_density=acc["wd"] / acc["tokens"],
            mean_attention_density=acc["ad"] / acc["tokens"],
        )
    return FlopReport(
        method=run.method,
        preset=run.preset,
        tokens=tokens_all,
        steps=M,
        tokens_per_step=tps,
        flops_per_token_dense=per_dense,
        dense_reference=f"{ref.n_layer}x{ref.n_embd}",
        flops_per_token_dense_reference=per_ref,
        dense_total_flops=dense_total,
        total_flops=total,
        ratio_to_dense=total / dense_total,
        n_update_steps=len(updates),
        dense_gradient_on_updates=dense_grad,
        phases=phases_out,
        breakdown=parts,
        series=cols if series else {},
    )
