"""Time schedules of a run: sparsity variation, topology-update steps, drop fraction, learning rate, and
when hybrid sparse attention is on. Pure Python (no torch), so :mod:`mstlib.flops`, the trainer and the
notebooks all compute the same numbers from the same :class:`~mstlib.config.RunConfig`.

Units: ``step`` is an optimizer iteration, ``0 <= step < train.max_iters``; ``p`` is training progress,
``p = step / max_iters`` in [0, 1]. Sparsities are fractions of the *sparse set's* weights that are zero.

Choices made here (the paper's body text is not available; each one is a config field or documented):

* **Sparsity variation** (``schedule.kind="mst"``): warm-up ``[0, warmup_end)`` ramps the global target
  from 0 to ``s_max``; ultra-sparsification ``[warmup_end, restore_start)`` holds ``s_max``; restoration
  ``[restore_start, 1]`` ramps ``s_max`` down to ``s_end``. Both ramps use the same shape ``r(x)`` on the
  ramp's own fraction ``x`` in [0, 1]: ``start + (end - start) * r(x)`` with ``linear r = x``,
  ``cosine r = (1 - cos(pi x)) / 2`` and ``cubic r = 1 - (1 - x)^3`` (Zhu & Gupta's gradual-pruning curve:
  large changes early, small ones late). For restoration this means most connections come back early in the
  phase, so the regrown weights have the longest time to train.
* **Piecewise-constant density**: masks only change at topology updates, so the sparsity *in force* at step
  ``t`` is the target evaluated at the last update step ``<= t`` (``target_sparsity(0)`` before the first
  update). :func:`sparsity_in_force` is the one definition the trainer and the FLOP count share.
* **Update steps**: every ``topology.update_interval`` steps, ``0 < step < stop_at * max_iters`` (the
  official code's ``step % delta == 0 and step < T_end``). A constant schedule with ``growth="none"`` (static
  sparse training, SS) has none. An MST schedule with ``growth="none"`` (the static ablation) still has them,
  because the density must change: such an update drops nothing for exchange (drop fraction 0), prunes the
  smallest |w| when the target rises and grows at random when it falls (see :mod:`mstlib.topology`).
* **Drop fraction**: cosine from ``topology.drop_fraction`` (official ``zeta`` = 0.3) to 0. With
  ``restart_per_phase`` it restarts at every phase boundary (official ``stepwise_anealing``), annealing over
  the phase clipped at ``stop_at``; otherwise over the whole of ``[0, stop_at]`` (official ``T_end``).
* **Learning rate**: the official MST code's (nanoGPT of mid-2023): ``lr * step / warmup_iters`` during
  warm-up (0 at step 0; current nanoGPT uses ``(step + 1) / (warmup_iters + 1)``), then cosine to ``min_lr``
  at ``decay_iters``, ``min_lr`` after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import RunConfig, ScheduleConfig, TrainConfig

__all__ = [
    "Phase",
    "progress",
    "ramp",
    "phases",
    "phase_at",
    "target_sparsity",
    "has_updates",
    "is_update_step",
    "update_steps",
    "last_update_step",
    "sparsity_in_force",
    "uses_dense_gradient",
    "drop_fraction",
    "lr_at",
    "attention_active",
]


@dataclass(frozen=True)
class Phase:
    """A phase of training, ``[start, end)`` as fractions of ``max_iters`` (the last phase includes 1)."""

    name: str
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


def progress(step: int, max_iters: int) -> float:
    """Training progress ``step / max_iters`` (not clipped)."""
    return step / max_iters


def ramp(x: float, shape: str) -> float:
    """The ramp shape ``r(x)`` on [0, 1] -> [0, 1] (``x`` is clipped): r(0) = 0, r(1) = 1."""
    x = min(max(x, 0.0), 1.0)
    if shape == "linear":
        return x
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * x))
    if shape == "cubic":
        return 1.0 - (1.0 - x) ** 3
    raise ValueError(f"unknown ramp shape {shape!r}; use 'linear', 'cosine' or 'cubic'")


def phases(cfg: ScheduleConfig) -> list[Phase]:
    """The phases of the sparsity schedule, zero-length ones dropped.

    ``kind="mst"``: ``warmup``, ``ultra``, ``restoration``; ``"constant"``: one ``constant`` phase;
    ``"dense"``: one ``dense`` phase. Together they cover [0, 1] without gaps.
    """
    if cfg.kind == "mst":
        out = [
            Phase("warmup", 0.0, cfg.warmup_end),
            Phase("ultra", cfg.warmup_end, cfg.restore_start),
            Phase("restoration", cfg.restore_start, 1.0),
        ]
        return [ph for ph in out if ph.end > ph.start]
    return [Phase(cfg.kind, 0.0, 1.0)]


def phase_at(p: float, cfg: ScheduleConfig) -> Phase:
    """The phase containing progress ``p`` (``start <= p < end``; ``p >= 1`` is in the last phase and
    ``p < 0`` in the first)."""
    ph = phases(cfg)
    for phase in ph:
        if p < phase.end:
            return phase
    return ph[-1]


def target_sparsity(p: float, cfg: ScheduleConfig) -> float:
    """The global target sparsity over the sparse set at progress ``p`` (``p`` is clipped to [0, 1])."""
    p = min(max(p, 0.0), 1.0)
    if cfg.kind == "dense":
        return 0.0
    if cfg.kind == "constant":
        return cfg.sparsity
    if p < cfg.warmup_end:
        return cfg.s_max * ramp(p / cfg.warmup_end, cfg.shape)
    if p < cfg.restore_start:
        return cfg.s_max
    if cfg.restore_start >= 1.0:  # no restoration phase: hold s_max to the end
        return cfg.s_max
    x = (p - cfg.restore_start) / (1.0 - cfg.restore_start)
    return cfg.s_max + (cfg.s_end - cfg.s_max) * ramp(x, cfg.shape)


# ------------------------------------------------------------------------------------ update steps


def has_updates(run: RunConfig) -> bool:
    """Whether the run ever changes its masks: not for dense runs, and not for a constant schedule with
    ``growth="none"`` (static sparse training)."""
    if run.schedule.kind == "dense":
        return False
    if run.schedule.kind == "constant" and run.topology.growth == "none":
        return False
    return True


def _update_limit(run: RunConfig) -> float:
    """Updates happen at steps strictly below this (``stop_at * max_iters``)."""
    return run.topology.stop_at * run.train.max_iters


def is_update_step(step: int, run: RunConfig) -> bool:
    """True when a topology update (and possibly a sparsity change) happens at ``step``."""
    dt = run.topology.update_interval
    return has_updates(run) and step > 0 and step % dt == 0 and step < _update_limit(run)


def update_steps(run: RunConfig) -> list[int]:
    """All update steps of the run, ascending (empty when :func:`has_updates` is false)."""
    if not has_updates(run):
        return []
    dt = run.topology.update_interval
    limit = _update_limit(run)
    return [s for s in range(dt, run.train.max_iters, dt) if s < limit]


def last_update_step(step: int, run: RunConfig) -> int | None:
    """The last update step ``<= step``, or None before the first update."""
    if not has_updates(run) or step <= 0:
        return None
    dt = run.topology.update_interval
    s = (step // dt) * dt
    limit = _update_limit(run)
    if s >= limit:  # updates stopped: the last one below the limit
        s = (math.ceil(limit) - 1) // dt * dt
    return s if s > 0 else None


def sparsity_in_force(step: int, run: RunConfig) -> float:
    """The global sparsity of the masks during ``step``: the target at the last update step ``<= step``
    (the masks change inside that step, before its optimizer step), ``target_sparsity(0)`` before the
    first update. Piecewise constant between update steps.

    The forward and backward of an update step ``t`` still run on the previous masks (the update needs
    their dense gradient), so the density of step ``t``'s *compute* is ``sparsity_in_force(t - 1)``; this is
    what :mod:`mstlib.flops` integrates."""
    s = last_update_step(step, run)
    return target_sparsity(progress(s or 0, run.train.max_iters), run.schedule)


def uses_dense_gradient(run: RunConfig) -> bool:
    """Whether update steps need the dense gradient (growth by gradient or mixed); random and no growth
    do not, which the FLOP count uses."""
    return has_updates(run) and run.topology.growth in ("gradient", "mixed")


# ---------------------------------------------------------------------------------- drop fraction


def drop_fraction(step: int, run: RunConfig) -> float:
    """Fraction of a layer's active weights dropped (and regrown) for topology exchange at ``step``.

    Cosine ``zeta / 2 * (1 + cos(pi * x))`` from ``zeta = topology.drop_fraction`` at ``x = 0`` to 0 at
    ``x = 1``, where ``x`` is the position in the current phase (``restart_per_phase``) or in the whole run,
    both clipped at ``stop_at``; ``drop_anneal="constant"`` keeps ``zeta``. 0 for ``growth="none"``
    (static topology: only the sparsity change moves weights).
    """
    topo = run.topology
    if topo.growth == "none":
        return 0.0
    if topo.drop_anneal == "constant":
        return topo.drop_fraction
    p = progress(step, run.train.max_iters)
    if topo.restart_per_phase:
        ph = phase_at(p, run.schedule)
        a, b = ph.start, min(ph.end, topo.stop_at)
        if b <= a:  # the phase starts after updates stopped: anneal over the whole phase
            b = ph.end
    else:
        a, b = 0.0, topo.stop_at if topo.stop_at > 0 else 1.0
    x = min(max((p - a) / (b - a), 0.0), 1.0)
    return topo.drop_fraction / 2.0 * (1.0 + math.cos(math.pi * x))


# ------------------------------------------------------------------------------------ learning rate


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate at ``step``: linear warm-up ``lr * step / warmup_iters``, cosine from ``lr`` to
    ``min_lr`` between ``warmup_iters`` and ``decay_iters``, ``min_lr`` afterwards (the official MST code)."""
    if step < train.warmup_iters:
        return train.lr * step / train.warmup_iters
    decay = train.decay_iters
    if step > decay or decay <= train.warmup_iters:
        return train.min_lr
    ratio = (step - train.warmup_iters) / (decay - train.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return train.min_lr + coeff * (train.lr - train.min_lr)


# -------------------------------------------------------------------------------------- attention


def attention_active(step: int, run: RunConfig) -> bool:
    """Whether hybrid sparse attention is used at ``step``: never for ``pattern="dense"``; ``when="ultra"``
    inside the ultra-sparsification phase ``[warmup_end, restore_start)``; ``"custom"`` inside
    ``[start, end)`` of progress; ``"always"``/``"never"`` as named."""
    att = run.attention
    if att.pattern == "dense" or att.when == "never":
        return False
    if att.when == "always":
        return True
    p = progress(step, run.train.max_iters)
    if att.when == "ultra":
        if run.schedule.kind != "mst":
            return False
        return run.schedule.warmup_end <= p < run.schedule.restore_start
    return att.start <= p < att.end

