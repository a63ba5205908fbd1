"""Topology evolution and sparsity variation: the :class:`Sparsifier`, the one object the trainer talks to.

Per training step (the trainer's side)::

    loss.backward()                              # dense gradients in .grad (DDP-averaged)
    if sparsifier.is_update_step(step):
        stats = sparsifier.update(step)          # drop / grow / change density; uses the dense gradient
        # (optimizer step skipped here when topology.skip_step_on_update, as the official code)
    sparsifier.mask_grads_()                     # before clipping, so the norm is the sparse model's
    clip; optimizer.step(); sparsifier.apply_()  # apply_ is a safety net: see below

An update at step ``t`` (progress ``p = t / max_iters``), for each sparse matrix (layer index ``l``):

1. per-layer target nonzeros ``target = layer_nnz(shapes, target_sparsity(p), distribution)[name]``;
   ``surplus = n_active - target`` (positive when the global target rose, negative when it fell);
2. drop ``n_prune = max(floor(f * n_active), surplus)`` active weights with the smallest |w|, where
   ``f = drop_fraction(t)`` (cosine-annealed, 0 for ``growth="none"``);
3. grow ``n_grow = n_prune - surplus`` (so the layer ends with exactly ``target``) among the positions not
   kept in step 2: by largest |dense gradient| (``gradient``, RigL), uniformly at random (``random``, SET,
   and ``none``, where only a falling target grows), or ``floor(mix_gradient_fraction * n_grow)`` by gradient
   and the rest at random among the remaining candidates (``mixed``, our reading of the paper's "MG");
4. positions that switched on start at weight 0; positions that switched on *or* off get every optimizer
   slot (AdamW ``exp_avg``, ``exp_avg_sq``) zeroed. Gradients are re-masked with the new masks.

Choices (documented for the book's deviations page):

* **Just-dropped weights can be regrown** (RigL's and the official code's behaviour: growth candidates are
  the complement of the *kept* set). A weight dropped and regrown in the same update keeps its value and
  optimizer state (RigL's default ``reinit_when_same=False``): for it nothing changed. This is also what
  makes sparsity 0 exactly dense: everything dropped is regrown. ``stats["pruned"]``/``["grown"]`` are the
  nominal counts of steps 2-3; ``["switched_off"]``/``["switched_on"]`` the positions that really changed.
* **Optimizer moments are masked** (``topology.mask_optimizer_moments=True``; the constructor argument of
  the same name overrides the config). The official code only masks SGD momentum, so with AdamW a pruned weight's stale moments keep
  pushing it (the weight is re-zeroed after each step) and a regrown weight inherits them.
  ``mask_optimizer_moments=False`` reproduces that for the deviations ablation. With the moments zeroed and
  the gradients masked, AdamW leaves masked weights exactly 0 by itself (decoupled weight decay of 0 is 0),
  so :meth:`apply_` after the optimizer step changes nothing; it stays as a cheap guarantee.
* **Randomness** comes from ``torch.Generator`` objects on the parameter's device seeded by
  ``sha256(seed, tag, step, layer)`` (:func:`mstlib.masks.make_generator`), separate streams for the initial
  mask (``"init"``) and growth (``"grow"``). With identical (DDP-averaged) gradients every rank computes the
  same masks without communication. Drop and gradient growth use ``topk``, which is deterministic for equal
  inputs on the same kind of device.
* **Initial masks** are drawn at ``sparsity_in_force(0)`` (dense for MST, whose target starts at 0).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import nn

from . import schedule as sched
from .config import RunConfig
from .errors import CheckpointError, MstError
from .masks import MaskSet, layer_nnz, make_generator, random_topk_

__all__ = ["Sparsifier"]


class Sparsifier:
    """Masks plus their evolution for one run. ``model`` may be wrapped in DDP and/or ``torch.compile``.

    Args:
        model: the GPT whose sparse matrices (``run_cfg.sparsity.sparse_set``) get masks; the initial masks
            are drawn and applied to the weights here.
        run_cfg: the validated run config (schedule, topology, sparsity, seed, max_iters).
        optimizer: the optimizer whose per-weight state is zeroed at changed positions; may be set later
            through the ``optimizer`` attribute (it must be set before the first update once it has state).
        mask_optimizer_moments: zero optimizer moments at pruned and grown positions (correct); False
            reproduces the official code's AdamW behaviour for the deviations ablation. None (default)
            reads ``run_cfg.topology.mask_optimizer_moments``.
    """

    def __init__(
        self,
        model: nn.Module,
        run_cfg: RunConfig,
        optimizer: Optional[torch.optim.Optimizer] = None,
        *,
        mask_optimizer_moments: Optional[bool] = None,
    ) -> None:
        self.run = run_cfg
        self.optimizer = optimizer
        if mask_optimizer_moments is None:
            mask_optimizer_moments = getattr(run_cfg.topology, "mask_optimizer_moments", True)
        self.mask_optimizer_moments = bool(mask_optimizer_moments)
        self.masks = MaskSet.from_config(model, run_cfg.sparsity)
        self.target = sched.sparsity_in_force(0, run_cfg)
        self.last_update_step: Optional[int] = None
        self.masks.init(self.target, run_cfg.seed, run_cfg.sparsity.init)

    # -- the per-step interface ------------------------------------------------------------------------
    def is_update_step(self, step: int) -> bool:
        return sched.is_update_step(step, self.run)

    def apply_(self) -> None:
        """Zero the masked weights (call after the optimizer step)."""
        self.masks.apply_()

    def mask_grads_(self) -> None:
        """Zero the masked weights' gradients (call before clipping and the optimizer step)."""
        self.masks.mask_grads_()

    def density(self) -> float:
        """Current density over the sparse set (exact, from host counts)."""
        return self.masks.density()

    def nnz(self) -> int:
        return self.masks.nnz()

    # -- topology update ------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int) -> dict[str, Any]:
        """Drop and grow in every sparse matrix at ``step`` (see the module docstring); needs the dense
        gradients in ``.grad`` when growth is ``gradient`` or ``mixed``. Returns statistics: ``step``,
        ``target_sparsity``, ``drop_fraction``, ``pruned``, ``grown``, ``switched_off``, ``switched_on``,
        ``nnz``, ``density`` and ``layers`` (the same per matrix plus ``target_nnz``)."""
        run = self.run
        topo = run.topology
        p = sched.progress(step, run.train.max_iters)
        target_s = sched.target_sparsity(p, run.schedule)
        f = sched.drop_fraction(step, run)
        targets = layer_nnz(self.masks.shapes, target_s, self.masks.distribution)
        changed: dict[str, torch.Tensor] = {}
        rows: list[dict[str, Any]] = []
        counts: list[torch.Tensor] = []
        for layer, (name, param) in enumerate(zip(self.masks.names, self.masks.params)):
            old = self.masks.bool_mask(name).flatten()
            n_active = self.masks.nnz_host[name]
            target = targets[name]
            surplus = n_active - target
            n_prune = min(max(math.floor(f * n_active), surplus), n_active)
            n_grow = n_prune - surplus
            w = param.detach().view(-1)

            # drop: keep the n_active - n_prune largest |w| among the active (inactive scored -1 < |w|)
            n_keep = n_active - n_prune
            new = torch.zeros_like(old)
            if n_keep > 0:
                score = w.abs().float().masked_fill_(~old, -1.0)
                new[torch.topk(score, n_keep, sorted=False).indices] = True

            # grow among the not-kept (just-dropped ones included, as RigL)
            n_grad, n_rand = self._split_growth(n_grow)
            candidates = ~new
            if n_grad > 0:
                if param.grad is None:
                    raise MstError(
                        f"topology update at step {step} grows by gradient but {name} has no .grad: call "
                        "update() after backward() and before zero_grad()"
                    )
                gscore = param.grad.detach().view(-1).abs().float().masked_fill_(~candidates, -1.0)
                idx = torch.topk(gscore, n_grad, sorted=False).indices
                new[idx] = True
                candidates[idx] = False
            if n_rand > 0:
                g = make_generator(run.seed, "grow", step, layer, param.device)
                random_topk_(new, candidates, n_rand, g)

            born = new & ~old
            died = old & ~new
            w.masked_fill_(born, 0.0)  # grown weights start at zero (dense storage may hold stale values)
            self.masks.masks[name].copy_(new.view(param.shape))
            self.masks.nnz_host[name] = target
            changed[name] = (born | died).view(param.shape)
            counts.append(torch.stack([born.sum(), died.sum()]))
            rows.append({"name": name, "target_nnz": target, "nnz": target, "pruned": n_prune, "grown": n_grow})

        if self.optimizer is not None and self.mask_optimizer_moments:
            self.masks.zero_optimizer_state_(self.optimizer, changed)
        self.masks.apply_()
        self.masks.mask_grads_()

        on_off = torch.stack(counts).cpu().tolist() if counts else []  # one sync for all layers
        for row, (on, off) in zip(rows, on_off):
            row["switched_on"], row["switched_off"] = int(on), int(off)
            row["density"] = row["nnz"] / math.prod(self.masks.shapes[row["name"]])
        self.target = target_s
        self.last_update_step = step
        return {
            "step": step,
            "target_sparsity": target_s,
            "drop_fraction": f,
            "pruned": sum(r["pruned"] for r in rows),
            "grown": sum(r["grown"] for r in rows),
            "switched_off": sum(r["switched_off"] for r in rows),
            "switched_on": sum(r["switched_on"] for r in rows),
            "nnz": self.masks.nnz(),
            "density": self.masks.density(),
            "layers": rows,
        }

    def _split_growth(self, n_grow: int) -> tuple[int, int]:
        """``(by gradient, at random)`` counts for ``n_grow`` new connections under the growth rule."""
        growth = self.run.topology.growth
        if n_grow <= 0:
            return 0, 0
        if growth == "gradient":
            return n_grow, 0
        if growth == "mixed":
            # the small epsilon keeps e.g. 0.7 * 10 (6.999...) from flooring to 6
            n_grad = min(n_grow, math.floor(n_grow * self.run.topology.mix_gradient_fraction + 1e-9))
            return n_grad, n_grow - n_grad
        return 0, n_grow  # "random" (SET) and "none" (only a falling target grows, at random)

    # -- checkpointing ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks (bool, CPU) and the schedule position; together with the model and optimizer this restores
        the run exactly (all randomness is derived from (seed, step, layer), so there is no RNG state)."""
        return {
            "version": 1,
            "masks": self.masks.state_dict(),
            "target_sparsity": self.target,
            "last_update_step": self.last_update_step,
            "mask_optimizer_moments": self.mask_optimizer_moments,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != 1:
            raise CheckpointError(f"sparsifier state version {state.get('version')!r} is not 1: not an mstlib checkpoint?")
        self.masks.load_state_dict(state["masks"])
        self.target = float(state["target_sparsity"])
        self.last_update_step = state["last_update_step"]
